"""Background jobs: run a long call (training) in a daemon thread and watch it from a UI.

``Job(fn, *args, **kwargs)`` starts ``fn(job, *args, **kwargs)`` at once in a daemon thread. The
function reports progress with ``job.report(**fields)`` (appended to ``job.events`` with a
timestamp) and checks ``job.cancelled()`` to stop early; before a step that must not be cut short
(saving) it calls ``job.commit()``, which fails when a cancel came first and refuses any cancel
after it. Its return value becomes ``job.result``; an exception becomes ``job.error`` (one line)
and ``status == "failed"``, or ``"cancelled"`` when a cancel was asked for. A ``JobRegistry`` keeps jobs by id, each owned by the caller that
submitted it (the app keeps one registry per server and passes each browser session's id as the
owner); nothing here is module-level state, and nothing imports streamlit.

The job functions the app runs, ``train_expert_job`` and ``train_router_job`` (with
``save_trained_router``), sit at the end: they call the engine, write files only through a
``workspace.Workspace``, and translate the engine's callbacks into ``job.report``. Their last event
says what was written: ``{"stage": "saved", "saved": True, "path": ...}`` or
``{"stage": "not saved", "saved": False, "path": None, "reason": ...}``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..files import safefs

log = logging.getLogger(__name__)

class Job:
    """One call running in a daemon thread; every field is safe to read from another thread."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any):
        self.id = uuid.uuid4().hex[:10]
        self.status = "running"              # then "done", "failed" or "cancelled"
        self.result: Any = None
        self.error: str | None = None
        self.started = time.time()            # seconds since the epoch
        self.finished: float | None = None
        self._events: list[dict] = []
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._committed = False               # past the point where a cancel is honoured
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(fn, args, kwargs), daemon=True,
                                        name=f"job-{self.id}")
        self._thread.start()

    def _run(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        try:
            result = fn(self, *args, **kwargs)
        except Exception as exc:  # a job reports every failure instead of dying silently
            message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
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

    def __init__(self) -> None:
        self._jobs: dict[str, tuple[Job, str, str, str]] = {}   # id -> (job, owner, kind, label)
        self._lock = threading.Lock()

    def submit(self, owner: str, kind: str, label: str, fn: Callable[..., Any], *args: Any,
               **kwargs: Any) -> Job:
        """Start ``fn`` as a Job of ``owner`` and keep it under ``kind``."""
        job = Job(fn, *args, **kwargs)
        with self._lock:
            self._jobs[job.id] = (job, owner, kind, label)
        return job

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


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- the app's jobs


def _finish(job: Job, path: Path | None, reason: str = "", **fields: Any) -> None:
    """The job's last event: what it wrote (``path``) or that it wrote nothing, and why."""
    if path is not None:
        job.report(stage="saved", saved=True, path=str(path), **fields)
    else:
        job.report(stage="not saved", saved=False, path=None, reason=reason, **fields)


def _one_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


CHECKPOINTS = ".checkpoints"      # workspace folder of unfinished training runs (hidden)


def _train_resuming(config, backbone, train_data, eval_data, progress, job, log_every, name,
                    checkpoint_dir):
    """``experts.train_expert`` continuing ``checkpoint_dir`` when it holds this run; a
    checkpoint of other settings is dropped and training starts afresh."""
    from .. import experts
    from ..experts.checkpoint import CheckpointError

    kwargs = dict(train_data=train_data, eval_data=eval_data, progress=progress,
                  should_stop=job.cancelled, log_every=log_every, name=name,
                  checkpoint_dir=checkpoint_dir)
    if not config.checkpoint_every:       # the app checkpoints every 50 steps unless told
        config = dataclasses.replace(config, checkpoint_every=50)
    try:
        return experts.train_expert(config, backbone, resume=True, **kwargs)
    except CheckpointError:
        safefs.remove(checkpoint_dir)
        return experts.train_expert(config, backbone, resume=False, **kwargs)


def train_expert_job(job: Job, config, backbone, workspace, name: str, replace: bool = False,
                     train_data=None, eval_data=None, data_dir=None) -> dict:
    """Train one expert (``experts.train_expert``), save it as ``name`` in ``workspace`` (a
    ``workspace.Workspace``; ``replace``: over an expert of that name), return a summary.

    The target folder is checked before training starts. Data not given is loaded for
    ``config.task`` from ``data_dir`` (``tasks.load_task``). Events: ``stage`` "loading data",
    "training" (step, total, loss, examples_per_s, elapsed_s), "evaluating" (rows), "saving" (path),
    then "saved"
    (path) or "not saved" (reason; an expert being replaced is left as it was). A cancel is
    honoured until saving starts (``Job.commit``), during evaluation too; after that it is refused.
    """
    from .. import experts, tasks

    config = config.resolved()
    target = workspace.expert_target(name, replace)
    try:
        if train_data is None or eval_data is None:
            job.report(stage="loading data")
            if train_data is None:
                train_data = tasks.load_task(config.task, "train", data_dir=data_dir,
                                             limit=config.train_limit, seed=config.seed)
            if eval_data is None:
                eval_data = tasks.load_task(config.task, "validation", data_dir=data_dir,
                                            limit=config.eval_limit, seed=config.seed)
        total = config.steps
        job.report(stage="training", step=0, total=total, train_rows=len(train_data),
                   eval_rows=len(eval_data))

        def progress(event: experts.Progress) -> None:
            held = {"holdout": event.holdout, "best_step": event.best_step} if event.holdout else {}
            job.report(stage="training", step=event.step, total=event.total_steps,
                       loss=event.loss, examples_per_s=event.examples_per_s,
                       elapsed_s=event.elapsed_s, **held)
            if event.final:
                job.report(stage="evaluating", rows=len(eval_data))

        # a cancelled (or crashed) job of this name and settings continues where it stopped
        checkpoint_dir = workspace.root / CHECKPOINTS / name
        expert = _train_resuming(config, backbone, train_data, eval_data, progress, job,
                                 max(1, total // 60), name, checkpoint_dir)
        if not job.commit():
            raise experts.TrainingError("training cancelled after evaluation, before saving")
        job.report(stage="saving", path=str(target))
        out_dir = workspace.save_expert(expert, replace=replace)
        safefs.remove(checkpoint_dir)                  # saved: nothing left to resume
    except BaseException as exc:
        kept = f"; the expert at {target} is unchanged" if replace and target.exists() else ""
        _finish(job, None, f"{_one_line(exc)}: nothing was saved{kept}")
        raise
    _finish(job, out_dir)
    return {"path": str(out_dir), "name": expert.name, "task": expert.config.task,
            "method": expert.config.method, "metrics": expert.metrics,
            "label_names": list(expert.label_names), "history": expert.history,
            "data": expert.data, "training": expert.config.to_dict(),
            "trainable_params": expert.trainable_params(),
            "adapter_params": expert.adapter_params(), "created": expert.created}


def train_router_job(job: Job, router_config, layers: Sequence[int], backbone,
                     expert_dirs: Sequence[str | Path], workspace, pack_name: str, per_task: int,
                     eval_per_task: int, data_dir=None) -> dict:
    """Build the pack ``pack_name`` of ``workspace`` from expert folders and fit one router per
    layer (``routing.sweep_layers``).

    Returns the pack, expert names, and per layer the router and its held-out report; the caller
    saves the one it wants with ``save_trained_router``. Events: ``stage``, done, total (stages
    "building pack", "loading data", "features", "held-out features", "training layer k"), then
    "saved" (the pack of experts, no router yet) or "not saved". A cancel is honoured at every
    event, during router training too; a failed or cancelled run removes the pack it made.
    """
    from ..routing import RouterError, routing_data, sweep_layers

    def progress(stage: str, done: int, total: int) -> None:
        if job.cancelled():
            raise RouterError(f"router training cancelled during {stage}")
        job.report(stage=stage, done=done, total=total)

    built: Path | None = None           # the pack folder this job made
    try:
        progress("building pack", 0, len(expert_dirs))
        experts_ = workspace.build_pack(pack_name, expert_dirs)
        built = workspace.pack_dir(pack_name)
        progress("building pack", len(experts_), len(expert_dirs))
        pairs = [(e.name, e.config.task) for e in experts_]
        progress("loading data", 0, 2)
        train = routing_data(pairs, "train", per_task, data_dir)
        held = routing_data(pairs, "validation", eval_per_task, data_dir)
        progress("loading data", 2, 2)
        results = sweep_layers(router_config, list(layers), backbone, train, held,
                               progress=progress)
        if not job.commit():
            raise RouterError("router training cancelled at its end")
    except BaseException as exc:
        if built is not None:
            with contextlib.suppress(ValueError):     # the original error matters, not this one
                workspace.delete_pack(pack_name)
        if built is not None and built.exists():      # could not be removed: say so
            _finish(job, built, note=f"{_one_line(exc)}; the pack could not be removed")
        else:
            _finish(job, None, f"{_one_line(exc)}: no pack was written")
        raise
    _finish(job, built, note=f"pack of {len(experts_)} experts, no router yet: save one",
            done=len(results), total=len(results))
    return {"pack": str(built), "pack_name": pack_name,
            "workspace": workspace, "names": train.names, "sources": held.sources,
            "train_rows": len(train.labels), "held_out_rows": len(held.labels),
            "results": results, "base": backbone.info, "created": _now(),
            "train": train, "backbone": backbone}


def save_trained_router(result: dict, index: int, extra: dict | None = None) -> Path:
    """Save the router of layer ``result["results"][index]`` (a ``train_router_job`` result) into
    its pack, with its metrics (``routing.router_metrics``), the run's date and ``extra``; returns
    the pack folder."""
    from ..routing import router_metrics

    chosen = result["results"][index]
    metrics = router_metrics(chosen, result["train_rows"], result["held_out_rows"],
                             result["sources"], sweep=result["results"])
    return result["workspace"].save_router(
        result["pack_name"], chosen["router"], result["names"], metrics, result["base"],
        extra={"created": result["created"], **(extra or {})},
        companions=_replay_writer(chosen["router"], result))


def _replay_writer(model, result: dict):
    """For a router whose pack keeps replay rows (ngram): a writer of them (add-expert grows it
    from them), from the run's training rows; None for other variants or a result without them."""
    from ..moe import fit as poolfit
    from ..routing import extract_features, replay_sample, take, variant_spec
    from ..store import detector as poolfiles

    train, backbone = result.get("train"), result.get("backbone")
    if not variant_spec(model.config.variant).keeps_replay or train is None or backbone is None:
        return None
    part = take(train, replay_sample(train.labels, poolfit.REPLAY_PER_TASK))
    feats = extract_features(backbone.model, backbone.tokenizer, part.texts,
                             part.text_pairs, model.config)
    sets = poolfit.replay_sets(model, feats, part.labels, None, None)
    return lambda folder: poolfiles.write_replay(folder, sets, result["names"],
                                                 backbone.info.to_dict(), "hidden")
