"""The one rule for names a user gives (experts, packs, sub-folders) and the one check that a path
stays inside its root.

A name is never a path: 1–64 characters from letters, digits and ``._-``, starting with a letter or
a digit (so never ``.``, ``..``, a hidden file, an option-like ``-x`` or anything with a separator).
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import NameRuleError

NAME_RULE = "1–64 characters: letters, digits, '.', '_' or '-', starting with a letter or a digit"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def is_valid_name(name: object) -> bool:
    """Whether ``name`` is a string that follows ``NAME_RULE``."""
    return isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None


def check_name(name: object, what: str = "name") -> str:
    """``name`` itself when it follows ``NAME_RULE``; else ``NameRuleError`` naming ``what``."""
    if not is_valid_name(name):
        raise NameRuleError(f"{what} {name!r} is not a valid name ({NAME_RULE})")
    return name


def inside(root: str | Path, *parts: str | Path) -> Path:
    """``root/parts...`` resolved (symlinks followed); ``NameRuleError`` if it leaves ``root`` or
    cannot be resolved (a NUL byte, a symbolic link loop)."""
    try:
        base = Path(root).resolve()
        path = base.joinpath(*parts).resolve()
    except (OSError, ValueError, RuntimeError) as exc:
        raise NameRuleError(f"{Path(*parts)!s:.200} cannot be resolved inside {root} ({exc})") from None
    if path != base and base not in path.parents:
        raise NameRuleError(f"{Path(*parts)} leaves {base}")
    return path
