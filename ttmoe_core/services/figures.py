"""Figures of the app as pure functions: plain data in, ``plotly.graph_objects.Figure`` out.

Each builder puts the numbers it is given into its traces unchanged (or normalised, where said),
so a test can read them back (``fig.data[0].x`` ...). The numbers come from the engine (e.g. ΔW's
singular values from ``experts.delta_w_spectra``); ``short_layer_name`` only shortens labels. No
streamlit import.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

ACCENT = "#4C6EF5"        # the chosen / highlighted item
MUTED = "#ADB5BD"         # everything else
INPUT_CORE = "#74C0FC"
OUTPUT_CORE = "#FFA94D"
FONT = dict(family="Inter, Segoe UI, sans-serif", size=13)


def apply_layout(fig: go.Figure, title: str | None, height: int, right: int = 10,
                 **kwargs) -> go.Figure:
    """The house style of every figure (app and report): left-aligned title, ``height`` px, slim
    margins (``right`` px on the right), the app's font; ``kwargs`` go to ``update_layout``."""
    fig.update_layout(title=dict(text=title, x=0, xanchor="left") if title else None,
                      height=height, margin=dict(l=10, r=right, t=48 if title else 10, b=10),
                      font=FONT, **kwargs)
    return fig


# ----------------------------------------------------------------------------- probabilities


def probability_bar(probs: Mapping[str, float], highlight: str | None = None,
                    title: str | None = None, x_title: str = "probability") -> go.Figure:
    """Horizontal bars, one per name, in the given order; ``highlight`` drawn in the accent colour."""
    names, values = list(probs), [float(v) for v in probs.values()]
    colours = [ACCENT if name == highlight else MUTED for name in names]
    fig = go.Figure(go.Bar(x=values, y=names, orientation="h", marker_color=colours,
                           text=[f"{v:.1%}" for v in values], textposition="outside",
                           cliponaxis=False, hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    fig.update_xaxes(range=[0, 1.12], tickvals=[0, 0.25, 0.5, 0.75, 1], tickformat=".0%",
                     title=x_title)
    fig.update_yaxes(autorange="reversed")
    return apply_layout(fig, title, height=60 + 34 * max(1, len(names)))


def router_probs_bar(probs: Mapping[str, float], chosen: str | None = None) -> go.Figure:
    """The router's probability for each expert; the chosen one highlighted."""
    return probability_bar(probs, chosen, title="Router: probability of each expert")


# ----------------------------------------------------------------------------- matrices


def normalise_rows(matrix: Sequence[Sequence[float]]) -> list[list[float]]:
    """Each row divided by its sum (rows summing to 0 stay 0)."""
    out = []
    for row in matrix:
        total = float(sum(row))
        out.append([float(v) / total if total else 0.0 for v in row])
    return out


def confusion_heatmap(names: Sequence[str], matrix: Sequence[Sequence[float]],
                      normalise: bool = False, title: str | None = None,
                      x_title: str = "routed to", y_title: str = "true task") -> go.Figure:
    """Heatmap of an [N, N] matrix, rows = truth; ``normalise``: each row sums to 1."""
    names = [str(n) for n in names]
    counts = [[float(v) for v in row] for row in matrix]
    z = normalise_rows(counts) if normalise else counts
    text = [[f"{v:.0%}" if normalise else f"{int(v):,}" for v in row] for row in z]
    fig = go.Figure(go.Heatmap(
        z=z, x=names, y=names, text=text, texttemplate="%{text}", colorscale="Blues",
        zmin=0, zmax=1 if normalise else None, showscale=False,
        hovertemplate=f"{y_title} %{{y}}<br>{x_title} %{{x}}<br>%{{text}}<extra></extra>"))
    fig.update_xaxes(title=x_title, side="bottom", type="category")
    fig.update_yaxes(title=y_title, autorange="reversed", type="category")
    return apply_layout(fig, title, height=120 + 48 * len(names))


# ----------------------------------------------------------------------------- training


def loss_curve(history: Sequence[Mapping[str, float]], title: str | None = "Training loss") -> go.Figure:
    """Loss per logged step (``history``: [{step, loss, examples_per_s?}]), examples/s on a 2nd axis."""
    steps = [int(h["step"]) for h in history]
    fig = go.Figure(go.Scatter(x=steps, y=[float(h["loss"]) for h in history], mode="lines+markers",
                               name="loss", line=dict(color=ACCENT, width=2), marker=dict(size=5)))
    speed = [h.get("examples_per_s") for h in history]
    if history and all(s is not None for s in speed):
        fig.add_trace(go.Scatter(x=steps, y=[float(s) for s in speed], mode="lines",
                                 name="examples/s", yaxis="y2",
                                 line=dict(color=MUTED, width=1, dash="dot")))
    fig.update_layout(xaxis=dict(title="step"), yaxis=dict(title="loss"),
                      yaxis2=dict(title="examples/s", overlaying="y", side="right", showgrid=False),
                      legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"))
    return apply_layout(fig, title, height=320)


# ----------------------------------------------------------------------------- parameter budgets


def compact_count(count: int) -> str:
    """A count short enough to sit after a bar: ``33920`` -> ``33,920``, ``1703936`` ->
    ``1.70M``, ``1235814400`` -> ``1.24B`` (the full number goes on hover)."""
    for unit, size in (("B", 10**9), ("M", 10**6)):
        if abs(count) >= size:
            return f"{count / size:.3g}{unit}" if count / size >= 100 else f"{count / size:.2f}{unit}"
    return f"{count:,}"


def params_bar(labels: Sequence[str], counts: Sequence[int], log: bool = True,
               title: str | None = None, highlight: int | None = 0) -> go.Figure:
    """Horizontal bars of trainable parameters per item (log axis by default), first on top;
    item ``highlight`` in the accent colour. Counts are ``fig.data[0].x``; the text after each bar
    is ``compact_count`` (so it fits), the hover the full number."""
    colours = [ACCENT if i == highlight else MUTED for i in range(len(labels))]
    fig = go.Figure(go.Bar(x=[int(c) for c in counts], y=list(labels), orientation="h",
                           marker_color=colours, text=[compact_count(int(c)) for c in counts],
                           textposition="outside", cliponaxis=False,
                           hovertemplate="%{y}: %{x:,}<extra></extra>"))
    positive = [int(c) for c in counts if int(c) > 0]
    if log and positive:  # room on the right for the numbers written after the bars
        low, high = math.log10(min(positive)), math.log10(max(positive))
        fig.update_xaxes(range=[low - 0.3, high + 0.45 * max(1.0, high - low)])
    fig.update_xaxes(type="log" if log else "linear", dtick=1 if log else None,
                     title="trainable parameters" + (" (log scale)" if log else ""))
    fig.update_yaxes(autorange="reversed", type="category")
    return apply_layout(fig, title, height=90 + 42 * max(1, len(labels)), right=30)


def method_comparison_bar(reports: Sequence) -> go.Figure:
    """Trainable parameters of each ``budget.BudgetReport`` (``.label``, ``.trainable_params``);
    log x axis."""
    return params_bar([r.label for r in reports], [r.trainable_params for r in reports], log=True,
                      title="Trainable parameters by method")


def tt_cores_figure(core_shapes: Sequence[Sequence[int]], num_input: int | None = None,
                    title: str | None = None) -> go.Figure:
    """The TT chain as boxes: core k is ``s_k`` wide and ``r_{k-1}·r_k`` tall (area = parameters).

    ``num_input``: how many cores carry input modes (coloured apart from the output cores). The
    scatter trace ``fig.data[0]`` holds one point per core: x = box centre, customdata = params.
    """
    shapes = [tuple(int(v) for v in s) for s in core_shapes]
    gap = max(3.0, 0.5 * max((s[1] for s in shapes), default=1))
    fig = go.Figure()
    centres, tops, labels, params = [], [], [], []
    x = 0.0
    for k, (r_in, mode, r_out) in enumerate(shapes):
        height = r_in * r_out
        colour = INPUT_CORE if num_input is None or k < num_input else OUTPUT_CORE
        fig.add_shape(type="rect", x0=x, x1=x + mode, y0=-height / 2, y1=height / 2,
                      line=dict(color="#495057", width=1), fillcolor=colour, opacity=0.9)
        centres.append(x + mode / 2)
        tops.append(height / 2)
        labels.append(f"G{k + 1}<br>{r_in}×{mode}×{r_out}")
        params.append(r_in * mode * r_out)
        if k + 1 < len(shapes):
            fig.add_shape(type="line", x0=x + mode, x1=x + mode + gap, y0=0, y1=0,
                          line=dict(color="#495057", width=2))
            fig.add_annotation(x=x + mode + gap / 2, y=0, text=f"r={r_out}", showarrow=False,
                               yshift=9, font=dict(size=10, color="#495057"))
        x += mode + gap
    fig.add_trace(go.Scatter(
        x=centres, y=[t for t in tops], mode="text", text=labels, textposition="top center",
        customdata=params, hovertemplate="%{text}<br>%{customdata:,} parameters<extra></extra>",
        showlegend=False))
    top = max(tops, default=1)
    fig.update_xaxes(visible=False, range=[-gap / 2, x - gap / 2])
    fig.update_yaxes(visible=False, range=[-top * 1.15, top * 1.9])
    total = sum(params)
    return apply_layout(fig, title or f"TT cores: {len(shapes)} cores, {total:,} parameters", height=260,
                        plot_bgcolor="rgba(0,0,0,0)")


# ----------------------------------------------------------------------------- expert internals


def short_layer_name(name: str) -> str:
    """``encoder.layer.3.attention.self.query`` -> ``L3 query`` (other names kept as they are)."""
    match = re.search(r"layers?\.(\d+)\..*?([A-Za-z_]+)$", name)
    return f"L{match.group(1)} {match.group(2)}" if match else name


def delta_w_norms(layer_names: Sequence[str], norms: Sequence[float],
                  title: str | None = "Frobenius norm of α·ΔW per layer") -> go.Figure:
    """Bars of ``‖α·ΔW‖_F``: x = layer ("L3"), one trace (colour) per target (last name part)."""
    targets = [name.rpartition(".")[2] or name for name in layer_names]
    palette = [ACCENT, OUTPUT_CORE, "#63E6BE", "#F783AC", "#A9E34B", "#B197FC"]
    fig = go.Figure()
    for i, target in enumerate(dict.fromkeys(targets)):
        idx = [j for j, t in enumerate(targets) if t == target]
        fig.add_trace(go.Bar(x=[short_layer_name(layer_names[j]).split()[0] for j in idx],
                             y=[float(norms[j]) for j in idx], name=target,
                             marker_color=palette[i % len(palette)],
                             hovertemplate="%{x}: %{y:.4f}<extra></extra>"))
    fig.update_yaxes(title="‖α·ΔW‖_F")
    fig.update_xaxes(type="category")
    fig.update_layout(barmode="group",
                      legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"))
    return apply_layout(fig, title, height=320)


def singular_values(values: Sequence[float], title: str | None = None,
                    rank_bound: int | None = None) -> go.Figure:
    """Singular values σ_1 ≥ σ_2 ≥ … of one layer's ΔW on a log axis (index from 1).

    Exact zeros cannot sit on a log axis and are left out. With ``rank_bound`` r, the x axis
    shows the first max(20, 4r) values (the rest are zoomable) and a line after σ_r.
    """
    points = [(i, float(v)) for i, v in enumerate(values, start=1) if float(v) > 0]
    fig = go.Figure(go.Scatter(x=[i for i, _ in points], y=[v for _, v in points],
                               mode="lines+markers", line=dict(color=ACCENT), marker=dict(size=5),
                               hovertemplate="σ_%{x}: %{y:.3e}<extra></extra>"))
    if rank_bound:
        fig.add_vline(x=rank_bound + 0.5, line=dict(color=OUTPUT_CORE, dash="dash"),
                      annotation_text=f"rank bound r = {rank_bound}", annotation_position="top right")
        fig.update_xaxes(range=[0.5, min(len(values), max(20, 4 * rank_bound)) + 0.5])
    fig.update_yaxes(type="log", title="singular value (log)", exponentformat="power")
    fig.update_xaxes(title="index")
    return apply_layout(fig, title or "Singular values of α·ΔW", height=320)


def metric_bar(values: Mapping[str, float], title: str | None = None, y_title: str = "accuracy",
               percent: bool = True) -> go.Figure:
    """One bar per key (per task, per layer ...), values in [0, 1] shown as percentages."""
    keys, vals = [str(k) for k in values], [float(v) for v in values.values()]
    fig = go.Figure(go.Bar(x=keys, y=vals, marker_color=ACCENT,
                           text=[f"{v:.1%}" if percent else f"{v:.3g}" for v in vals],
                           textposition="outside", cliponaxis=False))
    fig.update_xaxes(type="category")
    if percent:
        fig.update_yaxes(range=[0, 1.08], tickformat=".0%", title=y_title)
    else:
        fig.update_yaxes(title=y_title)
    return apply_layout(fig, title, height=320)


# ----------------------------------------------------------------------------- the method


def pipeline_diagram(expert_names: Sequence[str], chosen: str | None = None) -> go.Figure:
    """Input -> frozen base model -> router -> one TT-LoRA expert (of E) -> answer.

    Boxes are layout shapes, their texts annotations (in order: input, base, router, experts...,
    answer); the chosen expert (default: the first) is drawn in the accent colour.
    """
    names = list(expert_names) or ["expert"]
    chosen = chosen if chosen in names else names[0]
    fig = go.Figure()
    n = len(names)
    height_units = max(4.0, 1.0 * n)
    mid = height_units / 2

    def box(x0, x1, y0, y1, text, fill, line="#495057", bold=False, font_colour="#212529"):
        fig.add_shape(type="rect", x0=x0, x1=x1, y0=y0, y1=y1, line=dict(color=line, width=1.5),
                      fillcolor=fill, layer="below")
        fig.add_annotation(x=(x0 + x1) / 2, y=(y0 + y1) / 2, text=f"<b>{text}</b>" if bold else text,
                           showarrow=False, font=dict(size=13, color=font_colour))

    def arrow(x0, y0, x1, y1, colour="#495057", width=1.5):
        fig.add_annotation(x=x1, y=y1, ax=x0, ay=y0, xref="x", yref="y", axref="x", ayref="y",
                           text="", showarrow=True, arrowhead=3, arrowsize=1, arrowwidth=width,
                           arrowcolor=colour)

    box(0.0, 1.6, mid - 0.5, mid + 0.5, "input text", "#F1F3F5")
    box(2.2, 4.4, mid - 0.9, mid + 0.9, "frozen base model<br>(MiniLM, layers 0..k)", "#E9ECEF",
        bold=True)
    box(5.0, 6.6, mid - 0.5, mid + 0.5, "router<br>(top-1)", "#FFF3BF", bold=True)
    arrow(1.6, mid, 2.2, mid)
    arrow(4.4, mid, 5.0, mid)
    slot = height_units / n
    for i, name in enumerate(names):
        y = height_units - slot * (i + 0.5)
        active = name == chosen
        box(7.4, 9.2, y - min(0.38, slot * 0.4), y + min(0.38, slot * 0.4),
            f"TT-LoRA expert: {name}", ACCENT if active else "#F8F9FA",
            line=ACCENT if active else "#CED4DA", bold=active,
            font_colour="white" if active else "#868E96")
        arrow(6.6, mid, 7.4, y, ACCENT if active else "#DEE2E6", 2.5 if active else 1)
    box(10.0, 11.6, mid - 0.5, mid + 0.5, "answer<br>(task head)", "#D3F9D8", bold=True)
    y_chosen = height_units - slot * (names.index(chosen) + 0.5)
    arrow(9.2, y_chosen, 10.0, mid, ACCENT, 2.5)
    fig.update_xaxes(visible=False, range=[-0.1, 11.7])
    fig.update_yaxes(visible=False, range=[-0.2, height_units + 0.2])
    return apply_layout(fig, None, height=int(90 + 42 * height_units), plot_bgcolor="rgba(0,0,0,0)",
                        paper_bgcolor="rgba(0,0,0,0)")



METHOD_COLORS = {"tt-lora": ACCENT, "lora": "#E8590C", "adapter": "#2F9E44"}


def frontier_figure(points: Sequence[Mapping], fronts: Mapping[str, Sequence[str]],
                    title: str | None = "Validation metric against trainable adapter parameters") -> go.Figure:
    """Accuracy per parameter (report/frontier.py ``points``): one panel per task, one series per
    method and modules (markers with ± seed std, log x), the Pareto front as a dashed line."""
    tasks = list(dict.fromkeys(p["task"] for p in points))
    fig = make_subplots(rows=1, cols=max(len(tasks), 1), subplot_titles=tasks, horizontal_spacing=0.08)
    shown = set()
    for col, task in enumerate(tasks, start=1):
        mine = [p for p in points if p["task"] == task and p["value_mean"] is not None]
        for series in dict.fromkeys((p["method"], p["modules"], p.get("cores") or "") for p in mine):
            group = sorted((p for p in mine if (p["method"], p["modules"], p.get("cores") or "") == series),
                           key=lambda p: p["params"])
            chain = "" if series[2] in ("", "balanced") else f", {series[2].split(' cores')[0]} cores"
            name = f"{series[0]} ({series[1]}{chain})"
            fig.add_trace(go.Scatter(
                x=[p["params"] for p in group], y=[p["value_mean"] for p in group],
                error_y=dict(type="data", array=[p["value_std"] or 0.0 for p in group], visible=True),
                text=[p["setting"] for p in group], mode="lines+markers", name=name,
                legendgroup=name, showlegend=name not in shown,
                marker=dict(color=METHOD_COLORS.get(series[0]),
                            symbol="square" if chain else ("circle" if series[1] == "q,v" else "diamond"),
                            size=9),
                line=dict(color=METHOD_COLORS.get(series[0]), width=1,
                          dash="solid" if series[1] == "q,v" else "dot"),
                hovertemplate="%{text}<br>%{x:,} parameters<br>%{y:.3f}<extra></extra>"), row=1, col=col)
            shown.add(name)
        by_tag = {p["setting"]: p for p in mine}
        front = [by_tag[t] for t in fronts.get(task, ()) if t in by_tag]
        fig.add_trace(go.Scatter(x=[p["params"] for p in front], y=[p["value_mean"] for p in front],
                                 mode="lines", name="Pareto front", legendgroup="front",
                                 showlegend="front" not in shown,
                                 line=dict(color="#212529", dash="dash", width=1.5),
                                 hoverinfo="skip"), row=1, col=col)
        shown.add("front")
        fig.update_xaxes(type="log", title="trainable adapter parameters", row=1, col=col)
    fig.update_yaxes(title="validation metric (mean ± std over seeds)", row=1, col=1)
    return apply_layout(fig, title, 440)
