"""Background jobs: run a long call (training) in a daemon thread and watch it from a UI.

``Job(fn, *args, **kwargs)`` starts ``fn(job, *args, **kwargs)`` at once in a daemon thread. The
function reports progress with ``job.report(**fields)`` (appended to ``job.events`` with a
timestamp) and checks ``job.cancelled()`` to stop early; before a step that must not be cut short
(saving) it calls ``job.commit()``, which fails when a cancel came first and refuses any cancel
after it. Its return value becomes ``job.result``; an exception becomes ``job.error`` (one line)
and ``status == "failed"``, or ``"cancelled"`` when a cancel was asked for. A ``JobRegistry``
keeps jobs by id, each owned by the caller that submitted it (the app keeps one registry per
server and passes each browser session's id as the owner), and runs at most ``per_owner`` of an
owner's jobs and ``total`` in all at once: the others wait in submission order, ``status ==
"queued"`` with a "queued" event that says why, and start as running ones end. Nothing here is
module-level state, and nothing imports streamlit. The jobs the app runs are in ``workflows``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from ..errors import one_line

log = logging.getLogger(__name__)


class Job:
    """One call running in a daemon thread; every field is safe to read from another thread."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any):
        self._prepare(fn, args, kwargs)
        self.start()

    @classmethod
    def waiting(cls, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> "Job":
        """A job that starts only when ``start()`` is called (``status == "queued"`` till then)."""
        job = cls.__new__(cls)
        job._prepare(fn, args, kwargs)
        return job

    def _prepare(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        self.id = uuid.uuid4().hex[:10]
        self.status = "queued"               # then "running", then "done", "failed" or "cancelled"
        self.result: Any = None
        self.error: str | None = None
        self.started = time.time()            # seconds since the epoch (submitted; then started)
        self.finished: float | None = None
        self.on_end: Callable[[Job], None] | None = None   # called once the job has ended
        self._events: list[dict] = []
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._committed = False               # past the point where a cancel is honoured
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(fn, args, kwargs), daemon=True,
                                        name=f"job-{self.id}")

    def start(self) -> None:
        """Run the job's function in its thread (a queued job cancelled meanwhile never runs)."""
        if self._claim():
            self._thread.start()

    def _claim(self) -> bool:
        """queued → running: True when the caller is to start the thread; a queued job cancelled
        meanwhile ends now instead (False), as does a job already claimed."""
        with self._lock:
            if self.status != "queued":
                return False
            if not self._cancel.is_set():
                self.status, self.started = "running", time.time()
                return True
            self.status, self.finished = "cancelled", time.time()
            self._done.set()
        self._ended()
        return False

    def _ended(self) -> None:
        if self.on_end is not None:
            self.on_end(self)

    def _run(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        try:
            result = fn(self, *args, **kwargs)
        except Exception as exc:  # a job reports every failure instead of dying silently
            message = one_line(exc)
            if not isinstance(exc, ValueError | RuntimeError | OSError):
                log.exception("job %s failed", self.id)
                message = f"{type(exc).__name__}: {message}"
            with self._lock:
                self.error = message
                self.status = "cancelled" if self._cancel.is_set() else "failed"
        else:
            with self._lock:
                self.result = result
                self.status = "cancelled" if self._cancel.is_set() else "done"
        finally:
            with self._lock:
                self.finished = time.time()
            self._done.set()
            self._ended()

    # ------------------------------------------------------------------ for the running function

    def report(self, **fields: Any) -> None:
        """Append one progress event ``{"t": seconds since start, **fields}``."""
        with self._lock:
            self._events.append({"t": time.time() - self.started, **fields})

    def cancelled(self) -> bool:
        """True once ``cancel()`` was accepted: the function should stop soon."""
        return self._cancel.is_set()

    def commit(self) -> bool:
        """Enter the part that must not be cut short (e.g. saving): False when a cancel came first
        (the function should then stop without writing), else True, and every later ``cancel()``
        is refused, so the job ends "done" with what it wrote."""
        with self._lock:
            if self._cancel.is_set():
                return False
            self._committed = True
            return True

    # ------------------------------------------------------------------ for the watcher

    def cancel(self) -> bool:
        """Ask the function to stop (it decides when, through ``cancelled()``); False when it is
        too late (the job has committed, e.g. it is saving, or it has ended)."""
        with self._lock:
            if self._committed or self._done.is_set():
                return False
            self._cancel.set()
            queued = self.status == "queued"
        if queued:                           # never started: it ends now, without running
            self.start()
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends or ``timeout`` seconds pass; True when it has ended."""
        return self._done.wait(timeout)

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    @property
    def events(self) -> list[dict]:
        """A copy of the progress events so far."""
        with self._lock:
            return list(self._events)

    def last(self, **match: Any) -> dict | None:
        """The latest event whose fields equal ``match`` (any event when no match is given)."""
        with self._lock:
            for event in reversed(self._events):
                if all(event.get(k) == v for k, v in match.items()):
                    return dict(event)
        return None

    @property
    def elapsed(self) -> float:
        """Seconds from start to end (or to now while running)."""
        return (self.finished or time.time()) - self.started


class JobRegistry:
    """Jobs by id, each with an owner (e.g. one browser session), a kind ("train", "router") and a
    label; thread-safe. Every lookup names the owner: a job is visible to, and cancellable by, the
    owner that submitted it only."""

    def __init__(self, per_owner: int | None = None, total: int | None = None) -> None:
        self._jobs: dict[str, tuple[Job, str, str, str]] = {}   # id -> (job, owner, kind, label)
        self._lock = threading.RLock()
        self.per_owner = per_owner           # jobs of one owner running at once (None: no limit)
        self.total = total                   # jobs running at once in all (None: no limit)

    def submit(self, owner: str, kind: str, label: str, fn: Callable[..., Any], *args: Any,
               **kwargs: Any) -> Job:
        """``fn`` as a Job of ``owner`` under ``kind``: started now when the limits allow, else
        queued (a "queued" event says why) until running jobs end."""
        job = Job.waiting(fn, *args, **kwargs)
        job.on_end = self._start_queued
        with self._lock:
            self._jobs[job.id] = (job, owner, kind, label)
            reason = self._full(owner)
        if reason:
            job.report(stage="queued", reason=reason)
        self._start_queued()
        return job

    def _full(self, owner: str) -> str | None:
        """Why another job of ``owner`` cannot start now (None: it can). Holds ``_lock``."""
        running = [who for job, who, _, _ in self._jobs.values() if job.status == "running"]
        if self.total is not None and len(running) >= self.total:
            return f"{len(running)} jobs are running on this server (at most {self.total} at once)"
        mine = sum(who == owner for who in running)
        if self.per_owner is not None and mine >= self.per_owner:
            return f"{mine} of your jobs are running (at most {self.per_owner} at once)"
        return None

    def _start_queued(self, _ended: Job | None = None) -> None:
        """Start queued jobs, oldest first, while the limits allow."""
        while True:
            with self._lock:             # re-entrant: a claim that ends a cancelled job calls back
                nxt = next((job for job, who, _, _ in sorted(self._jobs.values(), key=lambda e: e[0].started)
                            if job.status == "queued" and self._full(who) is None), None)
                if nxt is None:
                    return
                claimed = nxt._claim()
            if claimed:
                nxt._thread.start()

    def get(self, owner: str, job_id: str | None) -> Job | None:
        """The job ``job_id`` if ``owner`` submitted it, else None."""
        with self._lock:
            entry = self._jobs.get(job_id) if job_id else None
        return entry[0] if entry and entry[1] == owner else None

    def list(self, owner: str, kind: str | None = None) -> list[tuple[Job, str]]:
        """(job, label) pairs of ``owner``, of one kind (all kinds when None), newest first."""
        with self._lock:
            entries = list(self._jobs.values())
        return [(job, label) for job, who, k, label in sorted(entries, key=lambda e: -e[0].started)
                if who == owner and (kind is None or k == kind)]

    def running(self, owner: str, kind: str | None = None) -> list[Job]:
        return [job for job, _ in self.list(owner, kind) if job.running]

    def cancel(self, owner: str, job_id: str) -> bool:
        """Ask ``owner``'s job ``job_id`` to stop; False when there is no such job of ``owner`` or
        it is too late (``Job.cancel``)."""
        job = self.get(owner, job_id)
        return job is not None and job.cancel()

    def remove(self, owner: str, job_id: str) -> None:
        """Forget ``owner``'s job (a running one is cancelled first); others' jobs are untouched."""
        with self._lock:
            entry = self._jobs.get(job_id)
            if entry is None or entry[1] != owner:
                return
            del self._jobs[job_id]
        if entry[0].running:
            entry[0].cancel()
