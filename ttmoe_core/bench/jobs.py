"""Trainings side by side (``report --jobs``): one training with every thread vs J trainings at
once, each with its share of the threads.

Every training is the same ``experts.train_expert`` run (same task, method, seed, data and step
cap; no hold-out evaluation) in a fresh process (``report.worker.train_in_fresh_process``), so
the work is identical and only the sharing of the cores differs. A round runs the training alone
with ``threads`` threads, then ``jobs`` copies at once with ``threads // jobs`` each (the order
of the two alternates round by round); the figures are medians over the rounds.

Throughput counts training steps per second of wall time, process start and model load
included alike in both (they weigh more in a short benchmark than in a long training); the
ratio of the training loops' own seconds leaves them out. CPU seconds per step are given too.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .. import experts, tasks
from ..report.worker import train_in_fresh_process
from ..runtime.runinfo import load_average
from .results import envelope, header_lines, ratio_lines, ratios_and_targets

JOBS_DEFAULTS = {"task": "mnli", "method": "tt-lora", "steps": 100, "batch": 16, "max_length": 128,
                 "train_rows": 2000, "jobs": 2, "repeats": 2, "model": "all-minilm-l6-v2"}
JOBS_QUICK = {**JOBS_DEFAULTS, "task": "sst2", "steps": 3, "batch": 4, "max_length": 32,
              "train_rows": 24, "repeats": 1}


def _one(config: dict, model: str, train: tasks.TaskData, valid: tasks.TaskData,
         threads: int) -> dict:
    """One training in a fresh process: wall seconds (start to result), loop and CPU seconds."""
    t0 = time.perf_counter()
    expert = train_in_fresh_process(config, model, train, valid, threads=threads)["expert"]
    return {"wall_s": time.perf_counter() - t0, "loop_s": expert.metrics["train_seconds"],
            "cpu_s": expert.metrics["train_cpu_seconds"], "steps": expert.metrics["steps_run"]}


def _group(config: dict, model: str, train: tasks.TaskData, valid: tasks.TaskData,
           jobs: int, threads: int) -> dict:
    """``jobs`` copies of the training at once, ``threads`` each: wall seconds of the group
    (first start to last result), total steps, per-training loop and CPU seconds."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:         # the threads wait on processes
        runs = list(pool.map(lambda _: _one(config, model, train, valid, threads), range(jobs)))
    return {"wall_s": time.perf_counter() - t0, "steps": sum(r["steps"] for r in runs),
            "loop_s": statistics.fmean(r["loop_s"] for r in runs),
            "cpu_s": statistics.fmean(r["cpu_s"] for r in runs), "runs": runs}


def bench_jobs(settings: dict, data_dir: str | Path | None, threads: int) -> dict:
    """One training alone with ``threads`` threads vs ``settings['jobs']`` side by side."""
    load_before = load_average()
    jobs = settings["jobs"]
    if not 2 <= jobs <= threads:
        raise ValueError(f"jobs must be at least 2 (to compare with one training) and at most the "
                         f"{threads} thread(s) (one each), got {jobs}")
    share = threads // jobs
    train = tasks.load_task(settings["task"], "train", data_dir=data_dir, limit=settings["train_rows"], seed=0)
    valid = tasks.load_task(settings["task"], "validation", data_dir=data_dir, limit=16, seed=0)
    config = experts.ExpertConfig(task=settings["task"], method=settings["method"], steps=settings["steps"],
                                  batch_size=settings["batch"], max_length=settings["max_length"],
                                  seed=0, holdout_fraction=0.0, eval_every=0, patience=0,
                                  eval_limit=16, device="cpu").to_dict()
    alone, together = [], []
    for round_idx in range(settings["repeats"]):
        order = ("alone", "together") if round_idx % 2 == 0 else ("together", "alone")
        for which in order:
            if which == "alone":
                alone.append(_one(config, settings["model"], train, valid, threads))
            else:
                together.append(_group(config, settings["model"], train, valid, jobs, share))

    def med(samples: list[dict], key: str) -> float:
        return statistics.median(s[key] for s in samples)

    rate_alone = settings["steps"] / med(alone, "wall_s")            # steps per median wall second
    rate_together = jobs * settings["steps"] / med(together, "wall_s")
    figures = {
        "alone": {"threads": threads, "wall_s": med(alone, "wall_s"), "loop_s": med(alone, "loop_s"),
                  "cpu_s_per_step": med(alone, "cpu_s") / settings["steps"], "steps_per_s": rate_alone},
        "side_by_side": {"jobs": jobs, "threads_each": share, "wall_s": med(together, "wall_s"),
                         "loop_s": med(together, "loop_s"),
                         "cpu_s_per_step": med(together, "cpu_s") / settings["steps"],
                         "steps_per_s": rate_together}}
    return {**envelope("jobs", torch.device("cpu"), load_before),
            "settings": {**settings, "threads": threads}, **figures,
            **ratios_and_targets({"side_by_side_vs_alone_throughput": rate_together / rate_alone,
                                  # the loops alone (no process start, no model load): what counts
                                  # for trainings of thousands of steps
                                  "side_by_side_vs_alone_loop_throughput":
                                      jobs * med(alone, "loop_s") / med(together, "loop_s"),
                                  "cpu_per_step_side_by_side_vs_alone":
                                      med(together, "cpu_s") / med(alone, "cpu_s")})}


def format_jobs(result: dict) -> str:
    """The result of ``bench_jobs`` as the text table the command prints."""
    lines = header_lines(result)
    lines.append(f"{'variant':34s} {'steps/s':>8s} {'wall s':>8s} {'loop s':>8s} {'CPU s/step':>11s}")
    a, s = result["alone"], result["side_by_side"]
    for label, f in ((f"1 training, {a['threads']} thread(s)", a),
                     (f"{s['jobs']} trainings, {s['threads_each']} thread(s) each", s)):
        lines.append(f"{label:34s} {f['steps_per_s']:8.2f} {f['wall_s']:8.1f} {f['loop_s']:8.1f} "
                     f"{f['cpu_s_per_step']:11.3f}")
    return "\n".join(lines + ratio_lines(result))
