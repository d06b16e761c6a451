"""Playground: route a text (or a batch of mixed texts) through the mixture and see the answer."""

import time

import pandas as pd
import streamlit as st

from pages import common
from ttmoe_core import figures, tasks

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
    st.markdown(f"**{title}**: expert **{row['expert']}** ({row['task']}) answers "
                f"**{row['label']}**")
    if row["label_probs"]:
        st.plotly_chart(figures.probability_bar(row["label_probs"], highlight=row["label"],
                                                title=f"{row['expert']}: label probabilities"),
                        key=key)


st.title("Playground")
st.caption("Type a text: the router picks one expert, and that expert's TT-LoRA cores and head "
           "answer it, in one pass over the frozen base model.")

pack_dir = common.pick_pack(ws, key="playground_pack")
if common.pack_missing(pack_dir):
    st.stop()
mixture = common.safe(common.get_mixture, str(pack_dir), common.stamp(pack_dir),
                      what=f"loading {pack_dir}")
if mixture is None:
    st.stop()
if mixture.router is None:
    st.warning("This pack has no router: switch the oracle on and choose an expert, or train a "
               "router on the Router page.")
st.caption(f"Pack `{common.short_path(pack_dir)}`: experts {', '.join(mixture.names)} · inputs "
           f"longer than {mixture.max_length} tokens are truncated.")

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
    text = st.text_area("Text", key="pg_text", height=110, on_change=clear_gold)
    pair = st.text_area("Second text (pair tasks: hypothesis, second question, …) — optional",
                        key="pg_pair", height=80, on_change=clear_gold)
    oracle = st.toggle("Oracle: also force an expert", key="pg_oracle",
                       value=mixture.router is None,
                       help="Answer with the expert you choose as well, side by side.")
    forced = st.selectbox("Forced expert", mixture.names, key="pg_forced", disabled=not oracle)
    if st.button("Route and answer", type="primary", icon=":material/alt_route:"):
        if not text.strip():
            st.error("Type a text first (or pick an example).", icon=":material/edit:")
            ss.pop("pg_result", None)
        elif mixture.router is None and not oracle:
            st.error("This pack has no router: switch the oracle on.", icon=":material/error:")
        else:
            started = time.perf_counter()
            routed = None
            if mixture.router is not None:
                routed = common.safe(mixture.predict, [text], [pair.strip() or None], what="predict")
            elapsed = time.perf_counter() - started
            forced_row = None
            if oracle:
                forced_row = common.safe(mixture.predict, [text], [pair.strip() or None],
                                         expert=forced, what="predict")
            if routed is not None or forced_row is not None:
                ss["pg_result"] = {"routed": routed[0] if routed else None,
                                   "forced": forced_row[0] if forced_row else None,
                                   "seconds": elapsed}

with outputs:
    result = ss.get("pg_result")
    if not result:
        st.info("Type a text (or pick an example) and press **Route and answer**: the router's "
                "choice, the answer and their probabilities appear here.", icon=":material/info:")
    else:
        routed, forced_row = result["routed"], result["forced"]
        main = routed or forced_row
        cols = st.columns(2) + st.columns(2)
        cols[0].metric("Chosen expert", main["expert"], border=True,
                       help="The router's top-1 choice." if routed else "Forced (no router).")
        confidence = main["router_probs"].get(main["expert"])
        cols[1].metric("Router confidence", "–" if confidence is None else f"{confidence:.1%}",
                       border=True)
        best = max(main["label_probs"].values()) if main["label_probs"] else None
        cols[2].metric("Answer", str(main["label"]), border=True,
                       help=None if best is None else f"probability {best:.1%}")
        cols[3].metric("Time", f"{result['seconds'] * 1000:.0f} ms", border=True,
                       help="Routing and answering this input on this machine.")
        if ss.get("pg_gold"):
            st.caption(f"Gold label: {ss['pg_gold']}.")
        if main["truncated"]:
            st.caption(f"Note: the input is longer than {mixture.max_length} tokens and was truncated.")
        if main["router_probs"]:
            st.plotly_chart(figures.router_probs_bar(main["router_probs"], main["expert"]),
                            key="pg_router_probs")
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
        else:
            answer_card(main, "Routed" if routed else f"Forced: {main['expert']}", "pg_answer")

# ----------------------------------------------------------------------------- batch
with batch:
    st.caption(f"One input per line; a pair as `text {PAIR_SEPARATOR} second text`. All lines "
               "are answered in ONE mixed-batch call: each row gets its own expert.")
    lines_text = st.text_area("Inputs", BATCH_EXAMPLE, height=180, key="pg_batch")
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
        elif mixture.router is None:
            st.error("This pack has no router: use the single input with the oracle.",
                     icon=":material/error:")
        else:
            started = time.perf_counter()
            rows = common.safe(mixture.predict, texts, pairs, what="predict")
            elapsed = time.perf_counter() - started
            if rows:
                table = pd.DataFrame([{
                    "text": r["text"], "second text": r["text_pair"] or "", "expert": r["expert"],
                    "router confidence": r["router_probs"].get(r["expert"]),
                    "answer": str(r["label"]),
                    "answer probability": max(r["label_probs"].values()) if r["label_probs"] else None,
                    "truncated": r["truncated"]} for r in rows])
                st.dataframe(table, hide_index=True, column_config={
                    "router confidence": st.column_config.ProgressColumn(
                        format="percent", min_value=0, max_value=1),
                    "answer probability": st.column_config.NumberColumn(format="percent")})
                used = ", ".join(sorted({r["expert"] for r in rows}))
                st.caption(f"{len(rows)} inputs answered in one `predict` call in "
                           f"{elapsed * 1000:.0f} ms (experts used: {used}).")
