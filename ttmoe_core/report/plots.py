"""The report's figures: plotly figures built from a results dict, written as HTML and PNG.

``build_figures(results)`` is pure (data in, figures out, every number taken from ``results``);
``write_figures`` writes ``<name>.html`` (plotly.min.js beside them) and, when matplotlib is
installed, a static ``<name>.png`` drawn from the same figure's traces. plotly and matplotlib
are imported only when a figure is built or written.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..routing import ROUTERS

VARIANTS = tuple(ROUTERS)      # the paper's comparison: routing.variants' four (ngram: ROUTING_STUDY.md)
from .plan import METHOD_LABELS, METHODS

SECTION_FIGURES = {"contraction": ("contraction_ms", "contraction_ratio"),
                   "methods": ("methods_metric", "methods_params"),
                   "frontier": ("frontier",),
                   "routers": ("router_frontier", *(f"router_confusion_{v}" for v in VARIANTS)),
                   "integration": ("integration", "integration_fusion"),
                   "mixed": ("mixed",), "decoder": ()}
"""The figures (``build_figures`` names) of each section, in display order."""


def _grouped_bar(categories: Sequence[str], series: Mapping[str, Sequence[float]], title: str,
                 y_title: str, log: bool = False, errors: Mapping[str, Sequence[float | None]] | None = None):
    """One bar group per category, one bar per series (None values: no bar); ``errors``: an
    error bar (± value) per bar of a series."""
    # plotly only when a figure is built
    import plotly.graph_objects as go

    # plotly-importing module, kept out of the report's import
    from ..services.figures import apply_layout

    def error(name):
        if not errors or name not in errors:
            return None
        return dict(type="data", array=[0.0 if e is None else float(e) for e in errors[name]], visible=True)

    fig = go.Figure([go.Bar(x=list(categories), y=[float(v) if v is not None else None for v in values],
                            name=name, error_y=error(name)) for name, values in series.items()])
    fig.update_layout(barmode="group", legend=dict(orientation="h", y=1.02, x=1, xanchor="right",
                                                   yanchor="bottom"))
    fig.update_xaxes(type="category")
    fig.update_yaxes(title=y_title, type="log" if log else "linear")
    return apply_layout(fig, title, height=380)


def build_figures(results: dict) -> dict:
    """Plotly figures of the experiments present in ``results`` (pure: data in, figures out)."""
    # plotly only when a figure is built
    import plotly.graph_objects as go

    # plotly-importing module, kept out of the report's import
    from ..services.figures import apply_layout, confusion_heatmap, frontier_figure

    out = {}
    exps = results["experiments"]
    if "contraction" in exps:
        rows = exps["contraction"]["rows"]
        sizes = [r["batch_size"] for r in rows]
        fig = go.Figure([go.Scatter(x=sizes, y=[r[key] for r in rows], mode="lines+markers", name=name)
                         for key, name in (("contract_ms", "contraction"), ("reconstruct_ms", "reconstruction"))])
        fig.update_xaxes(type="log", title="batch size")
        fig.update_yaxes(type="log", title="ms per batch (median)")
        out["contraction_ms"] = apply_layout(fig, "Inference time: contraction vs reconstruction", 380)
        out["contraction_ratio"] = _grouped_bar([str(s) for s in sizes], {"reconstruction / contraction":
                                                [r["ratio"] for r in rows]},
                                                "Reconstruction time / contraction time", "ratio")
    if "methods" in exps:
        exp = exps["methods"]
        if "aggregate" in exp:         # mean over seeds, ± sample std
            agg = {(r["task"], r["method"]): r for r in exp["aggregate"]}
            series = {METHOD_LABELS[m]: [agg[(t, m)]["value_mean"] for t in exp["tasks"]] for m in METHODS}
            errors = {METHOD_LABELS[m]: [agg[(t, m)]["value_std"] for t in exp["tasks"]] for m in METHODS}
            title = f"Primary metric per task and method (mean ± std over {len(exp['seeds'])} seeds)"
        else:
            series = {METHOD_LABELS[m]: [next(r["value"] for r in exp["rows"]
                                              if r["task"] == t and r["method"] == m)
                                         for t in exp["tasks"]] for m in METHODS}
            errors, title = None, "Primary metric per task and method"
        out["methods_metric"] = _grouped_bar(exp["tasks"], series, title, "metric (validation)",
                                             errors=errors)
        out["methods_params"] = _grouped_bar(
            [r["model"] for r in exp["ratios"]],
            {"TT-LoRA": [r["tt_lora"] for r in exp["ratios"]], "LoRA": [r["lora"] for r in exp["ratios"]],
             "Adapter": [r["adapter"] for r in exp["ratios"]]},
            "Adapter parameters by method (log scale)", "parameters", log=True)
    if "frontier" in exps and "points" in exps["frontier"]:
        exp = exps["frontier"]
        out["frontier"] = frontier_figure(exp["points"], exp["front"])
    if "routers" in exps:
        exp = exps["routers"]
        fig = go.Figure([go.Scatter(x=[r["ms_per_input"] for r in exp["rows"] if r["variant"] == v],
                                    y=[r["accuracy"] for r in exp["rows"] if r["variant"] == v],
                                    text=[f"k={r['layer']}" for r in exp["rows"] if r["variant"] == v],
                                    mode="markers+text", textposition="top center", name=v)
                         for v in VARIANTS])
        fig.update_xaxes(title="ms per input (tokenize + base up to layer k + router)")
        fig.update_yaxes(title="held-out routing accuracy")
        out["router_frontier"] = apply_layout(fig, "Router variants: accuracy vs cost", 400)
        for row in exp["rows"]:
            if row["layer"] == exp["best_layer"][row["variant"]]:
                out[f"router_confusion_{row['variant']}"] = confusion_heatmap(
                    exp["names"], row["confusion"], normalise=True,
                    title=f"{row['variant']} router, layer {row['layer']}: accuracy {row['accuracy']:.1%}")
    if "integration" in exps:
        exp = exps["integration"]
        out["integration"] = _grouped_bar(
            [r["task"] for r in exp["rows"]],
            {"expert alone": [r["expert_alone"] for r in exp["rows"]],
             "through the mixture": [r["mixture"] for r in exp["rows"]]},
            f"Each task alone vs through the mixture of {len(exp['experts'])} experts", "metric",
            errors={"expert alone": [r.get("expert_alone_std") for r in exp["rows"]],    # over seeds
                    "through the mixture": [r.get("mixture_std") for r in exp["rows"]]}
            if "per_seed" in exp else None)
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
            "Mixed-task test set: TT-LoRA MoE vs AdapterFusion", "metric",
            errors={"TT-LoRA MoE": [r.get("moe_std") for r in exp["per_task"]]      # over seeds
                    + [exp.get("moe_mean_std")]} if "per_seed" in exp else None)
    return out


def _png(figure, path: Path) -> None:
    """A static rendering of a plotly figure (bar, scatter with error bars, heatmap traces) via
    matplotlib; subplots side by side (one panel per x axis of the figure)."""
    # with matplotlib, only when a PNG is written
    import numpy as np

    # optional: matplotlib (PNG figures) only when one is written
    from matplotlib.figure import Figure

    layout = figure.layout
    heatmap = any(t.type == "heatmap" for t in figure.data)
    panels = list(dict.fromkeys(t.xaxis or "x" for t in figure.data)) or ["x"]
    width = 8 if len(panels) == 1 else 5.5 * len(panels)
    canvas = Figure(figsize=(6.4, 5.6) if heatmap else (width, 4.5), layout="constrained")
    axes = np.atleast_1d(canvas.subplots(1, len(panels)))
    bars = [t for t in figure.data if t.type == "bar"]
    for trace in figure.data:
        ax = axes[panels.index(trace.xaxis or "x")]
        if trace.type == "heatmap":
            z = np.array(trace.z, dtype=float)                          # [rows, columns]
            ax.imshow(z, cmap="Blues", vmin=0, vmax=max(1.0, float(np.nanmax(z))) if z.size else 1)
            ax.set_xticks(range(len(trace.x)), list(trace.x), rotation=45, ha="right")
            ax.set_yticks(range(len(trace.y)), list(trace.y))
            for i, row in enumerate(trace.text or []):
                for j, text in enumerate(row):
                    ax.text(j, i, text, ha="center", va="center", fontsize=8,
                            color="white" if z[i, j] > 0.6 * np.nanmax(z) else "black")
        elif trace.type == "bar":
            k, bar_width = bars.index(trace), 0.8 / len(bars)
            positions = np.arange(len(trace.x)) + (k - (len(bars) - 1) / 2) * bar_width
            ax.bar(positions, [np.nan if v is None else v for v in trace.y], bar_width, label=trace.name)
            ax.set_xticks(range(len(trace.x)), list(trace.x), rotation=30 if len(trace.x) > 6 else 0,
                          ha="right" if len(trace.x) > 6 else "center")
        elif trace.type == "scatter":
            mode = trace.mode or "lines+markers"
            errors = trace.error_y.array if trace.error_y and trace.error_y.array is not None else None
            ax.errorbar(list(trace.x), list(trace.y), yerr=None if errors is None else list(errors),
                        marker="o" if "markers" in mode else None, capsize=2 if errors is not None else 0,
                        linestyle=("--" if trace.line.dash == "dash" else "-") if "lines" in mode else "none",
                        label=trace.name if trace.showlegend is not False else None)
            if "text" in mode and trace.text is not None:
                for x, y, text in zip(trace.x, trace.y, trace.text):
                    ax.annotate(text, (x, y), textcoords="offset points", xytext=(0, 5), ha="center",
                                fontsize=8)
    for n, (ax, panel) in enumerate(zip(axes, panels)):
        xaxis = layout["xaxis" + panel[1:]]
        yaxis = layout["yaxis" + panel[1:]]
        if xaxis.type == "log":
            ax.set_xscale("log", base=2 if len(panels) == 1 else 10)
        if yaxis.type == "log":
            ax.set_yscale("log")
        ax.set_xlabel(xaxis.title.text or "")
        ax.set_ylabel(yaxis.title.text or "")
        if len(panels) > 1 and layout.annotations and n < len(layout.annotations):
            ax.set_title(layout.annotations[n].text, fontsize=10)
    canvas.suptitle(layout.title.text or "", x=0.01, ha="left", fontsize=11)
    if sum(1 for t in figure.data if t.name and t.showlegend is not False) > 1:
        axes[0].legend(fontsize=8)
    canvas.savefig(path, dpi=110)


def png_available() -> bool:
    """Whether PNGs can be written (matplotlib installed)."""
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
