"""Experts: every expert of the workspace and the demo pack, what is inside, rename and delete."""

import math
from pathlib import Path

import pandas as pd
import streamlit as st

from pages import common
from ttmoe_core import budget, tt
from ttmoe_core.services import figures, views, workspace

ws = common.setup()
pack_dir = common.default_pack_dir()


@st.cache_data(show_spinner="Computing ΔW's singular values from the cores…", max_entries=16)
def delta_spectra(folder: str, folder_stamp: float) -> dict | None:
    """``views.expert_spectra``, cached until the expert's files change."""
    return views.expert_spectra(folder)


def experts_table(infos: list[dict]) -> None:
    rows = [{"name": i["name"], "task": i["task"], "method": i["method"], "rank": i["rank"],
             "α": i["alpha"], "TT shape": " · ".join(f"{t}: {views.shape_text(l)}"
                                                     for t, l in i["tt_layout"].items()) or "–",
             "adapter params": i["adapter_params"], "metric": i["metric"],
             "validation score": i["metric_value"], "steps": i["training"].get("steps"),
             "trained": views.fmt_date(i["created"])} for i in infos]
    st.dataframe(pd.DataFrame(rows), hide_index=True, column_config={
        "name": st.column_config.TextColumn(width="medium", pinned=True),
        "trained": st.column_config.TextColumn(width="medium"),
        "adapter params": st.column_config.NumberColumn(format="localized"),
        "validation score": st.column_config.NumberColumn(format="%.3f"),
        "α": st.column_config.NumberColumn(format="%g")})


def show_invalid(invalid: dict[str, str]) -> None:
    for folder, reason in invalid.items():
        st.warning(f"**{Path(folder).name}** cannot be used: {reason}", icon=":material/warning:")


def structure_tab(info: dict) -> None:
    if info["method"] != "tt-lora":
        st.info(f"A {info['method']} expert: {info['adapter_params']:,} adapter parameters "
                f"on {', '.join(info['targets']) or 'every layer'}; no TT cores to draw.")
        return
    rows = []
    for target, layout in info["tt_layout"].items():
        cores = tt.core_shapes(layout["in_factors"], layout["out_factors"], info["rank"])
        rows.append({"target": target, "TT shape (in | out)": views.shape_text(layout),
                     "cores [r, s, r']": " ".join(f"[{a},{b},{c}]" for a, b, c in cores),
                     "parameters per layer": tt.param_count(cores)})
    st.dataframe(pd.DataFrame(rows), hide_index=True)
    cols = st.columns(len(info["tt_layout"]))
    for col, (target, layout) in zip(cols, info["tt_layout"].items()):
        cores = tt.core_shapes(layout["in_factors"], layout["out_factors"], info["rank"])
        title = f"{target}: {tt.param_count(cores):,} parameters per layer"
        col.plotly_chart(figures.tt_cores_figure(cores, num_input=len(layout["in_factors"]),
                                                 title=title),
                         key=f"cores_{info['folder']}_{target}")
    st.caption("Box k is core G_k [r_{k-1}, s_k, r_k]: s_k wide, r_{k-1}·r_k tall (area = "
               "parameters). Blue cores take the input modes, orange ones give the output modes.")


def delta_tabs(info: dict, norms_tab, svals_tab) -> None:
    stats = common.safe(delta_spectra, info["folder"], views.stamp(Path(info["folder"])),
                        what="reading the expert's tensors")
    if stats is None:
        for tab in (norms_tab, svals_tab):
            tab.info("ΔW plots cover TT-LoRA and LoRA experts.")
        return
    norms_tab.plotly_chart(figures.delta_w_norms(stats["layers"], stats["norms"]),
                           key=f"norms_{info['folder']}")
    norms_tab.caption("‖α·ΔW‖_F of each adapted layer, from its singular values computed from the "
                      "stored cores (`experts.delta_w_spectra`): ΔW itself is never formed.")
    layer = svals_tab.selectbox("Layer", stats["layers"], format_func=figures.short_layer_name,
                                key=f"svals_layer_{info['folder']}")
    bound = info["rank"] if info["method"] in ("tt-lora", "lora") else None
    svals_tab.plotly_chart(figures.singular_values(
        stats["values"][layer], title=f"Singular values of α·ΔW, {figures.short_layer_name(layer)}",
        rank_bound=bound), key=f"svals_{info['folder']}")
    svals_tab.caption(f"ΔW = A·B with A: d_in × r and B: r × d_out (r = {bound}, the rank at "
                      "the input/output boundary of the chain), so at most r singular values are "
                      "non-zero; they are computed from the r × r factors of A and B, and the "
                      "others are exactly zero.")


def size_tab(info: dict) -> None:
    lora = views.lora_reference(info)
    dims = budget.PRESETS.get(info["base"].get("name", ""))
    labels = [f"this expert ({info['method']})"]
    counts = [info["adapter_params"]]
    if lora:
        labels.append("LoRA r16, same targets")
        counts.append(lora)
    if dims is not None and info["targets"]:
        labels.append("dense ΔW, same targets")
        counts.append(sum(math.prod(dims.module_shape(t)) * dims.layers_of(t)
                          for t in dims.expand_targets(info["targets"])))
    st.plotly_chart(figures.params_bar(labels, counts, title="Adapter parameters (log scale)"),
                    key=f"size_{info['folder']}")
    st.caption("LoRA r16: `budget.compute_budget(base, 'lora', rank=16)` on the same targets; "
               "dense ΔW: one d_out×d_in matrix per target and layer. Task head "
               f"({info['head_params']:,} parameters) not included.")


def training_tab(info: dict) -> None:
    left, right = st.columns(2)
    if info["history"]:
        left.plotly_chart(figures.loss_curve(info["history"]), key=f"loss_{info['folder']}")
    confusion = info["metrics"].get("confusion")
    if confusion:
        right.plotly_chart(figures.confusion_heatmap(
            info["label_names"], confusion, title="Confusion on the validation rows",
            x_title="predicted", y_title="true label"), key=f"conf_{info['folder']}")
    st.dataframe(pd.DataFrame([{"setting": k, "value": str(v)} for k, v in info["training"].items()]),
                 hide_index=True)
    data = info["data"]
    if data:
        st.caption(f"Training data: {data.get('train_rows')} rows of {data.get('train')}. "
                   f"Validation: {data.get('eval_rows')} rows of {data.get('eval')}.")


def manage(info: dict) -> None:
    """Rename or delete a workspace expert (each behind a confirmation)."""
    folder = Path(info["folder"])
    with st.expander("Rename or delete this expert"):
        left, right = st.columns(2)
        new_name = left.text_input("New name", info["name"], key=f"rename_{folder}").strip()
        if left.button("Rename", key=f"rename_btn_{folder}", disabled=new_name == info["name"]):
            if common.safe(ws.rename_expert, folder.name, new_name,
                           what="rename") is not None:
                st.rerun()
        sure = right.checkbox(f"Yes, delete {folder} for good", key=f"delete_ok_{folder}")
        if right.button("Delete", key=f"delete_btn_{folder}", disabled=not sure, type="primary"):
            common.safe(ws.delete_expert, folder.name, what="delete")
            if not folder.exists():
                st.rerun()


st.title("Experts")
st.caption("Every expert folder of your workspace and of the demo pack (adapter_config.json + "
           "adapter_model.safetensors: TT-LoRA cores in this project's format; a LoRA expert is "
           "also a PEFT adapter), validated on reading.")

st.header("Workspace")
ws_infos, ws_invalid = common.folder_experts(str(ws.root), views.stamp(ws.root))
if ws_infos:
    experts_table(ws_infos)
else:
    st.info(f"No experts in `{ws.root}` yet.")
    st.page_link("pages/train.py", label="Train one", icon=":material/model_training:")
show_invalid(ws_invalid)

st.header("Demo pack")
demo_infos = []
if not common.pack_missing(pack_dir):
    demo_experts = workspace.pack_experts(pack_dir)
    demo_infos, demo_invalid = common.folder_experts(str(demo_experts), views.stamp(demo_experts))
    if demo_infos:
        experts_table(demo_infos)
    show_invalid(demo_invalid)

choices = {f"workspace / {i['name']}": (i, True) for i in ws_infos}
choices.update({f"demo pack / {i['name']}": (i, False) for i in demo_infos})
if choices:
    st.divider()
    st.header("Inside one expert")
    label = st.selectbox("Expert", list(choices), key="experts_pick")
    info, editable = choices[label]
    caption_col, try_col = st.columns([5, 1], vertical_alignment="center")
    caption_col.caption(views.training_caption(info))
    if info["method"] == "tt-lora":
        if try_col.button("Try it", type="primary", icon=":material/chat:", key="experts_try",
                          help="Open the Playground with this expert, no pack needed."):
            common.try_experts([info["folder"]])
    else:
        try_col.caption("The Playground serves TT-LoRA experts only.")
    cols = st.columns(3) + st.columns(3)
    cols[0].metric("Task", info["task"], border=True)
    cols[1].metric("Method", info["method"], border=True)
    cols[2].metric("Rank", info["rank"], border=True)
    cols[3].metric("Adapter parameters", f"{info['adapter_params']:,}", border=True)
    cols[4].metric("Head parameters", f"{info['head_params']:,}", border=True)
    value = info["metric_value"]
    cols[5].metric(f"Validation {info['metric']}", border=True,
                   value=f"{value:.3f}" if isinstance(value, float) and math.isfinite(value) else "–")
    tabs = st.tabs(["Structure", "ΔW per layer", "Singular values", "Size vs LoRA", "Training"])
    with tabs[0]:
        structure_tab(info)
    delta_tabs(info, tabs[1], tabs[2])
    with tabs[3]:
        size_tab(info)
    with tabs[4]:
        training_tab(info)
    if editable:
        manage(info)
