"""Overview: the method in one picture, the demo pack at a glance, links to the other pages."""

import pandas as pd
import streamlit as st

from pages import common
from ttmoe_core.services import figures, views, workspace

common.setup()
pack_dir = common.default_pack_dir()

st.title("TT-LoRA MoE Studio")
st.markdown(
    "Tiny **tensor-train LoRA experts**, one per task, on a **frozen** base model, and a separate "
    "**router** that picks exactly one expert per input — after Kunwar et al., 2025, "
    "*TT-LoRA MoE* ([arXiv 2504.21190](https://arxiv.org/abs/2504.21190)).")

summary = None
if workspace.is_pack(pack_dir):
    summary = common.pack_summary(str(pack_dir), views.stamp(pack_dir))
names = summary["names"] if summary and "error" not in summary else ["sst2", "cola", "mnli"]
chosen = "sst2" if "sst2" in names else names[0]
st.plotly_chart(figures.pipeline_diagram(names, chosen=chosen), key="pipeline",
                config={"displayModeBar": False})
col1, col2, col3 = st.columns(3)
col1.markdown("**1 · Experts.** Each task gets its own TT-LoRA adapter on the attention q/v "
              "projections of every layer: ΔW is a chain of small cores `[r, s, r']`, never a "
              "dense matrix. The base model stays frozen.")
col2.markdown("**2 · Router.** A small classifier reads the frozen model's early-layer states "
              "(and the raw text's surface) and picks one expert — top-1, no mixing. It is "
              "trained after the experts, which stay frozen.")
col3.markdown("**3 · Mixture.** A batch of inputs from different tasks is answered in one pass: "
              "every TT-LoRA layer gathers each row's expert cores by index, so the cost does "
              "not grow with the number of experts.")

st.divider()
st.header("The demo pack at a glance")
if common.pack_missing(pack_dir):
    pass
elif "error" in summary:
    st.error(f"The demo pack at {pack_dir} cannot be read: {summary['error']}", icon=":material/error:")
else:
    infos = summary["experts"]
    router_info = summary["router"] or {}
    metrics = router_info.get("metrics") or {}
    lora = views.lora_reference(infos[0])
    per_expert = infos[0]["adapter_params"]
    total_tt = sum(i["adapter_params"] for i in infos)
    cols = st.columns(5)
    cols[0].metric("Experts", len(infos), help=", ".join(summary["names"]), border=True)
    cols[1].metric("Routing accuracy", f"{metrics['accuracy']:.1%}" if "accuracy" in metrics else "–",
                   help=f"Held-out inputs the router never saw: {metrics.get('rows', '?')} rows.",
                   border=True)
    cols[2].metric("TT-LoRA / expert", f"{per_expert:,}", border=True,
                   help="Trainable adapter parameters of one expert (cores of every layer; the "
                        "task head not included).")
    if lora:
        cols[3].metric("LoRA r16 / expert", f"{lora:,}", border=True,
                       help="LoRA rank 16 on the same targets: "
                            "budget.compute_budget(base, 'lora', rank=16).")
        cols[4].metric(f"All {len(infos)} TT-LoRA experts", f"{total_tt:,}", border=True,
                       delta=f"{total_tt / lora:.2f}× one LoRA r16", delta_color="off",
                       delta_arrow="off")
    rows = [{"expert": i["name"], "task": i["task"], "metric": i["metric"],
             "validation score": i["metric_value"],
             "quality": ("weak: " + i["quality"]["reason"]) if i["quality"]["weak"] else "ok",
             "TT-LoRA params": i["adapter_params"],
             "head params": i["head_params"], "rank": i["rank"],
             "TT shape (q)": views.shape_text(next(iter(i["tt_layout"].values())))
             if i["tt_layout"] else "–",
             "steps": i["training"].get("steps"), "trained": views.fmt_date(i["created"])}
            for i in infos]
    st.dataframe(pd.DataFrame(rows), hide_index=True,
                 column_config={"validation score": st.column_config.NumberColumn(format="%.3f"),
                                "TT-LoRA params": st.column_config.NumberColumn(format="localized"),
                                "head params": st.column_config.NumberColumn(format="localized")})
    weak = [f"{i['name']} ({i['quality']['reason']})" for i in infos if i["quality"]["weak"]]
    if weak:
        st.warning("Weak experts, little better than a trivial guess on validation: "
                   + "; ".join(weak) + ".", icon=":material/warning:")
    build = summary["manifest"].get("build") or {}
    minutes = (build.get("seconds") or 0) / 60
    note = (f"Built with `{build['command']}` in {minutes:.0f} min. " if build.get("command")
            else "")
    router_cfg = router_info.get("config") or {}
    st.caption(
        f"From `{common.short_path(pack_dir)}` ({views.fmt_date(summary['created'])}). {note}"
        "Validation scores: each expert on its task's validation split, measured when it was "
        f"trained. Router: {router_cfg.get('variant', '?')} on layer {router_cfg.get('layer', '?')}, "
        f"{metrics.get('train_rows', '?')} training inputs, scored on "
        f"{metrics.get('rows', '?')} held-out inputs.")

st.divider()
st.header("Where to next")
links = [("pages/budget.py", "Budget calculator", ":material/calculate:",
          "count parameters of TT-LoRA, LoRA and adapters on any model"),
         ("pages/train.py", "Train an expert", ":material/model_training:",
          "train a TT-LoRA expert (or a baseline) in the background"),
         ("pages/experts.py", "Experts", ":material/inventory_2:",
          "look inside experts: cores, ΔW, singular values"),
         ("pages/router.py", "Router", ":material/alt_route:",
          "router metrics; train a router for your own experts"),
         ("pages/playground.py", "Playground", ":material/chat:",
          "type a text and watch it being routed")]
cols = st.columns(len(links))
for col, (page, label, icon, text) in zip(cols, links):
    with col:
        st.page_link(page, label=label, icon=icon)
        st.caption(text)
