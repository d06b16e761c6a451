"""The training loop shared by every expert and the AdapterFusion baseline: AdamW, a warm-up +
decay learning-rate schedule, early stopping on a hold-out of the training rows (the best
weights are kept), and checkpoints from which a killed run resumes to the same result.

    history = fit(model, batch_loss, num_rows, config, generator,
                  holdout=HoldOut(evaluate, "accuracy"),          # optional early stopping
                  checkpoint=checkpoint.Checkpointer(folder, every=200, resume=True))

What a run depends on, and so what a checkpoint holds (``checkpoint.py`` writes it): the
trainable tensors, AdamW's moments, the schedule's position, the generator's state (it draws the
batch order and dropout masks), the current epoch's batches and how many were used, the early
stopping state with the best weights so far, and the history. Nothing else draws randomness.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch import nn

from ..base import batching
from ..errors import CheckpointError, TrainingError

if TYPE_CHECKING:
    from .checkpoint import Checkpointer

SCHEDULES = ("linear", "cosine", "constant")
HOLDOUT_STREAM = 0x401D   # second seed word of the hold-out split: independent of other draws


@dataclass
class Progress:
    step: int
    total_steps: int
    loss: float
    examples_per_s: float
    elapsed_s: float
    holdout: dict | None = None      # hold-out metrics when this step was evaluated
    best_step: int | None = None     # step of the best hold-out score so far
    final: bool = False              # the last step of the run (the cap, or stopped early)


class LoopConfig(Protocol):
    """The settings :func:`fit` reads (``ExpertConfig`` resolved, ``baselines.FusionConfig``);
    optional ones (read with defaults): ``schedule`` ("linear"), ``eval_every`` (0: at the end
    only), ``patience`` (0: never stop early), ``min_steps`` (no early stop before it)."""
    steps: int
    batch_size: int
    lr: float
    warmup_fraction: float
    weight_decay: float


@dataclass(frozen=True)
class HoldOut:
    """Early stopping: ``evaluate()`` gives metrics on held-out training rows (the model in eval
    mode), ``metric`` is the key to maximise (NaN counts as worst)."""
    evaluate: Callable[[], dict[str, float]]
    metric: str


def holdout_split(num_rows: int, fraction: float, limit: int | None,
                  seed: int) -> tuple[list[int], list[int]]:
    """(training rows, hold-out rows), both sorted: ``round(fraction × num_rows)`` rows (at most
    ``limit``; none when that is 0 or would leave no training row) drawn with ``seed``."""
    size = int(round(fraction * num_rows))
    size = min(size, limit) if limit is not None else size
    if size <= 0 or size >= num_rows:
        return list(range(num_rows)), []
    order = np.random.default_rng([int(seed) % (1 << 63), HOLDOUT_STREAM]).permutation(num_rows)
    return sorted(order[size:].tolist()), sorted(order[:size].tolist())


def setting_problems(cfg) -> list[str]:
    """What is wrong with the settings every run of :func:`fit` reads, and its rows' length
    (``ExpertConfig``, ``fullft.FullConfig``): one message per bad value, empty when none is."""
    checks = [(cfg.lr > 0 and math.isfinite(cfg.lr), f"lr must be > 0, got {cfg.lr}"),
              (cfg.steps >= 1, f"steps must be >= 1, got {cfg.steps}"),
              (cfg.batch_size >= 1, f"batch size must be >= 1, got {cfg.batch_size}"),
              (cfg.max_length >= 8, f"max length must be >= 8, got {cfg.max_length}"),
              (0 <= cfg.warmup_fraction < 1, "warmup fraction must be in [0, 1)"),
              (0 <= cfg.holdout_fraction < 1, "hold-out fraction must be in [0, 1)"),
              (cfg.holdout_limit is None or cfg.holdout_limit >= 1,
               f"hold-out limit must be >= 1, got {cfg.holdout_limit}"),
              (cfg.eval_every >= 0, f"eval every must be >= 0, got {cfg.eval_every}"),
              (cfg.patience >= 0, f"patience must be >= 0, got {cfg.patience}"),
              (cfg.min_steps >= 0, f"min steps must be >= 0, got {cfg.min_steps}"),
              (cfg.schedule in SCHEDULES,
               f"schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}"),
              (cfg.checkpoint_every >= 0, f"checkpoint every must be >= 0, got {cfg.checkpoint_every}")]
    return [message for ok, message in checks if not ok]


def lr_factor(schedule: str, step: int, steps: int, warmup: int) -> float:
    """Multiplier of the peak learning rate after ``step`` optimizer steps (0-based): linear
    warm-up over ``warmup`` steps, then "linear" decay to 0 at ``steps``, "cosine" decay to 0 at
    ``steps``, or "constant"."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    done = min(1.0, (step - warmup) / max(1, steps - warmup))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * done))
    if schedule == "linear":
        return max(0.0, (steps - step) / max(1, steps - warmup))
    raise ValueError(f"unknown schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")


def task_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    """Mean loss of a batch: MSE on logits [B, 1] for regression, else cross-entropy on [B, C]."""
    if regression:
        return nn.functional.mse_loss(logits.squeeze(-1), labels.float())
    return nn.functional.cross_entropy(logits, labels.long())


def _score(metrics: dict, key: str) -> float:
    value = float(metrics.get(key, float("nan")))
    return value if math.isfinite(value) else -math.inf


class _Loop:
    """The mutable state of one run (what a checkpoint saves besides tensors)."""

    def __init__(self) -> None:
        self.step = 0                 # optimizer steps done
        self.history: list[dict] = []
        self.running: list[float] = []  # losses since the last history entry
        self.seen = 0                 # examples trained on
        self.elapsed = 0.0            # seconds of training before this process
        self.cpu = 0.0                # CPU seconds (this process's, time.process_time) before it
        self.best_score = -math.inf
        self.best_step: int | None = None
        self.bad_evals = 0            # evaluations since the best one
        self.stopped_early = False

    def to_dict(self) -> dict:
        best = None if self.best_score == -math.inf else self.best_score
        return {"step": self.step, "history": self.history, "running": self.running,
                "seen": self.seen, "elapsed": self.elapsed, "cpu": self.cpu, "best_score": best,
                "best_step": self.best_step, "bad_evals": self.bad_evals,
                "stopped_early": self.stopped_early}

    def load(self, data: dict) -> None:
        self.step, self.history = int(data["step"]), list(data["history"])
        self.running, self.seen = [float(x) for x in data["running"]], int(data["seen"])
        self.elapsed = float(data["elapsed"])
        self.cpu = float(data.get("cpu", 0.0))       # checkpoints written before it: unknown, 0
        self.best_score = -math.inf if data["best_score"] is None else float(data["best_score"])
        self.best_step, self.bad_evals = data["best_step"], int(data["bad_evals"])
        self.stopped_early = bool(data["stopped_early"])


def fit(model: nn.Module, batch_loss: Callable[[list[int]], torch.Tensor], num_rows: int,
        config: LoopConfig, generator: torch.Generator, *,
        progress: Callable[[Progress], None] | None = None,
        should_stop: Callable[[], bool] | None = None, log_every: int = 5,
        prefix: str = "", nan_hint: str = "", lengths: Sequence[int] | None = None,
        holdout: HoldOut | None = None, checkpoint: "Checkpointer | None" = None) -> list[dict]:
    """The training loop of every expert and of the AdapterFusion baseline; returns its history.

    ``batch_loss(rows)``: the mean loss (a scalar tensor) of the rows at these indices, drawn
    from 0..num_rows-1 in batches of ``config.batch_size``, reshuffled by ``generator`` every
    epoch (the model's own randomness, e.g. dropout, should come from the same generator); with
    ``lengths`` (tokens of each row) the batches are ``batching.bucketed_epoch`` instead.
    At most ``config.steps`` AdamW steps on the parameters that require grad, learning rate
    per ``lr_factor`` (``config.schedule``, warm-up over ``warmup_fraction`` of the steps).

    With ``holdout``: evaluated every ``config.eval_every`` steps and at the last one; after
    ``config.patience`` evaluations in a row without a better score training stops (not before
    ``config.min_steps``), and the model ends with the weights of its best evaluation. With ``checkpoint``: the run's state is
    saved every ``checkpoint.every`` steps and when cancelled; with ``checkpoint.resume`` a saved
    state is loaded first, so the run continues exactly where it was (same batches, same result).

    The model trains with its ``encoder`` (the frozen base) in eval mode, so only its own layers
    use dropout, and is left in eval mode. History: [{step, loss (mean since the last entry),
    examples_per_s, elapsed_s, cpu_s[, holdout, best]}] every ``log_every`` steps, at each evaluation and at the
    last step, each also sent to ``progress``. Raises TrainingError when ``should_stop()`` says
    so or the loss is not finite (messages start with ``prefix``; ``nan_hint`` is appended to the
    non-finite one).
    """
    schedule_name = getattr(config, "schedule", None) or "linear"
    eval_every = int(getattr(config, "eval_every", 0) or 0)
    patience = int(getattr(config, "patience", 0) or 0)
    min_steps = int(getattr(config, "min_steps", 0) or 0)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    head_lr = getattr(config, "head_lr", None)
    groups = ([{"params": [p for _, p in named]}] if head_lr is None else   # one group, as before
              [{"params": [p for n, p in named if not n.startswith("head.")]},
               {"params": [p for n, p in named if n.startswith("head.")], "lr": head_lr}])
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr,
                                  weight_decay=config.weight_decay)
    steps, warmup = config.steps, max(1, int(config.warmup_fraction * config.steps))
    lr_factor(schedule_name, 0, steps, warmup)                  # unknown name: ValueError now
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(schedule_name, s, steps, warmup))
    epoch = ((lambda: batching.shuffled_epoch(num_rows, config.batch_size, generator))
             if lengths is None else
             (lambda: batching.bucketed_epoch(lengths, config.batch_size, generator)))
    batches = batching.BatchStream(epoch)
    loop = _Loop()
    best: dict[str, torch.Tensor] | None = None                # weights of the best evaluation

    def state() -> dict:
        return {"loop": loop.to_dict(), "batches": batches.state_dict(),
                "generator": generator.get_state(), "optimizer": optimizer.state_dict(),
                "schedule": {k: v for k, v in schedule.state_dict().items() if k != "lr_lambdas"},
                "params": {n: p for n, p in named}, "best": best}

    if checkpoint is not None and checkpoint.resume:
        saved = checkpoint.load()
        if saved is not None:
            have = {n: list(t.shape) for n, t in saved["params"].items()}
            if have != {n: list(p.shape) for n, p in named}:
                raise CheckpointError(f"{prefix}the checkpoint's tensors do not fit this model")
            rows = [r for b in saved["batches"]["epoch"] for r in b]
            if saved["loop"]["step"] > steps or (rows and max(rows) >= num_rows) \
                    or saved["batches"]["used"] > len(saved["batches"]["epoch"]):
                raise CheckpointError(f"{prefix}the checkpoint is past this run's {steps} steps "
                                      f"or {num_rows} rows: remove it to start again")
            with torch.no_grad():
                for n, p in named:
                    p.copy_(saved["params"][n])
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict({**saved["schedule"], "lr_lambdas": [None]})
            generator.set_state(saved["generator"])
            batches.load_state_dict(saved["batches"])
            loop.load(saved["loop"])
            best = saved["best"]

    clock = [time.perf_counter(), time.process_time()]       # wall, CPU since the last save

    def save() -> None:
        now, cpu = time.perf_counter(), time.process_time()
        loop.elapsed, loop.cpu, clock[:] = loop.elapsed + now - clock[0], loop.cpu + cpu - clock[1], [now, cpu]
        checkpoint.save(state())

    def evaluate_now() -> dict:
        nonlocal best
        metrics = holdout.evaluate()
        model.train()
        model.encoder.eval()
        score = _score(metrics, holdout.metric)
        improved = score > loop.best_score or loop.best_step is None
        if improved:
            loop.best_score, loop.best_step, loop.bad_evals = score, loop.step, 0
            best = {n: p.detach().clone() for n, p in named}
        else:
            loop.bad_evals += 1
        return {"holdout": {k: float(v) for k, v in metrics.items()}, "best": improved}

    model.train()
    model.encoder.eval()
    clock[:] = [time.perf_counter(), time.process_time()]
    while loop.step < steps and not loop.stopped_early:
        if should_stop is not None and should_stop():
            if checkpoint is not None:
                save()
            raise TrainingError(f"{prefix}training cancelled at step {loop.step} of {steps}")
        rows = next(batches)
        loss = batch_loss(rows)
        if not torch.isfinite(loss):
            raise TrainingError(f"{prefix}loss became {loss.item()} at step {loop.step + 1}"
                                f"{nan_hint}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loop.step += 1
        loop.seen += len(rows)
        loop.running.append(loss.item())
        step = loop.step
        evaluated = {}
        if holdout is not None and ((eval_every and step % eval_every == 0) or step == steps):
            evaluated = evaluate_now()
            loop.stopped_early = (bool(patience) and loop.bad_evals >= patience
                                  and min_steps <= step < steps)
        if step % log_every == 0 or step == steps or evaluated or loop.stopped_early:
            elapsed = loop.elapsed + time.perf_counter() - clock[0]
            event = Progress(step, steps, float(np.mean(loop.running)), loop.seen / elapsed,
                             elapsed, evaluated.get("holdout"), loop.best_step,
                             step == steps or loop.stopped_early)
            loop.history.append({"step": step, "loss": event.loss,
                                 "examples_per_s": event.examples_per_s,
                                 "elapsed_s": round(elapsed, 2),
                                 "cpu_s": round(loop.cpu + time.process_time() - clock[1], 2), **evaluated})
            loop.running = []
            if progress is not None:
                progress(event)
        if checkpoint is not None and checkpoint.every and step % checkpoint.every == 0:
            save()
    if best is not None:                                   # end with the best evaluation's weights
        with torch.no_grad():
            for n, p in named:
                p.copy_(best[n])
    model.eval()
    return loop.history


def summary(history: Sequence[dict]) -> dict[str, float]:
    """Flat numbers for an expert's metrics: steps run; with hold-out evaluations, their count,
    the best one's step and its metrics as ``holdout_<key>``."""
    evals = [h for h in history if "holdout" in h]
    out = {"steps_run": int(history[-1]["step"]) if history else 0}
    if evals:
        best = [h for h in evals if h.get("best")][-1]
        out.update(best_step=int(best["step"]), evaluations=len(evals),
                   **{f"holdout_{k}": float(v) for k, v in best["holdout"].items()})
    return out
