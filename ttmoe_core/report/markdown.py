"""The report as Markdown: one section per experiment (title, run line, tables, claim, differences).

Every number of a table is ``FORMATS[kind](value)`` of a value stored in the results (no
arithmetic here), so each cell can be traced to ``results.json``. The renderer reads results
written by older versions too (the committed ``reports/results.json``): machine keys
``usable_cpus``/``torch_threads`` and a load average stored as one number; experiment 3
without n-gram sizes, its parameters' front or its decoder subsection.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import sessions
from .cells import fmt
from .cells import pm as _pm
from .cells import table as _table
from .cells import yes_no as _yes_no
from .decoder_section import section_decoder
from .plan import METHOD_LABELS
from .plots import SECTION_FIGURES

SECTION_TITLES = {
    "contraction": "1. Contraction vs reconstruction (paper Table 3)",
    "methods": "2. TT-LoRA vs LoRA vs Adapter, one expert per task and seed (paper Tables 4 and 6)",
    "frontier": "2b. Accuracy per parameter: every method at several sizes",
    "routers": "3. Router variants (paper Table 5)",
    "integration": "4. Expert integration (paper Table 6, expert integration)",
    "mixed": "5. Mixed-task evaluation (the \"4 points over AdapterFusion\" claim)",
    "decoder": "2c. The methods on a decoder",     # + its model's name (``render_section``)
}
RENDER_ORDER = ("contraction", "methods", "frontier", "decoder", "routers", "integration", "mixed")
"""The sections in the report's order: the decoder's beside experiment 2 (it runs last: ``SECTIONS``)."""

def _one_minute(load: float | Sequence[float] | None) -> float | None:
    """The 1-minute load average of ``runinfo.load_average()``'s list (older results: one number)."""
    return load[0] if isinstance(load, (list, tuple)) else load


def _run_line(exp: dict, meta: dict) -> str:
    run = exp["run"]
    load = _one_minute(run.get("load_average_at_start"))
    return (f"*Run: {run['started']}, {run['seconds']} s, seed {meta['seed']}, budget "
            f"`{meta['budget']}`" + (f", load average {load} at start" if load is not None else "") + ".*")


def _claim(exp: dict) -> str:
    claim = exp["claim"]
    text = f"**Paper's claim:** {claim['paper']}. **Here it {claim['verdict']}:** {claim['evidence']}."
    if claim.get("points_to"):
        text += f" **What the measurements point to:** {claim['points_to']}."
    return text


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


def _methods_ratios(exp: dict) -> str:
    paper = exp["paper"]
    return _table(["model", "TT-LoRA params", "LoRA params", "adapter params", "TT-LoRA % of LoRA",
                   "TT-LoRA % of adapter", "paper: % of LoRA", "paper: % of adapters"],
                  [[r["model"], fmt(r["tt_lora"], "int"), fmt(r["lora"], "int"),
                    fmt(r["adapter"], "int"), fmt(r["fraction_of_lora"], "pct2"),
                    fmt(r["fraction_of_adapter"], "pct2"),
                    fmt(paper["tt_lora_fraction_of_lora"], "pct1"),
                    fmt(paper["tt_lora_fraction_of_adapter"], "pct1")] for r in exp["ratios"]])


def _methods_over_seeds(exp: dict) -> list[str]:
    """Experiment 2 with seeds: mean ± std per (task, method), TT-LoRA against each baseline by
    the spread rule, and the per-seed runs."""
    seeds = ", ".join(str(s) for s in exp["seeds"])
    agg = _table(["task", "method", "seeds", "adapter params", "adapter % of LoRA", "metric",
                  "mean ± std", "steps run", "best step", "train s", "CPU s", "peak memory growth MiB"],
                 [[r["task"], METHOD_LABELS[r["method"]], str(r["n"]), fmt(r["adapter_params"], "int"),
                   fmt(r["fraction_of_lora_adapter"], "pct1"), r["metric"],
                   _pm(r["value_mean"], r["value_std"]), _pm(r["steps_run_mean"], r["steps_run_std"], "int"),
                   _pm(r["best_step_mean"], r["best_step_std"], "int"),
                   _pm(r["train_seconds_mean"], r["train_seconds_std"], "f1"),
                   _pm(r["cpu_seconds_mean"], r["cpu_seconds_std"], "f1"),
                   fmt(r["peak_growth_mib_mean"], "f1")] for r in exp["aggregate"]])
    margin = exp.get("margin", 0.02)
    versus = _table(["task", "TT-LoRA vs", "TT-LoRA", "baseline", "difference", "seed spread",
                     "difference beyond the spread", f"within {100 * margin:g} points"],
                    [[c["task"], METHOD_LABELS[c["baseline"]], _pm(c["tt_lora_mean"], c["tt_lora_std"]),
                      _pm(c["baseline_mean"], c["baseline_std"]), fmt(c["difference"], "signed3"),
                      fmt(c["spread"], "f3"), _yes_no(c["exceeds_spread"]), _yes_no(c["within_margin"])]
                     for c in exp["comparisons"]])
    runs = _table(["task", "method", "seed", "metric", "value", "steps run", "best step", "train s",
                   "CPU s", "peak memory growth MiB"],
                  [[r["task"], METHOD_LABELS[r["method"]], str(r["seed"]), r["metric"], fmt(r["value"], "f3"),
                    fmt(r["steps_run"], "int"), fmt(r["best_step"], "int"), fmt(r["train_seconds"], "f1"),
                    fmt(r["cpu_seconds"], "f1"), fmt(r["peak_growth_mib"], "f1")] for r in exp["rows"]])
    summary = _table(["method", "tasks", "adapter params", "mean metric", "mean train s", "mean CPU s",
                      "mean peak growth MiB"],
                     [[METHOD_LABELS[s["method"]], str(s["tasks"]), fmt(s["adapter_params"], "int"),
                       fmt(s["mean_value"], "f3"), fmt(s["mean_train_seconds"], "f1"),
                       fmt(s.get("mean_cpu_seconds"), "f1"), fmt(s["mean_peak_growth_mib"], "f1")]
                      for s in exp["summary"]])
    return [f"Per task and method over seeds {seeds}: mean ± sample std of the validation metric (the "
            "task's primary one), of the steps each run trained (it stops when its hold-out metric is "
            "flat), of the step whose weights it kept, and of its training time (train s: wall time of "
            "the training loop, hold-out evaluations included; CPU s: the process's CPU time over the same "
            "loop, all threads, carried over a resumed checkpoint; "
            "adapter parameters without the task head):", agg,
            f"TT-LoRA against each baseline per task. Rule: {exp['spread_rule']}.", versus,
            "Every run (task, method, seed):", runs, "Mean over tasks (of the means over seeds):", summary,
            "Parameter ratios (adapter only; LLaMA-3.2-1B counted by `budget.compute_budget` with the "
            "paper's TT shapes, rank 5, q/v, LoRA r16):", _methods_ratios(exp)]


def _section_methods(exp: dict) -> list[str]:
    if "aggregate" in exp:
        return _methods_over_seeds(exp)
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
    return ["Per task and method (adapter parameters without the task head; the metric is the "
            "task's primary one on its validation rows):", per_task, "Mean over tasks:", summary,
            "Parameter ratios (adapter only; LLaMA-3.2-1B counted by `budget.compute_budget` with the "
            "paper's TT shapes, rank 5, q/v, LoRA r16):", _methods_ratios(exp)]


def _router_name(row: dict) -> str:
    """``fusion``, or ``ngram (4,096 buckets)`` for a row with an n-gram table size."""
    buckets = row.get("buckets")
    return row["variant"] if buckets is None else f"{row['variant']} ({fmt(buckets, 'int')} buckets)"


def _routers_main(exp: dict) -> str:
    rows = [[_router_name(r), str(r["layer"]), fmt(r["cost_fraction"], "f2"), fmt(r["params"], "int"),
             fmt(r["accuracy"], "f3"), fmt(r["ms_per_input"], "f2"), fmt(r["fit_seconds"], "f1")]
            for r in exp["rows"]]
    return _table(["variant", "layer k", "fraction of a full pass", "params", "held-out accuracy",
                   "ms per input", "fit s"], rows)


def _routers_by_params(exp: dict) -> list[str]:
    """Routing accuracy against router parameters, the front marked, and the smallest router
    within a point of the best (results with ``params_frontier`` only)."""
    if "params_frontier" not in exp:
        return []
    front = {(f["variant"], f["layer"], f.get("buckets")) for f in exp["params_frontier"]}
    ordered = sorted(exp["rows"], key=lambda r: (r["params"], -r["accuracy"]))
    table = _table(["variant", "layer k", "n-gram buckets", "params", "held-out accuracy",
                    "ms per input", "on the front"],
                   [[r["variant"], str(r["layer"]), fmt(r.get("buckets"), "int"), fmt(r["params"], "int"),
                     fmt(r["accuracy"], "f3"), fmt(r["ms_per_input"], "f2"),
                     _yes_no((r["variant"], r["layer"], r.get("buckets")) in front)] for r in ordered])
    out = ["Routing accuracy against router parameters (smallest first; on the front: no other "
           "router has at most as many parameters and a higher accuracy):", table]
    near = exp.get("smallest_near_best")
    if near:
        best = near["best"]
        out.append(f"Smallest router within {near['points']:g} point of the most accurate "
                   f"({_router_name(best)} at layer {best['layer']}: {fmt(best['accuracy'], 'f3')}, "
                   f"{fmt(best['params'], 'int')} parameters): **{_router_name(near)} at layer "
                   f"{near['layer']}**, {fmt(near['params'], 'int')} parameters, accuracy "
                   f"{fmt(near['accuracy'], 'f3')}.")
    return out


def _routers_on_decoder(dec: dict) -> list[str]:
    """The subsection of experiment 3 on a decoder: its tables and the paper's verdict there."""
    claim = dec["claim"]
    return [f"### On a decoder ({dec['model']})",
            f"The same routers on {dec['model']}'s frozen states ({dec['num_layers']} layers, hidden "
            f"{dec['hidden_size']}; layers {', '.join(map(str, dec['layers']))}: the same fractions of "
            "depth), the same rows; held-out routing accuracy, parameters and measured cost:",
            _routers_main(dec), *_routers_by_params(dec),
            f"**On the decoder, the paper's claim ({claim['paper']}) {claim['verdict']}:** "
            f"{claim['evidence']}."]


def _section_routers(exp: dict) -> list[str]:
    best = [r for r in exp["rows"] if r["layer"] == exp["best_layer"][r["variant"]]]
    recall = _table(["variant (best layer)"] + list(exp["names"]),
                    [[f"{_router_name(r)} (k={r['layer']})"] + [fmt(r["per_task"][n], "f3")
                                                               for n in exp["names"]]
                     for r in best])
    out = [f"Held-out routing accuracy over {exp['held_out_rows']} inputs ({exp['train_rows']} to "
           "train), router parameters and measured cost:", _routers_main(exp),
           "Recall per task (share of each task's inputs sent to its expert), best layer of each variant:",
           recall, *_routers_by_params(exp)]
    if exp.get("decoder"):
        out += _routers_on_decoder(exp["decoder"])
    return out


def _pm_signed(mean, std, kind: str = "signed3") -> str:
    """``+0.012 ± 0.004``: a signed mean, its std unsigned (``_pm`` for a plain one)."""
    return fmt(mean, kind) + ("" if std is None else f" ± {fmt(std, kind.replace('signed', 'f'))}")


def _recipe_router(router: dict) -> str:
    """The mixtures' router (``mixtures.recipe_router``'s record) as a one-row table."""
    r = router["recipe"]
    return _table(["variant", "layer k", "params", "cap a task", "epochs", "training rows (distinct)",
                   "held-out inputs", "held-out routing accuracy"],
                  [[router["variant"], str(router["layer"]), fmt(router["params"], "int"),
                    fmt(r["cap"], "int"), str(r["epochs"]),
                    f"{fmt(r['train_rows'], 'int')} ({fmt(r['distinct_rows'], 'int')})",
                    fmt(router["held_out_rows"], "int"), fmt(router["accuracy"], "f3")]])


def _fusion_rows(exp: dict) -> list[str]:
    """Experiment 4's AdapterFusion table (steps run and best step when it had a hold-out stop)."""
    if not exp["fusion_rows"]:
        return []
    stopped = "steps_run" in exp["fusion_rows"][0]
    frows = [[r["task"], r["metric"], fmt(r["adapter_alone"], "f3"), fmt(r["fusion"], "f3"),
              fmt(r["gap"], "signed3"), fmt(r["params"]["trained"], "int")]
             + ([fmt(r["steps_run"], "int"), fmt(r["best_step"], "int")] if stopped else [])
             + [fmt(r["train_seconds"], "f1")] for r in exp["fusion_rows"]]
    return [f"AdapterFusion over the same {len(exp['experts'])} tasks' adapters, trained for one task:",
            _table(["task", "metric", "adapter alone", "AdapterFusion", "fusion − alone",
                    "trained params (fusion + head)"] + (["steps run", "best step"] if stopped else [])
                   + ["train s"], frows)]


def _integration_over_seeds(exp: dict) -> list[str]:
    """Experiment 4 with a mixture per seed: mean ± std per task and on average, every run."""
    agg = exp["aggregate"]
    tasks_table = _table(["task", "metric", "seeds", "expert alone", "through the mixture",
                          "mixture − alone", "routed right"],
                         [[r["task"], r["metric"], str(r["n"]), _pm(r["expert_alone"], r["expert_alone_std"]),
                           _pm(r["mixture"], r["mixture_std"]), _pm_signed(r["gap"], r["gap_std"]),
                           fmt(r["routing_accuracy"], "f3")] for r in exp["rows"]])
    seeds_table = _table(["seed", "mean mixture − alone", "routing accuracy"],
                         [[str(e["seed"]), fmt(e["mean_gap"], "signed3"), fmt(e["routing_accuracy"], "f3")]
                          for e in exp["per_seed"]]
                         + [["**mean ± std**", _pm_signed(agg["mean_gap"], agg["mean_gap_std"]),
                             _pm(agg["routing_accuracy"], agg["routing_accuracy_std"])]])
    runs = _table(["task", "seed", "expert alone", "through the mixture", "mixture − alone", "routed right"],
                  [[r["task"], str(e["seed"]), fmt(r["expert_alone"], "f3"), fmt(r["mixture"], "f3"),
                    fmt(r["gap"], "signed3"), fmt(r["routing_accuracy"], "f3")]
                   for e in exp["per_seed"] for r in e["rows"]])
    p = exp["params"]
    params = _table(["TT-LoRA experts (cores + heads)", "router", "mixture in all"],
                    [[fmt(p["experts"], "int"), fmt(p["router"], "int"), fmt(p["total"], "int")]])
    return ["The mixtures' router (one, shared by every seed's mixture and experiment 5):",
            _recipe_router(exp["router"]),
            f"Mixture of {len(exp['experts'])} TT-LoRA experts, one per seed "
            f"({', '.join(map(str, exp['seeds']))}): mean ± sample std over seeds per task:", tasks_table,
            "Mean over tasks, per seed and over seeds:", seeds_table, "Every run (task, seed):", runs,
            "Parameters of one mixture:", params] + _fusion_rows(exp)


def _section_integration(exp: dict) -> list[str]:
    if "per_seed" in exp:
        return _integration_over_seeds(exp)
    rows = [[r["task"], r["metric"], fmt(r["expert_alone"], "f3"), fmt(r["mixture"], "f3"),
             fmt(r["gap"], "signed3"), fmt(r["routing_accuracy"], "f3")] for r in exp["rows"]]
    out = [f"Mixture of {len(exp['experts'])} TT-LoRA experts, router {exp['router']['variant']} at layer "
           f"{exp['router']['layer']} (held-out routing accuracy {exp['router']['accuracy']:.3f}):",
           _table(["task", "metric", "expert alone", "through the mixture", "mixture − alone",
                   "routed right"], rows)]
    return out + _fusion_rows(exp)


def _mixed_over_seeds(exp: dict) -> list[str]:
    """Experiment 5 with an MoE per seed: mean ± std per task and on average, every seed."""
    agg = exp["aggregate"]
    rows = [[r["task"], r["metric"], fmt(r["rows"], "int"), str(r["n"]), _pm(r["moe"], r["moe_std"]),
             fmt(r["fusion"], "f3"), _pm_signed(r["gain_points"], r["gain_points_std"], "signed1"),
             fmt(r["routed_right"], "f3")] for r in exp["per_task"]]
    rows.append(["**average**", "", "", str(agg["n"]), _pm(exp["moe_mean"], exp["moe_mean_std"]),
                 fmt(exp["fusion_mean"], "f3"),
                 _pm_signed(exp["gain_points"], exp["gain_points_std"], "signed1"),
                 _pm(agg["routed_right"], agg["routed_right_std"])])
    seeds_table = _table(["seed", "TT-LoRA MoE average", "AdapterFusion average", "MoE − fusion (points)",
                          "routed right"],
                         [[str(e["seed"]), fmt(e["moe_mean"], "f3"), fmt(e["fusion_mean"], "f3"),
                           fmt(e["gain_points"], "signed1"), fmt(e["routed_right"], "f3")]
                          for e in exp["per_seed"]])
    runs = _table(["task", "seed", "TT-LoRA MoE", "MoE − fusion (points)", "routed right"],
                  [[r["task"], str(e["seed"]), fmt(r["moe"], "f3"), fmt(r["gain_points"], "signed1"),
                    fmt(r["routed_right"], "f3")] for e in exp["per_seed"] for r in e["rows"]])
    return ([f"{exp['rows']} inputs of six tasks in one shuffled test set; per-task metric and average, "
             f"the MoE of each seed's experts ({', '.join(map(str, exp['seeds']))}: mean ± sample std over "
             f"seeds) against one AdapterFusion (gain in points = 100 × difference; paper: "
             f"{exp['paper_gain_points']:+.1f}):",
             _table(["task", "metric", "rows", "seeds", "TT-LoRA MoE", "AdapterFusion",
                     "MoE − fusion (points)", "routed right"], rows),
             "Per seed (average over tasks):", seeds_table, "Every run (task, seed):", runs,
             "The router (the same as experiment 4's when the experts are the same):",
             _recipe_router(exp["router"])] + _mixed_params(exp))


def _mixed_params(exp: dict) -> list[str]:
    p = exp["params"]
    params = _table(["system", "parameters", "of which trained for the mix"],
                    [["TT-LoRA MoE (experts + router)", fmt(p["moe_total"], "int"), fmt(p["moe_router"], "int")],
                     ["AdapterFusion (adapters + fusion + heads)", fmt(p["fusion_total"], "int"),
                      fmt(p["fusion_trained"], "int")]])
    ratio = _table(["MoE parameters % of AdapterFusion", "paper"],
                   [[fmt(p["moe_fraction_of_fusion"], "pct2"), fmt(p["paper_moe_fraction_of_fusion"], "pct2")]])
    return ["Parameters:", params, ratio]


def _section_mixed(exp: dict) -> list[str]:
    if "per_seed" in exp:
        return _mixed_over_seeds(exp)
    rows = [[r["task"], r["metric"], fmt(r["rows"], "int"), fmt(r["moe"], "f3"), fmt(r["fusion"], "f3"),
             fmt(r["gain_points"], "signed1"), fmt(r["routed_right"], "f3")] for r in exp["per_task"]]
    rows.append(["**average**", "", "", fmt(exp["moe_mean"], "f3"), fmt(exp["fusion_mean"], "f3"),
                 fmt(exp["gain_points"], "signed1"), ""])
    return [f"{exp['rows']} inputs of six tasks in one shuffled test set; per-task metric and average "
            f"(gain in points = 100 × difference; paper: {exp['paper_gain_points']:+.1f}):",
            _table(["task", "metric", "rows", "TT-LoRA MoE", "AdapterFusion", "MoE − fusion (points)",
                    "routed right"], rows)] + _mixed_params(exp)


def _section_frontier(exp: dict) -> list[str]:
    if "skipped" in exp:
        return [exp["skipped"] + "."]
    front = {(task, tag) for task, tags in exp["front"].items() for tag in tags}
    points = _table(["task", "setting", "modules", "TT chain", "rank", "adapter params", "seeds", "metric",
                     "mean ± std", "steps run", "CPU s", "on the front"],
                    [[p["task"], p["setting"], p["modules"], p.get("cores") or "–", str(p["rank"]),
                      fmt(p["params"], "int"),
                      str(p["n"]), p["metric"], _pm(p["value_mean"], p["value_std"]),
                      fmt(p["steps_mean"], "int"), fmt(p["cpu_seconds_mean"], "f1"),
                      _yes_no((p["task"], p["setting"]) in front)] for p in exp["points"]])
    matched = _table(["task", "TT-LoRA", "adapter params", "TT-LoRA mean ± std", "LoRA at equal params",
                      "LoRA mean ± std", "difference", "seed spread", "verdict"],
                     [[m["task"], m["setting"], fmt(m["params"], "int"), _pm(m["tt_mean"], m["tt_std"]),
                       m["how"], _pm(m["lora_mean"], m["lora_std"]), fmt(m["difference"], "signed3"),
                       fmt(m["spread"], "f3"), m["verdict"]] for m in exp["matched"]])
    smallest = _table(["task", "reference", "reference mean", "smallest TT-LoRA within 1 point",
                       "its params", "fraction of the reference", "best TT-LoRA (gap, points)"],
                      [[e["task"], e["reference"], fmt(e.get("reference_mean"), "f3"), e.get("setting") or "none",
                        fmt(e.get("params"), "int"), fmt(e.get("fraction"), "pct1"),
                        f"{e.get('best_tt_setting') or '–'} ({fmt(e.get('best_tt_gap_points'), 'signed1')})"]
                       for e in exp["smallest_within"]])
    rows = _table(["task", "setting", "seed", "adapter params", "value", "steps run", "best step", "CPU s",
                   "from experiment 2"],
                  [[r["task"], r["setting"], str(r["seed"]), fmt(r["adapter_params"], "int"),
                    fmt(r["value"], "f3"), fmt(r["steps_run"], "int"), fmt(r["best_step"], "int"),
                    fmt(r["cpu_seconds"], "f1"), _yes_no(r["from_experiment_2"])] for r in exp["rows"]])
    return [f"Each setting on {', '.join(exp['tasks'])}, seeds {', '.join(map(str, exp['seeds']))}: mean ± "
            "sample std of the validation metric; on the front: no other setting of the task has at "
            "most as many parameters and a higher mean:", points,
            f"TT-LoRA against LoRA at equal parameters (a LoRA size within ±{100 * exp['match_tolerance']:.0f}% "
            "of the count, else LoRA interpolated linearly in log(parameters) between its two sizes "
            f"around it). Rule: {exp['spread_rule']}.", matched,
            "The smallest TT-LoRA at most 1 point below the reference LoRA:", smallest,
            "Every run:", rows]


_SECTION_BODIES = {"contraction": _section_contraction, "methods": _section_methods,
                   "frontier": _section_frontier,
                   "routers": _section_routers, "integration": _section_integration,
                   "mixed": _section_mixed, "decoder": section_decoder}


def render_section(results: dict, name: str, figure_links: bool = True) -> str:
    """One experiment's section: title, run line, tables, claim, differences (+ figure links)."""
    exp = results["experiments"][name]
    title = SECTION_TITLES[name] + (f" ({exp['model']})" if name == "decoder" and "model" in exp else "")
    parts = [f"## {title}", _run_line(exp, results["meta"]), *_SECTION_BODIES[name](exp),
             _claim(exp), _differences(exp)]
    links = _figure_links(results, SECTION_FIGURES[name]) if figure_links else ""
    return "\n\n".join(parts + ([links] if links else []))


def machine_summary(meta: dict) -> dict:
    """A run's machine in one shape, for new and older results (``meta`` of results.json).

    Keys: ``cpu``, ``gpu`` (None on CPU), ``cores`` (usable), ``threads`` (torch), ``device``,
    ``platform``, ``torch``, ``load_average`` (1 minute, at the start of the run; None if unknown).
    """
    machine = meta["machine"]
    load = meta.get("load_average_at_start", machine.get("load_average_at_start"))
    return {"cpu": machine["cpu"], "gpu": machine.get("gpu"),
            "cores": machine.get("cores", machine.get("usable_cpus")) or machine["logical_cpus"],
            "threads": machine.get("threads", machine.get("torch_threads")), "device": machine["device"],
            "platform": machine["platform"], "torch": machine["torch"], "load_average": _one_minute(load)}


def _machine_line(meta: dict) -> str:
    """Where the run ran: CPU or GPU, cores, platform, torch and its threads, load at start."""
    m = machine_summary(meta)
    where = m["gpu"] or f"{m['cpu']}, {m['cores']} usable cores"
    return (f"Machine: {where}; {m['platform']}; torch {m['torch']} with {m['threads']} thread(s) on "
            f"{m['device']}; load average {m['load_average']} at start (other jobs share the machine: "
            "timings are comparable within one run, side by side, not across runs).")


def _generated_line(meta: dict) -> str:
    """When and how long; a resumed run: its starts and the run time over all of them."""
    seconds, starts = sessions.run_time(meta)
    if starts == 1:
        return (f"Generated by `{meta['command']}` on {meta['started']} (finished {meta['finished']}, "
                f"{meta['seconds']} s in all).")
    return (f"Generated by `{meta['command']}` in {starts} starts (`--resume`) from "
            f"{meta['sessions'][0]['started']} to {meta['finished']}: {seconds} s "
            f"({sessions.duration(seconds)}) of run time over them ({sessions.rule(meta['sessions'])}); "
            f"the last start began {meta['started']} and ran {meta['seconds']} s. "
            f"Hosts (starts): {sessions.hosts(meta['sessions'])}.")


def _as_tuples(value):
    """A budget setting as the budget holds it: JSON turns its tuples into lists, and this undoes it."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value


def render_markdown(results: dict) -> str:
    """The whole report as Markdown (numbers only from ``results``, formatted by ``FORMATS``)."""
    meta = results["meta"]
    settings = ", ".join(f"{k}={_as_tuples(v)}" for k, v in meta["settings"].items() if k != "name")
    header = [
        "# TT-LoRA MoE: the paper's tables re-run on the embedded model",
        _generated_line(meta),
        _machine_line(meta),
        f"Base model: {meta['base_model']['name']}. Data: {meta['data_dir']}. Seed {meta['seed']}"
        + (f" (experiment 2: seeds {', '.join(str(x) for x in meta['seeds'])})" if meta.get("seeds") else "")
        + ". "
        f"Budget `{meta['budget']}`: {settings}.",
        "Paper: Kunwar et al., *TT-LoRA MoE* (arXiv 2504.21190), LLaMA-3.2-1B on 4 GPUs. Every "
        "number below comes from this run (`results.json`); the paper's are quoted only where named.",
    ]
    sections = [render_section(results, name) for name in RENDER_ORDER if name in results["experiments"]]
    trainings = results.get("trainings") or []
    appendix = []
    if trainings:
        appendix = ["## Training runs of this report",
                    _table(["task", "method", "seed", "started", "train rows", "steps run", "train s",
                            "CPU s", "wall s", "metric", "value", "peak memory growth MiB"],
                           [[t["task"], METHOD_LABELS[t["method"]], str(t.get("seed", "–")), t["started"],
                             fmt(t["train_rows"], "int"), fmt(t.get("steps_run"), "int"),
                             fmt(t["train_seconds"], "f1"), fmt(t.get("cpu_seconds"), "f1"),
                             fmt(t["wall_seconds"], "f1"), t["metric"], fmt(t["value"], "f3"),
                             fmt(t["peak_growth_mib"], "f1")] for t in trainings])]
    return "\n\n".join(header + sections + appendix) + "\n"
