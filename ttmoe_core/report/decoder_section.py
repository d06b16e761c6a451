"""The decoder experiment's section of the report (``decoder.exp_decoder``'s results as Markdown).

Tables only of values stored in the results (``cells.fmt``): every run, TT-LoRA against each
LoRA per task, the decoder pack's floors, and each TT-LoRA run's hold-out curve.
"""

from __future__ import annotations

from .cells import fmt, table, yes_no
from .plan import METHOD_LABELS


def _curve(row: dict) -> str:
    """``200: 0.851 · 400: 0.866`` (hold-out score of the primary metric at each evaluation)."""
    return " · ".join(f"{point['step']}: {fmt(point.get(row['metric']), 'f3')}" for point in row["curve"]) or "–"


def section_decoder(exp: dict) -> list[str]:
    """The section's body: setup line, runs, comparisons, floors, curves."""
    if "skipped" in exp:
        return [exp["skipped"] + "."]
    sizes = ", ".join(f"{d_in}→{d_out}" for d_in, d_out in exp["module_sizes"])
    runs = table(["task", "method", "rank", "learning rate", "adapter params", "metric", "value",
                  "accuracy", "F1", "hold-out (best)", "steps run", "best step", "wall s", "CPU s",
                  "pack expert"],
                 [[r["task"], METHOD_LABELS[r["method"]], str(r["rank"]), fmt(r["lr"], "sci"),
                   fmt(r["adapter_params"], "int"), r["metric"], fmt(r["value"], "f3"),
                   fmt(r["metrics"].get("accuracy"), "f3"), fmt(r["metrics"].get("f1"), "f3"),
                   fmt(r["holdout"].get(r["metric"]), "f3"), fmt(r["steps_run"], "int"),
                   fmt(r["best_step"], "int"), fmt(r["wall_seconds"], "f1"), fmt(r["cpu_seconds"], "f1"),
                   yes_no(r["chosen"]) if r["method"] == "tt-lora" else "–"] for r in exp["rows"]])
    versus = table(["task", "metric", "TT-LoRA vs", "TT-LoRA params", "LoRA params", "TT-LoRA", "LoRA",
                    "difference", f"within {100 * exp['margin']:g} points"],
                   [[c["task"], c["metric"], f"LoRA r{c['baseline_rank']}", fmt(c["tt_params"], "int"),
                     fmt(c["baseline_params"], "int"), fmt(c["tt_lora"], "f3"), fmt(c["lora"], "f3"),
                     fmt(c["difference"], "signed3"), yes_no(c["within_margin"])] for c in exp["comparisons"]])
    floors = table(["task", "metric", "floor", "TT-LoRA", "met", "best step", "steps run", "cap",
                    "LoRA r16 (same loop)"],
                   [[f["task"], c["metric"], fmt(c["floor"], "f2"), fmt(c["value"], "f3"), yes_no(c["met"]),
                     fmt(f["best_step"], "int"), fmt(f["steps_run"], "int"), fmt(f["steps_cap"], "int"),
                     fmt((f["lora_r16"] or {}).get(c["metric"]), "f3")]
                    for f in exp["floors"] for c in f["checks"]])
    curves = table(["task", "learning rate", "metric", "hold-out score at each evaluation (step: score)"],
                   [[r["task"], fmt(r["lr"], "sci"), r["metric"], _curve(r)]
                    for r in exp["rows"] if r["method"] == "tt-lora"])
    return [f"{exp['model']} ({exp['num_layers']} layers, hidden {exp['hidden_size']}), modules "
            f"{', '.join(exp['modules'])} ({exp['modules_adapted']} linear layers of sizes {sizes}), seed "
            f"{exp['seed']}, the stopping rule of experiment 2. TT-LoRA r5 has "
            f"{fmt(exp['tt_lora_params'], 'int')} adapter parameters, LoRA r16 "
            f"{fmt(exp['lora_r16_params'], 'int')}; LoRA at TT-LoRA's count is rank {exp['lora_rank_at_tt']} "
            f"({fmt(exp['lora_params_at_tt'], 'int')}). Every run (validation metrics of the weights kept "
            "at the best hold-out step; wall s: the training's wall time, CPU s: its CPU time; pack expert: "
            "the task's TT-LoRA with the best hold-out score, which the decoder pack takes):", runs,
            f"TT-LoRA (the pack expert) against each LoRA per task; seed spread: {exp['spread']}.", versus,
            "The decoder pack's floors (validation); where one is missed, the best step against the steps "
            "run and LoRA r16 on the same loop show whether the task has plateaued:", floors,
            "Hold-out curves of the TT-LoRA runs:", curves]
