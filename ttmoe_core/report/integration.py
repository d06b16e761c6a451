"""Experiment 4 (paper Table 6, expert integration): does joining a mixture cost an expert its score?

For each seed of the budget, each task runs through the mixture of that seed's TT-LoRA experts
(the shipped recipe's router, trained once: ``mixture_seeds.recipe_router``) and through its expert
alone (the mixture with the right expert forced); per task and on average, mean ± sample std
over seeds. Beside it, AdapterFusion over the same tasks' adapters (seed ``b.seed``'s only),
trained for one task under the experts' stopping rule, vs that task's adapter alone.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from .. import moe as moe_mod
from .. import tasks
from . import mixture_seeds
from .experiment import Run, mean, setup_differences, verdict

ROW_KEYS = ("expert_alone", "mixture", "gap", "routing_accuracy", "rows", "expert_at_training")
"""The numbers of a per-seed row folded over seeds (``mixture_seeds.over_seeds``)."""


def seed_mixture(run: Run, names: list[str], seed: int, router: dict) -> dict:
    """Seed ``seed``'s mixture of ``names``' TT-LoRA experts vs each expert alone: {"seed",
    "rows" (per task), "mean_gap", "routing_accuracy", "expert_params"}."""
    b = run.budget
    for name in names:
        run.expert(name, "tt-lora", seed=seed)
    run.tell(f"mixture vs expert alone (seed {seed})", 0, 1)
    with tempfile.TemporaryDirectory() as tmp:
        mixture = run.mixture(names, router["router"], Path(tmp) / "pack",
                              {"accuracy": router["record"]["accuracy"]}, seed=seed)
        evaluated = moe_mod.evaluate_mixture(mixture, [(n, n) for n in names], b.eval_rows,
                                             run.data_dir, b.seed)
        expert_params = sum(e.trainable_params() for e in mixture.experts)
    rows = []
    for name in names:
        row = evaluated["per_task"][name]
        key = row["metric"]
        rows.append({"task": name, "metric": key, "expert_alone": row["oracle"][key],
                     "mixture": row["mixture"][key], "gap": row["mixture"][key] - row["oracle"][key],
                     "routing_accuracy": row["routing_accuracy"], "rows": row["rows"],
                     "expert_at_training": run.trainings[(name, "tt-lora", seed)]["value"]})
    return {"seed": seed, "rows": rows, "mean_gap": mean(r["gap"] for r in rows),
            "routing_accuracy": evaluated["routing_accuracy"], "expert_params": expert_params}


def exp_integration(run: Run) -> dict:
    """Each task through each seed's mixture of all experts vs alone; AdapterFusion vs its adapter."""
    b = run.budget
    names = run.integration_tasks
    router = mixture_seeds.recipe_router(run, names)
    record = router["record"]
    per_seed = [seed_mixture(run, names, seed, router) for seed in b.seeds]
    rows = mixture_seeds.over_seeds(per_seed, ROW_KEYS)
    aggregate = mixture_seeds.seed_summary(per_seed, ("mean_gap", "routing_accuracy"))
    mean_gap, gap_std = aggregate["mean_gap"], aggregate["mean_gap_std"]
    adapter_experts = {name: run.expert(name, "adapter") for name in names}
    fusion_rows = []
    for task in b.fusion_tasks:
        stage = f"AdapterFusion over {len(names)} adapters for {task}"
        scored = run.fusion_scores(f"integration-{task}", adapter_experts, [task], [task],
                                   b.fusion_budget, stage)
        key = tasks.primary_metric(task)
        alone = adapter_experts[task].metrics[key]
        value = scored["metrics"][task][key]
        fusion_rows.append({"task": task, "metric": key, "adapter_alone": alone,
                            "fusion": value, "gap": value - alone, "steps": scored["steps"],
                            "steps_run": scored["steps_run"], "best_step": scored["best_step"],
                            "train_seconds": scored["train_seconds"], "params": scored["params"]})
    fusion_gap = mean(r["gap"] for r in fusion_rows) if fusion_rows else None
    undefined = [r["task"] for r in rows if r["gap"] is None or not math.isfinite(r["gap"])]
    kept = sum(e["mean_gap"] >= -0.01 for e in per_seed)
    holds = mean_gap is not None and mean_gap >= -0.01
    per_seed_words = ", ".join(f"seed {e['seed']} {e['mean_gap']:+.3f}" for e in per_seed)
    expert_params = per_seed[0]["expert_params"]
    return {
        "experts": list(names), "seeds": list(b.seeds), "router": record,
        "routing_accuracy": aggregate["routing_accuracy"], "rows": rows, "mean_gap": mean_gap,
        "per_seed": per_seed, "aggregate": aggregate,
        "params": {"experts": expert_params, "router": record["params"],
                   "total": expert_params + record["params"]},
        "fusion_rows": fusion_rows, "fusion_mean_gap": fusion_gap,
        "claim": {"paper": "the mixture keeps each expert's score (read here: mean drop at most 1 "
                           "point, mean over seeds), while AdapterFusion loses some of its adapters' "
                           "scores",
                  "verdict": verdict(holds and (fusion_gap is None or fusion_gap < 0),
                                     holds or (fusion_gap is not None and fusion_gap < 0)),
                  "evidence": (f"mixture − expert alone over {len(per_seed)} seed(s): mean "
                               f"{mixture_seeds.pm(mean_gap, gap_std, '+.3f')} over {len(names)} tasks "
                               f"({per_seed_words}; at most 1 point lost in {kept} of {len(per_seed)} "
                               f"seeds); routing accuracy {aggregate['routing_accuracy']:.3f} among "
                               f"{len(names)} experts (held-out {record['accuracy']:.3f})"
                               + (f"; AdapterFusion (seed {b.seed}'s adapters) − adapter alone: mean "
                                  f"{fusion_gap:+.3f} over {len(fusion_rows)} task(s)" if fusion_rows
                                  else ""))},
        "differences": setup_differences(run) + [
            mixture_seeds.recipe_words(record) + " The expert alone is the mixture with the right expert "
            "forced (oracle). One mixture per seed: that seed's TT-LoRA experts and the same router.",
            f"AdapterFusion (adapters library, Fuse over all {len(names)} adapters, dynamic fusion): "
            f"only the fusion layers and a new head trained, lr 5e-4, under the experts' stopping rule "
            f"(cap {b.fusion_budget} steps; hold-out: the task's TRAIN rows the adapters held out; the "
            f"weights of the best evaluation kept), for {', '.join(b.fusion_tasks)} only (time budget); "
            f"one fusion over seed {b.seed}'s adapters, not one per seed (no seed spread)."] + (
            [f"No mixture score for {', '.join(undefined)}: a regression task's misrouted rows get no "
             "prediction (moe.evaluate_mixture), so its correlation is undefined (–); the means leave "
             "it out."] if undefined else []),
    }
