"""Router: the pack's stored router metrics; train a router for chosen experts in the background."""

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import streamlit as st

from pages import common
from ttmoe_core import moe, routing, tasks
from ttmoe_core.services import figures, views, workflows, workspace
from ttmoe_core.services.workspace import WorkspaceError

ws = common.setup()
registry = common.job_registry()
owner = common.session_id()
ss = st.session_state
VARIANT_HELP = {"paper": "the authors': last layer, last token, noisy gating (full pass)",
                "linear": "one linear layer on the mean-pooled states of layer k",
                "mlp": "an MLP on the mean-pooled states of layer k",
                "fusion": "MLP on layers 0..k + character n-grams of the raw text",
                "ngram": "ours (issue 14): layers 0..k per segment + case-free word and character "
                         "n-grams; add-expert can grow it"}


def router_report(names: list[str], metrics: dict, key: str) -> None:
    """Confusion heatmap (counts or row-normalised), accuracy per task and per layer."""
    left, right = st.columns([3, 2], gap="large")
    with left:
        normalise = st.toggle("Row-normalised", value=True, key=f"normalise_{key}",
                              help="Each row (true task) sums to 100%; off: counts of inputs.")
        st.plotly_chart(figures.confusion_heatmap(
            names, metrics["confusion"], normalise=normalise,
            title="Where each task's held-out inputs were routed"), key=f"confusion_{key}")
    with right:
        st.plotly_chart(figures.metric_bar(metrics.get("per_task", {}),
                                           title="Routed to the right expert, per task"),
                        key=f"per_task_{key}")
        if len(metrics.get("per_layer") or {}) > 1:
            per_layer = {f"layer {k}": v for k, v in metrics["per_layer"].items()}
            st.plotly_chart(figures.metric_bar(per_layer, title="Accuracy per base layer k"),
                            key=f"per_layer_{key}")


def stored_router(pack_dir: Path) -> None:
    summary = common.pack_summary(str(pack_dir), views.stamp(pack_dir))
    if "error" in summary:
        st.error(f"Cannot read the pack: {summary['error']}", icon=":material/error:")
        return
    info = summary["router"]
    if info is None:
        st.info("This pack has no router yet: train one below.")
        return
    metrics, cfg = info["metrics"], info["config"]
    num_layers = summary["base_model"].get("num_layers", 0)
    cols = st.columns(5)
    cols[0].metric("Routing accuracy", f"{metrics.get('accuracy', float('nan')):.1%}",
                   help="Share of held-out inputs sent to their own task's expert.")
    cols[1].metric("Held-out inputs", f"{metrics.get('rows', 0):,}")
    cols[2].metric("Variant", cfg["variant"], help=VARIANT_HELP.get(cfg["variant"]))
    cols[3].metric("Base layer k", cfg["layer"],
                   help=f"The router runs the base model up to layer k: "
                        f"{cfg['layer']}/{num_layers} of a pass.")
    cols[4].metric("Router parameters", f"{info['params']:,}" if info.get("params") else "–")
    router_report(summary["names"], metrics, key=f"stored_{pack_dir}")
    build = summary["manifest"].get("build") or {}
    sources = metrics.get("sources") or {}
    st.caption(
        f"Stored in `{common.short_path(Path(info['file']))}` "
        f"({views.fmt_date(summary['manifest'].get('created') or summary['created'])}). "
        f"Trained on {metrics.get('train_rows', '?')} inputs ({cfg['epochs']} epochs, lr "
        f"{cfg['lr']:g}, max length {cfg['max_length']}); scored on {metrics.get('rows', '?')} "
        "held-out inputs the router never saw.")
    with st.expander("Where the held-out inputs come from"):
        if build.get("command"):
            st.markdown(f"Pack built with `{build['command']}`.")
        st.markdown("\n".join(f"- **{k}**: {v}" for k, v in sources.items()))
    mixture = (summary["manifest"].get("metrics") or {}).get("mixture")
    if mixture:
        st.subheader("The mixture vs the oracle expert")
        st.dataframe(pd.DataFrame([{
            "expert": name, "metric": row["metric"], "mixture": row["mixture"][row["metric"]],
            "oracle": row["oracle"][row["metric"]],
            "gap (points)": 100 * (row["mixture"][row["metric"]] - row["oracle"][row["metric"]]),
            "routed right": row["routing_accuracy"]} for name, row in mixture["per_task"].items()]),
            hide_index=True, column_config={
                k: st.column_config.NumberColumn(format="%.3f")
                for k in ("mixture", "oracle", "routed right")} | {
                "gap (points)": st.column_config.NumberColumn(format="%+.1f")})
        st.caption(f"Measured by `eval-moe --save` on {mixture['rows']:,} held-out inputs: the "
                   "oracle forces each input's own expert; a gap is where routing errs.")
    pool = (summary["manifest"].get("metrics") or {}).get("pool")
    if pool:
        st.subheader("Out-of-pool detection")
        cols = st.columns(4)
        cols[0].metric("AUROC", f"{pool['auroc']:.3f}",
                       help="Held-out in-pool inputs vs inputs of task families outside the "
                            f"pack ({', '.join(pool['evaluation_families'])}); 1.0: always apart.")
        cols[1].metric("In-pool inputs flagged", f"{pool['false_flag']:.1%}",
                       help=f"At the pack's threshold (target {pool['false_flag_target']:.0%}).")
        cols[2].metric("Outside inputs caught", f"{pool['caught']:.1%}")
        cols[3].metric("Router temperature", f"{pool['temperature']:.2f}",
                       help="Calibrates the router's probabilities (fitted on held-apart rows).")
        st.plotly_chart(figures.metric_bar({f: r["auroc"] for f, r in pool["families"].items()},
                                           title="AUROC against each outside family"),
                        key=f"pool_{pack_dir}")
    else:
        st.caption("No out-of-pool detector: every input goes to an expert with full confidence. "
                   f"Calibrate one with `python -m ttmoe_core calibrate-pool --pack {pack_dir}`.")
    for added in metrics.get("added", []):
        st.caption(f"Expert **{added['expert']}** ({added['task']}) was added without retraining "
                   f"the router ({added['seconds']:.1f} s, {added['rows_new']} rows).")


def add_expert_form(pack_dir: Path) -> None:
    """Grow the chosen workspace pack by one trained expert (``moe.add_expert``)."""
    if ws.root not in pack_dir.parents:
        st.caption("The demo pack is read-only: add experts to a pack of your workspace (train "
                   "an ngram router for it below first).")
        return
    have = set(common.pack_summary(str(pack_dir), views.stamp(pack_dir)).get("names", []))
    infos, _ = common.folder_experts(str(ws.root), views.stamp(ws.root))
    options = {f"{i['name']} ({i['task']})": i["folder"] for i in infos
               if i["name"] not in have and i["method"] == "tt-lora"}
    if not options:
        st.caption("No workspace expert outside this pack to add: train one on the Train page.")
        return
    cols = st.columns(3)
    chosen = cols[0].selectbox("Expert to add", list(options), key="add_expert_pick")
    rows = cols[1].number_input("Rows of its task", 50, 20_000, 1000, key="add_expert_rows")
    check = cols[2].number_input("Measure routing on N rows a task (0: skip)", 0, 2000, 100,
                                 key="add_expert_eval")
    if st.button("Add expert", icon=":material/add:", key="add_expert_go"):
        base_model = common.safe(common.get_backbone, what="base model")
        with st.spinner("Growing the router and the out-of-pool detector…"):
            out = base_model and common.safe(moe.add_expert, pack_dir, options[chosen],
                                             base_model, rows=int(rows),
                                             evaluate=int(check) or None, what="add-expert")
        if out:
            st.success(f"Added {out['name']} in {out['seconds']:.1f} s; the other experts' files "
                       "are untouched.", icon=":material/check_circle:")
            if "old_accuracy_after" in out:
                st.markdown(f"Old tasks routed right: {out['old_accuracy_before']:.1%} → "
                            f"{out['old_accuracy_after']:.1%}; the new task's inputs sent to "
                            f"{out['name']}: {out.get('new_accuracy', float('nan')):.1%}.")


def job_view(job_id: str, polling: bool) -> None:
    job = common.staged_job_status(registry, job_id, polling, "Router training", "router")
    if job is None:
        return
    result = job.result
    rows = [{"layer k": r["layer"], "held-out accuracy": r["report"].accuracy,
             "cost (share of a pass)": r["cost"], "parameters": routing.params(r["router"])}
            for r in result["results"]]
    best = max(range(len(rows)), key=lambda i: rows[i]["held-out accuracy"])
    st.success(f"Trained {len(rows)} router(s) for {', '.join(result['names'])}: best "
               f"{rows[best]['held-out accuracy']:.1%} on layer {rows[best]['layer k']}.",
               icon=":material/check_circle:")
    st.dataframe(pd.DataFrame(rows), hide_index=True, column_config={
        "held-out accuracy": st.column_config.NumberColumn(format="%.3f"),
        "cost (share of a pass)": st.column_config.NumberColumn(format="%.2f")})
    chosen = st.selectbox("Show and save the router of layer", range(len(rows)), index=best,
                          format_func=lambda i: f"k = {rows[i]['layer k']}", key=f"pick_{job_id}")
    metrics = routing.router_metrics(result["results"][chosen], result["train_rows"],
                                    result["held_out_rows"], result["sources"], result["results"])
    router_report(result["names"], metrics, key=f"job_{job_id}")
    st.caption(f"Trained {views.fmt_date(result['created'])} on {result['train_rows']} inputs; "
               f"scored on {result['held_out_rows']} held-out inputs: "
               + "; ".join(f"{k}: {v}" for k, v in result["sources"].items()))
    saved = workspace.has_router(result["pack"])
    if st.button("Save this router to the pack", type="primary", key=f"save_{job_id}_{chosen}"):
        if common.safe(workflows.save_trained_router, result, chosen, {"built_by": "Router page"},
                       what="save") is not None:
            saved = workspace.has_router(result["pack"])
            if saved:
                st.success(f"Saved to `{result['pack']}`: choose it as the pack on the Playground.")
    if not saved:
        st.caption(f"The pack `{result['pack']}` holds the experts; save a router to use it.")


st.title("Router")
st.caption("The router reads the frozen base model (up to layer k) and picks one expert per input; "
           "it is trained on the task id while the experts stay frozen.")

# ----------------------------------------------------------------------------- stored router
st.header("Stored router")
pack_dir = common.pick_pack(ws, key="router_pack")
if not common.pack_missing(pack_dir):
    stored_router(pack_dir)
    with st.expander("Add an expert to this pack (no retraining)"):
        add_expert_form(pack_dir)

# ----------------------------------------------------------------------------- new router
st.divider()
st.header("Train a router")
st.caption("Choose experts (from the demo pack and your workspace): they are copied into a new "
           "pack under the workspace, and a router is trained for them on their tasks' data.")
options: dict[str, dict] = {}
demo_experts = workspace.pack_experts(common.default_pack_dir())
for prefix, root in (("demo pack", demo_experts), ("workspace", ws.root)):
    if root.is_dir():
        infos, _ = common.folder_experts(str(root), views.stamp(root))
        options.update({f"{prefix} / {i['name']} ({i['task']}, {i['method']})": i for i in infos})
if not options:
    st.info("No experts to route between yet: build the demo pack "
            f"(`{common.BUILD_DEMO}`) or train experts on the Train page.")
else:
    common.default_state("router_experts", [k for k in options if k.startswith("demo pack")])
    chosen = st.multiselect("Experts", list(options), key="router_experts")
    col_a, col_b, col_c = st.columns(3)
    variant = col_a.selectbox("Variant", routing.VARIANTS, index=routing.VARIANTS.index("fusion"),
                              help="; ".join(f"{v}: {h}" for v, h in VARIANT_HELP.items()))
    col_a.caption(VARIANT_HELP[variant][0].upper() + VARIANT_HELP[variant][1:] + ".")
    layers = col_a.multiselect("Base layer(s) k", list(range(common.EMBEDDED_BASE.num_layers + 1)), default=[2],
                               disabled=routing.variant_spec(variant).last_layer_only,
                               help="One router per layer; the paper variant reads the last layer.")
    per_task = col_b.number_input("Training inputs per task", 10, 100_000, 300)
    held_out = col_b.number_input("Held-out inputs per task", 10, 10_000, 100)
    epochs = col_c.number_input("Epochs", 1, 1000, 60)
    common.default_state("router_pack_name", dt.datetime.now().strftime("pack-%Y%m%d-%H%M"))
    pack_name = col_c.text_input("New pack name", key="router_pack_name").strip()
    picked = [options[c] for c in chosen]
    problems = []
    if len(chosen) < 2:
        problems.append("Choose at least two experts.")
    unknown = [i["name"] for i in picked if i["task"] not in tasks.TASKS]
    if unknown:
        problems.append(f"{', '.join(unknown)}: trained on an uploaded file, not a known task, so "
                        "there is no task data to teach the router with.")
    if not routing.variant_spec(variant).last_layer_only and not layers:
        problems.append("Choose at least one layer.")
    try:
        new_pack = ws.pack_dir(pack_name)
    except WorkspaceError as exc:
        problems.append(f"Pack name: {exc}.")
    else:
        if new_pack.exists():
            problems.append(f"{new_pack} already exists: choose another pack name.")
    layouts = {json.dumps(i["tt_layout"], sort_keys=True) for i in picked}
    if any(i["method"] != "tt-lora" for i in picked) or len(layouts) > 1:
        st.caption(":material/info: The Playground serves TT-LoRA experts that share their TT "
                   "shapes; a router for other experts can be trained and stored all the same.")
    for problem in problems:
        st.caption(f":material/warning: {problem}")
    own = registry.get(owner, ss.get("router_job"))
    busy = own is not None and own.running
    if st.button("Train router", type="primary", icon=":material/alt_route:",
                 disabled=bool(problems) or busy):
        started = common.safe(workflows.start_router_training, registry, owner, variant, layers,
                              int(epochs), common.get_backbone, [i["folder"] for i in picked], ws,
                              pack_name, int(per_task), int(held_out), what="router training")
        if started is not None:
            own = started
            ss["router_job"] = own.id
    if own is not None:
        st.subheader("This run")
        common.watch_job(own, job_view)
