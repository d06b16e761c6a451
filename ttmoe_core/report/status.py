"""How far a long report has come: what its work folder holds, read without loading a model.

``report --status`` reads ``<work>/settings.json``, the finished trainings of experiment 2
(``experts/<task>-<method>-seed<k>.training.json`` of the budget's comparison tasks and seeds;
the other experiments' experts live in the same folder and are left out), the runs in progress
(their checkpoints' ``state.json``: step, best hold-out score so far), the decoder experiment's
runs (``decoder/experts``, finished and in progress, apart), the finished
experiments and the run's starts (``sessions.json``). The finished seeds fold into the same
per-task comparison the full report makes (``seeds.aggregate``, ``methods.claim_per_task``),
over the seeds where all three methods have finished (as ``exp_methods`` always has), so a run
stopped part-way already says what it has measured, and how much is left.
"""

from __future__ import annotations

from pathlib import Path

from .. import tasks as task_registry
from ..files.safefs import StoreError, parse_json
from . import seeds, sessions
from .cells import fmt
from .cells import pm as _pm
from .cells import table as _table
from .methods import MARGIN, claim_per_task
from .plan import METHOD_LABELS, METHODS, SECTIONS, ReportError

TRAINING_SUFFIX, CHECKPOINT_SUFFIX = ".training.json", ".checkpoint"


def _read_json(path: Path) -> dict | None:
    try:
        data = parse_json(path.read_bytes(), str(path))
    except (OSError, StoreError):
        return None
    return data if isinstance(data, dict) else None


def _running(folder: Path) -> dict | None:
    """A checkpoint's run: task, method, seed, step, cap, best hold-out score and step, CPU s."""
    state = _read_json(folder / "state.json")
    if state is None or not isinstance(state.get("loop"), dict):
        return None
    run, loop = state.get("fingerprint") or {}, state["loop"]
    return {"task": run.get("task"), "method": run.get("method"), "seed": run.get("seed"),
            "run": folder.name.removesuffix(CHECKPOINT_SUFFIX),
            "step": loop.get("step"), "cap": run.get("steps"), "best_score": loop.get("best_score"),
            "best_step": loop.get("best_step"), "cpu_seconds": loop.get("cpu")}


def work_status(work_dir: str | Path) -> dict:
    """What ``work_dir`` (a report's ``--work-dir``) holds; ReportError when it is not one."""
    work = Path(work_dir)
    settings = _read_json(work / "settings.json")
    if settings is None or not isinstance(settings.get("settings"), dict):
        raise ReportError(f"{work} is not a report work folder (no readable settings.json)")
    budget = settings["settings"]
    seed_list = list(budget.get("seeds") or [budget.get("seed", 0)])
    # the full budget compares every task of its data folder (None in the settings)
    tasks = list(budget.get("comparison_tasks") or task_registry.available_tasks(settings.get("data_dir")))
    experts_dir = work / "experts"
    finished, frontier = [], []
    frontier_tasks = list(budget.get("frontier_tasks") or [])
    for path in sorted(experts_dir.glob(f"*{TRAINING_SUFFIX}")):
        record = _read_json(path)
        if (record is None or not {"task", "method", "seed", "value"} <= set(record)
                or record["seed"] not in seed_list or record["method"] not in METHODS):
            continue
        if record.get("variant") in (None, record["method"]):      # experiment 2's settings
            if record["task"] in tasks:
                finished.append(record)
        elif record["task"] in frontier_tasks:                      # the frontier's other sizes
            frontier.append(record)
    frontier.sort(key=lambda r: (r["seed"], r["task"], str(r.get("variant"))))
    running = [r for r in (_running(p) for p in sorted(experts_dir.glob(f"*{CHECKPOINT_SUFFIX}")))
               if r is not None]
    order = {s: i for i, s in enumerate(seed_list)}
    rank = {t: i for i, t in enumerate(tasks)}
    finished.sort(key=lambda r: (order[r["seed"]], rank[r["task"]], METHODS.index(r["method"])))
    aggregate = seeds.aggregate(finished)
    # compared: per task, the seeds where every method has finished (exp_methods' rows always are)
    methods_of: dict[tuple[str, int], set[str]] = {}
    for r in finished:
        methods_of.setdefault((r["task"], r["seed"]), set()).add(r["method"])
    whole = [r for r in finished if methods_of[(r["task"], r["seed"])] == set(METHODS)]
    compared = seeds.aggregate(whole)
    comparisons, outcomes = claim_per_task(compared, list(dict.fromkeys(r["task"] for r in whole)))
    done = [name for name in SECTIONS if (work / "experiments" / f"{name}.json").is_file()]
    # AdapterFusion trainings of experiments 4 and 5 (Run.fusion_scores): finished, in progress
    fusion_dir = work / "fusion"
    fusion_done = sorted(p.stem for p in fusion_dir.glob("*.json"))
    fusion_running = []
    for folder in sorted(fusion_dir.glob(f"*{CHECKPOINT_SUFFIX}")):
        state = _read_json(folder / "state.json")
        if state is not None and isinstance(state.get("loop"), dict):
            fusion = (state.get("fingerprint") or {}).get("fusion") or {}
            fusion_running.append({"name": folder.name.removesuffix(CHECKPOINT_SUFFIX),
                                   "step": state["loop"].get("step"), "cap": fusion.get("steps"),
                                   "cpu_seconds": state["loop"].get("cpu")})
    total = len(tasks) * len(METHODS) * len(seed_list)
    decoder = _decoder_runs(work, budget)
    try:                                       # the run's starts so far (sessions.json)
        starts, starts_error = sessions.SessionLog.open(work, resume=True).entries, None
    except ReportError as exc:
        starts, starts_error = None, str(exc)
    return {"sessions": starts, "sessions_error": starts_error,
            "work_dir": str(work), "budget": budget.get("name"), "seeds": seed_list, "tasks": tasks,
            "trainings_total": total, "trainings_done": len(finished),
            "cpu_seconds_done": sum(r.get("cpu_seconds") or 0.0 for r in finished),
            "finished": finished, "running": running, "aggregate": aggregate,
            "frontier_finished": frontier,
            "frontier_total": len(frontier_tasks) * len(budget.get("frontier") or []) * len(seed_list),
            "compared_seeds": {t: sorted({r["seed"] for r in whole if r["task"] == t})
                               for t in dict.fromkeys(r["task"] for r in whole)},
            "comparisons": comparisons, "outcomes": outcomes, "margin": MARGIN,
            "spread_rule": seeds.SPREAD_RULE, "experiments_done": done,
            "fusion_done": fusion_done, "fusion_running": fusion_running, **decoder,
            "experiments": list(SECTIONS)}


def _decoder_runs(work: Path, budget: dict) -> dict:
    """The decoder experiment's trainings (``<work>/decoder/experts``): finished records, runs in
    progress (checkpoints) and how many the budget plans (TT-LoRA: tasks × learning rates; LoRA r16
    and LoRA at TT-LoRA's count on the baseline tasks: 2 a task, 1 where that rank is 16)."""
    folder = work / "decoder" / "experts"
    finished = [r for r in (_read_json(p) for p in sorted(folder.glob(f"*{TRAINING_SUFFIX}")))
                if r is not None and {"task", "method", "value"} <= set(r)]
    running = [r for r in (_running(p) for p in sorted(folder.glob(f"*{CHECKPOINT_SUFFIX}"))) if r is not None]
    rates = len(budget.get("decoder_lrs") or [None])
    total = (len(budget.get("decoder_tasks") or []) * rates
             + 2 * len(budget.get("decoder_baseline_tasks") or [])) if budget.get("decoder_model") else 0
    return {"decoder_model": budget.get("decoder_model"), "decoder_total": total,
            "decoder_finished": finished, "decoder_running": running}


def _how_it_ran(record: dict) -> str:
    """``alone, 2 threads`` / ``2 side by side, 1 thread each`` (``report --jobs``); ``–`` for a
    record from before the report wrote it."""
    threads, jobs = record.get("threads"), record.get("side_by_side")
    if threads is None or jobs is None:
        return "–"
    each = f"{threads} thread{'s' if threads != 1 else ''}"
    return f"alone, {each}" if jobs == 1 else f"{jobs} side by side, {each} each"


def render_status(status: dict) -> str:
    """``work_status`` as Markdown: progress, the finished runs, mean ± std so far, TT-LoRA against
    each baseline on the tasks where all three methods have a finished run."""
    total = status["trainings_total"]
    lines = [f"# Report in progress: budget `{status['budget']}`", "",
             f"Work folder `{status['work_dir']}`. Experiment 2 trainings finished: "
             f"**{status['trainings_done']} of {total}**"
             f" ({len(status['seeds'])} seed(s) × {len(status['tasks'])} task(s) × "
             f"{len(METHODS)} methods), {status['cpu_seconds_done'] / 3600:.2f} CPU-hours"
             + ("" if not status["trainings_done"] else
                f" (at their mean, the {total - status['trainings_done']} left would take about "
                f"{status['cpu_seconds_done'] / status['trainings_done'] * (total - status['trainings_done']) / 3600:.1f}"
                " more; tasks differ a lot in cost)") + ". "
             f"Experiments finished: {', '.join(status['experiments_done']) or 'none'} "
             f"(of {', '.join(status['experiments'])}).", ""]
    starts = status.get("sessions")
    if starts is None:
        lines += [f"The run's starts are not known: {status['sessions_error']}", ""]
    elif starts:
        seconds = sessions.total_seconds(starts)
        lines += [f"Started {len(starts)} time(s), each `--resume` adding one: from {starts[0]['started']} "
                  f"to {starts[-1].get('last_seen', starts[-1]['started'])} (last written), "
                  f"{sessions.duration(seconds)} of run time so far ({sessions.rule(starts)}). "
                  f"Hosts (starts): {sessions.hosts(starts)}.", ""]
    if status["running"]:
        lines += ["In progress (a checkpoint; `report --resume` continues it):", "",
                  _table(["run", "task", "method", "seed", "step", "cap", "best hold-out so far", "at step",
                          "CPU s"],
                         [[str(r.get("run")), str(r["task"]), METHOD_LABELS.get(r["method"], str(r["method"])),
                           str(r["seed"]),
                           fmt(r["step"], "int"), fmt(r["cap"], "int"), fmt(r["best_score"], "f3"),
                           fmt(r["best_step"], "int"), fmt(r["cpu_seconds"], "f1")]
                          for r in status["running"]]), ""]
    if status.get("fusion_done") or status.get("fusion_running"):
        going = [f"{r['name']} at step {fmt(r['step'], 'int')} of {fmt(r['cap'], 'int')} "
                 f"({fmt(r['cpu_seconds'], 'f1')} CPU s)" for r in status.get("fusion_running", [])]
        lines += [f"AdapterFusion trainings (experiments 4 and 5): finished "
                  f"{', '.join(status.get('fusion_done', [])) or 'none'}"
                  + (f"; in progress (a checkpoint): {'; '.join(going)}" if going else "") + ".", ""]
    if status.get("frontier_total"):
        done = status.get("frontier_finished", [])
        lines += [f"Frontier (accuracy per parameter): {len(done)} trainings of other sizes finished "
                  f"(of {status['frontier_total']} settings × tasks × seeds; the settings experiment 2 "
                  "also trains are its runs)" + (":" if done else "."), ""]
        if done:
            lines += [_table(["task", "setting", "seed", "metric", "value", "adapter params",
                              "steps run", "best step", "CPU s"],
                             [[r["task"], str(r.get("variant")), str(r["seed"]), r["metric"],
                               fmt(r["value"], "f3"), fmt(r.get("adapter_params"), "int"),
                               fmt(r.get("steps_run"), "int"), fmt(r.get("best_step"), "int"),
                               fmt(r.get("cpu_seconds"), "f1")] for r in done]), ""]
    lines += _decoder_lines(status)
    if not status["finished"]:
        return "\n".join(lines + ["No experiment 2 training has finished yet.", ""])
    lines += ["Every finished run (validation metric of the weights kept at the best hold-out step):", "",
              _table(["task", "method", "seed", "metric", "value", "steps run", "best step", "CPU s", "ran"],
                     [[r["task"], METHOD_LABELS.get(r["method"], r["method"]), str(r["seed"]), r["metric"],
                       fmt(r["value"], "f3"), fmt(r.get("steps_run"), "int"), fmt(r.get("best_step"), "int"),
                       fmt(r.get("cpu_seconds"), "f1"), _how_it_ran(r)] for r in status["finished"]]), "",
              "Per task and method over the seeds finished so far (mean ± sample std; one seed: no spread):", "",
              _table(["task", "method", "seeds", "metric", "mean ± std", "steps run", "CPU s"],
                     [[r["task"], METHOD_LABELS.get(r["method"], r["method"]), str(r["n"]), r["metric"],
                       _pm(r["value_mean"], r["value_std"]), _pm(r["steps_run_mean"], r["steps_run_std"], "int"),
                       _pm(r["cpu_seconds_mean"], r["cpu_seconds_std"], "f1")] for r in status["aggregate"]]), ""]
    if status["comparisons"]:
        over = "; ".join(f"{t}: {', '.join(map(str, s))}" for t, s in status["compared_seeds"].items())
        lines += [f"TT-LoRA against each baseline, over the seeds where all three methods have finished "
                  f"({over}). Rule: {status['spread_rule']}.", "",
                  _table(["task", "TT-LoRA vs", "TT-LoRA", "baseline", "difference", "seed spread",
                          "beyond the spread", f"within {100 * status['margin']:g} points"],
                         [[c["task"], METHOD_LABELS[c["baseline"]], _pm(c["tt_lora_mean"], c["tt_lora_std"]),
                           _pm(c["baseline_mean"], c["baseline_std"]), fmt(c["difference"], "signed3"),
                           fmt(c["spread"], "f3"),
                           "–" if c["exceeds_spread"] is None else ("yes" if c["exceeds_spread"] else "no"),
                           "–" if c["within_margin"] is None else ("yes" if c["within_margin"] else "no")]
                          for c in status["comparisons"]]), ""]
    return "\n".join(lines)


def _decoder_lines(status: dict) -> list[str]:
    """The decoder experiment's part of ``render_status`` ([] when the budget runs none and its
    folder holds nothing)."""
    done, going = status.get("decoder_finished") or [], status.get("decoder_running") or []
    if not (status.get("decoder_total") or done or going):
        return []
    lines = [f"Decoder experiment (experiment 2's methods on {status.get('decoder_model')}, "
             f"`decoder/experts`): {len(done)} of about {status.get('decoder_total')} trainings finished"
             + (":" if done else "."), ""]
    if done:
        lines += [_table(["decoder run", "task", "method", "learning rate", "metric", "value", "steps run",
                          "best step", "wall s", "CPU s"],
                         [[str(r.get("variant")), r["task"], METHOD_LABELS.get(r["method"], r["method"]),
                           fmt(r.get("lr"), "sci"), str(r.get("metric")), fmt(r["value"], "f3"),
                           fmt(r.get("steps_run"), "int"), fmt(r.get("best_step"), "int"),
                           fmt(r.get("wall_seconds"), "f1"), fmt(r.get("cpu_seconds"), "f1")] for r in done]), ""]
    if going:
        lines += ["Decoder runs in progress (a checkpoint; `report --resume` continues it):", "",
                  _table(["decoder run", "task", "method", "step", "cap", "best hold-out so far", "at step",
                          "CPU s"],
                         [[str(r.get("run")), str(r["task"]), METHOD_LABELS.get(r["method"], str(r["method"])),
                           fmt(r["step"], "int"), fmt(r["cap"], "int"), fmt(r["best_score"], "f3"),
                           fmt(r["best_step"], "int"), fmt(r["cpu_seconds"], "f1")] for r in going]), ""]
    return lines
