"""The paper's tables re-run on the embedded model: ``python -m ttmoe_core report --budget small|full``.

``run_report(budget, out)`` runs five experiments of Kunwar et al. (2025) with the project's own
code and writes, under ``out``:

- ``results.json``: every number of the run (raw results, settings, date, machine, timings);
- ``paper_tables.md``: the tables, each with its run's date, settings, seed and time taken, how
  our setup differs from the paper's, and whether the paper's claim holds here;
- ``figures/<name>.html`` (plotly) and ``figures/<name>.png`` (matplotlib, when installed).

The experiments (one function each, returning plain data):

1. ``contraction``: inference time of TT layers that contract the cores (``TTLoRALinear``) vs the
   same model whose TT layers rebuild ΔW every call (``ReconstructedTTLoRALinear``), per batch size.
2. ``methods``: TT-LoRA vs LoRA (PEFT) vs bottleneck adapter, one expert per task, same training
   loop (``experts.train_expert``) and step budget; parameters, metric, time, peak memory.
3. ``routers``: router variants on six tasks (``router.sweep_layers``): held-out accuracy,
   parameters, measured cost per input, confusion.
4. ``integration``: each task through the mixture (router over every expert) vs the expert alone;
   AdapterFusion over the same tasks' adapters, trained for one task, vs that adapter alone.
5. ``mixed``: one test set mixing six tasks: TT-LoRA MoE vs one AdapterFusion trained on the mix.

``render_markdown(results)`` formats only numbers present in ``results`` (no arithmetic), through
``FORMATS``, so every number of a table can be traced to ``results.json``.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import adapters, baselines, experts, moe as moe_mod, router as routers, store, tasks
from . import budget as budgets
from .backbone import Backbone, load_backbone, mean_pool, tokenize_mixed

SIX_TASKS = ("mnli", "cola", "rte", "sst2", "qnli", "qqp")
METHODS = ("tt-lora", "lora", "adapter")
METHOD_LABELS = {"tt-lora": "TT-LoRA", "lora": "LoRA", "adapter": "Adapter"}
MIXTURE_ROUTER = ("fusion", 2)     # variant and layer of the mixtures' router (RouterConfig default)
TOLERANCE = 1e-5                   # contraction and reconstruction must agree to this (max |Δ|)
MARKDOWN_FILE = "paper_tables.md"
RESULTS_FILE = "results.json"
FIGURES_DIR = "figures"
SECTIONS = ("contraction", "methods", "routers", "integration", "mixed")
SECTION_TITLES = {
    "contraction": "1. Contraction vs reconstruction (paper Table 3)",
    "methods": "2. TT-LoRA vs LoRA vs Adapter, one expert per task (paper Tables 4 and 6, single training)",
    "routers": "3. Router variants (paper Table 5)",
    "integration": "4. Expert integration (paper Table 6, expert integration)",
    "mixed": "5. Mixed-task evaluation (the \"4 points over AdapterFusion\" claim)",
}
# the paper's headline numbers (abstract): fractions of the baselines' parameters, points gained
PAPER = {"tt_lora_fraction_of_lora": 0.02, "tt_lora_fraction_of_adapter": 0.003,
         "moe_fraction_of_adapterfusion": 0.0003, "mixed_gain_points": 4.0}

Progress = Callable[[str, int, int], None]   # (stage, done, total)


class ReportError(RuntimeError):
    """The report cannot run (missing data) or a check failed (outputs not equal)."""


# ----------------------------------------------------------------------------- budgets


@dataclass(frozen=True)
class ReportBudget:
    """How much of each experiment to run. Rows are per task; ``None`` tasks: every task folder."""
    name: str
    comparison_tasks: tuple[str, ...] | None   # experiment 2 (None: every task of the data dir)
    steps: int                                  # per expert, and per task for AdapterFusion
    batch_size: int
    max_length: int
    train_rows: int | None                      # training rows per task (None: all)
    eval_rows: int                              # validation rows per task
    router_train_rows: int
    router_eval_rows: int
    router_layers: tuple[int, ...]             # layers k swept by linear / mlp / fusion routers
    router_epochs: int
    fusion_tasks: tuple[str, ...]              # experiment 4: AdapterFusion trained for these
    timing_batch_sizes: tuple[int, ...]
    timing_length: int                          # tokens per input in experiment 1
    timing_repeats: int
    min_integration_experts: int
    measure_memory: bool                        # experiment 2: each training in a fresh process
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


BUDGETS: dict[str, ReportBudget] = {
    "small": ReportBudget(
        name="small", comparison_tasks=("sst2", "rte"), steps=8, batch_size=8, max_length=48,
        train_rows=400, eval_rows=48, router_train_rows=48, router_eval_rows=24,
        router_layers=(0, 2), router_epochs=30, fusion_tasks=("sst2", "rte"),
        timing_batch_sizes=(1, 8, 32), timing_length=32, timing_repeats=2,
        min_integration_experts=4, measure_memory=False),
    "full": ReportBudget(
        name="full", comparison_tasks=None, steps=60, batch_size=8, max_length=96,
        train_rows=None, eval_rows=250, router_train_rows=300, router_eval_rows=150,
        router_layers=(0, 2, 6), router_epochs=60, fusion_tasks=SIX_TASKS,
        timing_batch_sizes=(1, 2, 4, 8, 16, 32, 64, 128), timing_length=64, timing_repeats=3,
        min_integration_experts=10, measure_memory=True),
}


# ----------------------------------------------------------------------------- run state


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def machine_info(backbone: Backbone) -> dict:
    """What the timings depend on: CPU, cores, threads, device, memory, library versions."""
    import adapters as adapters_lib
    import peft
    import transformers

    from .runinfo import cpu_name

    cpu = cpu_name()
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (AttributeError, ValueError, OSError):
        memory_gib = None
    device = backbone.device
    return {"platform": platform.platform(), "cpu": cpu, "logical_cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "torch_threads": torch.get_num_threads(), "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "memory_gib": memory_gib, "load_average_at_start": _load_average(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "adapters": adapters_lib.__version__}


def _maxrss_mib() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10   # bytes on macOS, KiB on Linux


def _rss_mib() -> float | None:
    """Current resident memory of this process (Linux), else None."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _measured_training(config: dict, model_name: str, train: tasks.TaskData,
                       valid: tasks.TaskData, threads: int) -> dict:
    """Train one expert in this (fresh) process; peak RSS growth over the memory before training."""
    torch.set_num_threads(threads)
    backbone = load_backbone(model_name, device="cpu")
    _warm_up(backbone)
    baseline = _rss_mib()
    peak_before = _maxrss_mib()
    peak: dict[str, float] = {}

    def progress(event: experts.Progress) -> None:
        if event.step == event.total_steps:      # end of training, before evaluation
            peak["mib"] = _maxrss_mib()

    expert = experts.train_expert(experts.ExpertConfig.from_dict(config), backbone,
                                  train_data=train, eval_data=valid, progress=progress)
    base = baseline if baseline is not None else peak_before
    return {"expert": expert, "peak_growth_mib": max(0.0, peak["mib"] - base),
            "rss_before_training_mib": base, "peak_rss_mib": peak["mib"],
            "peak_rss_before_training_mib": peak_before}


def _warm_up(backbone: Backbone) -> None:
    """One-time costs out of the measurement: library imports, first forward/backward kernels."""
    import importlib

    for module in ("adapters", "peft", "sklearn.metrics"):   # what training imports on first use
        importlib.import_module(module)
    batch, _ = tokenize_mixed(backbone.tokenizer, ["warm up", "a second, longer warm-up input"], None,
                              16, backbone.device)
    embeds = backbone.model.embeddings.word_embeddings(batch["input_ids"]).detach().requires_grad_()
    hidden = backbone.model(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                            token_type_ids=batch.get("token_type_ids")).last_hidden_state
    hidden.sum().backward()


def _worker(src: str, dst: str) -> None:
    """Entry point of the training subprocess: pickled arguments in ``src``, result to ``dst``."""
    with open(src, "rb") as f:
        kwargs = pickle.load(f)
    result = _measured_training(**kwargs)
    with open(dst, "wb") as f:
        pickle.dump(result, f)


def _train_in_fresh_process(config: dict, model_name: str, train: tasks.TaskData,
                            valid: tasks.TaskData) -> dict:
    """``_measured_training`` in a new Python process (so ru_maxrss is that training's alone).

    A plain subprocess rather than multiprocessing: spawn would re-import the caller's main
    script, which breaks scripts without a ``__main__`` guard.
    """
    import subprocess

    with tempfile.TemporaryDirectory(prefix="ttmoe-report-") as tmp:
        src, dst = Path(tmp) / "in.pkl", Path(tmp) / "out.pkl"
        with src.open("wb") as f:
            pickle.dump({"config": config, "model_name": model_name, "train": train, "valid": valid,
                         "threads": torch.get_num_threads()}, f)
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        code = "import sys; from ttmoe_core.report import _worker; _worker(sys.argv[1], sys.argv[2])"
        done = subprocess.run([sys.executable, "-c", code, str(src), str(dst)], env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            tail = " | ".join(done.stderr.strip().splitlines()[-3:])
            raise ReportError(f"training {config['method']} on {config['task']} in a subprocess failed "
                              f"(exit {done.returncode}): {tail}")
        with dst.open("rb") as f:
            return pickle.load(f)


@dataclass
class _Run:
    """Shared state of one report run: the base model, loaded data, trained experts."""
    budget: ReportBudget
    backbone: Backbone
    data_dir: Path | None
    progress: Progress | None = None
    should_stop: Callable[[], bool] | None = None
    comparison_tasks: list[str] = field(default_factory=list)
    integration_tasks: list[str] = field(default_factory=list)
    trainings: dict[tuple[str, str], dict] = field(default_factory=dict)
    mixture_router: routers.Router | None = None
    _data: dict[tuple[str, str], tasks.TaskData] = field(default_factory=dict)
    _experts: dict[tuple[str, str], experts.Expert] = field(default_factory=dict)

    def tell(self, stage: str, done: int, total: int) -> None:
        if self.should_stop is not None and self.should_stop():
            raise ReportError(f"report cancelled during {stage}")
        if self.progress is not None:
            self.progress(stage, done, total)

    def data(self, task: str, split: str) -> tasks.TaskData:
        key = (task, split)
        if key not in self._data:
            limit = self.budget.train_rows if split == "train" else self.budget.eval_rows
            self._data[key] = tasks.load_task(task, split, data_dir=self.data_dir, limit=limit,
                                              seed=self.budget.seed)
        return self._data[key]

    def expert(self, task: str, method: str, measure_memory: bool = False) -> experts.Expert:
        """The trained expert of (task, method), training it on first use."""
        key = (task, method)
        if key in self._experts:
            return self._experts[key]
        b = self.budget
        config = experts.ExpertConfig(task=task, method=method, steps=b.steps, batch_size=b.batch_size,
                                      max_length=b.max_length, seed=b.seed, train_limit=b.train_rows,
                                      eval_limit=b.eval_rows)
        train, valid = self.data(task, "train"), self.data(task, "validation")
        stage = f"training {METHOD_LABELS[method]} expert on {task}"
        self.tell(stage, 0, b.steps)
        started, t0 = _now(), time.perf_counter()
        measure_memory = measure_memory and b.measure_memory
        memory: dict = {"memory_measure": None, "peak_growth_mib": None}
        if measure_memory and self.backbone.device.type == "cpu":
            out = _train_in_fresh_process(config.to_dict(), self.backbone.info.name, train, valid)
            expert = out.pop("expert")
            memory = {"memory_measure": "CPU peak RSS growth during training (ru_maxrss, fresh process)",
                      **{k: round(v, 1) for k, v in out.items()}}
        else:
            cuda = measure_memory and self.backbone.device.type == "cuda"
            if cuda:
                torch.cuda.reset_peak_memory_stats(self.backbone.device)
                before = torch.cuda.memory_allocated(self.backbone.device)
            expert = experts.train_expert(
                config, self.backbone, train_data=train, eval_data=valid,
                progress=lambda e: self.tell(stage, e.step, e.total_steps), should_stop=self.should_stop)
            if cuda:
                growth = torch.cuda.max_memory_allocated(self.backbone.device) - before
                memory = {"memory_measure": "CUDA max_memory_allocated growth",
                          "peak_growth_mib": round(growth / 2**20, 1)}
        self.tell(stage, b.steps, b.steps)
        metric = tasks.primary_metric(task)
        self.trainings[key] = {"task": task, "method": method, "started": started,
                               "wall_seconds": round(time.perf_counter() - t0, 2),
                               "train_seconds": expert.metrics["train_seconds"],
                               "metric": metric, "value": expert.metrics[metric],
                               "train_rows": len(train), "eval_rows": len(valid),
                               "trainable_params": expert.trainable_params(),
                               "adapter_params": expert.adapter_params(), **memory}
        self._experts[key] = expert
        return expert

    def routing(self, names: Sequence[str]) -> tuple[routers.RoutingData, routers.RoutingData]:
        """(training inputs, held-out validation inputs) labelled with the task's index in ``names``."""
        pairs = [(t, t) for t in names]
        b = self.budget
        return (routers.routing_data(pairs, "train", b.router_train_rows, self.data_dir, b.seed),
                routers.routing_data(pairs, "validation", b.router_eval_rows, self.data_dir, b.seed))


def _timed(run: _Run, name: str, fn: Callable[[_Run], dict]) -> dict:
    started, t0, load = _now(), time.perf_counter(), _load_average()
    result = fn(run)
    return {**result, "run": {"started": started, "seconds": round(time.perf_counter() - t0, 1),
                              "load_average_at_start": load, "load_average_at_end": _load_average()}}


def _mean(values) -> float:
    """Mean of the finite values (NaN when there are none)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(finite) if finite else float("nan")


def _verdict(holds: bool | None, partly: bool = False) -> str:
    if holds is None:
        return "not measured"
    return "holds" if holds else ("partly holds" if partly else "does not hold")


def _setup_differences(run: _Run) -> list[str]:
    b, info = run.budget, run.backbone.info
    device = run.backbone.device
    where = (f"one {torch.cuda.get_device_name(device)}" if device.type == "cuda"
             else f"CPU ({torch.get_num_threads()} torch thread{'s' if torch.get_num_threads() != 1 else ''})")
    rows = "all" if b.train_rows is None else f"at most {b.train_rows:,}"
    return [f"Base model: {info.name} ({info.num_layers} layers, hidden {info.hidden_size}) on {where}, "
            "not LLaMA-3.2-1B on 4 GPUs.",
            f"Step budget: {b.steps} steps of batch {b.batch_size}, max length {b.max_length} tokens, "
            f"{rows} training rows a task, not the paper's epochs over full training sets.",
            f"Scores on {b.eval_rows} validation rows a task (seeded subset; tasks without a train "
            f"file here train on a seeded split, MNLI on validation_matched and is scored on "
            f"validation_mismatched). One seed ({b.seed})."]


# ----------------------------------------------------------------------------- experiment 1


def _forward(model: experts.ExpertModel, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    hidden = model.encoder(**batch).last_hidden_state                    # [B, T, H]
    return hidden, model.head(mean_pool(hidden, batch["attention_mask"]))


def _reconstructing_copy(model: experts.ExpertModel) -> experts.ExpertModel:
    """A copy whose every TTLoRALinear is wrapped in ReconstructedTTLoRALinear (module replacement)."""
    clone = copy.deepcopy(model)
    for name, layer in adapters.tt_layers(clone.encoder).items():
        parent_name, _, child = name.rpartition(".")
        parent = clone.encoder.get_submodule(parent_name) if parent_name else clone.encoder
        setattr(parent, child, adapters.ReconstructedTTLoRALinear(layer))
    return clone


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def exp_contraction(run: _Run) -> dict:
    """Inference time, contraction vs reconstruction, on the first comparison task's TT-LoRA expert."""
    b = run.budget
    task = run.comparison_tasks[0]
    expert = run.expert(task, "tt-lora", measure_memory=True)
    contract = experts.build_expert_model(expert, run.backbone).eval()
    rebuild = _reconstructing_copy(contract).eval()
    data = run.data(task, "validation")
    need = max(b.timing_batch_sizes)
    idx = [i % len(data) for i in range(need)]
    encoded = run.backbone.tokenizer(
        [data.texts[i] for i in idx], [data.text_pairs[i] for i in idx] if data.text_pairs else None,
        padding="max_length", truncation=True, max_length=b.timing_length, return_tensors="pt")
    inputs = {k: v.to(run.backbone.device) for k, v in encoded.items()}
    sync = torch.cuda.synchronize if run.backbone.device.type == "cuda" else (lambda: None)
    rows = []
    with torch.inference_mode():
        for done, size in enumerate(b.timing_batch_sizes):
            run.tell("contraction vs reconstruction", done, len(b.timing_batch_sizes))
            batch = {k: v[:size] for k, v in inputs.items()}
            hidden_c, logits_c = _forward(contract, batch)
            hidden_r, logits_r = _forward(rebuild, batch)
            diff = float((logits_c - logits_r).abs().max())
            hidden_diff = float((hidden_c - hidden_r).abs().max())
            if not diff <= TOLERANCE:
                raise ReportError(f"contraction and reconstruction outputs differ by {diff:.2e} "
                                  f"(> {TOLERANCE:g}) at batch size {size}")

            def timed(model):
                return lambda: (_forward(model, batch), sync())
            contract_ms = _median_ms(timed(contract), b.timing_repeats)
            rebuild_ms = _median_ms(timed(rebuild), b.timing_repeats)
            rows.append({"batch_size": size, "contract_ms": round(contract_ms, 3),
                         "reconstruct_ms": round(rebuild_ms, 3),
                         "contract_ms_per_input": round(contract_ms / size, 3),
                         "reconstruct_ms_per_input": round(rebuild_ms / size, 3),
                         "ratio": round(rebuild_ms / contract_ms, 3), "max_abs_diff": diff,
                         "hidden_max_abs_diff": hidden_diff,
                         "hidden_max_abs": float(hidden_c.abs().max())})
    faster = [r["ratio"] > 1 for r in rows]
    max_diff = max(r["max_abs_diff"] for r in rows)
    return {
        "task": task, "tokens_per_input": b.timing_length, "repeats": b.timing_repeats,
        "tolerance": TOLERANCE, "max_abs_diff": max_diff, "rows": rows,
        "claim": {"paper": "contracting the TT cores with the input is faster at inference than "
                           "reconstructing ΔW from the cores on every call",
                  "verdict": _verdict(all(faster), any(faster)),
                  "evidence": (f"reconstruction / contraction time ratio {min(r['ratio'] for r in rows):.2f}"
                               f"–{max(r['ratio'] for r in rows):.2f} over batch sizes "
                               f"{b.timing_batch_sizes[0]}–{b.timing_batch_sizes[-1]}; outputs (logits) "
                               f"equal to {max_diff:.1e} (tolerance {TOLERANCE:g})")},
        "differences": _setup_differences(run)[:1] + [
            f"Each input is {b.timing_length} tokens (padded/truncated); median of {b.timing_repeats} "
            f"timed forward passes after one untimed pass; both models hold the same trained cores "
            f"(the {task} expert), ΔW of the q and v projections of every layer. Float32: the last "
            "hidden states differ by rounding (ΔW added to W before the product instead of after), "
            "about 1e-5 of their largest value; the outputs (logits) are checked against the "
            "tolerance."],
    }


# ----------------------------------------------------------------------------- experiment 2


def _paper_budget_rows() -> list[dict]:
    """TT-LoRA vs LoRA vs adapters on LLaMA-3.2-1B through ``budget.compute_budget``."""
    model, targets = budgets.PAPER_PRESET["model"], budgets.PAPER_PRESET["targets"]
    tt = budgets.compute_budget(**budgets.PAPER_PRESET)
    lora = budgets.compute_budget(model, "lora", targets=targets)
    rows = []
    for kind in budgets.ADAPTER_KINDS:
        adapter = budgets.compute_budget(model, "adapter", adapter_kind=kind, targets=targets)
        rows.append({"model": f"{model} (budget, {kind} adapter)", "tt_lora": tt.trainable_params,
                     "lora": lora.trainable_params, "adapter": adapter.trainable_params,
                     "fraction_of_lora": tt.trainable_params / lora.trainable_params,
                     "fraction_of_adapter": tt.trainable_params / adapter.trainable_params})
    return rows


def exp_methods(run: _Run) -> dict:
    """One expert per task and method, same loop and steps; parameters, metric, time, memory."""
    rows = []
    for task in run.comparison_tasks:
        by_method = {m: run.expert(task, m, measure_memory=True) for m in METHODS}
        lora = by_method["lora"]
        for method, expert in by_method.items():
            info = run.trainings[(task, method)]
            rows.append({**{k: info[k] for k in ("task", "method", "metric", "value", "train_seconds",
                                                 "wall_seconds", "peak_growth_mib", "memory_measure",
                                                 "trainable_params", "adapter_params", "train_rows",
                                                 "eval_rows")},
                         "fraction_of_lora_adapter": expert.adapter_params() / lora.adapter_params(),
                         "fraction_of_lora_trainable": expert.trainable_params() / lora.trainable_params()})
    summary = []
    for method in METHODS:
        mine = [r for r in rows if r["method"] == method]
        memory = [r["peak_growth_mib"] for r in mine if r["peak_growth_mib"] is not None]
        summary.append({"method": method, "tasks": len(mine),
                        "adapter_params": mine[0]["adapter_params"],
                        "mean_value": _mean(r["value"] for r in mine),
                        "mean_train_seconds": statistics.fmean(r["train_seconds"] for r in mine),
                        "mean_peak_growth_mib": statistics.fmean(memory) if memory else None})
    by = {s["method"]: s for s in summary}
    name = run.backbone.info.name
    measured = {"model": f"{name} (measured)", "tt_lora": by["tt-lora"]["adapter_params"],
                "lora": by["lora"]["adapter_params"], "adapter": by["adapter"]["adapter_params"]}
    counted = {}
    if name in budgets.PRESETS:
        counted = {m.replace("-", "_"): budgets.compute_budget(name, m).trainable_params for m in METHODS}
    ratios = [{**row, "fraction_of_lora": row["tt_lora"] / row["lora"],
               "fraction_of_adapter": row["tt_lora"] / row["adapter"]}
              for row in ([measured] + ([{"model": f"{name} (budget)", **counted}] if counted else []))]
    ratios += _paper_budget_rows()
    tt_mean, lora_mean = by["tt-lora"]["mean_value"], by["lora"]["mean_value"]
    adapter_mean = by["adapter"]["mean_value"]
    comparable = tt_mean >= min(lora_mean, adapter_mean) - 0.02
    llama = next(r for r in ratios if r["model"].endswith("pfeiffer adapter)"))
    small_ratio = llama["fraction_of_lora"] <= 0.025 and llama["fraction_of_adapter"] <= 0.005
    return {
        "tasks": list(run.comparison_tasks), "rows": rows, "summary": summary, "ratios": ratios,
        "budget_matches_measured": (not counted) or all(counted[k] == measured[k] for k in counted),
        "paper": {k: PAPER[k] for k in ("tt_lora_fraction_of_lora", "tt_lora_fraction_of_adapter")},
        "claim": {"paper": "TT-LoRA needs about 2% of LoRA's and 0.3% of adapters' parameters and "
                           "scores comparably (read here: mean metric within 2 points of the weaker "
                           "baseline or better)",
                  "verdict": _verdict(comparable and small_ratio, comparable or small_ratio),
                  "evidence": (f"mean metric TT-LoRA {tt_mean:.3f}, LoRA {lora_mean:.3f}, adapter "
                               f"{adapter_mean:.3f} over {len(run.comparison_tasks)} task(s); TT-LoRA "
                               f"parameters {ratios[0]['fraction_of_lora']:.1%} of LoRA and "
                               f"{ratios[0]['fraction_of_adapter']:.1%} of the adapter on {name}, "
                               f"{llama['fraction_of_lora']:.2%} and {llama['fraction_of_adapter']:.2%} "
                               "on LLaMA-3.2-1B (budget)")},
        "differences": _setup_differences(run) + [
            "Same loop for the three methods (experts.train_expert: AdamW, 6% warm-up, linear decay, "
            "frozen base in eval mode, head with dropout 0.1 on the mean-pooled last hidden state); "
            "the paper's learning rates (TT-LoRA 5e-3 r5 α16, LoRA 5e-4 r16 α8; adapter: Pfeiffer "
            "seq_bn, reduction 16, 5e-4).",
            _memory_note(rows[0]["memory_measure"])],
    }


def _memory_note(measure: str | None) -> str:
    if measure is None:
        return "Peak memory: not measured in this budget (it runs each training in a fresh process)."
    if measure.startswith("CUDA"):
        return ("Peak memory: growth of torch.cuda.max_memory_allocated during training (it includes "
                "the copy of the base model each method trains on).")
    return ("Peak memory: growth of the peak resident memory (ru_maxrss) of a fresh process over its "
            "memory before training, after a warm-up pass; it includes the copy of the base model "
            "each method trains on and the activations; the paper reports GPU memory.")


# ----------------------------------------------------------------------------- experiment 3


def _spread(n: int, total: int) -> list[int]:
    return sorted({int(i * total / n) for i in range(n)}) if total > n else list(range(total))


def router_cost_ms(backbone: Backbone, router: routers.Router, data: routers.RoutingData,
                   rows: int = 64, repeats: int = 3) -> float:
    """Measured ms per input of tokenizing + features (base up to the router's layer) + router."""
    idx = _spread(rows, len(data.texts))
    texts = [data.texts[i] for i in idx]
    pairs = [data.text_pairs[i] for i in idx]
    config = router.config

    def once():
        batch, _ = tokenize_mixed(backbone.tokenizer, texts, pairs, config.max_length, backbone.device)
        feats = routers.batch_features(backbone.model, batch, texts, pairs, config)
        return router(feats).argmax(-1)

    router.eval()
    with torch.inference_mode():
        once()
        return _median_ms(once, repeats) / len(texts)


def exp_routers(run: _Run) -> dict:
    """Each router variant (paper: last layer; others: every layer of the budget) on six tasks."""
    b = run.budget
    train, held = run.routing(SIX_TASKS)
    num_layers = run.backbone.info.num_layers
    rows = []
    for done, variant in enumerate(routers.VARIANTS):
        run.tell(f"router variants: {variant}", done, len(routers.VARIANTS))
        layers = [num_layers] if variant == "paper" else list(b.router_layers)
        config = routers.RouterConfig(variant=variant, epochs=b.router_epochs, seed=b.seed,
                                      max_length=b.max_length)
        t0 = time.perf_counter()
        fitted = routers.sweep_layers(config, layers, run.backbone, train, held)
        fit_seconds = time.perf_counter() - t0
        for result in fitted:
            router, report = result["router"], result["report"]
            if (variant, result["layer"]) == MIXTURE_ROUTER:
                run.mixture_router = router
            rows.append({"variant": variant, "layer": result["layer"], "cost_fraction": result["cost"],
                         "params": routers.router_params(router), "accuracy": report.accuracy,
                         "per_task": report.per_task, "confusion": report.confusion,
                         "ms_per_input": round(router_cost_ms(run.backbone, router, held,
                                                              repeats=b.timing_repeats), 4),
                         "fit_seconds": round(fit_seconds / len(fitted), 2)})
    best = {}
    for row in rows:
        if row["variant"] not in best or row["accuracy"] > best[row["variant"]]["accuracy"]:
            best[row["variant"]] = row
    paper_acc = best["paper"]["accuracy"]
    others = max(best[v]["accuracy"] for v in ("linear", "mlp"))
    top = max(rows, key=lambda r: r["accuracy"])
    return {
        "tasks": list(SIX_TASKS), "names": train.names, "rows": rows,
        "best_layer": {v: r["layer"] for v, r in best.items()},
        "train_rows": len(train.labels), "held_out_rows": len(held.labels), "sources": held.sources,
        "claim": {"paper": "the paper's router (last hidden state at the last token, noisy top-1 "
                           "gating) routes at least as well as a linear layer or an MLP",
                  "verdict": _verdict(paper_acc >= others),
                  "evidence": (f"held-out accuracy: paper {paper_acc:.3f}, best linear/MLP {others:.3f}; "
                               f"most accurate here: {top['variant']} at layer {top['layer']} "
                               f"({top['accuracy']:.3f})")},
        "differences": _setup_differences(run)[:1] + [
            f"Six tasks ({', '.join(SIX_TASKS)}), {b.router_train_rows} training inputs and "
            f"{b.router_eval_rows} held-out validation inputs a task (unseen by every router); "
            f"{b.router_epochs} epochs on cached features. Cost per input measured here (tokenizing, "
            "the base model up to layer k, the router; batch of 64) rather than reported as FLOPs.",
            "The fusion variant (pooled layers 0..k + character n-grams of the raw text) is ours, "
            "not the paper's."],
    }


# ----------------------------------------------------------------------------- experiments 4 and 5


def _fusion_config(run: _Run, steps: int) -> baselines.FusionConfig:
    b = run.budget
    return baselines.FusionConfig(steps=steps, batch_size=b.batch_size, max_length=b.max_length,
                                  seed=b.seed)


def _mixture(run: _Run, names: Sequence[str], router: routers.Router, pack_dir: Path,
             router_metrics: Mapping) -> moe_mod.TTLoRAMoE:
    """A pack of the TT-LoRA experts of ``names`` with ``router``, written and loaded back."""
    for name in names:
        store.add_expert_to_pack(pack_dir, run.expert(name, "tt-lora"))
    store.save_router(pack_dir, router, list(names), router_metrics, run.backbone.info)
    return moe_mod.TTLoRAMoE.from_pack(pack_dir, backbone=run.backbone)


def _fusion_progress(run: _Run, stage: str):
    return lambda event: run.tell(stage, event.step, event.total_steps)


def exp_integration(run: _Run) -> dict:
    """Each task through the mixture of all experts vs alone; AdapterFusion vs its adapter."""
    b = run.budget
    names = run.integration_tasks
    variant, layer = MIXTURE_ROUTER
    train, held = run.routing(names)
    for name in names:
        run.expert(name, "tt-lora")
    run.tell(f"router over {len(names)} experts", 0, 1)
    config = routers.RouterConfig(variant=variant, layer=layer, epochs=b.router_epochs, seed=b.seed,
                                  max_length=b.max_length)
    fitted = routers.sweep_layers(config, [layer], run.backbone, train, held)[0]
    with tempfile.TemporaryDirectory() as tmp:
        mixture = _mixture(run, names, fitted["router"], Path(tmp) / "pack",
                           {"accuracy": fitted["report"].accuracy})
        run.tell("mixture vs expert alone", 0, 1)
        evaluated = moe_mod.evaluate_mixture(mixture, [(n, n) for n in names], b.eval_rows,
                                             run.data_dir, b.seed)
    rows = []
    for name in names:
        row = evaluated["per_task"][name]
        key = row["metric"]
        rows.append({"task": name, "metric": key, "expert_alone": row["oracle"][key],
                     "mixture": row["mixture"][key], "gap": row["mixture"][key] - row["oracle"][key],
                     "routing_accuracy": row["routing_accuracy"], "rows": row["rows"],
                     "expert_at_training": run.trainings[(name, "tt-lora")]["value"]})
    adapter_experts = {name: run.expert(name, "adapter") for name in names}
    fusion_rows = []
    for task in b.fusion_tasks:
        stage = f"AdapterFusion over {len(names)} adapters for {task}"
        result = baselines.train_fusion(run.backbone, adapter_experts, {task: run.data(task, "train")},
                                        _fusion_config(run, b.steps),
                                        progress=_fusion_progress(run, stage), should_stop=run.should_stop)
        scored = baselines.evaluate_fusion(result, run.backbone, run.data(task, "validation"), task)
        key = tasks.primary_metric(task)
        alone = adapter_experts[task].metrics[key]
        fusion_rows.append({"task": task, "metric": key, "adapter_alone": alone,
                            "fusion": scored["metrics"][key], "gap": scored["metrics"][key] - alone,
                            "train_seconds": round(result.train_seconds, 2),
                            "params": result.params(adapter_experts)})
    mean_gap = _mean(r["gap"] for r in rows)
    fusion_gap = _mean(r["gap"] for r in fusion_rows) if fusion_rows else None
    undefined = [r["task"] for r in rows if not math.isfinite(r["gap"])]
    return {
        "experts": list(names), "router": {"variant": variant, "layer": layer,
                                           "accuracy": fitted["report"].accuracy,
                                           "confusion": fitted["report"].confusion,
                                           "params": routers.router_params(fitted["router"])},
        "routing_accuracy": evaluated["routing_accuracy"], "rows": rows, "mean_gap": mean_gap,
        "fusion_rows": fusion_rows, "fusion_mean_gap": fusion_gap,
        "claim": {"paper": "the mixture keeps each expert's score (read here: mean drop at most 1 "
                           "point), while AdapterFusion loses some of its adapters' scores",
                  "verdict": _verdict(mean_gap >= -0.01 and (fusion_gap is None or fusion_gap < 0),
                                      mean_gap >= -0.01 or (fusion_gap is not None and fusion_gap < 0)),
                  "evidence": (f"mixture − expert alone: mean {mean_gap:+.3f} over {len(names)} tasks "
                               f"(routing accuracy {evaluated['routing_accuracy']:.3f} among "
                               f"{len(names)} experts)"
                               + (f"; AdapterFusion − adapter alone: mean {fusion_gap:+.3f} over "
                                  f"{len(fusion_rows)} task(s)" if fusion_rows else ""))},
        "differences": _setup_differences(run) + [
            f"Router: our {variant} variant at layer {layer}, trained on {b.router_train_rows} inputs "
            f"a task. The expert alone is the mixture with the right expert forced (oracle).",
            f"AdapterFusion (adapters library, Fuse over all {len(names)} adapters, dynamic fusion): "
            f"only the fusion layers and a new head trained, {b.steps} steps, lr 5e-4, for "
            f"{', '.join(b.fusion_tasks)} only (time budget)."] + (
            [f"No mixture score for {', '.join(undefined)}: a regression task's misrouted rows get no "
             "prediction (moe.evaluate_mixture), so its correlation is undefined (–); the means leave "
             "it out."] if undefined else []),
    }


def _mixed_prediction(row: dict, task: str, expert: experts.Expert, true) -> int | float:
    """A routed row's answer as the task's label index; answered by another expert: wrong."""
    if expert.is_regression:
        return float(row["label"]) if row["task"] == task else float("nan")
    if row["task"] != task:
        return (int(true) + 1) % expert.num_labels
    return expert.label_names.index(row["label"])


def exp_mixed(run: _Run) -> dict:
    """One test set mixing six tasks: TT-LoRA MoE (routed) vs one AdapterFusion over six adapters."""
    b = run.budget
    names = list(SIX_TASKS)
    if run.mixture_router is None:
        raise ReportError(f"no {MIXTURE_ROUTER[0]} router at layer {MIXTURE_ROUTER[1]} from the router "
                          "experiment: keep that layer in the budget's router_layers")
    valid = {task: run.data(task, "validation") for task in names}
    rows = [(task, i) for task in names for i in range(len(valid[task]))]
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(b.seed)).tolist()
    rows = [rows[i] for i in order]                                   # (task, row) in test order
    texts = [valid[t].texts[i] for t, i in rows]
    pairs = [valid[t].text_pairs[i] if valid[t].text_pairs else None for t, i in rows]
    run.tell("mixed test set: TT-LoRA MoE", 0, 1)
    with tempfile.TemporaryDirectory() as tmp:
        mixture = _mixture(run, names, run.mixture_router, Path(tmp) / "pack", {})
        answers = mixture.predict(texts, pairs)
        moe_params = sum(e.trainable_params() for e in mixture.experts)
    router_params = routers.router_params(run.mixture_router)
    adapter_experts = {t: run.expert(t, "adapter") for t in names}
    stage = "mixed test set: AdapterFusion over six adapters"
    fusion = baselines.train_fusion(run.backbone, adapter_experts,
                                    {t: run.data(t, "train") for t in names},
                                    _fusion_config(run, b.steps * len(names)),
                                    progress=_fusion_progress(run, stage), should_stop=run.should_stop)
    per_task = []
    for task in names:
        data = valid[task]
        expert = run.expert(task, "tt-lora")
        mine = [k for k, (t, _) in enumerate(rows) if t == task]
        preds = [_mixed_prediction(answers[k], task, expert, data.labels[rows[k][1]]) for k in mine]
        labels = [data.labels[rows[k][1]] for k in mine]
        key = tasks.primary_metric(task)
        moe_value = tasks.compute_metrics(task, labels, preds)[key]
        fusion_value = baselines.evaluate_fusion(fusion, run.backbone, data, task)["metrics"][key]
        per_task.append({"task": task, "metric": key, "rows": len(mine), "moe": moe_value,
                         "fusion": fusion_value, "gain_points": 100 * (moe_value - fusion_value),
                         "routed_right": sum(answers[k]["task"] == task for k in mine) / len(mine)})
    moe_mean = _mean(r["moe"] for r in per_task)
    fusion_mean = _mean(r["fusion"] for r in per_task)
    gain = 100 * (moe_mean - fusion_mean)
    fusion_params = fusion.params(adapter_experts)
    ours = moe_params + router_params
    return {
        "tasks": names, "rows": len(rows), "per_task": per_task, "moe_mean": moe_mean,
        "fusion_mean": fusion_mean, "gain_points": gain, "paper_gain_points": PAPER["mixed_gain_points"],
        "params": {"moe_experts": moe_params, "moe_router": router_params, "moe_total": ours,
                   **{f"fusion_{k}": v for k, v in fusion_params.items()},
                   "moe_fraction_of_fusion": ours / fusion_params["total"],
                   "paper_moe_fraction_of_fusion": PAPER["moe_fraction_of_adapterfusion"]},
        "fusion_steps": fusion.config.steps, "fusion_train_seconds": round(fusion.train_seconds, 2),
        "claim": {"paper": "TT-LoRA MoE beats AdapterFusion on a mixed-task test set by about 4 "
                           "points on average",
                  "verdict": _verdict(gain >= PAPER["mixed_gain_points"], gain > 0),
                  "evidence": (f"average {moe_mean:.3f} (MoE) vs {fusion_mean:.3f} (AdapterFusion): "
                               f"{gain:+.1f} points over {len(names)} tasks, {len(rows)} inputs")},
        "differences": _setup_differences(run) + [
            f"Test set: the {b.eval_rows} validation rows a task of the six tasks, shuffled together "
            f"(seed {b.seed}). The MoE routes each row itself ({MIXTURE_ROUTER[0]} router, layer "
            f"{MIXTURE_ROUTER[1]}, from experiment 3); a misrouted row counts as wrong. AdapterFusion "
            "answers each row with its own task's head: it is told the task.",
            f"AdapterFusion: one fusion over the six adapters + a head per task, {b.steps} × 6 = "
            f"{b.steps * len(names)} steps of mixed batches (each row's loss from its task's head), "
            "lr 5e-4. Parameters: ours = experts (cores + heads) + router; theirs = adapters + fusion "
            "layers + heads."],
    }


# ----------------------------------------------------------------------------- the run


def _check_data(data_dir: Path | None, needed: Sequence[str]) -> list[str]:
    available = tasks.available_tasks(data_dir)
    missing = [t for t in needed if t not in available]
    if missing:
        where = data_dir if data_dir is not None else tasks.default_data_dir()
        raise ReportError(f"task data missing in {where}: {', '.join(missing)} (has: "
                          f"{', '.join(available) or 'nothing'}); set --data-dir or $TTMOE_DATA_DIR")
    return available


def resolve_budget(budget: str | ReportBudget) -> ReportBudget:
    if isinstance(budget, ReportBudget):
        return budget
    try:
        return BUDGETS[budget]
    except KeyError:
        raise ReportError(f"unknown budget {budget!r}: use one of {', '.join(BUDGETS)}") from None


def run_report(budget: str | ReportBudget, out: str | Path, progress: Progress | None = None,
               data_dir: str | Path | None = None,
               should_stop: Callable[[], bool] | None = None) -> dict:
    """Run the five experiments, write results.json, paper_tables.md and figures to ``out``.

    ``progress(stage, done, total)`` is called often; ``should_stop()`` (checked as often) cancels
    with ReportError. Returns the results dict (what results.json holds).
    """
    b = resolve_budget(budget)
    data_path = None if data_dir is None else Path(data_dir).expanduser()
    fixed = list(b.comparison_tasks or ()) + list(SIX_TASKS) + list(b.fusion_tasks)
    available = _check_data(data_path, fixed)
    comparison = list(b.comparison_tasks) if b.comparison_tasks else available
    integration = [t for t in tasks.TASKS if t in set(comparison) | set(SIX_TASKS)]
    if len(integration) < b.min_integration_experts:
        raise ReportError(f"the {b.name} budget needs at least {b.min_integration_experts} experts in "
                          f"the mixture, the data has {len(integration)} tasks")
    if set(b.fusion_tasks) - set(integration):
        raise ReportError(f"fusion tasks {sorted(set(b.fusion_tasks) - set(integration))} have no expert")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started, t0 = _now(), time.perf_counter()
    backbone = load_backbone()
    run = _Run(budget=b, backbone=backbone, data_dir=data_path, progress=progress,
               should_stop=should_stop, comparison_tasks=comparison, integration_tasks=integration)
    meta = {"budget": b.name, "settings": b.to_dict(), "seed": b.seed, "started": started,
            "machine": machine_info(backbone), "base_model": backbone.info.to_dict(),
            "data_dir": str(data_path or tasks.default_data_dir()),
            "command": f"python -m ttmoe_core report --budget {b.name}"}
    results: dict = {"meta": meta, "paper": dict(PAPER), "experiments": {}}
    steps = [("contraction", exp_contraction), ("methods", exp_methods), ("routers", exp_routers),
             ("integration", exp_integration), ("mixed", exp_mixed)]
    for done, (name, fn) in enumerate(steps):
        run.tell(f"experiment {done + 1}/{len(steps)}: {name}", done, len(steps))
        results["experiments"][name] = _timed(run, name, fn)
    results["trainings"] = list(run.trainings.values())
    meta["finished"] = _now()
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    run.tell("writing figures and tables", 0, 1)
    results["figures"] = write_figures(build_figures(results), out / FIGURES_DIR)
    store.write_json(out / RESULTS_FILE, results)
    _write_text(out / MARKDOWN_FILE, render_markdown(results))
    run.tell("done", 1, 1)
    return results


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def report_job(job, budget: str, out: str | Path, data_dir: str | Path | None = None) -> dict:
    """``jobs.Job`` function: ``run_report`` with progress events ``stage``, ``done``, ``total``."""
    results = run_report(budget, out, data_dir=data_dir, should_stop=job.cancelled,
                         progress=lambda stage, done, total: job.report(stage=stage, done=done, total=total))
    return {"out": str(out), "seconds": results["meta"]["seconds"]}


# ----------------------------------------------------------------------------- markdown

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
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return FORMATS[kind](value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _run_line(exp: dict, meta: dict) -> str:
    run = exp["run"]
    load = run.get("load_average_at_start")
    return (f"*Run: {run['started']}, {run['seconds']} s, seed {meta['seed']}, budget "
            f"`{meta['budget']}`" + (f", load average {load} at start" if load is not None else "") + ".*")


def _claim(exp: dict) -> str:
    claim = exp["claim"]
    return f"**Paper's claim:** {claim['paper']}. **Here it {claim['verdict']}:** {claim['evidence']}."


def _differences(exp: dict) -> str:
    return "Differences from the paper's setup:\n\n" + "\n".join(f"- {d}" for d in exp["differences"])


def _figure_links(results: dict, names: Sequence[str]) -> str:
    figures = results.get("figures") or {}
    lines = []
    for name in names:
        entry = figures.get(name)
        if not entry:
            continue
        if entry.get("png"):
            lines.append(f"![{name}]({entry['png']})")
        lines.append(f"[{name} (interactive)]({entry['html']})")
    return "\n\n".join(lines)


def _section_contraction(exp: dict) -> list[str]:
    rows = [[str(r["batch_size"]), fmt(r["contract_ms"], "f2"), fmt(r["reconstruct_ms"], "f2"),
             fmt(r["contract_ms_per_input"], "f3"), fmt(r["reconstruct_ms_per_input"], "f3"),
             fmt(r["ratio"], "ratio"), fmt(r["max_abs_diff"], "sci"), fmt(r["hidden_max_abs_diff"], "sci"),
             fmt(r["hidden_max_abs"], "f2")] for r in exp["rows"]]
    return [_table(["batch size", "contraction ms", "reconstruction ms", "contraction ms/input",
                    "reconstruction ms/input", "reconstruction / contraction", "max abs diff (logits)",
                    "max abs diff (last hidden)", "max abs last hidden"], rows)]


def _section_methods(exp: dict) -> list[str]:
    rows = [[r["task"], METHOD_LABELS[r["method"]], fmt(r["trainable_params"], "int"),
             fmt(r["adapter_params"], "int"), fmt(r["fraction_of_lora_adapter"], "pct1"), r["metric"],
             fmt(r["value"], "f3"), fmt(r["train_seconds"], "f1"), fmt(r["peak_growth_mib"], "f1")]
            for r in exp["rows"]]
    per_task = _table(["task", "method", "trainable (adapter + head)", "adapter only",
                       "adapter % of LoRA", "metric", "value", "train s", "peak memory growth MiB"], rows)
    summary = _table(["method", "tasks", "adapter params", "mean metric", "mean train s",
                      "mean peak growth MiB"],
                     [[METHOD_LABELS[s["method"]], str(s["tasks"]), fmt(s["adapter_params"], "int"),
                       fmt(s["mean_value"], "f3"), fmt(s["mean_train_seconds"], "f1"),
                       fmt(s["mean_peak_growth_mib"], "f1")] for s in exp["summary"]])
    paper = exp["paper"]
    ratios = _table(["model", "TT-LoRA params", "LoRA params", "adapter params", "TT-LoRA % of LoRA",
                     "TT-LoRA % of adapter", "paper: % of LoRA", "paper: % of adapters"],
                    [[r["model"], fmt(r["tt_lora"], "int"), fmt(r["lora"], "int"),
                      fmt(r["adapter"], "int"), fmt(r["fraction_of_lora"], "pct2"),
                      fmt(r["fraction_of_adapter"], "pct2"),
                      fmt(paper["tt_lora_fraction_of_lora"], "pct1"),
                      fmt(paper["tt_lora_fraction_of_adapter"], "pct1")] for r in exp["ratios"]])
    return ["Per task and method (adapter parameters without the task head; the metric is the "
            "task's primary one on its validation rows):", per_task, "Mean over tasks:", summary,
            "Parameter ratios (adapter only; LLaMA-3.2-1B counted by `budget.compute_budget` with the "
            "paper's TT shapes, rank 5, q/v, LoRA r16):", ratios]


def _section_routers(exp: dict) -> list[str]:
    rows = [[r["variant"], str(r["layer"]), fmt(r["cost_fraction"], "f2"), fmt(r["params"], "int"),
             fmt(r["accuracy"], "f3"), fmt(r["ms_per_input"], "f2"), fmt(r["fit_seconds"], "f1")]
            for r in exp["rows"]]
    main = _table(["variant", "layer k", "fraction of a full pass", "params", "held-out accuracy",
                   "ms per input", "fit s"], rows)
    best = [r for r in exp["rows"] if r["layer"] == exp["best_layer"][r["variant"]]]
    recall = _table(["variant (best layer)"] + list(exp["names"]),
                    [[f"{r['variant']} (k={r['layer']})"] + [fmt(r["per_task"][n], "f3") for n in exp["names"]]
                     for r in best])
    return [f"Held-out routing accuracy over {exp['held_out_rows']} inputs ({exp['train_rows']} to "
            "train), router parameters and measured cost:", main,
            "Recall per task (share of each task's inputs sent to its expert), best layer of each variant:",
            recall]


def _section_integration(exp: dict) -> list[str]:
    rows = [[r["task"], r["metric"], fmt(r["expert_alone"], "f3"), fmt(r["mixture"], "f3"),
             fmt(r["gap"], "signed3"), fmt(r["routing_accuracy"], "f3")] for r in exp["rows"]]
    out = [f"Mixture of {len(exp['experts'])} TT-LoRA experts, router {exp['router']['variant']} at layer "
           f"{exp['router']['layer']} (held-out routing accuracy {exp['router']['accuracy']:.3f}):",
           _table(["task", "metric", "expert alone", "through the mixture", "mixture − alone",
                   "routed right"], rows)]
    if exp["fusion_rows"]:
        frows = [[r["task"], r["metric"], fmt(r["adapter_alone"], "f3"), fmt(r["fusion"], "f3"),
                  fmt(r["gap"], "signed3"), fmt(r["params"]["trained"], "int"), fmt(r["train_seconds"], "f1")]
                 for r in exp["fusion_rows"]]
        out += [f"AdapterFusion over the same {len(exp['experts'])} tasks' adapters, trained for one task:",
                _table(["task", "metric", "adapter alone", "AdapterFusion", "fusion − alone",
                        "trained params (fusion + head)", "train s"], frows)]
    return out


def _section_mixed(exp: dict) -> list[str]:
    rows = [[r["task"], r["metric"], str(r["rows"]), fmt(r["moe"], "f3"), fmt(r["fusion"], "f3"),
             fmt(r["gain_points"], "signed1"), fmt(r["routed_right"], "f3")] for r in exp["per_task"]]
    rows.append(["**average**", "", "", fmt(exp["moe_mean"], "f3"), fmt(exp["fusion_mean"], "f3"),
                 fmt(exp["gain_points"], "signed1"), ""])
    p = exp["params"]
    params = _table(["system", "parameters", "of which trained for the mix"],
                    [["TT-LoRA MoE (experts + router)", fmt(p["moe_total"], "int"), fmt(p["moe_router"], "int")],
                     ["AdapterFusion (adapters + fusion + heads)", fmt(p["fusion_total"], "int"),
                      fmt(p["fusion_trained"], "int")]])
    ratio = _table(["MoE parameters % of AdapterFusion", "paper"],
                   [[fmt(p["moe_fraction_of_fusion"], "pct2"), fmt(p["paper_moe_fraction_of_fusion"], "pct2")]])
    return [f"{exp['rows']} inputs of six tasks in one shuffled test set; per-task metric and average "
            f"(gain in points = 100 × difference; paper: {exp['paper_gain_points']:+.1f}):",
            _table(["task", "metric", "rows", "TT-LoRA MoE", "AdapterFusion", "MoE − fusion (points)",
                    "routed right"], rows), "Parameters:", params, ratio]


_SECTION_BODIES = {"contraction": _section_contraction, "methods": _section_methods,
                   "routers": _section_routers, "integration": _section_integration,
                   "mixed": _section_mixed}
SECTION_FIGURES = {"contraction": ("contraction_ms", "contraction_ratio"),
                   "methods": ("methods_metric", "methods_params"),
                   "routers": ("router_frontier", *(f"router_confusion_{v}" for v in routers.VARIANTS)),
                   "integration": ("integration", "integration_fusion"),
                   "mixed": ("mixed",)}
"""The figures (``build_figures`` names) of each section, in display order."""


def render_section(results: dict, name: str, figure_links: bool = True) -> str:
    """One experiment's section: title, run line, tables, claim, differences (+ figure links)."""
    exp = results["experiments"][name]
    parts = [f"## {SECTION_TITLES[name]}", _run_line(exp, results["meta"]), *_SECTION_BODIES[name](exp),
             _claim(exp), _differences(exp)]
    links = _figure_links(results, SECTION_FIGURES[name]) if figure_links else ""
    return "\n\n".join(parts + ([links] if links else []))


def render_markdown(results: dict) -> str:
    """The whole report as Markdown (numbers only from ``results``, formatted by ``FORMATS``)."""
    meta, machine = results["meta"], results["meta"]["machine"]
    where = machine.get("gpu") or f"{machine['cpu']}, {machine['usable_cpus'] or machine['logical_cpus']} usable cores"
    settings = ", ".join(f"{k}={v}" for k, v in meta["settings"].items() if k != "name")
    header = [
        "# TT-LoRA MoE: the paper's tables re-run on the embedded model",
        f"Generated by `{meta['command']}` on {meta['started']} (finished {meta['finished']}, "
        f"{meta['seconds']} s in all).",
        f"Machine: {where}; {machine['platform']}; torch {machine['torch']} with "
        f"{machine['torch_threads']} thread(s) on {machine['device']}; load average "
        f"{machine['load_average_at_start']} at start (other jobs share the machine: timings are "
        "comparable within one run, side by side, not across runs).",
        f"Base model: {meta['base_model']['name']}. Data: {meta['data_dir']}. Seed {meta['seed']}. "
        f"Budget `{meta['budget']}`: {settings}.",
        "Paper: Kunwar et al., *TT-LoRA MoE* (arXiv 2504.21190), LLaMA-3.2-1B on 4 GPUs. Every "
        "number below comes from this run (`results.json`); the paper's are quoted only where named.",
    ]
    sections = [render_section(results, name) for name in SECTIONS if name in results["experiments"]]
    trainings = results.get("trainings") or []
    appendix = []
    if trainings:
        appendix = ["## Training runs of this report",
                    _table(["task", "method", "started", "train rows", "train s", "wall s", "metric",
                            "value", "peak memory growth MiB"],
                           [[t["task"], METHOD_LABELS[t["method"]], t["started"], fmt(t["train_rows"], "int"),
                             fmt(t["train_seconds"], "f1"), fmt(t["wall_seconds"], "f1"), t["metric"],
                             fmt(t["value"], "f3"), fmt(t["peak_growth_mib"], "f1")] for t in trainings])]
    return "\n\n".join(header + sections + appendix) + "\n"


# ----------------------------------------------------------------------------- figures


def _layout(fig, title: str, height: int):
    fig.update_layout(title=dict(text=title, x=0, xanchor="left"), height=height,
                      margin=dict(l=10, r=10, t=48, b=10))
    return fig


def _grouped_bar(categories: Sequence[str], series: Mapping[str, Sequence[float]], title: str,
                 y_title: str, log: bool = False):
    import plotly.graph_objects as go

    fig = go.Figure([go.Bar(x=list(categories), y=[float(v) if v is not None else None for v in values],
                            name=name) for name, values in series.items()])
    fig.update_layout(barmode="group", legend=dict(orientation="h", y=1.02, x=1, xanchor="right",
                                                   yanchor="bottom"))
    fig.update_xaxes(type="category")
    fig.update_yaxes(title=y_title, type="log" if log else "linear")
    return _layout(fig, title, height=380)


def build_figures(results: dict) -> dict:
    """Plotly figures of the experiments present in ``results`` (pure: data in, figures out)."""
    import plotly.graph_objects as go

    from . import figures as figs

    out = {}
    exps = results["experiments"]
    if "contraction" in exps:
        rows = exps["contraction"]["rows"]
        sizes = [r["batch_size"] for r in rows]
        fig = go.Figure([go.Scatter(x=sizes, y=[r[key] for r in rows], mode="lines+markers", name=name)
                         for key, name in (("contract_ms", "contraction"), ("reconstruct_ms", "reconstruction"))])
        fig.update_xaxes(type="log", title="batch size")
        fig.update_yaxes(type="log", title="ms per batch (median)")
        out["contraction_ms"] = _layout(fig, "Inference time: contraction vs reconstruction", 380)
        out["contraction_ratio"] = _grouped_bar([str(s) for s in sizes], {"reconstruction / contraction":
                                                [r["ratio"] for r in rows]},
                                                "Reconstruction time / contraction time", "ratio")
    if "methods" in exps:
        exp = exps["methods"]
        series = {METHOD_LABELS[m]: [next(r["value"] for r in exp["rows"] if r["task"] == t and r["method"] == m)
                                     for t in exp["tasks"]] for m in METHODS}
        out["methods_metric"] = _grouped_bar(exp["tasks"], series, "Primary metric per task and method",
                                             "metric (validation)")
        out["methods_params"] = _grouped_bar(
            [r["model"] for r in exp["ratios"]],
            {"TT-LoRA": [r["tt_lora"] for r in exp["ratios"]], "LoRA": [r["lora"] for r in exp["ratios"]],
             "Adapter": [r["adapter"] for r in exp["ratios"]]},
            "Adapter parameters by method (log scale)", "parameters", log=True)
    if "routers" in exps:
        exp = exps["routers"]
        fig = go.Figure([go.Scatter(x=[r["ms_per_input"] for r in exp["rows"] if r["variant"] == v],
                                    y=[r["accuracy"] for r in exp["rows"] if r["variant"] == v],
                                    text=[f"k={r['layer']}" for r in exp["rows"] if r["variant"] == v],
                                    mode="markers+text", textposition="top center", name=v)
                         for v in routers.VARIANTS])
        fig.update_xaxes(title="ms per input (tokenize + base up to layer k + router)")
        fig.update_yaxes(title="held-out routing accuracy")
        out["router_frontier"] = _layout(fig, "Router variants: accuracy vs cost", 400)
        for row in exp["rows"]:
            if row["layer"] == exp["best_layer"][row["variant"]]:
                out[f"router_confusion_{row['variant']}"] = figs.confusion_heatmap(
                    exp["names"], row["confusion"], normalise=True,
                    title=f"{row['variant']} router, layer {row['layer']}: accuracy {row['accuracy']:.1%}")
    if "integration" in exps:
        exp = exps["integration"]
        out["integration"] = _grouped_bar(
            [r["task"] for r in exp["rows"]],
            {"expert alone": [r["expert_alone"] for r in exp["rows"]],
             "through the mixture": [r["mixture"] for r in exp["rows"]]},
            f"Each task alone vs through the mixture of {len(exp['experts'])} experts", "metric")
        if exp["fusion_rows"]:
            out["integration_fusion"] = _grouped_bar(
                [r["task"] for r in exp["fusion_rows"]],
                {"adapter alone": [r["adapter_alone"] for r in exp["fusion_rows"]],
                 "AdapterFusion": [r["fusion"] for r in exp["fusion_rows"]]},
                "Adapter alone vs AdapterFusion over all adapters", "metric")
    if "mixed" in exps:
        exp = exps["mixed"]
        out["mixed"] = _grouped_bar(
            [r["task"] for r in exp["per_task"]] + ["average"],
            {"TT-LoRA MoE": [r["moe"] for r in exp["per_task"]] + [exp["moe_mean"]],
             "AdapterFusion": [r["fusion"] for r in exp["per_task"]] + [exp["fusion_mean"]]},
            "Mixed-task test set: TT-LoRA MoE vs AdapterFusion", "metric")
    return out


def _png(figure, path: Path) -> None:
    """A static rendering of a single-axes plotly figure (bar, scatter, heatmap traces) via matplotlib."""
    import numpy as np
    from matplotlib.figure import Figure

    layout = figure.layout
    heatmap = any(t.type == "heatmap" for t in figure.data)
    canvas = Figure(figsize=(6.4, 5.6) if heatmap else (8, 4.5), layout="constrained")
    ax = canvas.subplots()
    bars = [t for t in figure.data if t.type == "bar"]
    for trace in figure.data:
        if trace.type == "heatmap":
            z = np.array(trace.z, dtype=float)
            ax.imshow(z, cmap="Blues", vmin=0, vmax=max(1.0, float(np.nanmax(z))) if z.size else 1)
            ax.set_xticks(range(len(trace.x)), list(trace.x), rotation=45, ha="right")
            ax.set_yticks(range(len(trace.y)), list(trace.y))
            for i, row in enumerate(trace.text or []):
                for j, text in enumerate(row):
                    ax.text(j, i, text, ha="center", va="center", fontsize=8,
                            color="white" if z[i, j] > 0.6 * np.nanmax(z) else "black")
        elif trace.type == "bar":
            k, width = bars.index(trace), 0.8 / len(bars)
            positions = np.arange(len(trace.x)) + (k - (len(bars) - 1) / 2) * width
            ax.bar(positions, [np.nan if v is None else v for v in trace.y], width, label=trace.name)
            ax.set_xticks(range(len(trace.x)), list(trace.x), rotation=30 if len(trace.x) > 6 else 0,
                          ha="right" if len(trace.x) > 6 else "center")
        elif trace.type == "scatter":
            mode = trace.mode or "lines+markers"
            ax.plot(list(trace.x), list(trace.y), marker="o" if "markers" in mode else None,
                    linestyle="-" if "lines" in mode else "none", label=trace.name)
            if "text" in mode and trace.text is not None:
                for x, y, text in zip(trace.x, trace.y, trace.text):
                    ax.annotate(text, (x, y), textcoords="offset points", xytext=(0, 5), ha="center",
                                fontsize=8)
    if layout.xaxis.type == "log":
        ax.set_xscale("log", base=2)
    if layout.yaxis.type == "log":
        ax.set_yscale("log")
    ax.set_xlabel(layout.xaxis.title.text or "")
    ax.set_ylabel(layout.yaxis.title.text or "")
    ax.set_title(layout.title.text or "", loc="left", fontsize=11)
    if sum(1 for t in figure.data if t.name) > 1:
        ax.legend(fontsize=8)
    canvas.savefig(path, dpi=110)


def png_available() -> bool:
    """Whether PNGs can be written (matplotlib installed)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def write_figures(figures: Mapping, folder: Path) -> dict:
    """``figures/<name>.html`` (plotly.min.js beside them) and ``.png``; paths relative to the report."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    png = png_available()
    for name, figure in figures.items():
        figure.write_html(folder / f"{name}.html", include_plotlyjs="directory", full_html=True)
        entry = {"html": f"{folder.name}/{name}.html", "png": None}
        if png:
            _png(figure, folder / f"{name}.png")
            entry["png"] = f"{folder.name}/{name}.png"
        written[name] = entry
    return written
