"""Train an expert: pick data and settings, train in the background, watch the loss, save."""

import os
from pathlib import Path

import pandas as pd
import streamlit as st

from pages import common
from ttmoe_core import experts, report, tasks
from ttmoe_core.services import figures, views, workflows

ws = common.setup()
registry = common.job_registry()
owner = common.session_id()
ss = st.session_state
# the live view's refresh (seconds; $TTMOE_TRAIN_REFRESH_S overrides it for measurements). CPU
# that the page and the browser take from a watched run on the same 2 cores, as a share of the
# run's own CPU (scripts/refresh_cost.py, 2026-12-01): 6.7% at 1 s, 3.5% at 2 s, 2.0% at 5 s.
# (Before server.fileWatcherType = "none" any open page kept 86% of a core busy.)
REFRESH_S = float(os.environ.get("TTMOE_TRAIN_REFRESH_S", "5"))
METHOD_LABELS = {"tt-lora": "TT-LoRA", "lora": "LoRA (PEFT)", "adapter": "Bottleneck adapter"}


@st.cache_data(show_spinner=False, max_entries=8)
def read_upload(file_name: str, content: bytes, label_task: str | None
                ) -> tuple[tasks.TaskData, tasks.TaskData, tasks.TaskData]:
    """``workflows.read_upload`` (all rows, training rows, validation rows), cached per upload."""
    return workflows.read_upload(file_name, content, label_task)


def show_result(result: dict) -> None:
    """Validation metrics, confusion matrix and loss curve of a finished run."""
    metrics = result["metrics"]
    st.success(f"Saved expert **{result['name']}** to `{result['path']}`.",
               icon=":material/check_circle:")
    # validation scores only: not timings, not the hold-out's (shown in the caption below)
    scores = {k: v for k, v in metrics.items() if isinstance(v, float)
              and k not in ("train_seconds", "train_cpu_seconds") and not k.startswith("holdout_")}
    cols = st.columns(len(scores) + 2)
    for col, (key, value) in zip(cols, scores.items()):
        col.metric(f"Validation {key}", f"{value:.3f}")
    cols[-2].metric("Training time", f"{metrics.get('train_seconds', 0):.1f} s")
    cols[-1].metric("Trainable parameters", f"{result['trainable_params']:,}",
                    help=f"adapter {result['adapter_params']:,} + task head")
    left, right = st.columns(2)
    if metrics.get("confusion"):
        left.plotly_chart(figures.confusion_heatmap(
            result["label_names"], metrics["confusion"], title="Confusion on the validation rows",
            x_title="predicted", y_title="true label"), key=f"confusion_{result['path']}")
    if result["history"]:
        right.plotly_chart(figures.loss_curve(result["history"]), key=f"loss_{result['path']}")
    data = result["data"]
    held = {k[len("holdout_"):]: v for k, v in metrics.items() if k.startswith("holdout_")}
    best = ", ".join(f"{k} {v:.3f}" for k, v in held.items())
    stop = (f" Early stopping on a hold-out of the training rows: best {best} at step "
            f"{metrics.get('best_step')} of {metrics.get('steps_run')} run (the expert keeps those "
            "weights)." if held else "")
    st.caption(f"Trained {views.fmt_date(result['created'])} on {data.get('train_rows')} rows of "
               f"{data.get('train')}; validated on {data.get('eval_rows')} rows of {data.get('eval')}."
               + stop)
    left, right = st.columns([1, 3], vertical_alignment="center")
    if result["method"] == "tt-lora":
        if left.button("Try it", type="primary", icon=":material/chat:", key="train_try",
                       help="Open the Playground with this expert, no pack needed."):
            common.try_experts([result["path"]])
    else:
        left.caption(f"A {result['method']} baseline: the Playground serves TT-LoRA experts only.")
    right.page_link("pages/experts.py", label="Look inside it on the Experts page",
                    icon=":material/inventory_2:")


def phase(events: list[dict]) -> tuple[float, str]:
    """(fraction done, one status line) of a training job from its events, from its first second:
    starting, preparing data, preparing the model, step k of n, evaluating, saving."""
    last = events[-1] if events else {}
    stage = last.get("stage")
    train_event = next((e for e in reversed(events) if e.get("stage") == "training"), {})
    step, total = train_event.get("step", 0), max(1, train_event.get("total", 1))
    if not events:
        return 0.0, "Starting: loading the base model…"
    if stage == "loading data":
        return 0.0, "Preparing data: reading the task's training and validation rows…"
    if stage == "training" and "loss" not in last:
        return 0.0, (f"Preparing the model: TT-LoRA cores on a copy of the base model, "
                     f"{last.get('train_rows', '?')} training rows…")
    if stage == "training":
        return step / total, (f"Step {step} of {total} · loss {last['loss']:.4f} · "
                              f"{last['examples_per_s']:.1f} examples/s"
                              + views.holdout_words(events))
    if stage == "evaluating":
        return 1.0, f"Evaluating on {last['rows']} validation rows…"
    if stage == "saving":
        return 1.0, f"Saving to {last['path']}…"
    return step / total, str(stage)


def job_view(job_id: str, polling: bool) -> None:
    """Progress of one training job; a finished job shows its result."""
    job = registry.get(owner, job_id)
    if job is None:
        return
    if polling and not job.running:
        st.rerun()  # the whole page once more, without the timer
    if job.running:
        events = job.events
        done, text = phase(events)
        st.progress(min(1.0, done), text=f"{text} · {job.elapsed:.0f} s")
        # no live chart: redrawing it at each refresh took CPU from training (the loss is in
        # the status line; the curve comes with the result)
        if st.button("Cancel training", key=f"cancel_{job_id}", icon=":material/stop_circle:"):
            st.toast("Cancelling at the next step…" if registry.cancel(owner, job_id)
                     else "Too late to cancel: the expert is being saved.")
    elif job.status == "done":
        show_result(job.result)
    else:
        common.job_outcome(job, "Training")


st.title("Train an expert")
st.caption("One TT-LoRA expert (or a LoRA or bottleneck-adapter baseline) on one task, on the "
           "frozen embedded MiniLM. Training runs in the background: you may leave this page "
           "and come back.")

# ----------------------------------------------------------------------------- data
st.subheader("Data")
source = st.radio("Training data", ["Task from the data folder", "Upload a CSV/JSONL file"],
                  horizontal=True, key="train_source")
task_name, train_data, eval_data, ready = None, None, None, True
data_dir = tasks.default_data_dir()
if source == "Task from the data folder":
    available = tasks.available_tasks()
    if not available:
        st.error(f"No task data found: set ${tasks.DATA_DIR_ENV} to a folder in the hub layout "
                 "(<dir>/<task>/<split>.parquet).", icon=":material/error:")
        ready = False
    else:
        common.default_state("train_task", "sst2" if "sst2" in available else available[0])
        col_task, col_about = st.columns([1, 2], vertical_alignment="bottom")
        task_name = col_task.selectbox("Task", available, key="train_task")
        spec = tasks.TASKS[task_name]
        col_about.caption(f"Labels: {', '.join(spec.label_names) or 'a score (regression)'} · "
                          f"metric {tasks.primary_metric(spec)} · data from `{data_dir}` (train "
                          "split for training, validation split for the scores).")
else:
    upload = st.file_uploader("CSV or JSONL with columns text, optional text_pair, label",
                              type=["csv", "tsv", "jsonl", "json"], key="train_upload")
    label_task = st.selectbox("Label names", ["from the file"] + list(tasks.TASKS),
                              help="Read labels as this task's label names (e.g. sst2: negative, "
                                   "positive), or take the names found in the file.")
    ready = False
    if upload is None:
        st.info("Upload a file to train on it: one row per example.")
    else:
        try:
            data, train_data, eval_data = read_upload(
                upload.name, upload.getvalue(), None if label_task == "from the file" else label_task)
        except tasks.DataError as exc:
            st.error(str(exc), icon=":material/error:")
        else:
            task_name = label_task if label_task != "from the file" else Path(upload.name).stem
            ready = True
            st.success(f"{len(data)} rows, labels {', '.join(data.label_names)}: "
                       f"{len(train_data)} for training, {len(eval_data)} for validation.")

# ----------------------------------------------------------------------------- settings
st.subheader("Training settings")
col_a, col_b, col_c = st.columns(3)
with col_a:
    method = st.radio("Method", experts.METHODS, horizontal=True, key="train_method",
                      format_func=lambda m: METHOD_LABELS.get(m, m))
    defaults = experts.METHOD_DEFAULTS[method]
    rank = st.number_input("Reduction factor (bottleneck = 384 / factor)" if method == "adapter"
                           else "Rank", 1, 384, defaults["rank"], key=f"train_rank_{method}")
    if method == "tt-lora" and task_name:
        results = common.committed_report()
        hint = None if results is None else report.suggested_rank(
            results, common.EMBEDDED_BASE.name, task_name)
        if hint is not None:
            st.caption(f"Measured on {task_name} (q,v, committed report): rank {hint['rank']} "
                       f"reaches {hint['metric']} {hint['mean']:.3f} with {hint['params']:,} "
                       f"parameters, within 1 point of the best rank measured ({hint['best_rank']}: "
                       f"{hint['best_mean']:.3f}); ranks measured "
                       f"{', '.join(map(str, hint['ranks_measured']))}.")
        else:
            st.caption(f"No committed frontier measurement for {task_name}: the paper's rank 5 is "
                       "the default.")
    alpha = st.number_input("α (scale of ΔW)", 0.01, 1024.0, defaults["alpha"],
                            key=f"train_alpha_{method}", disabled=method == "adapter")
    lr = st.number_input("Learning rate", 1e-6, 1.0, defaults["lr"], step=1e-4, format="%.1e",
                         key=f"train_lr_{method}")
with col_b:
    steps = st.number_input("Steps", 1, 100_000, 300, key="train_steps")
    batch_size = st.number_input("Batch size", 1, 1024, 32, key="train_batch")
    max_length = st.number_input("Max length (tokens)", 8, 512, 128, key="train_max_length")
    eval_limit = st.number_input("Validation rows (at most)", 1, 100_000, 500, key="train_eval_rows",
                                 disabled=source != "Task from the data folder")
with col_c:
    init = st.selectbox("TT init", ["zero", "kaiming"], key="train_init",
                        disabled=method != "tt-lora",
                        help="zero: ΔW = 0 at step 0, as LoRA (the default, measured better); "
                             "kaiming: the paper's normalised Kaiming cores.")
    seed = st.number_input("Seed", 0, 2**31 - 1, 0, key="train_seed")
    shapes: dict[str, list[int]] = {}
    if method == "tt-lora":
        for target in common.EMBEDDED_BASE.default_targets():
            d_in, d_out = common.EMBEDDED_BASE.module_shape(target)
            shape, error = views.parse_shape(
                st.text_input(f"TT shape of {target} ({d_in} → {d_out})", "automatic",
                              key=f"train_shape_{target}"), d_in, d_out)
            if error:
                st.error(error, icon=":material/error:")
                ready = False
            elif shape is not None:
                shapes[target] = shape

with st.expander("Early stopping: a hold-out of the training rows", icon=":material/timer:"):
    stop_defaults = experts.ExpertConfig(task="any")
    st.caption("A seeded share of the TRAINING rows (never the validation rows) is held out and "
               "scored every few steps; the run stops after that many evaluations without a "
               "better score and keeps the weights of its best one. Steps above are the cap.")
    col_h, col_e, col_p, col_m = st.columns(4)
    holdout_fraction = col_h.number_input("Hold-out share", 0.0, 0.5,
                                          stop_defaults.holdout_fraction, step=0.05,
                                          key="train_holdout", help="0: train on every row, no stop")
    eval_every = col_e.number_input("Evaluate every (steps)", 0, 100_000, stop_defaults.eval_every,
                                    key="train_eval_every", help="0: only at the end")
    patience = col_p.number_input("Patience (evaluations)", 0, 1_000, stop_defaults.patience,
                                  key="train_patience", help="0: never stop early")
    min_steps = col_m.number_input("Never stop before step", 0, 100_000, stop_defaults.min_steps,
                                   key="train_min_steps",
                                   help="Some tasks sit at the majority class for hundreds of steps "
                                        "before they learn (CoLA).")

default_name = task_name or "expert"
col_name, col_where = st.columns([1, 2], vertical_alignment="bottom")
name = col_name.text_input("Expert name", default_name, key=f"train_name_{default_name}",
                           help="Its folder in the workspace.").strip()
col_where.caption(f"Saved to `{ws.root / name}`.")
overwrite = False
out_dir = common.safe(ws.expert_dir, name)          # None (and a message) for a bad name
name_ok = out_dir is not None
if name_ok and out_dir.exists():
    overwrite = st.checkbox(f"Replace the existing `{out_dir}`", key="train_overwrite")

own_job = registry.get(owner, ss.get("train_job"))
busy = own_job is not None and own_job.running
button_col, run_col = st.columns([1, 5])     # the run's status line sits next to the button
if button_col.button("Train", type="primary", icon=":material/model_training:",
                     disabled=busy or not ready or not name_ok or (out_dir.exists() and not overwrite),
                     help="A training run of yours is going on (one at a time)." if busy else None):
    settings = dict(
        task=task_name, method=method, rank=int(rank), alpha=float(alpha), lr=float(lr),
        shapes=shapes or None, init=init, steps=int(steps), batch_size=int(batch_size),
        max_length=int(max_length), seed=int(seed), eval_limit=int(eval_limit),
        holdout_fraction=float(holdout_fraction), eval_every=int(eval_every),
        patience=int(patience), min_steps=int(min_steps))
    job = common.safe(workflows.start_training, registry, owner, settings, common.get_backbone, ws,
                      name, replace=overwrite, train_data=train_data, eval_data=eval_data,
                      what="training")
    if job is not None:
        ss["train_job"] = job.id
        st.rerun()                           # draw the button disabled and the run beside it

# ----------------------------------------------------------------------------- progress
if own_job is not None:
    with run_col:
        common.watch_job(own_job, job_view, every=REFRESH_S)

runs = registry.list(owner, "train")
if runs:
    with st.expander(f"Runs in this session ({len(runs)})"):
        st.dataframe(pd.DataFrame([{
            "run": label, "status": job.status, "seconds": round(job.elapsed, 1),
            "saved to": (job.result or {}).get("path", ""), "error": job.error or ""}
            for job, label in runs]), hide_index=True)
