"""Helpers for concurrency tests: start callables together on threads and collect their
results; hold a folder's lock on another thread for a block.

Import explicitly: ``from tests.threads import held_elsewhere, run_together``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ttmoe_core.files import locks


def run_together(calls: Sequence[Callable[[], object]], timeout: float = 120) -> list:
    """Run every call on its own thread, released at once by a barrier; their results in order.

    Raises AssertionError listing the exceptions when any call failed or did not finish."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)
    errors: list[BaseException] = []

    def work(slot: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[slot] = calls[slot]()
        except Exception as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish"
    assert not errors, errors
    return results


@contextlib.contextmanager
def held_elsewhere(folder: str | Path) -> Iterator[None]:
    """``locks.locked(folder)`` held by another thread (another command, another session's job)
    for the duration of the block."""
    held, release = threading.Event(), threading.Event()

    def other() -> None:
        with locks.locked(folder):
            held.set()
            release.wait(60)

    thread = threading.Thread(target=other)
    thread.start()
    held.wait(10)
    try:
        yield
    finally:
        release.set()
        thread.join()
