"""What the five experiments share: the run's state and the small helpers of their results.

``Run`` holds the base model, the loaded data and the trained experts of one report run, so an
expert trained for one experiment serves the next (and loads, on first use, another base model
that an experiment reads: experiment 3's decoder). The helpers give every experiment the same
verdict words, the same mean, the same median timer and the same notes on how the setup
differs from the paper's.
"""

from __future__ import annotations

import json
import math
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from .. import baselines, experts, store, tasks
from .. import moe as moe_mod
from ..base.backbone import Backbone, load_backbone
from ..experts.checkpoint import Checkpointer
from ..files import safefs
from ..routing import Router, RoutingData, routing_data
from ..runtime import runinfo
from .plan import METHOD_LABELS, Progress, ReportBudget, ReportError, Setting
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
    # (task, variant, seed) → record; a variant is a method (experiment 2's size of it) or a
    # frontier setting's tag (``frontier.Setting.tag``: another size of a method)
    trainings: dict[tuple[str, str, int], dict] = field(default_factory=dict)
    # experiments 4-5's routers by expert names (``mixture_seeds.recipe_router``): each trained once
    recipe_router: dict[tuple[str, ...], dict] = field(default_factory=dict)
    jobs: int = 1                    # experiment 2: trainings side by side (train_side_by_side)
    work_dir: Path | None = None     # finished experts (+ records) and training checkpoints
    resume: bool = False             # reuse work_dir's finished experts, continue its checkpoints
    reuse_from: tuple[Path, ...] = ()   # other work folders whose finished experts may be reused
    settings: dict[str, Setting] = field(default_factory=dict)   # frontier variants by tag
    # the start's clock (sessions.json): clock(True) after a save, clock(False) as work goes on
    clock: Callable[[bool], None] | None = None
    # another base model by name (experiment 3's decoder); None: ``load_backbone`` on this run's
    # device. Tests pass a loader of tiny models.
    load_model: Callable[[str], Backbone] | None = None
    _data: dict[tuple[str, str], tasks.TaskData] = field(default_factory=dict)
    _experts: dict[tuple[str, str, int], experts.Expert] = field(default_factory=dict)
    _models: dict[str, Backbone] = field(default_factory=dict)

    def tell(self, stage: str, done: int, total: int) -> None:
        """Report progress; ReportError when ``should_stop()`` says the run is cancelled."""
        if self.stopping():
            raise ReportError(f"report cancelled during {stage}")
        if self.progress is not None:
            self.progress(stage, done, total)

    def stopping(self) -> bool:
        """``should_stop()``, asked as work goes on (progress, a child's poll): also ticks the
        start's clock (at most once a ``sessions.BEAT_S``)."""
        if self.clock is not None:
            self.clock(False)
        return self.should_stop is not None and self.should_stop()

    def other_model(self, name: str) -> Backbone:
        """The base model ``name`` besides the run's own, loaded on first use (``load_model``)."""
        if name not in self._models:
            load = self.load_model or partial(load_backbone, device=self.backbone.device)
            self._models[name] = load(name)
        return self._models[name]

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

    def variant(self, setting: Setting) -> str:
        """The training variant of ``setting``: its method's name when it is experiment 2's size
        of that method (so that run is reused), else its tag (registered on the run)."""
        if (setting.targets is None and setting.shape is None and setting.lr is None
                and setting.rank == experts.METHOD_DEFAULTS[setting.method]["rank"]):
            return setting.method
        self.settings[setting.tag] = setting
        return setting.tag

    def method_of(self, variant: str) -> tuple[str, Setting | None]:
        """(method, frontier setting or None) of a training variant."""
        if variant in METHOD_LABELS:
            return variant, None
        setting = self.settings.get(variant)
        if setting is None:
            raise ReportError(f"unknown training variant {variant!r}")
        return setting.method, setting

    def label(self, variant: str) -> str:
        """``LoRA`` or ``lora-r4``: how progress lines name a variant."""
        return METHOD_LABELS.get(variant, variant)

    def expert(self, task: str, method: str, measure_memory: bool = False,
               seed: int | None = None) -> experts.Expert:
        """The trained expert of (task, method or frontier variant, seed) (None: the budget's
        ``seed``), trained on first use under the budget's stopping rule."""
        key, config, part = self._plan(task, method, seed)
        if key in self._experts:
            return self._experts[key]
        if self._reuse(key, config, part):
            return self._experts[key]
        b = self.budget
        train, valid = self.data(task, "train"), self.data(task, "validation")
        stage = f"training {self.label(method)} expert on {task} (seed {key[2]})"
        self.tell(stage, 0, b.steps)
        started, t0 = runinfo.now(), time.perf_counter()
        measure_memory = measure_memory and b.measure_memory
        memory: dict = {"memory_measure": None, "peak_growth_mib": None}
        checkpoint = self._checkpoint(config, part)
        if measure_memory and self.backbone.device.type == "cpu":
            out = train_in_fresh_process(config.to_dict(), self.backbone.info.name, train, valid,
                                         checkpoint_dir=checkpoint, resume=self.resume, stop=self.stopping)
            expert, memory = out.pop("expert"), _fresh_memory(out)
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
        self._keep(key, expert, part, started, time.perf_counter() - t0,
                   {**memory, "threads": torch.get_num_threads(), "side_by_side": 1})
        return expert

    def train_side_by_side(self, keys: Sequence[tuple[str, str, int]], jobs: int) -> None:
        """Train the experts of ``keys`` (task, method, seed) not trained yet, ``jobs`` at a time,
        each in its own fresh process with ``torch.get_num_threads() // jobs`` threads, on CPU;
        ``expert`` then finds them trained. Small models use two cores poorly, so two one-thread
        trainings side by side get through more steps an hour than one two-thread training
        (bench/RESULTS.md); each keeps its peak memory and CPU time, and its record says how
        many ran at a time (``side_by_side``: the pool's size; the last may run alone).

        Progress is told per finished training. A failed training, or ``should_stop()``, ends
        the others within ``worker.POLL_S`` seconds (their checkpoints stay) and starts no new
        one; the finished ones are kept, then ReportError names what failed."""
        check_jobs(jobs, self.backbone.device)
        # key -> (key, config, part folder, checkpoint folder); a dict keeps the order asked for
        planned: dict[tuple[str, str, int],
                      tuple[tuple[str, str, int], experts.ExpertConfig, Path | None, Path | None]] = {}
        for task, method, seed in keys:
            key, config, part = self._plan(task, method, seed)
            if key in self._experts or key in planned or self._reuse(key, config, part):
                continue
            planned[key] = (key, config, part, self._checkpoint(config, part))
        todo = list(planned.values())
        if not todo:
            return
        threads = torch.get_num_threads() // jobs
        for (task, _, _), *_ in todo:                # load the data here, not in the workers' threads
            self.data(task, "train"), self.data(task, "validation")
        pool_size = min(jobs, len(todo))
        self.tell(f"training {len(todo)} experts, {pool_size} side by side ({threads} thread(s) each)",
                  0, len(todo))
        halt = threading.Event()

        def stop() -> bool:
            return halt.is_set() or self.stopping()

        def train(key, config, part, checkpoint):
            if stop():
                return None                          # not started: the run is ending
            started, t0 = runinfo.now(), time.perf_counter()
            out = train_in_fresh_process(config.to_dict(), self.backbone.info.name,
                                         self.data(key[0], "train"), self.data(key[0], "validation"),
                                         checkpoint_dir=checkpoint, resume=self.resume,
                                         threads=threads, stop=stop)
            return out.pop("expert"), out, started, time.perf_counter() - t0

        errors: list[str] = []
        parts = {key: part for key, _, part, _ in todo}
        with ThreadPoolExecutor(max_workers=jobs) as pool:     # its threads wait on the processes
            running = {pool.submit(train, *item): item[0] for item in todo}
            try:
                self._collect(running, parts, halt, errors, threads, pool_size)
            except BaseException:                    # interrupted, or a record not written: stop all
                halt.set()
                raise
        # the records in the order asked for (they finish in any order)
        asked = [k for k, *_ in todo]
        order = [k for k in self.trainings if k not in parts] + [k for k in asked if k in self.trainings]
        self.trainings = {k: self.trainings[k] for k in order}
        if errors:
            kept = sum(k in self.trainings for k in asked)
            raise ReportError(f"{'; '.join(errors)} ({kept} of {len(todo)} trainings finished and kept; "
                              "--resume continues the others from their checkpoints)")

    def _collect(self, running: dict, parts: dict, halt: threading.Event, errors: list[str],
                 threads: int, pool_size: int) -> None:
        """``train_side_by_side``'s results as they finish: keep each; on a failure or a cancel,
        set ``halt`` (the others stop) and add to ``errors``."""
        for done, future in enumerate(as_completed(running), start=1):
            key = running[future]
            label = f"{self.label(key[1])} on {key[0]} (seed {key[2]})"
            try:
                result = future.result()
            except Exception as exc:             # noqa: BLE001 (reported after the others stop)
                halt.set()
                errors.append(f"{label}: {exc}")
                continue
            if result is None:                   # not started: the run is ending
                continue
            expert, out, started, wall = result
            memory = _fresh_memory(out) if self.budget.measure_memory else {
                "memory_measure": None, "peak_growth_mib": None}
            self._keep(key, expert, parts[key], started, wall,
                       {**memory, "threads": threads, "side_by_side": pool_size})
            record = self.trainings[key]
            try:
                self.tell(f"trained {label}: {record['metric']} {record['value']:.3f} after "
                          f"{record['steps_run']} steps", done, len(running))
            except ReportError as exc:           # cancelled
                halt.set()
                errors.append(str(exc))

    def _plan(self, task: str, variant: str,
              seed: int | None) -> tuple[tuple[str, str, int], experts.ExpertConfig, Path | None]:
        """(key, config, part folder or None) of the (task, variant, seed) expert under the budget."""
        b = self.budget
        seed = b.seed if seed is None else seed
        method, setting = self.method_of(variant)
        size = {} if setting is None else {
            "rank": setting.rank, "targets": None if setting.targets is None else list(setting.targets),
            "shapes": setting.shapes()}
        config = experts.ExpertConfig(task=task, method=method, steps=b.steps, batch_size=b.batch_size,
                                      max_length=b.max_length, seed=seed, train_limit=b.train_rows,
                                      eval_limit=b.eval_rows, eval_every=b.eval_every,
                                      patience=b.patience, min_steps=b.min_steps, schedule=b.schedule,
                                      lr=b.lr_of(method) if setting is None or setting.lr is None
                                      else setting.lr, **size)
        part = None if self.work_dir is None else self.work_dir / "experts" / f"{task}-{variant}-seed{seed}"
        return (task, variant, seed), config, part

    def _reuse(self, key: tuple[str, str, int], config: experts.ExpertConfig, part: Path | None) -> bool:
        """Take the expert an earlier, interrupted run finished in ``part`` (resume only), or one
        of the same name and config in a ``reuse_from`` folder (copied into this run's folder)."""
        kept = self._finished(part, config) if part is not None and self.resume else None
        if kept is None and part is not None:
            for other in self.reuse_from:
                found = other / "experts" / part.name
                kept = self._finished(found, config)
                if kept is not None:
                    store.save_expert(kept[0], part)
                    store.write_json(part.with_name(f"{part.name}.training.json"),
                                     {**kept[1], "reused_from": f"{other.name}/experts/{part.name}"})
                    break
        if kept is not None:
            self.trainings[key], self._experts[key] = kept[1], kept[0]
        return kept is not None

    def _checkpoint(self, config: experts.ExpertConfig, part: Path | None) -> Path | None:
        """The training checkpoint folder beside ``part`` (None without a work folder); a run with
        a work folder checkpoints every 100 steps unless the config says otherwise."""
        if part is None:
            return None
        if not config.checkpoint_every:
            config.checkpoint_every = 100
        return part.with_name(f"{part.name}.checkpoint")

    def _keep(self, key: tuple[str, str, int], expert: experts.Expert, part: Path | None,
              started: str, wall: float, extra: dict) -> None:
        """Record a finished training (metric, steps, times, sizes and ``extra``); with a work
        folder, save the expert and its record there, drop its checkpoint and tell ``clock``."""
        task = key[0]
        metric = tasks.primary_metric(task)
        self.trainings[key] = {"task": task, "method": self.method_of(key[1])[0], "variant": key[1],
                               "seed": key[2], "started": started,
                               "wall_seconds": round(wall, 2),
                               "train_seconds": expert.metrics["train_seconds"],
                               # CPU time of the training loop (time.process_time of the process
                               # that trained it; carried over a resumed checkpoint)
                               "cpu_seconds": expert.metrics.get("train_cpu_seconds"),
                               "steps_run": expert.metrics.get("steps_run"),
                               "best_step": expert.metrics.get("best_step"),
                               "lr": expert.config.lr,
                               "metric": metric, "value": expert.metrics[metric],
                               "train_rows": len(self.data(task, "train")),
                               "eval_rows": len(self.data(task, "validation")),
                               "trainable_params": expert.trainable_params(),
                               "adapter_params": expert.adapter_params(),
                               # the host that finished it (a resumed training may have begun on
                               # another): kernels, and so the last bits, follow the instruction set
                               "cpu": runinfo.cpu_name(), **extra}
        if part is not None:                       # kept for a resumed run
            store.save_expert(expert, part)
            store.write_json(part.with_name(f"{part.name}.training.json"), self.trainings[key])
            safefs.remove(part.with_name(f"{part.name}.checkpoint"))
        self._experts[key] = expert
        if part is not None and self.clock is not None:
            self.clock(True)

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

    def routing(self, names: Sequence[str]) -> tuple[RoutingData, RoutingData]:
        """(training inputs, held-out validation inputs) labelled with the task's index in ``names``."""
        pairs = [(t, t) for t in names]
        b = self.budget
        return (routing_data(pairs, "train", b.router_train_rows, self.data_dir, b.seed),
                routing_data(pairs, "validation", b.router_eval_rows, self.data_dir, b.seed))

    def mixture(self, names: Sequence[str], router: Router, pack_dir: Path,
                router_metrics: Mapping, seed: int | None = None) -> moe_mod.TTLoRAMoE:
        """A pack of ``seed``'s TT-LoRA experts of ``names`` (None: the budget's ``seed``) with
        ``router``, written and loaded back."""
        for name in names:
            store.append_expert(pack_dir, self.expert(name, "tt-lora", seed=seed))
        store.save_router(pack_dir, router, list(names), router_metrics, self.backbone.info)
        return moe_mod.TTLoRAMoE.from_pack(pack_dir, backbone=self.backbone)

    def fusion_scores(self, name: str, adapter_experts: Mapping[str, experts.Expert],
                      train_tasks: Sequence[str], eval_tasks: Sequence[str], steps: int,
                      stage: str) -> dict:
        """AdapterFusion over ``adapter_experts`` trained on ``train_tasks``' rows under the
        experts' stopping rule with ``steps`` as its cap (``fusion_config``), scored on each of
        ``eval_tasks``' validation rows: {"metrics": {task: metrics}, "steps" (the cap),
        "steps_run", "best_step", "holdout" (the best evaluation's numbers), "holdout_rows",
        "train_seconds", "params"}.

        With a work folder the training checkpoints every 100 steps (``<work>/fusion/<name>.
        checkpoint``) and a resumed run continues it; the finished scores are kept beside it
        (``<name>.json``) and a resumed run with the same settings takes them as they are.
        """
        config = self.fusion_config(steps)
        settings = {"fusion": config.to_dict(), "train_tasks": list(train_tasks),
                    "eval_tasks": list(eval_tasks),
                    "adapters": {n: {k: v for k, v in e.config.to_dict().items()
                                     if k not in ("device", "checkpoint_every")}
                                 for n, e in adapter_experts.items()},
                    "train_rows": {t: len(self.data(t, "train")) for t in train_tasks},
                    "eval_rows": {t: len(self.data(t, "validation")) for t in eval_tasks}}
        settings = json.loads(json.dumps(settings))
        folder = None if self.work_dir is None else self.work_dir / "fusion"
        if folder is not None and self.resume:
            try:
                kept = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                kept = None
            if isinstance(kept, dict) and kept.get("settings") == settings:
                return kept["scores"]
        checkpoint = None if folder is None else Checkpointer(
            folder / f"{name}.checkpoint", every=100, resume=self.resume, fingerprint=settings)
        result = baselines.train_fusion(self.backbone, adapter_experts,
                                        {t: self.data(t, "train") for t in train_tasks}, config,
                                        progress=self.step_progress(stage),
                                        should_stop=self.should_stop, checkpoint=checkpoint)
        scores = {"metrics": {t: baselines.evaluate_fusion(result, self.backbone,
                                                           self.data(t, "validation"), t)["metrics"]
                              for t in eval_tasks},
                  "steps": result.config.steps, "steps_run": result.summary["steps_run"],
                  "best_step": result.summary.get("best_step"),
                  "holdout": {k.removeprefix("holdout_"): v for k, v in result.summary.items()
                              if k.startswith("holdout_")},
                  "holdout_rows": result.holdout_rows,
                  "train_seconds": round(result.train_seconds, 2),
                  "params": result.params(adapter_experts)}
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            store.write_json(folder / f"{name}.json", {"settings": settings, "scores": scores})
            safefs.remove(folder / f"{name}.checkpoint")
            if self.clock is not None:
                self.clock(True)
        return scores

    def fusion_config(self, steps: int) -> baselines.FusionConfig:
        """AdapterFusion's settings: cap ``steps``, the budget's batch size, length, seed and
        stopping rule, the experts' hold-out (``ExpertConfig``'s fraction and limit)."""
        b = self.budget
        held = experts.ExpertConfig(task="any")        # the hold-out the experts use: the defaults
        return baselines.FusionConfig(steps=steps, batch_size=b.batch_size, max_length=b.max_length,
                                      seed=b.seed, schedule=b.schedule,
                                      holdout_fraction=held.holdout_fraction,
                                      holdout_limit=held.holdout_limit, eval_every=b.eval_every,
                                      patience=b.patience, min_steps=b.min_steps)


def check_jobs(jobs: int, device: torch.device) -> None:
    """ReportError unless ``jobs`` trainings side by side can run: at least 1, on CPU, and no more
    than this process's torch threads (each gets at least one)."""
    if jobs < 1:
        raise ReportError(f"--jobs must be at least 1, got {jobs}")
    if jobs > 1 and device.type != "cpu":
        raise ReportError(f"--jobs {jobs} trains side by side on CPU; on {device.type} run one training "
                          "at a time (--jobs 1)")
    if jobs > torch.get_num_threads():
        raise ReportError(f"--jobs {jobs} needs a torch thread per training; this process has "
                          f"{torch.get_num_threads()} (OMP_NUM_THREADS, or the cores)")


def _fresh_memory(out: Mapping[str, float]) -> dict:
    """The memory entries of a training record from ``worker.measured_training``'s numbers."""
    return {"memory_measure": "CPU peak RSS growth during training (ru_maxrss, fresh process)",
            **{k: round(v, 1) for k, v in out.items()}}


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
            f"validation_mismatched). Experiments 2, 4 and 5: seeds {seeds} (mean ± sample std over "
            f"seeds; AdapterFusion in 4 and 5: seed {b.seed}'s adapters only); the other experiments: "
            f"the experts of seed {b.seed} only (no seed spread)."]
