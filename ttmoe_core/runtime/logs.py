"""Logging helpers: silence one known, misleading log line while a block runs."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def without_log_line(logger: str, text: str) -> Iterator[None]:
    """Drop the records of ``logger`` that contain ``text`` while the block runs (others pass)."""
    def keep(record: logging.LogRecord) -> bool:
        return text not in record.getMessage()

    target = logging.getLogger(logger)
    target.addFilter(keep)
    try:
        yield
    finally:
        target.removeFilter(keep)
