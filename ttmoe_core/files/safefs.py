"""Atomic changes of folders and files, bounded reads, and recovery after a killed process.

A folder is written as a hidden sibling ``.<name>.tmp-<pid>-<token>`` and published in one step:
a new folder by ``rename``; over an existing one by Linux ``renameat2(RENAME_EXCHANGE)``, which
swaps the two paths at once (the old copy, now at the temporary path, is then removed). Where the
OS or file system cannot swap, the old folder is first renamed to ``.<name>.old-<pid>-<token>``
(a backup that names what it belongs to: the journal) and the new one renamed into place; a kill
between the two renames leaves the backup, which ``recover`` puts back. So a reader finds the old
or the new folder, never half of one, and never neither (with the fallback: once ``recover`` ran).

``recover(folder)`` finishes what dead processes left there: temporary folders and files are
removed; a backup is put back where its folder is missing, else removed. Entries of live
processes (this one too: another thread may be saving) are left alone; liveness is judged by the
pid in the entry's name, so writers sharing a folder must share one machine and pid namespace.
"""
from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

from ..errors import StoreError

LEGACY_AGE_S = 3600          # leftovers of older versions (no pid in the name): removed after 1 h
_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-(?:(?P<pid>\d+)-[0-9a-f]+|(?P<legacy>\w+))")


# ----------------------------------------------------------------------------- one-step swap

def _load_renameat2():
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):          # not glibc >= 2.28 (macOS, musl, Windows)
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _load_renameat2()
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def exchange(a: str | Path, b: str | Path) -> bool:
    """Swap the two existing paths ``a`` and ``b`` in one step; False where the OS or the file
    system cannot (nothing changed then)."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def hidden_sibling(path: Path, kind: str) -> Path:
    """``.<name>.<kind>-<pid>-<token>`` next to ``path`` (kind: "tmp" or "old")."""
    return path.parent / f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def replace_dir(src: str | Path, dest: str | Path) -> None:
    """Publish the finished folder ``src`` at ``dest`` (replacing it) in one rename or swap."""
    src, dest = Path(src), Path(dest)
    fsync_tree(src)
    if not os.path.lexists(dest):
        os.rename(src, dest)
    elif exchange(src, dest):                  # src now holds the old folder
        remove(src)
    else:
        backup = hidden_sibling(dest, "old")
        os.rename(dest, backup)
        os.rename(src, dest)
        remove(backup)
    _fsync_dir(dest.parent)


@contextmanager
def atomic_dir(path: str | Path, template: str | Path | None = None) -> Iterator[Path]:
    """Yield a temporary folder (a hard-linked copy of ``template`` when given and present); on
    success it replaces ``path`` in one step, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path.parent, path.name)
    tmp = hidden_sibling(path, "tmp")
    tmp.mkdir()
    try:
        if template is not None and Path(template).is_dir():
            link_tree(Path(template), tmp)
        yield tmp
        replace_dir(tmp, path)
    except BaseException:
        remove(tmp)
        raise


def link_tree(src: Path, dest: Path) -> None:
    """Fill the folder ``dest`` with hard links to the files of ``src`` (copies where links are
    not possible), skipping hidden entries; StoreError on a symbolic link or a special file.
    A linked file is shared with ``src``: replace it (new file + rename, or unlink first), never
    write into it."""
    for entry in os.scandir(src):
        if entry.name.startswith("."):
            continue
        target = dest / entry.name
        if entry.is_symlink():
            raise StoreError(f"{entry.path} is a symbolic link: packs and experts hold only "
                             "real files and folders")
        if entry.is_dir(follow_symlinks=False):
            target.mkdir()
            link_tree(Path(entry.path), target)
        elif entry.is_file(follow_symlinks=False):
            try:
                os.link(entry.path, target)
            except OSError:
                shutil.copy2(entry.path, target)
        else:
            raise StoreError(f"{entry.path} is not a regular file or folder")


def remove(path: Path) -> None:
    """Remove a file, a link or a whole folder (links inside are not followed); no error if gone."""
    with suppress(FileNotFoundError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def write_json(path: Path, data: Mapping) -> None:
    """Write strict JSON atomically (temporary file, flushed to disk, renamed into place):
    StoreError, nothing written, for a NaN or infinite number (JSON has none; a reader would
    refuse the file)."""
    try:
        text = json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n"
    except ValueError as exc:
        raise StoreError(f"{path.name}: not written: {exc} (a NaN or infinite number)") from None
    tmp = hidden_sibling(path, "tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove(tmp)
        raise


def nan_to_null(data: object) -> object:
    """``data`` (JSON-like) with every NaN or infinite float replaced by None: how a metric that
    is undefined (the correlation of a constant) is stored in strict JSON."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, Mapping):
        return {k: nan_to_null(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [nan_to_null(v) for v in data]
    return data


def fsync_tree(folder: Path) -> None:
    """Flush every file and folder under ``folder`` to disk (before it is published)."""
    for parent, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(parent, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(parent))


def _fsync_dir(folder: Path) -> None:
    with suppress(OSError):                    # not every OS or file system syncs folders
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ----------------------------------------------------------------------------- bounded reads

def open_regular(path: Path, what: str) -> int:
    """A read-only descriptor of the regular file ``path``: a symbolic link is refused, and a
    FIFO or device is refused without blocking."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise StoreError(f"{what}: {path} is missing") from None
    except OSError as exc:
        reason = "a symbolic link" if os.path.islink(path) else f"unreadable ({exc.strerror})"
        raise StoreError(f"{what}: {path} is {reason}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StoreError(f"{what}: {path} is not a regular file")
    return fd


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The bytes of the regular file ``path``; StoreError when missing, a link, or over ``limit``."""
    fd = open_regular(path, what)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise StoreError(f"{what}: {path} has {size:,} bytes, more than the {limit:,} allowed")
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read(limit + 1)[:limit]
    except OSError as exc:
        raise StoreError(f"{what}: {path} is unreadable ({exc.strerror})") from None
    finally:
        os.close(fd)


MAX_JSON_DEPTH = 64          # nesting levels any JSON the engine reads may have


def parse_json(raw: bytes | str, what: str, max_depth: int = MAX_JSON_DEPTH) -> object:
    """``raw`` parsed as JSON; StoreError (never RecursionError) when it is not JSON, not UTF-8,
    or nests deeper than ``max_depth`` (checked on the text before parsing, so 100k levels cost
    one pass). NaN and Infinity are refused: strict JSON has no such numbers."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise StoreError(f"{what} is not UTF-8 text") from None
    if json_depth(raw) > max_depth:
        raise StoreError(f"{what} nests more than {max_depth} levels deep")
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise StoreError(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (ValueError, RecursionError) as exc:
        raise StoreError(f"{what} is not valid JSON ({exc})") from None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


_JSON_MARKS = re.compile(r'[\[\]{}"\\]')


def json_depth(text: str) -> int:
    """The deepest nesting of brackets in the JSON ``text`` (brackets inside strings ignored);
    one pass over its brackets, quotes and backslashes only, constant memory."""
    depth = deepest = 0
    in_string = escaped = False
    last = -2
    for match in _JSON_MARKS.finditer(text):
        mark, at = match.group(), match.start()
        if escaped and at == last + 1:          # the character after a backslash
            escaped = False
            last = at
            continue
        escaped = False
        last = at
        if mark == "\\":
            escaped = in_string
        elif mark == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif mark in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


# ----------------------------------------------------------------------------- recovery

def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:                            # another user's process
        return True
    return True


def is_leftover(name: str) -> bool:
    """Whether ``name`` is that of a temporary entry or a backup made by this module."""
    return _LEFTOVER.fullmatch(name) is not None


def recover(folder: str | Path, name: str | None = None) -> list[str]:
    """Clean what killed saves left in ``folder`` (only those of ``name`` when given): temporary
    entries removed, backups put back or removed. Returns what was done; never raises."""
    done: list[str] = []
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(".")]
    except OSError:
        return done
    for entry in entries:
        match = _LEFTOVER.fullmatch(entry.name)
        if not match or (name is not None and match["name"] != name):
            continue
        if match["pid"] is not None:
            if _alive(int(match["pid"])):
                continue
        else:
            with suppress(OSError):
                if time.time() - entry.stat(follow_symlinks=False).st_mtime < LEGACY_AGE_S:
                    continue
        owner = Path(folder) / match["name"]
        try:
            if match["kind"] == "old" and not os.path.lexists(owner):
                os.rename(entry.path, owner)
                done.append(f"restored {owner} from {entry.name}")
            else:
                remove(Path(entry.path))
                done.append(f"removed {entry.path}")
        except OSError:
            continue
    return done
