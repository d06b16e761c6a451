"""What a verdict that is not "holds" points to, in one sentence read off the measurements.

``factor(name, results)`` looks only at numbers the report measured (no arithmetic beyond
counting and means) and names the factor they point to: the method, the sizes compared, the base
model, routing or the set-up. None for a claim that holds, or when the report lacks the numbers.
Pure: the Compare page calls it on any results dict, old ones included.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping


def _methods(exp: Mapping, exps: Mapping) -> str | None:
    frontier = exps.get("frontier") or {}
    matched = [m for m in frontier.get("matched", []) if m.get("difference") is not None]
    if matched:
        behind = [m for m in matched if m["difference"] < -0.01]
        level = len(matched) - len(behind)
        if behind and len(behind) >= level:
            worst = min(behind, key=lambda m: m["difference"])
            return (f"the method: at equal parameters TT-LoRA still trails LoRA in {len(behind)} of "
                    f"{len(matched)} comparisons (worst {worst['task']} {worst['setting']}, "
                    f"{100 * worst['difference']:+.1f} points vs {worst['how']})")
        return (f"the sizes compared: at equal parameters TT-LoRA is level with LoRA or above in "
                f"{level} of {len(matched)} comparisons; experiment 2 sets it against LoRA r16 "
                "with about 16× its parameters")
    ratio = next((r for r in exp.get("ratios", []) if r["model"].endswith("(measured)")), None)
    if ratio is None:
        return None
    return (f"not separable here: TT-LoRA has {100 * ratio['fraction_of_lora']:.1f}% of LoRA r16's "
            "parameters, so a gap can come from the method or from its size; the frontier "
            "(accuracy per parameter) separates the two")


def _routers(exp: Mapping, exps: Mapping) -> str | None:
    rows = exp.get("rows") or []
    paper = [r for r in rows if r["variant"] == "paper"]
    others = [r for r in rows if r["variant"] != "paper"]
    if not paper or not others:
        return None
    best = max(others, key=lambda r: r["accuracy"])
    text = (f"the base model: the paper's router reads the last token, which on an encoder such as "
            f"MiniLM is the [SEP] token ({paper[0]['accuracy']:.3f}); pooled states route better "
            f"({best['variant']} at layer {best['layer']}: {best['accuracy']:.3f}); a causal decoder's "
            "last token has read the whole input")
    decoder = exp.get("decoder") or {}
    on_decoder = [r for r in decoder.get("rows") or [] if r["variant"] == "paper"]
    if on_decoder:          # measured (report/router_variants.on_decoder)
        text += (f" (on {decoder['model']} the paper's router reaches {on_decoder[0]['accuracy']:.3f}; "
                 f"the claim there {decoder['claim']['verdict']})")
    return text


def _integration(exp: Mapping, exps: Mapping) -> str | None:
    # a regression task may have no mixture score (None over seeds, NaN in older results)
    rows = [r for r in exp.get("rows") or [] if r.get("gap") is not None and math.isfinite(r["gap"])]
    if not rows or exp.get("routing_accuracy") is None:
        return None
    worst = min(rows, key=lambda r: r["gap"])
    return (f"routing: {100 * exp['routing_accuracy']:.1f}% of rows reach their own expert "
            f"(worst {worst['task']}: {100 * worst['routing_accuracy']:.1f}% routed right, "
            f"{100 * worst['gap']:+.1f} points); a misrouted row is answered by another task's "
            "expert and head")


def _mixed(exp: Mapping, exps: Mapping) -> str | None:
    per_task = exp.get("per_task") or []
    if not per_task:
        return None
    routed = statistics.fmean(r["routed_right"] for r in per_task)
    losses = [r["task"] for r in per_task if r["gain_points"] < 0]
    alone = {(a["task"], a["method"]): a["value_mean"]
             for a in (exps.get("methods") or {}).get("aggregate", [])}
    behind = [t for t in losses if (t, "tt-lora") in alone and (t, "adapter") in alone
              and alone[(t, "tt-lora")] < alone[(t, "adapter")]]
    text = (f"routing and the experts: the mixture routes {100 * routed:.1f}% of rows right on "
            f"average and trails AdapterFusion on {len(losses)} of {len(per_task)} tasks")
    if behind:
        text += (f"; on {len(behind)} of those ({', '.join(behind)}) the TT-LoRA expert alone "
                 "already trails the adapter (experiment 2)")
    return text


def _contraction(exp: Mapping, exps: Mapping) -> str | None:
    rows = exp.get("rows") or []
    slower = [r for r in rows if r["ratio"] < 1]
    if not slower:
        return None
    return (f"the model's size: on MiniLM's 384-wide layers rebuilding ΔW costs about as much as "
            f"contracting (ratio {min(r['ratio'] for r in rows):.2f}–{max(r['ratio'] for r in rows):.2f}); "
            "the paper's gain needs wide layers and many tokens")


def _frontier(exp: Mapping, exps: Mapping) -> str | None:
    return _methods({}, {"frontier": exp}) if exp.get("matched") else None


FACTORS: dict[str, Callable[[Mapping, Mapping], str | None]] = {
    "contraction": _contraction, "methods": _methods, "frontier": _frontier, "routers": _routers,
    "integration": _integration, "mixed": _mixed}


def factor(name: str, results: Mapping) -> str | None:
    """One sentence on what experiment ``name``'s measurements point to when its claim does not
    (fully) hold; None when it holds, is not measured, or the numbers are missing."""
    exps = results.get("experiments") or {}
    exp = exps.get(name)
    if not exp or exp.get("claim", {}).get("verdict") in (None, "holds", "not measured"):
        return None
    try:
        return FACTORS[name](exp, exps)
    except (KeyError, TypeError, ValueError, statistics.StatisticsError):
        return None       # a report of another shape: say nothing rather than guess

