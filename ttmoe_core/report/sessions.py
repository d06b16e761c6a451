"""The starts of one report run: when each start of a resumed run began and how long it ran.

A report at convergence outlives a working session. It is interrupted and continued with
``--resume`` from its work folder, and ``meta["seconds"]`` is the wall time of the last start
alone. So the work folder keeps ``sessions.json``, one entry per start. Its ``seconds`` is written
whenever a training or an experiment is saved, and at most every ``BEAT_S`` seconds while work
goes on (progress events, and the polls of trainings in child processes). An interrupted start
therefore counts up to its last write; the at most ``BEAT_S`` seconds after it are counted by no
start, so the total is a lower bound of the run's wall time, short by at most ``BEAT_S`` a start.

Entry: ``{"started": ISO time, "seconds": float, "last_seen": ISO time, "jobs": int, "cpu": str}``
(``cpu``: the host's CPU model; a new session may land on another host); entries filled in from an
older run's log also carry ``"from_log": true``, and entries written before 2026-12-02 have no ``cpu``.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import store
from ..runtime import runinfo
from .plan import ReportError

FILE = "sessions.json"
BEAT_S = 60.0          # write a running start's seconds at most this often between saves
RULE = "each start counted to its last write, at most a minute before it ended"


@dataclass
class SessionLog:
    """The work folder's ``sessions.json``: ``begin`` adds this start, ``mark`` its seconds.
    Safe to ``mark`` from several threads (trainings side by side poll from theirs)."""
    path: Path
    entries: list[dict] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _written: float = field(default=0.0, repr=False)     # time.monotonic() of the last write

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
                              "earlier starts' times") from exc
        if not isinstance(entries, list) or not all(_valid(e) for e in entries):
            raise ReportError(f"{path} is not a report's session log: delete it to resume without "
                              "the earlier starts' times")
        return cls(path, entries)

    def begin(self, started: str, jobs: int, cpu: str | None = None) -> None:
        """Add this start (0 s so far; ``cpu`` None: this host's CPU model) and write the log."""
        with self._lock:
            self.entries.append({"started": started, "seconds": 0.0, "last_seen": started, "jobs": jobs,
                                 "cpu": runinfo.cpu_name() if cpu is None else cpu})
            self._write()

    def mark(self, seconds: float, force: bool = True) -> None:
        """This start has run ``seconds``: write it down (``force=False``: only if the last write
        is ``BEAT_S`` old)."""
        with self._lock:
            if not force and time.monotonic() - self._written < BEAT_S:
                return
            self.entries[-1].update(seconds=round(seconds, 1), last_seen=runinfo.now())
            self._write()

    def _write(self) -> None:
        store.write_json(self.path, self.entries)
        self._written = time.monotonic()


def total_seconds(entries: list[dict]) -> float:
    """Wall seconds over every start (``RULE``)."""
    return round(sum(e["seconds"] for e in entries), 1)


def rule(entries: list[dict]) -> str:
    """How the starts' seconds were counted: ``RULE``, and how many came from a log instead."""
    from_log = sum(bool(e.get("from_log")) for e in entries)
    if not from_log:
        return RULE
    return (f"{RULE}; {from_log} earlier start(s) filled in from the run's log count only to their "
            "last finished training")


def run_time(meta: dict) -> tuple[float, int]:
    """(wall seconds, starts) of a report's ``meta``: over every start of a resumed run, else the
    one run's (older reports have no ``sessions``)."""
    starts = meta.get("sessions") or []
    if len(starts) > 1:
        return meta["seconds_all_sessions"], len(starts)
    return meta["seconds"], 1


def hosts(entries: list[dict]) -> str:
    """The CPU models the starts ran on, each with its starts (1-based): ``AMD EPYC (3, 4)``;
    ``unknown (1, 2)`` for entries written before the log kept it."""
    by_cpu: dict[str, list[int]] = {}
    for i, entry in enumerate(entries, 1):
        by_cpu.setdefault(str(entry.get("cpu") or "unknown"), []).append(i)
    return "; ".join(f"{cpu} ({', '.join(map(str, starts))})" for cpu, starts in by_cpu.items())


def duration(seconds: float) -> str:
    """``42 s``, ``12.5 min`` or ``3.2 h``."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def _valid(entry: object) -> bool:
    if not (isinstance(entry, dict) and isinstance(entry.get("started"), str)):
        return False
    seconds = entry.get("seconds")
    try:
        return (isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
                and math.isfinite(seconds) and seconds >= 0)
    except OverflowError:                        # an integer too large for a float
        return False
