"""Dynamic batching: concurrent requests coalesced into few calls of one ``predict`` function.

``Batcher(predict)`` owns one worker thread, the only caller of ``predict(texts, pairs,
**options) -> list[dict]`` (one answer per row, in order). ``submit`` puts a request (its rows and
its options) on a bounded queue and returns a ``concurrent.futures.Future`` of its answers. The
worker takes the first waiting request, then keeps taking requests until ``max_wait_s`` has
passed since that first one or ``max_rows`` rows are gathered; it groups what it took by options
(requests asking for other options cannot share a call), calls ``predict`` once per group on the
concatenated rows, and hands each request its own slice of the answers, in order. A request
larger than ``max_rows`` is served alone; with ``coalesce=False`` every request is. When a shared
call fails, each of its requests is retried alone, so one bad request fails only itself.
A cancelled future (its client gave up) is skipped. ``close`` refuses new requests, answers those
already queued, then stops the thread. Model-agnostic: no torch, no engine imports.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

PredictFn = Callable[..., list[dict]]     # predict(texts, pairs, **options) -> one dict per row


class QueueFull(Exception):
    """The queue holds ``queue_size`` requests already: try again later."""


class Closed(Exception):
    """The batcher is shutting down and takes no new requests."""


@dataclass
class _Request:
    texts: list[str]
    pairs: list[str | None]
    options: tuple[tuple[str, object], ...]      # sorted (name, value): the grouping key
    future: Future = field(default_factory=Future)


_STOP = object()                                 # put on the queue by ``close``


class Batcher:
    """See module docstring. ``queue_size``: requests waiting at most (then ``QueueFull``)."""

    def __init__(self, predict: PredictFn, max_wait_s: float = 0.005, max_rows: int = 256,
                 queue_size: int = 1024, coalesce: bool = True):
        if max_wait_s < 0 or max_rows < 1 or queue_size < 1:
            raise ValueError("max_wait_s >= 0, max_rows >= 1 and queue_size >= 1, please")
        self.predict, self.max_wait_s, self.max_rows = predict, max_wait_s, max_rows
        self.coalesce = coalesce
        self.calls = 0                           # calls of ``predict`` so far
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()            # orders ``submit`` against ``close``
        self._closed = False
        self._held: _Request | None = None       # taken, but left for the next call (row cap)
        self._thread = threading.Thread(target=self._run, name="ttmoe-batcher", daemon=True)
        self._thread.start()

    def submit(self, texts: Sequence[str], pairs: Sequence[str | None] | None = None,
               **options) -> Future:
        """A future of the answers to these rows (one dict per row, in order); ``options`` go to
        ``predict`` as keyword arguments and must be hashable. QueueFull, Closed."""
        texts = list(texts)
        pairs = list(pairs) if pairs is not None else [None] * len(texts)
        if len(pairs) != len(texts) or not texts:
            raise ValueError(f"{len(texts)} texts and {len(pairs)} text pairs: give as many, > 0")
        request = _Request(texts, pairs, tuple(sorted(options.items())))
        with self._lock:
            if self._closed:
                raise Closed("the server is shutting down")
            try:
                self._queue.put_nowait(request)
            except queue.Full:
                raise QueueFull(f"{self._queue.maxsize} requests are waiting already") from None
        return request.future

    @property
    def closed(self) -> bool:
        return self._closed

    def depth(self) -> int:
        """Requests waiting (not yet taken by the worker)."""
        return self._queue.qsize()

    def close(self, timeout: float | None = None) -> None:
        """Take no new requests, answer every queued one, stop the worker (wait ``timeout`` s)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)           # blocks only while the queue is full
        self._thread.join(timeout)

    # ------------------------------------------------------------------ the worker

    def _run(self) -> None:
        stopping = False
        while not stopping or self._held is not None:
            first = self._held or self._queue.get()
            self._held = None
            if first is _STOP:
                stopping = True
                continue
            taken = [first]
            if self.coalesce and not stopping:
                stopping = self._gather(taken)
            for group in _groups(taken):
                self._serve(group)

    def _gather(self, taken: list[_Request]) -> bool:
        """Add waiting requests to ``taken`` until the wait or the row cap ends; True when the
        stop mark was met (what was queued before it is in ``taken`` or held)."""
        rows = len(taken[0].texts)
        deadline = time.monotonic() + self.max_wait_s
        while rows < self.max_rows:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            if rows + len(item.texts) > self.max_rows:
                self._held = item
                return False
            taken.append(item)
            rows += len(item.texts)
        return False

    def _serve(self, group: list[_Request]) -> None:
        """One call of ``predict`` for the group's live requests; each its own answers."""
        live = [r for r in group if r.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            answers = self._call(live)
        except Exception as exc:  # noqa: BLE001 -- the error goes to the requests, not the thread
            if len(live) == 1:
                live[0].future.set_exception(exc)
                return
            for request in live:                 # a shared call failed: each alone
                try:
                    request.future.set_result(self._call([request]))
                except Exception as alone:  # noqa: BLE001
                    request.future.set_exception(alone)
            return
        start = 0
        for request in live:
            request.future.set_result(answers[start:start + len(request.texts)])
            start += len(request.texts)

    def _call(self, requests: list[_Request]) -> list[dict]:
        texts = [t for r in requests for t in r.texts]
        pairs = [p for r in requests for p in r.pairs]
        self.calls += 1
        answers = self.predict(texts, pairs, **dict(requests[0].options))
        if len(answers) != len(texts):
            raise RuntimeError(f"predict gave {len(answers)} answers for {len(texts)} rows")
        return answers


def _groups(requests: list[_Request]) -> list[list[_Request]]:
    """Requests grouped by options, groups in the order of their first request."""
    groups: dict[tuple, list[_Request]] = {}
    for request in requests:
        groups.setdefault(request.options, []).append(request)
    return list(groups.values())
