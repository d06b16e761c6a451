"""What the five experiments share: the run's state and the small helpers of their results.

``Run`` holds the base model, the loaded data and the trained experts of one report run, so an
expert trained for one experiment serves the next. The helpers give every experiment the same
verdict words, the same mean, the same median timer and the same notes on how the setup
differs from the paper's.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import baselines, experts, runinfo, safefs, store, tasks
from .. import moe as moe_mod
from .. import router as router_mod
from ..backbone import Backbone
from .budgets import METHOD_LABELS, Progress, ReportBudget, ReportError
from .worker import train_in_fresh_process


@dataclass
class Run:
    """Shared state of one report run: the base model, loaded data, trained experts."""
    budget: ReportBudget
    backbone: Backbone
    data_dir: Path | None
    progress: Progress | None = None
    should_stop: Callable[[], bool] | None = None
    comparison_tasks: list[str] = field(default_factory=list)
    integration_tasks: list[str] = field(default_factory=list)
    trainings: dict[tuple[str, str, int], dict] = field(default_factory=dict)   # (task, method, seed) → record
    mixture_router: router_mod.Router | None = None     # set by the router experiment
    work_dir: Path | None = None     # finished experts (+ records) and training checkpoints
    resume: bool = False             # reuse work_dir's finished experts, continue its checkpoints
    _data: dict[tuple[str, str], tasks.TaskData] = field(default_factory=dict)
    _experts: dict[tuple[str, str, int], experts.Expert] = field(default_factory=dict)

    def tell(self, stage: str, done: int, total: int) -> None:
        """Report progress; ReportError when ``should_stop()`` says the run is cancelled."""
        if self.should_stop is not None and self.should_stop():
            raise ReportError(f"report cancelled during {stage}")
        if self.progress is not None:
            self.progress(stage, done, total)

    def step_progress(self, stage: str) -> Callable:
        """A training callback (events with ``step`` and ``total_steps``) that tells ``stage``."""
        return lambda event: self.tell(stage, event.step, event.total_steps)

    def data(self, task: str, split: str) -> tasks.TaskData:
        """The budget's rows of ``task``'s ``split`` (loaded once)."""
        key = (task, split)
        if key not in self._data:
            limit = self.budget.train_rows if split == "train" else self.budget.eval_rows
            self._data[key] = tasks.load_task(task, split, data_dir=self.data_dir, limit=limit,
                                              seed=self.budget.seed)
        return self._data[key]

    def expert(self, task: str, method: str, measure_memory: bool = False,
               seed: int | None = None) -> experts.Expert:
        """The trained expert of (task, method, seed) (None: the budget's ``seed``), trained on
        first use under the budget's stopping rule."""
        b = self.budget
        seed = b.seed if seed is None else seed
        key = (task, method, seed)
        if key in self._experts:
            return self._experts[key]
        config = experts.ExpertConfig(task=task, method=method, steps=b.steps, batch_size=b.batch_size,
                                      max_length=b.max_length, seed=seed, train_limit=b.train_rows,
                                      eval_limit=b.eval_rows, eval_every=b.eval_every,
                                      patience=b.patience, min_steps=b.min_steps, schedule=b.schedule,
                                      lr=b.lr_of(method))
        train, valid = self.data(task, "train"), self.data(task, "validation")
        stage = f"training {METHOD_LABELS[method]} expert on {task} (seed {seed})"
        part = None if self.work_dir is None else self.work_dir / "experts" / f"{task}-{method}-seed{seed}"
        if part is not None and self.resume:
            kept = self._finished(part, config)
            if kept is not None:                   # trained by an earlier, interrupted run
                self.trainings[key], self._experts[key] = kept[1], kept[0]
                return kept[0]
        self.tell(stage, 0, b.steps)
        started, t0 = runinfo.now(), time.perf_counter()
        measure_memory = measure_memory and b.measure_memory
        memory: dict = {"memory_measure": None, "peak_growth_mib": None}
        checkpoint = None if part is None else part.with_name(f"{part.name}.checkpoint")
        if checkpoint is not None and not config.checkpoint_every:
            config.checkpoint_every = 100
        if measure_memory and self.backbone.device.type == "cpu":
            out = train_in_fresh_process(config.to_dict(), self.backbone.info.name, train, valid,
                                         checkpoint_dir=checkpoint, resume=self.resume)
            expert = out.pop("expert")
            memory = {"memory_measure": "CPU peak RSS growth during training (ru_maxrss, fresh process)",
                      **{k: round(v, 1) for k, v in out.items()}}
        else:
            cuda = measure_memory and self.backbone.device.type == "cuda"
            if cuda:
                torch.cuda.reset_peak_memory_stats(self.backbone.device)
                before = torch.cuda.memory_allocated(self.backbone.device)
            expert = experts.train_expert(config, self.backbone, train_data=train, eval_data=valid,
                                          progress=self.step_progress(stage), should_stop=self.should_stop,
                                          checkpoint_dir=checkpoint, resume=self.resume)
            if cuda:
                growth = torch.cuda.max_memory_allocated(self.backbone.device) - before
                memory = {"memory_measure": "CUDA max_memory_allocated growth",
                          "peak_growth_mib": round(growth / 2**20, 1)}
        self.tell(stage, b.steps, b.steps)
        metric = tasks.primary_metric(task)
        self.trainings[key] = {"task": task, "method": method, "seed": seed, "started": started,
                               "wall_seconds": round(time.perf_counter() - t0, 2),
                               "train_seconds": expert.metrics["train_seconds"],
                               # CPU time of the training loop (time.process_time of the process
                               # that trained it; carried over a resumed checkpoint)
                               "cpu_seconds": expert.metrics.get("train_cpu_seconds"),
                               "steps_run": expert.metrics.get("steps_run"),
                               "best_step": expert.metrics.get("best_step"),
                               "lr": expert.config.lr,
                               "metric": metric, "value": expert.metrics[metric],
                               "train_rows": len(train), "eval_rows": len(valid),
                               "trainable_params": expert.trainable_params(),
                               "adapter_params": expert.adapter_params(), **memory}
        if part is not None:                       # kept for a resumed run
            store.save_expert(expert, part)
            store.write_json(part.with_name(f"{part.name}.training.json"), self.trainings[key])
            safefs.remove(part.with_name(f"{part.name}.checkpoint"))
        self._experts[key] = expert
        return expert

    def _finished(self, part: Path, config: experts.ExpertConfig):
        """(expert, training record) an earlier run left in ``part`` with this config, or None."""
        record = part.with_name(f"{part.name}.training.json")
        if not record.is_file():
            return None
        try:
            expert = store.load_expert(part)
            data = json.loads(record.read_text(encoding="utf-8"))
        except (store.StoreError, OSError, ValueError):
            return None
        wanted = {k: v for k, v in config.to_dict().items() if v is not None}
        have = expert.config.to_dict()
        same = all(have.get(k) == v for k, v in wanted.items()
                   if k not in ("device", "checkpoint_every"))
        return (expert, data) if same and isinstance(data, dict) else None

    def routing(self, names: Sequence[str]) -> tuple[router_mod.RoutingData, router_mod.RoutingData]:
        """(training inputs, held-out validation inputs) labelled with the task's index in ``names``."""
        pairs = [(t, t) for t in names]
        b = self.budget
        return (router_mod.routing_data(pairs, "train", b.router_train_rows, self.data_dir, b.seed),
                router_mod.routing_data(pairs, "validation", b.router_eval_rows, self.data_dir, b.seed))

    def mixture(self, names: Sequence[str], router: router_mod.Router, pack_dir: Path,
                router_metrics: Mapping) -> moe_mod.TTLoRAMoE:
        """A pack of the TT-LoRA experts of ``names`` with ``router``, written and loaded back."""
        for name in names:
            store.add_expert_to_pack(pack_dir, self.expert(name, "tt-lora"))
        store.save_router(pack_dir, router, list(names), router_metrics, self.backbone.info)
        return moe_mod.TTLoRAMoE.from_pack(pack_dir, backbone=self.backbone)

    def fusion_config(self, steps: int) -> baselines.FusionConfig:
        """AdapterFusion's settings: ``steps``, the budget's batch size, length and seed."""
        b = self.budget
        return baselines.FusionConfig(steps=steps, batch_size=b.batch_size, max_length=b.max_length,
                                      seed=b.seed)


def mean(values: Iterable[float | None]) -> float:
    """Mean of the finite values (NaN when there are none)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(finite) if finite else float("nan")


def verdict(holds: bool | None, partly: bool = False) -> str:
    """The words of a claim's verdict: holds, partly holds, does not hold, not measured."""
    if holds is None:
        return "not measured"
    return "holds" if holds else ("partly holds" if partly else "does not hold")


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn``, ms."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def stopping_rule(b: ReportBudget) -> str:
    """The budget's training rule in words (cap, hold-out evaluations, patience, schedule)."""
    if b.eval_every and b.patience:
        stop = (f"stopped once {b.patience} hold-out evaluations (every {b.eval_every} steps) in a row "
                f"brought no better score, never before step {b.min_steps}; the expert keeps the "
                "weights of its best evaluation")
    else:
        stop = "no early stop"
    held = experts.ExpertConfig(task="any")        # the hold-out the runs use: the config's defaults
    return (f"at most {b.steps} steps of batch {b.batch_size}, max length {b.max_length} tokens, "
            f"{b.schedule} schedule, {stop} (hold-out: a seeded {held.holdout_fraction:.0%} of the "
            f"training rows, at most {held.holdout_limit:,}; never the validation split)")


def setup_differences(run: Run) -> list[str]:
    """How this run's setup differs from the paper's: base model and device, steps, rows, seed."""
    b, info = run.budget, run.backbone.info
    device = run.backbone.device
    threads = torch.get_num_threads()
    where = (f"one {torch.cuda.get_device_name(device)}" if device.type == "cuda"
             else f"CPU ({threads} torch thread{'s' if threads != 1 else ''})")
    rows = "all" if b.train_rows is None else f"at most {b.train_rows:,}"
    seeds = ", ".join(str(s) for s in b.seeds)
    return [f"Base model: {info.name} ({info.num_layers} layers, hidden {info.hidden_size}) on {where}, "
            "not LLaMA-3.2-1B on 4 GPUs.",
            f"Training budget of each expert: {stopping_rule(b)}; {rows} training rows a task, not the "
            "paper's epochs over full training sets.",
            f"Scores on {b.eval_rows} validation rows a task (seeded subset; tasks without a train "
            f"file here train on a seeded split, MNLI on validation_matched and is scored on "
            f"validation_mismatched). Experiment 2: seeds {seeds} (mean ± sample std over seeds); the "
            f"other experiments: the experts of seed {b.seed} only (no seed spread)."]
