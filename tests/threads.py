"""One helper for concurrency tests: start callables together on threads, collect results.

Import explicitly: ``from tests.threads import run_together``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence


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
