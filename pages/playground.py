"""Playground: route a text (or a batch of mixed texts) through the mixture and see the answer."""

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from pages import common
from ttmoe_core import tasks
from ttmoe_core.services import figures, views, workspace

ws = common.setup()
ss = st.session_state
PAIR_SEPARATOR = "|||"
DEFAULT_TEXT = "a gorgeous , witty , seductive movie ."
BATCH_EXAMPLE = "\n".join([
    "a gorgeous , witty , seductive movie .",
    "The more you eat, the more you wants.",
    "How do I learn to cook well? ||| What is the best way to learn cooking?",
    "A man is playing a guitar on stage. ||| Nobody is making music.",
    "What is the capital of Australia? ||| Canberra is the capital city of Australia.",
])


@st.cache_data(show_spinner=False, max_entries=32)
def examples(task: str) -> list[dict]:
    """Up to 50 validation examples of a task (seeded) from the default data folder."""
    data = tasks.load_task(task, "validation", limit=50)
    pairs = data.text_pairs or [None] * len(data)
    names = data.label_names
    return [{"text": t, "text_pair": p, "label": names[y] if names else y}
            for t, p, y in zip(data.texts, pairs, data.labels)]


def use_example(task: str, index: int) -> None:
    example = examples(task)[index]
    ss["pg_text"] = example["text"]
    ss["pg_pair"] = example["text_pair"] or ""
    ss["pg_gold"] = f"{example['label']} (a {task} validation example)"
    ss.pop("pg_result", None)


def clear_gold() -> None:
    ss.pop("pg_gold", None)


def answer_card(row: dict, title: str, key: str) -> None:
    """One answer: expert, label, label probabilities."""
    if row["expert"] is None:
        st.markdown(f"**{title}**: no expert fits this input (abstained).")
        return
    st.markdown(f"**{title}**: expert **{row['expert']}** ({row['task']}) answers "
                f"**{row['label']}**")
    common.quality_line(mixture.cards, row["expert"])   # its validation score; says when weak
    if row["label_probs"]:
        st.plotly_chart(figures.probability_bar(row["label_probs"], highlight=row["label"],
                                                title=f"{row['expert']}: label probabilities"),
                        key=key)


SOURCE_PACK, SOURCE_EXPERTS = "A pack (router + experts)", "Chosen experts (no pack)"


def expert_choices() -> dict[str, str]:
    """{folder: label} of the TT-LoRA experts of the workspace and of the demo pack."""
    choices = {}
    demo = workspace.pack_experts(common.default_pack_dir())
    for root, where in ((ws.root, "workspace"), (demo, "demo pack")):
        infos, _ = common.folder_experts(str(root), views.stamp(root))
        for info in infos:
            if info["method"] == "tt-lora":
                choices[info["folder"]] = f"{info['name']} ({info['task']}, {where})"
    return choices


def load_mixture(source: str):
    """(mixture, caption) of the chosen pack or experts; None when there is nothing to serve."""
    if source == SOURCE_PACK:
        pack_dir = common.pick_pack(ws, key="playground_pack")
        if common.pack_missing(pack_dir) or common.base_model_missing(pack_dir, "playground"):
            return None
        mixture = common.safe(common.get_mixture, str(pack_dir), views.stamp(pack_dir),
                              what=f"loading {pack_dir}")
        return mixture and (mixture, f"Pack `{common.short_path(pack_dir)}`: experts "
                                     f"{', '.join(mixture.names)}")
    choices = expert_choices()
    for folder in ss.get("pg_expert_dirs", []):       # e.g. "Try it" on an expert of a sub-folder
        choices.setdefault(folder, Path(folder).name)
    if not choices:
        st.info("No TT-LoRA expert in the workspace yet: train one on the Train page.",
                icon=":material/info:")
        return None
    folders = st.multiselect("Experts", list(choices), key="pg_expert_dirs",
                             format_func=lambda f: choices.get(f, f),
                             help="One expert, or several served side by side: without a router "
                                  "you choose which one answers (the oracle choice).")
    if not folders:
        st.info("Choose one or more experts to try.", icon=":material/info:")
        return None
    mixture = common.safe(common.get_adhoc_mixture, tuple(folders),
                          views.stamp(*map(Path, folders)), what="loading the experts")
    return mixture and (mixture, f"Experts {', '.join(choices[f] for f in folders)}, no router")


st.title("Playground")
st.caption("Type a text: the router picks one expert, and that expert's TT-LoRA cores and head "
           "answer it, in one pass over the frozen base model. Or try experts without a pack.")

tried = ss.pop(common.TRY_KEY, None)           # "Try it" on the Train or Experts page
if tried:
    ss["pg_source"], ss["pg_expert_dirs"] = SOURCE_EXPERTS, tried
    ss.pop("pg_result", None)
source = st.radio("Serve", [SOURCE_PACK, SOURCE_EXPERTS], key="pg_source", horizontal=True)
loaded = load_mixture(source)
if loaded is None:
    st.stop()
mixture, served = loaded
if mixture.router is None and source == SOURCE_PACK:
    st.warning("This pack has no router: switch the oracle on and choose an expert, or train a "
               "router on the Router page.")
st.caption(f"{served} · inputs longer than "
           f"{mixture.max_length} tokens are truncated.")
serving = (source, tuple(mixture.names))         # what answered: a change makes answers stale

single, batch = st.tabs(["One input", "Batch"])

# ----------------------------------------------------------------------------- one input
with single:
    inputs, outputs = st.columns([2, 3], gap="large")

with inputs:
    with st.expander("Pick an example from a task's validation split"):
        available = tasks.available_tasks()
        if not available:
            st.info("No task data found (set $TTMOE_DATA_DIR).")
        else:
            pack_tasks = [t for t in (e.config.task for e in mixture.experts) if t in available]
            task = st.selectbox("Task", pack_tasks + [t for t in available if t not in pack_tasks],
                                key="pg_task")
            rows = common.safe(examples, task, what=f"loading {task} examples") or []
            if rows:
                labels = [f"{i + 1}. [{r['label']}] {r['text'][:90]}"
                          + (f" {PAIR_SEPARATOR} {r['text_pair'][:40]}" if r["text_pair"] else "")
                          for i, r in enumerate(rows)]
                label = st.selectbox("Example", labels, key=f"pg_example_{task}")
                st.button("Use this example", on_click=use_example,
                          args=(task, labels.index(label)))

    common.default_state("pg_text", DEFAULT_TEXT)
    text = st.text_area("Text", key="pg_text", height=110, on_change=clear_gold,
                        max_chars=views.TEXT_MAX_CHARS)
    pair = st.text_area("Second text (pair tasks: hypothesis, second question, …) — optional",
                        key="pg_pair", height=80, on_change=clear_gold,
                        max_chars=views.TEXT_MAX_CHARS)
    if mixture.router is None:
        oracle = True
        forced = st.selectbox("Expert", mixture.names, key=f"pg_forced_{'_'.join(mixture.names)}",
                              help="No router: the expert you choose answers (the oracle choice).")
    else:
        oracle = st.toggle("Oracle: also force an expert", key="pg_oracle",
                           help="Answer with the expert you choose as well, side by side.")
        forced = st.selectbox("Forced expert", mixture.names, disabled=not oracle,
                              key=f"pg_forced_{'_'.join(mixture.names)}")
    abstain = False
    if mixture.openworld is not None:
        abstain = st.toggle("Abstain when no expert fits", key="pg_abstain",
                            help="An input that looks like none of the pack's tasks gets no "
                                 "expert and no answer; off: the router's top choice answers "
                                 "anyway (the paper's behaviour) and the input is only flagged.")
    asked = (serving, text, pair, forced if oracle else None, abstain)
    if st.button("Route and answer" if mixture.router is not None else "Answer", type="primary",
                 icon=":material/alt_route:", key="pg_go"):
        if not text.strip():
            st.error("Type a text first (or pick an example).", icon=":material/edit:")
            ss.pop("pg_result", None)
        else:
            started = time.perf_counter()
            routed = None
            if mixture.router is not None:
                routed = common.safe(mixture.predict, [text], [pair.strip() or None],
                                     abstain=abstain, what="predict")
            forced_row = None
            if oracle:
                forced_row = common.safe(mixture.predict, [text], [pair.strip() or None],
                                         expert=forced, what="predict")
            elapsed = time.perf_counter() - started
            if routed is not None or forced_row is not None:
                ss["pg_result"] = {"routed": routed[0] if routed else None,
                                   "forced": forced_row[0] if forced_row else None,
                                   "seconds": elapsed, "asked": asked}

with outputs:
    result = ss.get("pg_result")
    if result and result.get("asked", (None,))[0] != serving:
        result = None                            # another pack or other experts: not this answer
    if not result:
        st.info("Type a text (or pick an example) and press the button: the router's choice, "
                "the answer and their probabilities appear here.", icon=":material/info:")
    else:
        routed, forced_row = result["routed"], result["forced"]
        main = routed or forced_row
        if result["asked"] != asked:
            st.warning("The input changed: this answer is for the previous one. Press the button "
                       "again.", icon=":material/history:")
        temperature = mixture.openworld.scorer.temperature if mixture.openworld else None
        said = views.decision_words(main, temperature) if routed else None
        with st.container():
            best = max(main["label_probs"].values()) if main["label_probs"] else None
            top = st.columns([3, 2])
            top[0].metric("Answer", str(main["label"]), border=True,
                          help=f"{main['label']}" + ("" if best is None
                                                     else f" · probability {best:.1%}"))
            top[1].metric("Chosen expert", main["expert"] or "none (abstained)", border=True,
                          help="The router's top-1 choice." if routed else "Forced (no router).")
            confidence = main["router_probs"].get(main["expert"]) if main["expert"] else None
            if main.get("in_pool") is not None:
                pool_cols = st.columns([3, 2])
                pool_cols[0].metric("In the pool", "yes" if main["in_pool"] else "no", border=True,
                                    help="Does the input look like one of the pack's tasks? "
                                         "(out-of-pool detector, calibrated on other task families)")
                pool_cols[1].metric("Pool score", f"{main['pool_score']:+.2f}", border=True,
                                    help=f"Higher: more like the pack's tasks; threshold "
                                         f"{mixture.openworld.threshold:+.2f}.")
            if said is not None:
                (st.error if said[0] == "error" else st.warning)(said[1])
            bottom = st.columns([3, 2])
            bottom[0].metric("Router confidence",
                             "– (no router)" if confidence is None else f"{confidence:.1%}",
                             border=True)
            bottom[1].metric("Time", f"{result['seconds'] * 1000:.0f} ms", border=True,
                             help="Routing and answering this input on this machine (the "
                                  "forced expert's answer included).")
            if confidence is not None and said is None:
                (st.markdown if confidence >= 0.9 else st.warning)(
                    views.confidence_words(confidence))
            if ss.get("pg_gold"):
                st.caption(f"Gold label: {ss['pg_gold']}.")
            if main["truncated"]:
                st.caption(f"Note: the input is longer than {mixture.max_length} tokens and was "
                           "truncated.")
            if main["router_probs"]:
                st.plotly_chart(figures.router_probs_bar(main["router_probs"], main["expert"]),
                                key="pg_router_probs")
            if main["expert"] is None:
                st.info("No answer: abstained (switch the toggle off for the router's top choice).",
                        icon=":material/block:")
            if routed and forced_row:
                same = routed["expert"] == forced_row["expert"]
                st.markdown("**Oracle comparison** — " + (
                    "the router chose the forced expert too: same answer." if same else
                    "different experts: compare their answers."))
                col_r, col_f = st.columns(2)
                with col_r:
                    answer_card(routed, "Routed", "pg_cmp_routed")
                with col_f:
                    answer_card(forced_row, f"Forced: {forced_row['expert']}", "pg_cmp_forced")
            elif main["expert"] is not None:
                answer_card(main, "Routed" if routed else f"Forced: {main['expert']}", "pg_answer")

# ----------------------------------------------------------------------------- batch
with batch:
    st.caption(f"One input per line; a pair as `text {PAIR_SEPARATOR} second text`. All lines "
               "are answered in ONE mixed-batch call: each row gets its own expert.")
    lines_text = st.text_area("Inputs", BATCH_EXAMPLE, height=180, key="pg_batch",
                              max_chars=views.BATCH_MAX_CHARS)
    batch_expert = None
    if mixture.router is None:
        batch_expert = st.selectbox("Expert for every line", mixture.names,
                                    key=f"pg_batch_expert_{'_'.join(mixture.names)}",
                                    help="No router: one expert answers all lines.")
    if st.button("Answer all", type="primary", key="pg_batch_go"):
        texts, pairs, bad = [], [], []
        for number, line in enumerate(lines_text.splitlines(), 1):
            if not line.strip():
                continue
            first, _, second = line.partition(PAIR_SEPARATOR)
            if not first.strip():
                bad.append(number)
                continue
            texts.append(first.strip())
            pairs.append(second.strip() or None)
        if bad:
            st.error(f"Line(s) {', '.join(map(str, bad))} have no text before “{PAIR_SEPARATOR}”.",
                     icon=":material/edit:")
        elif not texts:
            st.error("Type at least one input line.", icon=":material/edit:")
        else:
            started = time.perf_counter()
            rows = common.safe(mixture.predict, texts, pairs, what="predict",
                               expert=batch_expert)
            elapsed = time.perf_counter() - started
            if rows:
                table = pd.DataFrame([{
                    "expert": r["expert"] or "–", "answer": str(r["label"]),
                    "in pool": r["in_pool"], "pool score": r["pool_score"],
                    "answer probability": max(r["label_probs"].values()) if r["label_probs"] else None,
                    "router confidence": r["router_probs"].get(r["expert"]),
                    "text": r["text"], "second text": r["text_pair"] or "",
                    "truncated": r["truncated"]} for r in rows])
                st.dataframe(table, hide_index=True, column_config={
                    "expert": st.column_config.TextColumn(width="small"),
                    "answer": st.column_config.TextColumn(width="medium"),
                    "router confidence": st.column_config.ProgressColumn(
                        format="percent", min_value=0, max_value=1, width="small"),
                    "answer probability": st.column_config.NumberColumn(format="percent",
                                                                        width="small"),
                    "text": st.column_config.TextColumn(width="large")})
                used = ", ".join(sorted({r["expert"] for r in rows}))
                st.caption(f"{len(rows)} inputs answered in one `predict` call in "
                           f"{elapsed * 1000:.0f} ms (experts used: {used}).")
