"""The cells of the report's tables: every number is ``FORMATS[kind](value)`` of a value stored in
the results (``fmt``), so each cell can be traced to ``results.json``; ``table`` lays rows out as
Markdown. Shared by the report (``markdown``), its decoder section and ``report --status``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

FORMATS: dict[str, Callable[[float], str]] = {
    "int": lambda v: f"{int(round(v)):,}",
    "f3": lambda v: f"{v:.3f}",
    "f2": lambda v: f"{v:.2f}",
    "f1": lambda v: f"{v:.1f}",
    "signed3": lambda v: f"{v:+.3f}",
    "signed1": lambda v: f"{v:+.1f}",
    "pct1": lambda v: f"{100 * v:.1f}%",
    "pct2": lambda v: f"{100 * v:.2f}%",
    "pct3": lambda v: f"{100 * v:.3f}%",
    "sci": lambda v: f"{v:.1e}",
    "ratio": lambda v: f"{v:.2f}×",
}
"""Every number in a table is ``FORMATS[kind](value)`` of a value stored in the results."""


def fmt(value, kind: str) -> str:
    """``FORMATS[kind](value)``; a dash for a missing or NaN value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return FORMATS[kind](value)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table of ``header`` and ``rows`` (cells already formatted)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def pm(mean, std, kind: str = "f3") -> str:
    """``mean ± std`` (just the mean when the std is unknown: one seed)."""
    return fmt(mean, kind) + ("" if std is None else f" ± {fmt(std, kind)}")


def yes_no(value: bool | None) -> str:
    return "–" if value is None else ("yes" if value else "no")
