"""Run tracking for training jobs, off by default: one small interface (``tracked``) over trackio
(local runs in a SQLite file, ``trackio show`` opens them; no account) or TensorBoard
(``tensorboard --logdir``). A tracked run logs every progress event's numbers (loss, throughput,
hold-out scores) at its step, and the final metrics at the end.

Which tracker: the CLI's ``--track``, else ``$TTMOE_TRACK`` (the app reads only that); none set:
nothing is tracked and no tracker is imported.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError

TRACKERS = ("trackio", "tensorboard")
TRACK_ENV = "TTMOE_TRACK"            # the tracker when no flag says one (unset: none)
TRACK_DIR_ENV = "TTMOE_TRACK_DIR"    # TensorBoard's log folder (default: runs/tensorboard)
PROJECT = "ttmoe"                    # the trackers' project of every run


class Run(Protocol):
    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def finish(self) -> None: ...


class _Trackio:
    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        # optional: the track extra
        import trackio

        self._run = trackio.init(project=PROJECT, name=name, config=dict(config))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self._run.log(dict(metrics), step=step)

    def finish(self) -> None:
        self._run.finish()


class _TensorBoard:
    def __init__(self, name: str, config: Mapping[str, Any], log_dir: Path) -> None:
        # optional: the tensorboard extra
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(log_dir / PROJECT / name))
        self._writer.add_text("config", f"```\n{json.dumps(dict(config), indent=1, default=str)}\n```")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, step)

    def finish(self) -> None:
        self._writer.close()


def default_tracker() -> str | None:
    """``$TTMOE_TRACK`` (None when unset or empty)."""
    return os.environ.get(TRACK_ENV) or None


def open_run(tracker: str | None, name: str, config: Mapping[str, Any],
             log_dir: str | Path | None = None) -> Run | None:
    """A run named ``name`` with settings ``config`` in ``tracker`` (None: no run). ConfigError
    for an unknown tracker or one whose package is not installed."""
    if tracker is None:
        return None
    if tracker not in TRACKERS:
        raise ConfigError(f"unknown tracker {tracker!r}: use one of {', '.join(TRACKERS)}")
    try:
        if tracker == "trackio":
            return _Trackio(name, config)
        folder = Path(log_dir or os.environ.get(TRACK_DIR_ENV) or "runs/tensorboard")
        return _TensorBoard(name, config, folder)
    except ImportError as exc:
        extra = "track" if tracker == "trackio" else "tensorboard"
        raise ConfigError(f"tracking with {tracker} needs its package: pip install -e "
                          f"'.[{extra}]' ({exc})") from None


def event_metrics(event: Any) -> dict[str, float]:
    """The numbers of a training progress event (``experts.Progress``): loss, examples/s and,
    when it was evaluated, its hold-out scores as ``holdout/<metric>``."""
    numbers = {"loss": event.loss, "examples_per_s": event.examples_per_s}
    numbers.update({f"holdout/{k}": v for k, v in (event.holdout or {}).items()
                    if isinstance(v, int | float) and not isinstance(v, bool)})
    return {k: float(v) for k, v in numbers.items()}


@dataclass
class Tracking:
    """What a tracked block hands out: the progress callback to pass to training, and ``end``
    for the final metrics."""
    progress: Callable[[Any], None]
    run: Run | None
    last_step: int = 0

    def end(self, metrics: Mapping[str, Any]) -> None:
        """Log the numeric final ``metrics`` as ``final/<name>`` at the last step."""
        if self.run is not None:
            self.run.log({f"final/{k}": float(v) for k, v in metrics.items()
                          if isinstance(v, int | float) and not isinstance(v, bool)},
                         self.last_step)


@contextmanager
def tracked(tracker: str | None, name: str, config: Mapping[str, Any],
            progress: Callable[[Any], None] | None = None,
            log_dir: str | Path | None = None) -> Iterator[Tracking]:
    """``progress`` that also logs each event to a ``tracker`` run (None: ``progress`` alone,
    nothing tracked); the run finishes when the block ends, normally or not."""
    run = open_run(tracker, name, config, log_dir)
    state = Tracking(progress=lambda event: None, run=run)

    def both(event: Any) -> None:
        if run is not None:
            run.log(event_metrics(event), event.step)
            state.last_step = event.step
        if progress is not None:
            progress(event)

    state.progress = both
    try:
        yield state
    finally:
        if run is not None:
            run.finish()
