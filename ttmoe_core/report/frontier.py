"""Accuracy per parameter ("frontier"): every method at several sizes, under one stopping rule.

The paper's claim is about accuracy per parameter, so experiment 2's one size per method (TT-LoRA
r5 against LoRA r16) cannot settle it. Here each method is trained at several sizes on the same
modules (TT-LoRA at TT ranks 2..16 on q,v and two ranks on q,k,v,dense; LoRA at ranks 1..16; the
bottleneck adapter at two reduction factors), per task and seed, through the same loop and rule
as experiment 2 (runs that experiment 2 already trained are reused, not retrained).

What it reports, per task (validation metric, mean ± sample std over seeds):
- ``points``: one entry per setting (trainable adapter parameters without the head, the metric);
- ``front``: the Pareto front (no other setting has at most as many parameters and a higher
  metric), over all methods;
- ``matched``: each TT-LoRA setting against LoRA at equal parameters — a LoRA setting within
  ``MATCH`` (±15%) of its count when one exists, else LoRA's value interpolated linearly in
  log(parameters) between the two LoRA sizes around it (said as such) — with the verdict
  above / within / below by ``seeds.SPREAD_RULE``;
- ``smallest_within``: the smallest TT-LoRA setting whose mean is at most ``CLOSE`` (1 point)
  below LoRA at the reference rank (r16), and its parameter fraction of that LoRA.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from .. import experts
from . import seeds
from .experiment import verdict
from .plan import METHOD_LABELS, Setting, settings_from

MATCH = 0.15          # "equal parameters": within ±15% of the TT-LoRA setting's count
CLOSE = 0.01          # "within 1 point" of the reference LoRA
REFERENCE = ("lora", 16, None)     # method, rank, targets of the reference LoRA (experiment 2's)


# ----------------------------------------------------------------------------- analysis (pure)
def aggregate_points(rows: Sequence[Mapping]) -> list[dict]:
    """One point per (task, setting tag): its parameters and mean ± std of the metric over seeds."""
    groups: dict[tuple[str, str], list[Mapping]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["setting"]), []).append(row)
    points = []
    for (task, tag), mine in groups.items():
        mean, std, n = seeds.mean_std(r["value"] for r in mine)
        steps, _, _ = seeds.mean_std(r.get("steps_run") for r in mine)
        cpu, _, _ = seeds.mean_std(r.get("cpu_seconds") for r in mine)
        first = mine[0]
        points.append({"task": task, "setting": tag, "method": first["method"], "rank": first["rank"],
                       "modules": first["modules"], "cores": first.get("cores", ""), "params": first["adapter_params"],
                       "metric": first["metric"], "seeds": [r["seed"] for r in mine], "n": n,
                       "value_mean": mean, "value_std": std, "steps_mean": steps, "cpu_seconds_mean": cpu})
    return points


def pareto_front(points: Sequence[Mapping]) -> list[str]:
    """Tags of the points no other point dominates (at most as many parameters and a higher mean,
    or fewer parameters and an equal mean), smallest first."""
    scored = [p for p in points if p["value_mean"] is not None]
    front = []
    for p in scored:
        dominated = any(q is not p and q["params"] <= p["params"] and q["value_mean"] >= p["value_mean"]
                        and (q["params"] < p["params"] or q["value_mean"] > p["value_mean"])
                        for q in scored)
        if not dominated:
            front.append(p)
    return [p["setting"] for p in sorted(front, key=lambda p: p["params"])]


def _interpolate(lora: Sequence[Mapping], params: int) -> dict | None:
    """LoRA's mean and std at ``params`` by linear interpolation in log(parameters) between the
    two LoRA sizes around it (stds interpolated alike); None outside LoRA's range."""
    ordered = sorted((p for p in lora if p["value_mean"] is not None), key=lambda p: p["params"])
    for lo, hi in zip(ordered, ordered[1:]):
        if lo["params"] <= params <= hi["params"]:
            t = (math.log(params) - math.log(lo["params"])) / (math.log(hi["params"]) - math.log(lo["params"]))
            std = None if lo["value_std"] is None or hi["value_std"] is None else (
                lo["value_std"] + t * (hi["value_std"] - lo["value_std"]))
            return {"value_mean": lo["value_mean"] + t * (hi["value_mean"] - lo["value_mean"]),
                    "value_std": std, "between": [lo["setting"], hi["setting"]]}
    return None


def _word(difference: float, exceeds: bool | None) -> str:
    """above / within / below LoRA, with whether the gap is beyond the seed spread."""
    side = "within" if abs(difference) <= CLOSE else ("above" if difference > 0 else "below")
    if side == "within":
        return "within 1 point"
    return f"{side}, " + {True: "beyond the spread", False: "inside the spread",
                          None: "spread not measured"}[exceeds]


def matched(points: Sequence[Mapping]) -> list[dict]:
    """Each TT-LoRA point against LoRA at (about) the same parameter count, per task."""
    out = []
    for task in dict.fromkeys(p["task"] for p in points):
        mine = [p for p in points if p["task"] == task]
        lora = [p for p in mine if p["method"] == "lora"]
        for tt in (p for p in mine if p["method"] == "tt-lora" and p["value_mean"] is not None):
            near = [p for p in lora if p["value_mean"] is not None
                    and abs(p["params"] - tt["params"]) <= MATCH * tt["params"]]
            if near:
                other = min(near, key=lambda p: abs(p["params"] - tt["params"]))
                ref = {"value_mean": other["value_mean"], "value_std": other["value_std"],
                       "how": f"{other['setting']} ({other['params']:,} parameters)"}
            else:
                inter = _interpolate(lora, tt["params"])
                if inter is None:
                    out.append({"task": task, "setting": tt["setting"], "params": tt["params"],
                                "tt_mean": tt["value_mean"], "tt_std": tt["value_std"],
                                "lora_mean": None, "lora_std": None,
                                "how": "outside LoRA's sizes (no LoRA this small or this large)",
                                "difference": None, "spread": None, "exceeds_spread": None,
                                "verdict": "no LoRA at this size"})
                    continue
                ref = {**inter, "how": "interpolated between " + " and ".join(inter["between"])}
            rule = seeds.compare(tt["value_mean"], tt["value_std"], ref["value_mean"], ref["value_std"])
            out.append({"task": task, "setting": tt["setting"], "params": tt["params"],
                        "tt_mean": tt["value_mean"], "tt_std": tt["value_std"],
                        "lora_mean": ref["value_mean"], "lora_std": ref["value_std"], "how": ref["how"],
                        **rule, "verdict": _word(rule["difference"], rule["exceeds_spread"])})
    return out


def smallest_within(points: Sequence[Mapping], reference_tag: str) -> list[dict]:
    """Per task: the smallest TT-LoRA setting at most ``CLOSE`` below the reference LoRA, with its
    parameter fraction of that LoRA (None entries when the reference or every TT-LoRA misses)."""
    out = []
    for task in dict.fromkeys(p["task"] for p in points):
        mine = [p for p in points if p["task"] == task]
        ref = next((p for p in mine if p["setting"] == reference_tag), None)
        if ref is None or ref["value_mean"] is None:
            out.append({"task": task, "reference": reference_tag, "setting": None, "note": "no reference run"})
            continue
        close = sorted((p for p in mine if p["method"] == "tt-lora" and p["value_mean"] is not None
                        and p["value_mean"] >= ref["value_mean"] - CLOSE - 1e-12), key=lambda p: p["params"])
        best = max((p for p in mine if p["method"] == "tt-lora" and p["value_mean"] is not None),
                   key=lambda p: p["value_mean"], default=None)
        entry = {"task": task, "reference": reference_tag, "reference_mean": ref["value_mean"],
                 "reference_params": ref["params"], "setting": None, "params": None, "fraction": None,
                 "value_mean": None,
                 "best_tt_setting": None if best is None else best["setting"],
                 "best_tt_gap_points": None if best is None else 100 * (best["value_mean"] - ref["value_mean"])}
        if close:
            entry.update(setting=close[0]["setting"], params=close[0]["params"],
                         fraction=close[0]["params"] / ref["params"], value_mean=close[0]["value_mean"])
        out.append(entry)
    return out


def summarise(rows: Sequence[Mapping]) -> dict:
    """The frontier's analysis of its per-run ``rows`` (pure)."""
    points = aggregate_points(rows)
    reference = Setting(*REFERENCE).tag
    fronts = {task: pareto_front([p for p in points if p["task"] == task])
              for task in dict.fromkeys(p["task"] for p in points)}
    return {"points": points, "front": fronts, "matched": matched(points),
            "smallest_within": smallest_within(points, reference), "reference": reference,
            "match_tolerance": MATCH, "close": CLOSE, "spread_rule": seeds.SPREAD_RULE}


# ----------------------------------------------------------------------------- the experiment
ORDER = ("lora", "adapter", "tt-lora")
"""Within a seed and task, LoRA and the adapter train before TT-LoRA (a long run stopped part-way
already holds the baselines every TT-LoRA point is compared with)."""


def frontier_order(run) -> list[tuple[str, Setting, int]]:
    """The frontier's (task, setting, seed) trainings, seed-major, then task, then ``ORDER``."""
    settings = settings_from(run.budget.frontier)
    ranked = sorted(settings, key=lambda s: ORDER.index(s.method))
    return [(task, s, seed) for seed in run.budget.seeds for task in run.budget.frontier_tasks
            for s in ranked]


def _row(run, task: str, setting: Setting, seed: int) -> dict:
    """One finished training of the frontier as a results row."""
    variant = run.variant(setting)
    expert = run.expert(task, variant, seed=seed)
    info = run.trainings[(task, variant, seed)]
    return {"task": task, "setting": setting.tag, "method": setting.method, "modules": setting.modules,
            "rank": setting.rank, "cores": setting.cores, "tt_shapes": expert.config.shapes if setting.method == "tt-lora" else None,
            "adapter_params": expert.adapter_params(), "seed": seed, "metric": info["metric"],
            "value": info["value"], "steps_run": info.get("steps_run"), "best_step": info.get("best_step"),
            "cpu_seconds": info.get("cpu_seconds"), "train_seconds": info.get("train_seconds"),
            "lr": info.get("lr"), "alpha": expert.config.alpha,
            "from_experiment_2": variant == setting.method}


def _rates(budget) -> str:
    """``LoRA default, Adapter default, TT-LoRA 0.001``: each method's learning rate in words."""
    return ", ".join(f"{METHOD_LABELS[m]} {budget.lr_of(m) or 'default'}" for m in ORDER)


def exp_frontier(run) -> dict:
    """Every setting of the budget's frontier on its tasks and seeds; the analysis of
    ``summarise`` and the verdict on the paper's accuracy-per-parameter claim."""
    b = run.budget
    if not b.frontier_tasks or not b.frontier:
        return {"skipped": f"the {b.name} budget has no frontier",
                "claim": {"paper": "TT-LoRA reaches LoRA's accuracy with a small fraction of its "
                                   "parameters", "verdict": verdict(None), "evidence": "no frontier run"},
                "differences": []}
    order = frontier_order(run)
    if run.jobs > 1:
        run.train_side_by_side([(t, run.variant(s), seed) for t, s, seed in order], run.jobs)
    rows = [_row(run, task, setting, seed) for task, setting, seed in order]
    analysis = summarise(rows)
    compared = [m for m in analysis["matched"] if m["difference"] is not None]
    at_least_equal = [m for m in compared if m["difference"] >= -CLOSE]
    close = [e for e in analysis["smallest_within"] if e.get("setting")]
    words = "; ".join(f"{m['task']} {m['setting']} ({m['params']:,}): {m['verdict']} "
                      f"({100 * m['difference']:+.1f} points vs {m['how']})" for m in compared)
    return {"tasks": list(b.frontier_tasks), "seeds": list(b.seeds),
            "settings": [s.to_dict() | {"tag": s.tag} for s in settings_from(b.frontier)],
            "rows": rows, **analysis,
            "claim": {"paper": "TT-LoRA reaches LoRA's accuracy with a small fraction of its "
                               "parameters (read here: at equal parameters, TT-LoRA within 1 point "
                               "of LoRA or above it)",
                      "verdict": verdict(bool(compared) and len(at_least_equal) == len(compared),
                                         bool(at_least_equal) or bool(close)),
                      "evidence": f"TT-LoRA at least level with LoRA at equal parameters in "
                                  f"{len(at_least_equal)} of {len(compared)} comparisons: {words}"},
            "differences": [
                "Every setting through experiment 2's loop and stopping rule, with its method's "
                f"learning rate ({_rates(b)}); "
                "LoRA keeps α 8 at every rank (PEFT scales by α/r), TT-LoRA α 16 at every rank "
                "(the authors' code does not scale α or the rate with rank).",
                "Parameters: trainable adapter weights without the task head (the same head for "
                "every method)."]}


# ----------------------------------------------------------------------------- what the app reads
def _module_set(modules: str | Sequence[str] | None) -> frozenset[str]:
    """Target modules as a set; "q,v" / None: the q and v projections (query, value)."""
    if modules is None or modules == "q,v":
        return frozenset({"query", "value"})
    return frozenset(modules.split(",") if isinstance(modules, str) else modules)


def measured(results: Mapping, model: str, method: str, rank: int,
             targets: Sequence[str] | None) -> list[dict]:
    """Per task, the committed validation metric (mean ± std over seeds) of ``method`` at ``rank``
    on ``targets`` of ``model``: the frontier's point when it has the setting, else experiment 2's
    run when the setting is that experiment's (its one size per method). [] when the report never
    trained it (or ran on another base model)."""
    if (results.get("meta") or {}).get("base_model", {}).get("name") != model:
        return []
    want = _module_set(targets)
    exps = results.get("experiments") or {}
    out = [{"task": p["task"], "metric": p["metric"], "mean": p["value_mean"], "std": p["value_std"],
            "seeds": p["n"], "source": "frontier"}
           for p in (exps.get("frontier") or {}).get("points", [])
           if p["method"] == method and p["rank"] == rank and _module_set(p["modules"]) == want
           and p.get("cores", "") in ("", "balanced")]
    default_rank = experts.METHOD_DEFAULTS.get(method, {}).get("rank")   # experiment 2's sizes
    if rank == default_rank and want == _module_set(None):
        covered = {e["task"] for e in out}
        out += [{"task": a["task"], "metric": a["metric"], "mean": a["value_mean"], "std": a["value_std"],
                 "seeds": a["n"], "source": "experiment 2"}
                for a in (exps.get("methods") or {}).get("aggregate", [])
                if a["method"] == method and a["task"] not in covered]
    return out


def suggested_rank(results: Mapping, model: str, task: str) -> dict | None:
    """The TT rank the committed frontier suggests for ``task`` (q,v): the smallest whose mean is
    within ``CLOSE`` of the best TT-LoRA rank's; None when the frontier did not measure the task."""
    if (results.get("meta") or {}).get("base_model", {}).get("name") != model:
        return None
    frontier = (results.get("experiments") or {}).get("frontier") or {}
    points = [p for p in frontier.get("points", []) if p["task"] == task and p["method"] == "tt-lora"
              and p["modules"] == "q,v" and p.get("cores", "balanced") in ("", "balanced")
              and p["value_mean"] is not None]
    if not points:
        return None
    best = max(points, key=lambda p: p["value_mean"])
    choice = min((p for p in points if p["value_mean"] >= best["value_mean"] - CLOSE - 1e-12),
                 key=lambda p: p["params"])
    return {"task": task, "rank": choice["rank"], "mean": choice["value_mean"], "params": choice["params"],
            "best_rank": best["rank"], "best_mean": best["value_mean"], "metric": choice["metric"],
            "on_front": choice["setting"] in frontier.get("front", {}).get(task, []),
            "ranks_measured": sorted(p["rank"] for p in points)}
