"""glibc's mmap threshold, fixed for long-running servers.

glibc serves allocations above a threshold with ``mmap`` and returns them to the system when
freed, but by default it raises that threshold to the largest block freed so far (up to 32 MiB):
a server whose batches vary in shape then keeps freed tensor buffers in its heap and its resident
memory climbs for thousands of requests (``bench soak``: +81 MB over 10,000 requests, flat from
~6,000). Fixing the threshold at 128 KiB, as ``MALLOC_MMAP_THRESHOLD_=131072`` does, keeps it
flat (+7 MB). ``mallopt`` does it from inside the process, so ``serve`` needs no environment
variable; a ``MALLOC_MMAP_THRESHOLD_`` the user set wins. Not glibc (macOS, musl): nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3                  # glibc's mallopt parameter number
SERVER_MMAP_THRESHOLD = 128 * 1024     # bytes


def fix_mmap_threshold(threshold: int = SERVER_MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; True when it was set here (False: not
    Linux/glibc, or the environment sets ``MALLOC_MMAP_THRESHOLD_`` already)."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False
