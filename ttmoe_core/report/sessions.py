"""The sessions of one report run: when each start of a resumed run began and how long it ran.

A report at convergence outlives a working session. It is interrupted and continued with
``--resume`` from its work folder, and ``meta["seconds"]`` is the wall time of the last start
alone. So the work folder keeps ``sessions.json``: one entry per start, whose ``seconds`` is
brought up to date each time a training or an experiment finishes there. An interrupted start
therefore counts up to its last finished piece of work, not the minutes it lost (its unfinished
training's steps are kept in a checkpoint and counted by the start that finishes it), so the
total is a lower bound of the run's wall time.

Entry: ``{"started": ISO time, "seconds": float, "last_seen": ISO time, "jobs": int}``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .. import runinfo, store
from .budgets import ReportError

FILE = "sessions.json"


@dataclass
class SessionLog:
    """The work folder's ``sessions.json``; ``begin`` adds this start, ``update`` its seconds."""
    path: Path
    entries: list[dict] = field(default_factory=list)

    @classmethod
    def open(cls, work_dir: Path, resume: bool) -> SessionLog:
        """The earlier starts of a resumed run (none without ``resume``: a fresh run restarts
        the log); ReportError naming the file when it is not a session log."""
        path = Path(work_dir) / FILE
        if not resume or not path.is_file():
            return cls(path)
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ReportError(f"cannot read {path} ({exc}): delete it to resume without the "
                              "earlier sessions' times") from exc
        if not isinstance(entries, list) or not all(_valid(e) for e in entries):
            raise ReportError(f"{path} is not a report's session log: delete it to resume without "
                              "the earlier sessions' times")
        return cls(path, entries)

    def begin(self, started: str, jobs: int) -> None:
        """Add this start (0 s so far) and write the log."""
        self.entries.append({"started": started, "seconds": 0.0, "last_seen": started, "jobs": jobs})
        store.write_json(self.path, self.entries)

    def update(self, seconds: float) -> None:
        """This start has run ``seconds`` up to a finished piece of work: write it down."""
        self.entries[-1].update(seconds=round(seconds, 1), last_seen=runinfo.now())
        store.write_json(self.path, self.entries)


def total_seconds(entries: list[dict]) -> float:
    """Wall seconds over every start (each counted to its last finished piece of work)."""
    return round(sum(e["seconds"] for e in entries), 1)


def _valid(entry: object) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("started"), str)
            and isinstance(entry.get("seconds"), (int, float)) and not isinstance(entry["seconds"], bool)
            and math.isfinite(entry["seconds"]) and entry["seconds"] >= 0)
