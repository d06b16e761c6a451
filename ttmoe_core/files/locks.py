"""One writer at a time: a lock per folder the engine changes (an expert, a pack, a checkpoint),
held across processes and threads, so a read-modify-write (``pack.json``, a rename, a new
``--out``) never loses another writer's update.

The lock of a folder is a file named by the hash of the folder's resolved path in the machine's
temporary folder (``<tmp>/ttmoe-locks/<sha256>.lock``; ``filelock``: ``flock`` on Linux and macOS,
``LockFileEx`` on Windows), so workspaces, packs and experts hold nothing but their own files and
a read-only parent needs no write. It is taken before the folder is read and released after it is
published; re-entrant within a thread (a command that holds a pack's lock may call store
functions that take it again) and exclusive between threads and processes of one machine (as
``safefs.recover``'s pids). Lock files are left in place: removing one while another process
waits on it would let two writers in.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import StoreError

WAIT_S = 600.0               # how long a writer waits for another one before giving up


def lock_dir() -> Path:
    """The machine's folder of lock files (made writable for every user: they share workspaces)."""
    folder = Path(tempfile.gettempdir()) / "ttmoe-locks"
    if not folder.is_dir():
        folder.mkdir(exist_ok=True)
        with suppress(OSError):
            folder.chmod(0o1777)
    return folder


def lock_file(folder: str | Path) -> Path:
    """The lock file of ``folder`` (never inside it, so a folder swapped into place keeps its
    lock): one per resolved path, whichever spelling or link reaches it."""
    path = Path(folder).resolve()
    return lock_dir() / f"{hashlib.sha256(os.fsencode(path)).hexdigest()[:32]}.lock"


@contextmanager
def locked(*folders: str | Path, wait_s: float = WAIT_S) -> Iterator[None]:
    """Hold the locks of ``folders`` (taken in one sorted order, so two writers never deadlock);
    StoreError when another writer keeps one longer than ``wait_s`` seconds."""
    paths = sorted({(lock_file(folder), str(folder)) for folder in folders})
    with ExitStack() as stack:
        for path, folder in paths:
            lock = FileLock(path, is_singleton=True, thread_local=True, preserve_lock_file=True)
            try:
                stack.enter_context(lock.acquire(timeout=wait_s))
            except Timeout:
                raise StoreError(f"{folder} is being changed by another command (waited "
                                 f"{wait_s:g} s): try again when it has finished") from None
        yield


__all__ = ["WAIT_S", "lock_dir", "lock_file", "locked"]
