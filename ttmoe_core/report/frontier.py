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
                       "modules": first["modules"], "params": first["adapter_params"],
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
                 "best_tt_gap": None if best is None else best["value_mean"] - ref["value_mean"]}
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
