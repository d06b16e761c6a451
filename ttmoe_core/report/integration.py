"""Experiment 4 (paper Table 6, expert integration): does joining a mixture cost an expert its score?

Each task runs through the mixture (a router over every task's TT-LoRA expert) and through its
expert alone (the mixture with the right expert forced); beside it, AdapterFusion over the same
tasks' adapters, trained for one task, vs that task's adapter alone.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from .. import moe as moe_mod
from .. import tasks
from ..routing import RouterConfig, params, sweep_layers
from .experiment import Run, mean, setup_differences, verdict
from .plan import MIXTURE_ROUTER


def exp_integration(run: Run) -> dict:
    """Each task through the mixture of all experts vs alone; AdapterFusion vs its adapter."""
    b = run.budget
    names = run.integration_tasks
    variant, layer = MIXTURE_ROUTER
    train, held = run.routing(names)
    for name in names:
        run.expert(name, "tt-lora")
    run.tell(f"router over {len(names)} experts", 0, 1)
    config = RouterConfig(variant=variant, layer=layer, epochs=b.router_epochs, seed=b.seed,
                          max_length=b.max_length)
    fitted = sweep_layers(config, [layer], run.backbone, train, held)[0]
    with tempfile.TemporaryDirectory() as tmp:
        mixture = run.mixture(names, fitted["router"], Path(tmp) / "pack",
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
                     "expert_at_training": run.trainings[(name, "tt-lora", b.seed)]["value"]})
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
                            "fusion": value, "gap": value - alone,
                            "train_seconds": scored["train_seconds"], "params": scored["params"]})
    mean_gap = mean(r["gap"] for r in rows)
    fusion_gap = mean(r["gap"] for r in fusion_rows) if fusion_rows else None
    undefined = [r["task"] for r in rows if not math.isfinite(r["gap"])]
    return {
        "experts": list(names), "router": {"variant": variant, "layer": layer,
                                           "accuracy": fitted["report"].accuracy,
                                           "confusion": fitted["report"].confusion,
                                           "params": params(fitted["router"])},
        "routing_accuracy": evaluated["routing_accuracy"], "rows": rows, "mean_gap": mean_gap,
        "fusion_rows": fusion_rows, "fusion_mean_gap": fusion_gap,
        "claim": {"paper": "the mixture keeps each expert's score (read here: mean drop at most 1 "
                           "point), while AdapterFusion loses some of its adapters' scores",
                  "verdict": verdict(mean_gap >= -0.01 and (fusion_gap is None or fusion_gap < 0),
                                     mean_gap >= -0.01 or (fusion_gap is not None and fusion_gap < 0)),
                  "evidence": (f"mixture − expert alone: mean {mean_gap:+.3f} over {len(names)} tasks "
                               f"(routing accuracy {evaluated['routing_accuracy']:.3f} among "
                               f"{len(names)} experts)"
                               + (f"; AdapterFusion − adapter alone: mean {fusion_gap:+.3f} over "
                                  f"{len(fusion_rows)} task(s)" if fusion_rows else ""))},
        "differences": setup_differences(run) + [
            f"Router: our {variant} variant at layer {layer}, trained on {b.router_train_rows} inputs "
            f"a task. The expert alone is the mixture with the right expert forced (oracle).",
            f"AdapterFusion (adapters library, Fuse over all {len(names)} adapters, dynamic fusion): "
            f"only the fusion layers and a new head trained, {b.fusion_budget} steps (no hold-out "
            f"stop), lr 5e-4, for "
            f"{', '.join(b.fusion_tasks)} only (time budget)."] + (
            [f"No mixture score for {', '.join(undefined)}: a regression task's misrouted rows get no "
             "prediction (moe.evaluate_mixture), so its correlation is undefined (–); the means leave "
             "it out."] if undefined else []),
    }
