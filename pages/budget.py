"""Budget calculator: trainable parameters and weight memory of TT-LoRA, LoRA and adapters."""

import pandas as pd
import streamlit as st

from pages import common
from ttmoe_core import budget, tt
from ttmoe_core import report as ttreport
from ttmoe_core.errors import one_line
from ttmoe_core.files.safefs import parse_json
from ttmoe_core.services import figures, views

common.setup()
ss = st.session_state
PAPER = budget.PAPER_PRESET
METHOD_LABELS = {"tt-lora": "TT-LoRA", "lora": "LoRA", "adapter": "Adapter (bottleneck)",
                 "adapterfusion": "AdapterFusion", "full": "Full fine-tuning"}


def apply_paper_preset() -> None:
    """Set the form to the paper's reference call (LLaMA-3.2-1B, TT-LoRA r5 on q/v)."""
    ss["budget_source"] = "Preset"
    ss["budget_preset"] = PAPER["model"]
    ss["budget_method"] = PAPER["method"]
    ss[f"budget_rank_{PAPER['method']}"] = PAPER["rank"]
    ss[f"budget_targets_{PAPER['model']}"] = list(PAPER["targets"])
    for target, shape in PAPER["shapes"].items():
        ss[f"budget_shape_{PAPER['model']}_{target}"] = ",".join(map(str, shape))


st.title("Budget calculator")
st.caption("Exact counts from a model's dimensions alone (no weights are loaded), computed by "
           "`ttmoe_core.budget`. Memory is the storage of the trainable weights only.")
st.button("Paper preset (LLaMA-3.2-1B)", on_click=apply_paper_preset, type="primary",
          help="TT-LoRA rank 5 on q_proj (16,8,4,4 | 4,4,8,16) and v_proj (16,16,4,2 | 2,16,16), "
               "as in Kunwar et al., 2025.")

# ----------------------------------------------------------------------------- the model
common.default_state("budget_source", "Preset")
common.default_state("budget_preset", "all-minilm-l6-v2")
common.default_state("budget_method", "tt-lora")
left, right = st.columns([1, 2], gap="large")
with left:
    st.subheader("Model")
    source = st.radio("Model from", ["Preset", "Upload config.json"], key="budget_source",
                      horizontal=True)
    dims = None
    if source == "Preset":
        dims = budget.PRESETS[st.selectbox("Preset", list(budget.PRESETS), key="budget_preset")]
    else:
        upload = st.file_uploader("A Hugging Face config.json", type=["json"], key="budget_upload")
        if upload is None:
            st.info("Upload a model's config.json (LLaMA, Mistral, Qwen2, BERT, RoBERTa, "
                    "DistilBERT), or pick a preset.")
        else:
            try:
                config = parse_json(upload.getvalue(), upload.name)     # depth-bounded
                if not isinstance(config, dict):
                    raise ValueError(f"it holds a JSON {type(config).__name__}, not an object")
                dims = budget.dims_from_config(config)
            except ValueError as exc:
                st.error(f"{upload.name}: {one_line(exc)}", icon=":material/error:")
    if dims is None:
        st.stop()
    st.caption(f"**{dims.name}** ({dims.model_type}): {dims.num_layers} layers, hidden "
               f"{dims.hidden_size}, {dims.num_heads} heads ({dims.num_kv_heads} kv), "
               f"{dims.total_params:,} parameters.")

    st.subheader("Method")
    method = st.selectbox("Method", budget.METHODS, key="budget_method",
                          format_func=lambda m: METHOD_LABELS[m])
    rank = None
    if method in ("tt-lora", "lora"):
        rank_key = f"budget_rank_{method}"
        common.default_state(rank_key, budget.DEFAULT_TT_RANK if method == "tt-lora"
                             else budget.DEFAULT_LORA_RANK)
        rank = st.number_input("TT rank" if method == "tt-lora" else "LoRA rank", min_value=1,
                               max_value=1024, step=1, key=rank_key)
    targets_key = f"budget_targets_{dims.name}"
    common.default_state(targets_key, dims.default_targets())
    targets = st.multiselect("Target modules (every layer)", dims.valid_targets, key=targets_key,
                             help="Adapters never use these; they set the LoRA reference.")
    with st.expander("Comparison settings"):
        lora_rank = st.number_input("LoRA reference rank", 1, 1024, budget.DEFAULT_LORA_RANK)
        reduction = st.number_input("Adapter reduction factor (bottleneck = hidden / factor)",
                                    1, 4096, 16)
        adapter_kind = st.radio("Adapter kind", budget.ADAPTER_KINDS, horizontal=True,
                                format_func=str.capitalize)
        num_tasks = st.number_input("Tasks fused (AdapterFusion)", 1, 64, 6)

    shapes: dict[str, list[int]] = {}
    shape_errors = False
    if method == "tt-lora" and targets:
        st.subheader("TT shapes")
        st.caption("Input factors, then output factors, comma-separated; “automatic” picks "
                   "balanced factors. The input factors must multiply to d_in, the rest to d_out.")
        for target in targets:
            d_in, d_out = dims.module_shape(target)
            auto_in, auto_out = tt.default_factors(d_in, d_out)
            key = f"budget_shape_{dims.name}_{target}"
            common.default_state(key, "automatic")
            text = st.text_input(f"TT shape of {target} ({d_in} → {d_out})", key=key,
                                 help=f"automatic = {','.join(map(str, auto_in))} | "
                                      f"{','.join(map(str, auto_out))}")
            shape, error = views.parse_shape(text, d_in, d_out)
            if error:
                st.error(error, icon=":material/error:")
                shape_errors = True
            elif shape is not None:
                shapes[target] = shape

# ----------------------------------------------------------------------------- the budget
with right:
    if not targets:
        st.warning("Choose at least one target module.")
        st.stop()
    if shape_errors:
        st.warning("Fix the TT shape on the left to see the budget.")
        st.stop()
    report = common.safe(budget.compute_budget, dims, method, rank=rank, targets=targets,
                         shapes=shapes or None, lora_rank=int(lora_rank),
                         adapter_reduction=int(reduction), adapter_kind=adapter_kind,
                         num_tasks=int(num_tasks), what="budget")
    if report is None:
        st.stop()
    st.subheader(f"{report.label} on {report.model}")
    rows = [st.columns(2) for _ in range(3)]        # two a row: every value fits at 1280 px
    cells = [cell for row in rows for cell in row]
    cells[0].metric("Trainable parameters", f"{report.trainable_params:,}", border=True)
    cells[1].metric(f"LoRA r{report.lora_rank}, same targets", f"{report.lora_params:,}",
                    border=True, help="LoRA at the reference rank on the same target modules")
    cells[2].metric("Ratio to LoRA", f"{report.ratio_to_lora:.4g}×", border=True,
                    help="trainable parameters of this method / those of LoRA at the reference rank")
    cells[3].metric("Share of the base model", f"{report.percent_of_base:.4g}%", border=True,
                    help=f"of {report.base_params:,} base parameters")
    cells[4].metric("Weights in fp32", budget.format_bytes(report.bytes_fp32), border=True)
    cells[5].metric("Weights in bf16", budget.format_bytes(report.bytes_bf16), border=True)
    for note in report.notes:
        st.caption(f"Note: {note}.")
    size = int(reduction) if method == "adapter" else rank
    results = common.committed_report()
    found = [] if results is None else ttreport.measured(results, dims.name, method, size, targets)
    if found:
        st.markdown("**What this setting measured** (validation, mean ± std over seeds, "
                    f"`{common.short_path(common.report_dir())}`): " + "; ".join(
                        f"{m['task']} {m['metric']} {m['mean']:.3f}"
                        + ("" if m["std"] is None else f" ± {m['std']:.3f}")
                        + f" ({m['seeds']} seed{'s' * (m['seeds'] != 1)}, {m['source']})" for m in found))
    else:
        st.caption("No committed measurement of this setting: the report trained "
                   + ("other sizes or modules on this model." if results is not None
                      and results["meta"]["base_model"].get("name") == dims.name
                      else "on another base model." if results is not None else "nothing yet.")
                   + " Counts alone do not say what a setting scores.")

    if report.modules:
        rows = []
        for mod in report.modules:
            row = {"module": mod.target, "d_in × d_out": f"{mod.d_in} × {mod.d_out}"}
            if mod.tt_shape:
                in_f, out_f = tt.split_shape(mod.tt_shape, mod.d_in, mod.d_out)
                row["TT shape"] = views.shape_text({"in_factors": in_f, "out_factors": out_f})
            rows.append({**row, "per layer": mod.params_per_layer,
                         f"total ({mod.num_layers} layers)": mod.total})
        total = f"total ({report.modules[0].num_layers} layers)"
        st.dataframe(pd.DataFrame(rows), hide_index=True, column_config={
            "module": st.column_config.TextColumn(width=70, pinned=True),
            "d_in × d_out": st.column_config.TextColumn(width=100),
            "TT shape": st.column_config.TextColumn(width=150),
            "per layer": st.column_config.NumberColumn(format="localized", width=80),
            total: st.column_config.NumberColumn(format="localized", width=110)})

    tt_modules = [m for m in report.modules if m.core_shapes]
    if tt_modules:
        st.subheader("The TT cores")
        st.caption("Each box is one core G_k of shape [r_{k-1}, s_k, r_k]: s_k wide, "
                   "r_{k-1}·r_k tall, so its area is its parameter count. Blue: input modes "
                   "(contracted with x), orange: output modes. The same chain sits in every layer.")
        tabs = st.tabs([m.target for m in tt_modules])
        for tab, mod in zip(tabs, tt_modules):
            in_f, _ = tt.split_shape(mod.tt_shape, mod.d_in, mod.d_out)
            tab.plotly_chart(figures.tt_cores_figure(
                mod.core_shapes, num_input=len(in_f),
                title=f"{mod.target}: {len(mod.core_shapes)} cores, {mod.params_per_layer:,} "
                      f"parameters per layer"), key=f"cores_{mod.target}")


# ----------------------------------------------------------------------------- all methods
st.divider()
st.header("All methods on the same targets")
reports = common.safe(budget.compare_methods, dims, tt_rank=rank if method == "tt-lora" else
                      budget.DEFAULT_TT_RANK, lora_rank=int(lora_rank), targets=targets,
                      shapes=shapes or None, adapter_reduction=int(reduction),
                      num_tasks=int(num_tasks), what="comparison")
if reports:
    table = pd.DataFrame([{"method": r.label, "trainable parameters": r.trainable_params,
                           "% of base": r.percent_of_base,
                           f"× LoRA r{r.lora_rank}": r.ratio_to_lora} for r in reports])
    chart_col, table_col = st.columns([2, 3], gap="medium")
    chart_col.plotly_chart(figures.method_comparison_bar(reports), key="methods_bar")
    # widths fit the widest value (1,235,814,400: full fine-tuning of LLaMA-3.2-1B) at 1280 px
    table_col.dataframe(table, hide_index=True, column_config={
        "method": st.column_config.TextColumn(width=170, pinned=True),
        "trainable parameters": st.column_config.NumberColumn("parameters", format="localized",
                                                              width=120),
        "% of base": st.column_config.NumberColumn(format="%.4g%%", width=90),
        f"× LoRA r{reports[0].lora_rank}": st.column_config.NumberColumn(format="%.4g",
                                                                          width=80)})
    table_col.caption(f"TT-LoRA at rank {reports[0].rank}, LoRA at rank {reports[1].rank}; "
                      f"adapters with reduction {int(reduction)} "
                      f"(AdapterFusion: {int(num_tasks)} tasks). Weights take 4 bytes a "
                      "parameter in fp32, 2 in bf16.")
