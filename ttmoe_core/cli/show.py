"""How commands print what they share: stage progress lines and a routing confusion table."""

from __future__ import annotations

import sys
from collections.abc import Callable


def stage_printer() -> Callable[[str, int, int], None]:
    """A ``progress(stage, done, total)`` callback printing about ten lines a stage on stderr."""
    last = {}

    def show(stage: str, done: int, total: int) -> None:
        if last.get(stage) != done and (done == total or done % max(1, total // 10) == 0):
            print(f"  {stage}: {done}/{total}", file=sys.stderr)
        last[stage] = done
    return show


def confusion_text(names: list[str], confusion: list[list[int]]) -> str:
    """A routing confusion matrix as a text table (rows: true task, columns: routed to)."""
    width = max(6, *(len(n) for n in names)) + 1
    lines = ["true \\ routed".ljust(width + 8) + "".join(n.rjust(width) for n in names)]
    for name, row in zip(names, confusion):
        lines.append(name.ljust(width + 8) + "".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)
