"""Experiment 2 (paper Tables 4 and 6): TT-LoRA vs LoRA (PEFT) vs a bottleneck adapter.

One expert per task, method and seed of the budget, all through the same training loop
(``experts.train_expert``) and stopping rule (a step cap; stop when the hold-out metric is
flat): per run the metric, steps run, best step, training and CPU time, peak memory; per (task,
method) their mean ± std over seeds (``seeds.aggregate``); per task TT-LoRA against each
baseline by ``seeds.SPREAD_RULE`` (``claim_per_task``); plus the parameter ratios counted by
``budget.compute_budget`` for the base model here and for the paper's LLaMA-3.2-1B.
"""

from __future__ import annotations

import math
import statistics

from .. import budget as param_budget
from . import seeds
from .experiment import Run, mean, setup_differences, verdict
from .plan import METHOD_LABELS, METHODS, PAPER


def _paper_budget_rows() -> list[dict]:
    """TT-LoRA vs LoRA vs adapters on LLaMA-3.2-1B through ``budget.compute_budget``."""
    model, targets = param_budget.PAPER_PRESET["model"], param_budget.PAPER_PRESET["targets"]
    tt = param_budget.compute_budget(**param_budget.PAPER_PRESET)
    lora = param_budget.compute_budget(model, "lora", targets=targets)
    rows = []
    for kind in param_budget.ADAPTER_KINDS:
        adapter = param_budget.compute_budget(model, "adapter", adapter_kind=kind, targets=targets)
        rows.append({"model": f"{model} (budget, {kind} adapter)", "tt_lora": tt.trainable_params,
                     "lora": lora.trainable_params, "adapter": adapter.trainable_params,
                     "fraction_of_lora": tt.trainable_params / lora.trainable_params,
                     "fraction_of_adapter": tt.trainable_params / adapter.trainable_params})
    return rows


def _lrs(rows: list[dict]) -> str:
    """The learning rate each method trained with, in words."""
    used = {r["method"]: r["lr"] for r in rows if r.get("lr") is not None}
    return ", ".join(f"{METHOD_LABELS[m]} {used[m]:g}" for m in METHODS if m in used) or "the methods' defaults"


def _memory_note(measure: str | None) -> str:
    """What the peak-memory column measures, for the differences list."""
    if measure is None:
        return "Peak memory: not measured in this budget (it runs each training in a fresh process)."
    if measure.startswith("CUDA"):
        return ("Peak memory: growth of torch.cuda.max_memory_allocated during training (it includes "
                "the copy of the base model each method trains on).")
    return ("Peak memory: growth of the peak resident memory (ru_maxrss) of a fresh process over its "
            "memory before training, after a warm-up pass; it includes the copy of the base model "
            "each method trains on and the activations; the paper reports GPU memory.")


def _sharing_note(rows: list[dict]) -> list[str]:
    """How many trainings shared the cores (``report --jobs``), when any did, and which did not."""
    shared = [r for r in rows if (r.get("side_by_side") or 1) > 1]
    if not shared:
        return []
    jobs = sorted({r["side_by_side"] for r in shared})
    threads = sorted({r["threads"] for r in shared if r.get("threads")})
    alone = [f"{r['task']} {METHOD_LABELS[r['method']]} seed {r['seed']}" for r in rows if r not in shared]
    return [f"{len(shared)} of {len(rows)} trainings ran side by side ({' or '.join(map(str, jobs))} at a "
            f"time, each in its own process with {' or '.join(map(str, threads)) or 'its share of the'} "
            "torch thread(s)): their CPU seconds are their own (one thread spends less CPU a step "
            "than two that wait on each other), their wall and training seconds include sharing "
            "the cores" + (f"; one at a time: {', '.join(alone)}." if alone else ".")]


MARGIN = 0.02     # "comparable": TT-LoRA at most 2 points below a baseline


def claim_per_task(aggregate: list[dict], tasks: list[str]) -> tuple[list[dict], list[dict]]:
    """(comparisons, outcomes): TT-LoRA against each baseline per task by ``seeds.SPREAD_RULE``,
    and per task the outcome against the weaker baseline (lower mean): ``within`` (at most
    ``MARGIN`` below), ``inside spread`` (more below, but the seed spread swallows the gap),
    ``below`` (more than ``MARGIN`` below and beyond the spread, or one seed)."""
    by = {(r["task"], r["method"]): r for r in aggregate}
    comparisons, outcomes = [], []
    for task in tasks:
        tt = by[(task, "tt-lora")]
        rows = []
        for baseline in METHODS[1:]:
            other = by[(task, baseline)]
            rule = seeds.compare(tt["value_mean"], tt["value_std"], other["value_mean"], other["value_std"])
            within = None if rule["difference"] is None else rule["difference"] >= -MARGIN - 1e-9
            rows.append({"task": task, "baseline": baseline, "metric": tt["metric"],
                         "tt_lora_mean": tt["value_mean"], "tt_lora_std": tt["value_std"],
                         "baseline_mean": other["value_mean"], "baseline_std": other["value_std"],
                         **rule, "within_margin": within})
        comparisons += rows
        weaker = min(rows, key=lambda r: -math.inf if r["baseline_mean"] is None else r["baseline_mean"])
        if weaker["within_margin"] is None:
            outcome = "not measured"
        elif weaker["within_margin"]:
            outcome = "within"
        else:
            outcome = "inside spread" if weaker["exceeds_spread"] is False else "below"
        outcomes.append({"task": task, "weaker_baseline": weaker["baseline"], "outcome": outcome,
                         "difference": weaker["difference"], "spread": weaker["spread"]})
    return comparisons, outcomes


def _pm(mean: float | None, std: float | None) -> str:
    """``0.804 ± 0.012`` (``0.804`` for one seed) for the claim's evidence."""
    if mean is None:
        return "–"
    return f"{mean:.3f}" + ("" if std is None else f" ± {std:.3f}")


def _task_evidence(outcome: dict, comparisons: list[dict]) -> str:
    """``sst2: TT-LoRA 0.804 ± 0.010 vs LoRA 0.808 ± 0.012, -0.4 points (within)``."""
    row = next(c for c in comparisons
               if c["task"] == outcome["task"] and c["baseline"] == outcome["weaker_baseline"])
    gap = "" if row["difference"] is None else f", {100 * row['difference']:+.1f} points"
    return (f"{row['task']}: TT-LoRA {_pm(row['tt_lora_mean'], row['tt_lora_std'])} vs "
            f"{METHOD_LABELS[row['baseline']]} {_pm(row['baseline_mean'], row['baseline_std'])}{gap} "
            f"({outcome['outcome']})")


def training_order(run: Run) -> list[tuple[str, str, int]]:
    """Experiment 2's (task, method, seed) trainings, seed-major: every task and method of the
    first seed before any of the second, so a long run stopped part-way (``report --status``)
    already holds one whole comparison."""
    return [(task, method, seed) for seed in run.budget.seeds for task in run.comparison_tasks
            for method in METHODS]


def exp_methods(run: Run) -> dict:
    """One expert per task, method and seed, same loop and stopping rule; mean ± std over seeds
    of the metric, steps, time; parameters and memory."""
    rows = []
    seed_list = list(run.budget.seeds)
    if run.jobs > 1:
        run.train_side_by_side(training_order(run), run.jobs)
    for seed in seed_list:                          # in ``training_order``'s order
        for task in run.comparison_tasks:
            by_method = {m: run.expert(task, m, measure_memory=True, seed=seed) for m in METHODS}
            lora = by_method["lora"]
            for method, expert in by_method.items():
                info = run.trainings[(task, method, seed)]
                rows.append({**{k: info.get(k) for k in (
                    "task", "method", "seed", "metric", "value", "steps_run", "best_step", "lr",
                    "train_seconds", "cpu_seconds", "wall_seconds", "peak_growth_mib", "memory_measure",
                    "trainable_params", "adapter_params", "train_rows", "eval_rows", "threads",
                    "side_by_side", "cpu")},
                    "fraction_of_lora_adapter": expert.adapter_params() / lora.adapter_params(),
                    "fraction_of_lora_trainable": expert.trainable_params() / lora.trainable_params()})
    aggregate = seeds.aggregate(rows)
    first = {(r["task"], r["method"]): r for r in reversed(rows)}          # each pair's first seed
    for entry in aggregate:
        row = first[(entry["task"], entry["method"])]
        entry.update({k: row[k] for k in ("adapter_params", "trainable_params", "fraction_of_lora_adapter",
                                           "train_rows", "eval_rows", "lr")})
    comparisons, outcomes = claim_per_task(aggregate, list(run.comparison_tasks))
    summary = []
    for method in METHODS:
        mine = [r for r in aggregate if r["method"] == method]
        memory = [r["peak_growth_mib_mean"] for r in mine if r["peak_growth_mib_mean"] is not None]
        summary.append({"method": method, "tasks": len(mine),
                        "adapter_params": mine[0]["adapter_params"],
                        "mean_value": mean(r["value_mean"] for r in mine),
                        "mean_train_seconds": statistics.fmean(r["train_seconds_mean"] for r in mine),
                        "mean_cpu_seconds": mean(r["cpu_seconds_mean"] for r in mine),
                        "mean_peak_growth_mib": statistics.fmean(memory) if memory else None})
    by = {s["method"]: s for s in summary}
    name = run.backbone.info.name
    measured = {"model": f"{name} (measured)", "tt_lora": by["tt-lora"]["adapter_params"],
                "lora": by["lora"]["adapter_params"], "adapter": by["adapter"]["adapter_params"]}
    counted = {}
    if name in param_budget.PRESETS:
        counted = {m.replace("-", "_"): param_budget.compute_budget(name, m).trainable_params for m in METHODS}
    ratios = [{**row, "fraction_of_lora": row["tt_lora"] / row["lora"],
               "fraction_of_adapter": row["tt_lora"] / row["adapter"]}
              for row in ([measured] + ([{"model": f"{name} (budget)", **counted}] if counted else []))]
    ratios += _paper_budget_rows()
    llama = next(r for r in ratios if r["model"].endswith("pfeiffer adapter)"))
    small_ratio = llama["fraction_of_lora"] <= 0.025 and llama["fraction_of_adapter"] <= 0.005
    count = {k: sum(o["outcome"] == k for o in outcomes) for k in ("within", "inside spread", "below")}
    comparable = count["below"] == 0 and count["within"] + count["inside spread"] > 0
    per_task = "; ".join(_task_evidence(o, comparisons) for o in outcomes)
    n_seeds = len(seed_list)
    return {
        "tasks": list(run.comparison_tasks), "seeds": seed_list, "rows": rows, "aggregate": aggregate,
        "comparisons": comparisons, "outcomes": outcomes, "spread_rule": seeds.SPREAD_RULE,
        "margin": MARGIN, "summary": summary, "ratios": ratios,
        "budget_matches_measured": (not counted) or all(counted[k] == measured[k] for k in counted),
        "paper": {k: PAPER[k] for k in ("tt_lora_fraction_of_lora", "tt_lora_fraction_of_adapter")},
        "claim": {"paper": "TT-LoRA needs about 2% of LoRA's and 0.3% of adapters' parameters and "
                           "scores comparably (read here, per task: mean metric over seeds at most 2 "
                           "points below the weaker baseline, or a gap the seed spread swallows)",
                  "verdict": verdict(comparable and small_ratio,
                                     small_ratio or count["within"] + count["inside spread"] > 0),
                  "evidence": (f"over {n_seeds} seed(s), mean ± std, against the weaker baseline: "
                               f"{per_task}. Within 2 points on "
                               f"{count['within']} of {len(outcomes)} task(s), more than 2 points below "
                               f"but inside the seed spread on {count['inside spread']}, below beyond "
                               f"the spread on {count['below']} (rule: {seeds.SPREAD_RULE}). TT-LoRA "
                               f"parameters {ratios[0]['fraction_of_lora']:.1%} of LoRA and "
                               f"{ratios[0]['fraction_of_adapter']:.1%} of the adapter on {name}, "
                               f"{llama['fraction_of_lora']:.2%} and {llama['fraction_of_adapter']:.2%} "
                               "on LLaMA-3.2-1B (budget)")},
        "differences": setup_differences(run) + [
            "Same loop and stopping rule for the three methods (experts.train_expert: AdamW, 6% "
            "warm-up, linear decay, frozen base in eval mode, head with dropout 0.1 on the mean-pooled "
            "last hidden state); learning rates " + _lrs(rows) + " (the paper's: TT-LoRA 5e-3 r5 α16, "
            "LoRA 5e-4 r16 α8; adapter: Pfeiffer seq_bn, reduction 16, 5e-4).",
            _memory_note(rows[0]["memory_measure"])] + _sharing_note(rows),
    }
