"""One report run: check the data, run the seven experiments in order, write the report folder.

``run_report(budget, out)`` writes ``results.json`` (every number, with date, machine, load and
timings), ``paper_tables.md`` and ``figures/``; ``report_job`` is the same as a ``jobs.Job``
function for the app's Compare page.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from .. import store, tasks
from ..base.backbone import load_backbone
from ..runtime import runinfo
from ..tasks import DEMO_TASKS
from .contraction import exp_contraction
from .decoder import exp_decoder
from .experiment import Run, check_jobs
from .frontier import exp_frontier
from .integration import exp_integration
from .markdown import render_markdown
from .methods import exp_methods, training_order
from .mixed import exp_mixed
from .plan import (
    DECODER_ONLY,
    FIGURES_DIR,
    MARKDOWN_FILE,
    PAPER,
    RESULTS_FILE,
    ROUTERS_ONLY,
    Progress,
    ReportBudget,
    ReportError,
    resolve_budget,
    with_defaults,
)
from .plots import build_figures, write_figures
from .router_variants import exp_routers
from .sessions import SessionLog, total_seconds
from .verdicts import factor

EXPERIMENTS: dict[str, Callable[[Run], dict]] = {
    "contraction": exp_contraction, "methods": exp_methods, "frontier": exp_frontier,
    "routers": exp_routers, "integration": exp_integration, "mixed": exp_mixed,
    "decoder": exp_decoder}
"""Each experiment's function, in run order (the order of ``SECTIONS``)."""


def read_results(folder: str | Path) -> dict:
    """A report folder's ``results.json``; ReportError when it is missing, unreadable or not a
    report's results."""
    path = Path(folder) / RESULTS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"no {RESULTS_FILE} in {folder}") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise ReportError(f"cannot read {path}: {type(exc).__name__}") from None
    if not isinstance(data, dict) or "experiments" not in data or "meta" not in data:
        raise ReportError(f"{path} is not a report's results")
    return data


def _check_data(data_dir: Path | None, needed: Sequence[str]) -> list[str]:
    """The tasks of ``data_dir``; ReportError naming the ``needed`` ones it lacks."""
    available = tasks.available_tasks(data_dir)
    missing = [t for t in needed if t not in available]
    if missing:
        where = data_dir if data_dir is not None else tasks.default_data_dir()
        raise ReportError(f"task data missing in {where}: {', '.join(missing)} (has: "
                          f"{', '.join(available) or 'nothing'}); set --data-dir or $TTMOE_DATA_DIR")
    return available


def data_fingerprint(data_dir: Path | None, names: Sequence[str]) -> dict[str, str] | None:
    """Each task's sha256 over its Parquet files (name and bytes) in ``data_dir``; None for the hub.

    A resumed run compares these instead of the folder's path, so a committed work folder
    continues from any clone whose data is the same.
    """
    if data_dir is None:
        return None
    out = {}
    for name in sorted(names):
        digest = hashlib.sha256()
        for path in sorted((data_dir / name).glob("*.parquet")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        out[name] = digest.hexdigest()
    return out


def same_run(saved: dict, now: dict) -> bool:
    """Whether a work folder's ``settings.json`` (``saved``) is this run's (``now``): the same
    budget settings and the same data (by fingerprint where both have one, else by folder path).
    A setting the saved run predates counts as its default (``plan.with_defaults``), except the
    ``plan.ROUTERS_ONLY`` and ``plan.DECODER_ONLY`` ones, which it is not held to."""
    then, today = saved.get("settings"), now.get("settings")
    if not isinstance(then, dict) or not isinstance(today, dict):
        if then != today:                        # settings that are not a budget's: as they are
            return False
    else:
        predated = {key for key in ROUTERS_ONLY + DECODER_ONLY if key not in then}

        def held(settings: dict) -> dict:
            return {k: v for k, v in with_defaults(settings).items() if k not in predated}

        if held(then) != held(today):
            return False
    if saved.get("data") is not None and now.get("data") is not None:
        return saved["data"] == now["data"]
    return saved.get("data_dir") == now.get("data_dir")


def _timed(run: Run, fn: Callable[[Run], dict]) -> dict:
    """``fn(run)``'s result with a ``run`` entry: start time, seconds, load average before and after."""
    started, t0, load = runinfo.now(), time.perf_counter(), runinfo.load_average()
    result = fn(run)
    return {**result, "run": {"started": started, "seconds": round(time.perf_counter() - t0, 1),
                              "load_average_at_start": load, "load_average_at_end": runinfo.load_average()}}


def _tick(log: SessionLog, t0: float, force: bool) -> None:
    """``Run.clock``: this start has run since ``t0`` (``time.perf_counter``)."""
    log.mark(time.perf_counter() - t0, force)


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def run_report(budget: str | ReportBudget, out: str | Path, progress: Progress | None = None,
               data_dir: str | Path | None = None,
               should_stop: Callable[[], bool] | None = None,
               work_dir: str | Path | None = None, resume: bool = False, jobs: int = 1,
               reuse_from: Sequence[str | Path] = (), only: Sequence[str] | None = None) -> dict:
    """Run the seven experiments, write results.json, paper_tables.md and figures to ``out``.

    ``progress(stage, done, total)`` is called often; ``should_stop()`` (checked as often) cancels
    with ReportError. Returns the results dict (what results.json holds).
    With ``work_dir`` every trained expert, training checkpoint and finished experiment's result
    is kept there; ``resume`` reuses them (same budget and data only: ReportError otherwise), so
    an interrupted report continues where it stopped. ``jobs`` > 1 trains experiment 2's and
    the frontier's experts that many at a time, each in its own process (CPU only:
    ``Run.train_side_by_side``). ``reuse_from``: other work folders whose finished experts are
    taken where their config is this run's (copied into ``work_dir``; not retrained).
    ``only``: run just these experiments (into ``work_dir``, which is required; the others are
    taken when finished there, else left out), and write no report: a partial one would read as
    a whole. A later full run takes their experts with ``reuse_from`` (or resumes the folder).
    """
    unknown = sorted(set(only or ()) - set(EXPERIMENTS))
    if unknown:
        raise ReportError(f"unknown experiments {unknown}: choose among {', '.join(EXPERIMENTS)}")
    if only is not None and work_dir is None:
        raise ReportError("running only some experiments needs a work folder (--work-dir)")
    b = resolve_budget(budget)
    data_path = None if data_dir is None else Path(data_dir).expanduser()
    fixed = (list(b.comparison_tasks or ()) + list(DEMO_TASKS) + list(b.fusion_tasks) + list(b.frontier_tasks)
             + (list(b.decoder_tasks) + list(b.decoder_baseline_tasks) if b.decoder_model else []))
    available = _check_data(data_path, fixed)
    comparison = list(b.comparison_tasks) if b.comparison_tasks else available
    integration = [t for t in tasks.TASKS if t in set(comparison) | set(DEMO_TASKS)]
    if len(integration) < b.min_integration_experts:
        raise ReportError(f"the {b.name} budget needs at least {b.min_integration_experts} experts in "
                          f"the mixture, the data has {len(integration)} tasks")
    if set(b.fusion_tasks) - set(integration):
        raise ReportError(f"fusion tasks {sorted(set(b.fusion_tasks) - set(integration))} have no expert")
    started, t0 = runinfo.now(), time.perf_counter()
    backbone = load_backbone()
    check_jobs(jobs, backbone.device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = Run(budget=b, backbone=backbone, data_dir=data_path, progress=progress,
              should_stop=should_stop, comparison_tasks=comparison, integration_tasks=integration,
              jobs=jobs, reuse_from=tuple(Path(p) for p in reuse_from))
    meta = {"budget": b.name, "settings": b.to_dict(), "seed": b.seed, "seeds": list(b.seeds),
            "started": started,
            "machine": runinfo.machine_info(backbone.device, libraries=True),
            "load_average_at_start": runinfo.load_average(), "base_model": backbone.info.to_dict(),
            "data_dir": str(data_path or tasks.default_data_dir()),
            "jobs": jobs, "command": f"python -m ttmoe_core report --budget {b.name}"
                                     + (f" --jobs {jobs}" if jobs > 1 else "")}
    results: dict = {"meta": meta, "paper": dict(PAPER), "experiments": {}}
    finished = _work_dir(run, work_dir, resume, {      # data hashed only for a work folder to check
        "settings": meta["settings"], "data_dir": meta["data_dir"],
        "data": None if work_dir is None else data_fingerprint(data_path or tasks.default_data_dir(),
                                                               integration)})
    sessions: SessionLog | None = None
    if run.work_dir is not None:      # the starts of a resumed run, each with its run time
        sessions = SessionLog.open(run.work_dir, resume)
        sessions.begin(started, jobs)
        run.clock = partial(_tick, sessions, t0)
    if jobs > 1 and "methods" not in finished and (only is None or "methods" in only):
        # every expert of experiment 2 side by side first, so that none of them (e.g. the one
        # experiment 1 times) trains alone under other conditions than the rest
        run.train_side_by_side(training_order(run), jobs)
    for done, (name, fn) in enumerate(EXPERIMENTS.items()):
        run.tell(f"experiment {done + 1}/{len(EXPERIMENTS)}: {name}", done, len(EXPERIMENTS))
        # a finished experiment is taken as it is: none leaves state that a later one reads
        # (experiments 4-5 train their own router, ``mixture_seeds.recipe_router``)
        if name in finished:
            results["experiments"][name] = finished[name]
            continue
        if only is not None and name not in only:
            continue
        results["experiments"][name] = _timed(run, fn)
        if run.work_dir is not None:
            store.write_json(run.work_dir / "experiments" / f"{name}.json",
                             results["experiments"][name])
            run.clock(True)
    if len(results["experiments"]) < len(EXPERIMENTS):            # ``only``: no report
        if sessions is not None:
            run.clock = None
            sessions.mark(round(time.perf_counter() - t0, 1))
        run.tell("done (only some experiments: no report written)", 1, 1)
        return results
    for name, exp in results["experiments"].items():     # one sentence per claim that does not hold
        exp["claim"]["points_to"] = factor(name, results)
    results["trainings"] = list(run.trainings.values())
    meta["finished"] = runinfo.now()
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    if sessions is not None:          # this start ends here, as meta["seconds"] does: stop the clock
        run.clock = None
        sessions.mark(meta["seconds"])
        meta["sessions"] = [dict(e) for e in sessions.entries]
        meta["seconds_all_sessions"] = total_seconds(sessions.entries)
    run.tell("writing figures and tables", 0, 1)
    results["figures"] = write_figures(build_figures(results), out / FIGURES_DIR)
    store.write_json(out / RESULTS_FILE, results)
    _write_text(out / MARKDOWN_FILE, render_markdown(results))
    run.tell("done", 1, 1)
    return results


def _work_dir(run: Run, work_dir: str | Path | None, resume: bool, settings: dict) -> dict:
    """Set up ``run``'s work folder; returns the experiments an earlier run finished there
    (``resume``), after checking it ran with the same ``settings``."""
    if work_dir is None:
        if resume:
            raise ReportError("resuming needs the work folder of the interrupted run")
        return {}
    run.work_dir, run.resume = Path(work_dir), resume
    (run.work_dir / "experiments").mkdir(parents=True, exist_ok=True)
    saved = run.work_dir / "settings.json"
    if resume and saved.is_file():
        if not same_run(json.loads(saved.read_text(encoding="utf-8")), json.loads(json.dumps(settings))):
            raise ReportError(f"{run.work_dir} holds a run with other settings or data: give "
                              "another --work-dir, or run without --resume")
    store.write_json(saved, settings)
    finished = {}
    for name in EXPERIMENTS if resume else ():
        path = run.work_dir / "experiments" / f"{name}.json"
        if path.is_file():
            finished[name] = json.loads(path.read_text(encoding="utf-8"))
    return finished


def report_job(job, budget: str, out: str | Path, data_dir: str | Path | None = None) -> dict:
    """``jobs.Job`` function: ``run_report`` with progress events ``stage``, ``done``, ``total``."""
    results = run_report(budget, out, data_dir=data_dir, should_stop=job.cancelled,
                         progress=lambda stage, done, total: job.report(stage=stage, done=done, total=total))
    return {"out": str(out), "seconds": results["meta"]["seconds"]}
