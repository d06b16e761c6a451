"""Compare with the paper: the committed report (reports/) and a background re-run of `small`."""

import datetime as dt
from pathlib import Path

import pandas as pd
import streamlit as st

from pages import common
from ttmoe_core import report
from ttmoe_core.errors import one_line
from ttmoe_core.services import views

COMMAND = "python -m ttmoe_core report --budget full-demo --out reports --work-dir reports/full-demo.work --resume"

ws = common.setup()
registry = common.job_registry()
owner = common.session_id()
ss = st.session_state


@st.cache_data(show_spinner=False, max_entries=8)
def load_results(path: str, folder_stamp: float) -> dict:
    """{"error"} or the report's results.json (``folder_stamp`` reloads it when files change)."""
    try:
        return report.read_results(path)
    except report.ReportError as exc:
        return {"error": one_line(exc)}


def seed_words(meta: dict) -> str:
    """``seeds 0, 1, 2 (experiment 2), seed 0 elsewhere``; older reports: ``seed 0``."""
    seeds = meta.get("seeds") or []
    if len(seeds) <= 1:
        return f"seed {meta['seed']}"
    return f"seeds {', '.join(str(s) for s in seeds)} (experiment 2: mean ± std), seed {meta['seed']} elsewhere"


def short(value: object) -> str:
    """A budget setting in a few characters: ``60``, ``none``, ``0, 1, 2``, ``mnli, cola, … (6)``."""
    if value is None:
        return "none"
    if isinstance(value, list):
        items = [", ".join(str(v) for v in item) if isinstance(item, list) else str(item) for item in value]
        return ", ".join(items) if len(items) <= 3 else f"{', '.join(items[:2])}, … ({len(items)})"
    return str(value)


def show_report(results: dict, key: str) -> None:
    """Headline numbers, the paper's claims with their verdicts, then each section's tables and plots."""
    meta, machine = results["meta"], report.machine_summary(results["meta"])
    exps = results["experiments"]
    holds = sum(exp["claim"]["verdict"] == "holds" for exp in exps.values())
    cols = st.columns(4)
    cols[0].metric("Budget", meta["budget"])
    seconds, starts = report.run_time(meta)
    how = (f", over its {starts} starts (`--resume`): {report.sessions_rule(meta['sessions'])}"
           if starts > 1 else "")
    cols[1].metric("Run time", report.duration(seconds),
                   help=f"Wall time of the whole run, training included{how}.")
    finished = views.fmt_date(meta.get("finished"))
    cols[2].metric("Finished", finished.split(" ")[0], help=finished)   # the day fits; hover: time
    cols[3].metric("Paper's claims that hold here", f"{holds} of {len(exps)}")
    st.caption(f"{machine['gpu'] or machine['cpu']} · {machine['cores']} "
               f"cores · torch {machine['torch']}, {machine['threads']} threads on {machine['device']} · "
               f"load average {machine['load_average']} at start · base model "
               f"{meta['base_model']['name']} · {seed_words(meta)} · `{meta['command']}`")
    changes = report.budget_changes(meta)
    if changes:
        listed = "; ".join(f"{key} {short(then)} → {short(now)}" for key, then, now in changes[:6])
        more = f"; and {len(changes) - 6} more" if len(changes) > 6 else ""
        st.warning(f"This report ran the `{meta['budget']}` budget as it was defined then; today's "
                   f"`{meta['budget']}` differs: {listed}{more}. Its numbers are not what today's budget "
                   f"gives: re-run it (`{COMMAND}`).", icon=":material/history:")
    # the verdict next to the experiment, long texts last and wrapped to fit at 1280 px
    st.dataframe(pd.DataFrame([{"experiment": report.SECTION_TITLES[name].split(" (")[0],
                                "here": exp["claim"]["verdict"],
                                "points to": report.factor(name, results) or "",
                                "paper's claim": exp["claim"]["paper"],
                                "evidence": exp["claim"]["evidence"]}
                               for name, exp in exps.items()]), hide_index=True, column_config={
        "experiment": st.column_config.TextColumn(width="medium", pinned=True,
                                                  help="hover a cell for its full text"),
        "here": st.column_config.TextColumn("verdict here", width="small"),
        "points to": st.column_config.TextColumn("what the measurements point to", width="large",
                                                 help="for a claim that does not (fully) hold: the "
                                                      "factor its numbers point to"),
        "paper's claim": st.column_config.TextColumn(width="large"),
        "evidence": st.column_config.TextColumn(width="large")})
    figures = report.build_figures(results)
    names = [name for name in report.RENDER_ORDER if name in exps]
    for name, tab in zip(names, st.tabs([report.SECTION_TITLES[n].split(" (")[0] for n in names])):
        with tab:
            st.markdown(report.render_section(results, name, figure_links=False))
            for fig_name in report.SECTION_FIGURES[name]:
                if fig_name in figures:
                    st.plotly_chart(figures[fig_name], key=f"{key}_{fig_name}")


def job_view(job_id: str, polling: bool) -> None:
    job = common.staged_job_status(registry, job_id, polling, "The report run", "report")
    if job is None:
        return
    out = Path(job.result["out"])
    st.success(f"Done in {job.result['seconds']:.0f} s: `{out}`.", icon=":material/check_circle:")
    results = load_results(str(out), views.stamp(out))
    if "error" in results:
        st.error(results["error"], icon=":material/error:")
    else:
        show_report(results, key=f"rerun_{job_id}")


st.title("Compare with the paper")
st.caption("The experiments of Kunwar et al. (2025) re-run with this project's code on the embedded "
           "MiniLM: contraction vs reconstruction, TT-LoRA vs LoRA vs adapters, router variants, "
           "expert integration and a mixed-task test against AdapterFusion. Every number below comes "
           "from a run, with its date, machine and settings.")

st.header("Committed report")
folder = common.report_dir()
committed = load_results(str(folder), views.stamp(folder))
if "error" in committed:
    st.info(f"No report to show yet ({committed['error']}). Produce it with `{COMMAND}`.",
            icon=":material/info:")
else:
    st.caption(f"From `{folder / report.MARKDOWN_FILE}`.")
    show_report(committed, key="committed")

st.divider()
st.header("Re-run the small budget")
small = report.BUDGETS["small"]
st.caption(f"The same five experiments at CI scale ({small.steps} steps of batch {small.batch_size} per "
           f"expert, {len(small.seeds)} seeds in experiment 2, {small.eval_rows} validation rows a task; "
           "about 5 minutes on 2 CPU cores), in the "
           "background. The result goes to the workspace; the committed report is not touched. Its "
           "numbers are far from the full run's: it checks that everything runs, not what holds.")
own = registry.get(owner, ss.get("report_job"))
busy = own is not None and own.running
if st.button("Run the small report", type="primary", icon=":material/play_arrow:", disabled=busy):
    out = ws.root / "reports" / f"small-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    own = registry.submit(owner, "report", f"small report {out.name}", report.report_job, "small", out)
    ss["report_job"] = own.id
if own is not None:
    common.watch_job(own, job_view, every=2.0)
