"""Experiment 2 over several seeds: mean ± std (against numpy), the seed-spread rule of the
verdicts, and a resumed report run keeping each seed's finished expert."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch

from ttmoe_core import experts, report, store, tasks
from ttmoe_core.report import methods, seeds
from ttmoe_core.report import run as report_run
from ttmoe_core.report.experiment import Run
from ttmoe_core.runtime import runinfo

# ----------------------------------------------------------------------------- aggregation math


def test_mean_std_matches_numpy_float64():
    rng = np.random.default_rng(7)
    for n in (2, 3, 5, 17):
        values = rng.normal(0.8, 0.05, size=n)            # float64
        mean, std, count = seeds.mean_std(values.tolist())
        assert count == n
        assert mean == pytest.approx(float(np.mean(values)), rel=0, abs=1e-15)
        assert std == pytest.approx(float(np.std(values, ddof=1)), rel=0, abs=1e-15)
        assert isinstance(mean, float) and isinstance(std, float)


def test_mean_std_skips_missing_values_and_needs_two_for_a_spread():
    assert seeds.mean_std([0.5, None, float("nan"), 0.7]) == (pytest.approx(0.6), pytest.approx(
        float(np.std([0.5, 0.7], ddof=1))), 2)
    assert seeds.mean_std([0.75]) == (0.75, None, 1)        # one seed: no spread
    assert seeds.mean_std([None, float("nan")]) == (None, None, 0)


def test_aggregate_groups_per_task_and_method_in_order():
    values = {("sst2", "tt-lora"): [0.80, 0.83, 0.79], ("sst2", "lora"): [0.81, 0.80, 0.82],
              ("rte", "tt-lora"): [0.55, 0.60, 0.49]}
    rows = [{"task": t, "method": m, "seed": s, "metric": "accuracy", "value": v,
             "steps_run": 1000 + 200 * s, "best_step": None if s == 2 else 600, "cpu_seconds": 10.0 * (s + 1)}
            for (t, m), vs in values.items() for s, v in enumerate(vs)]
    out = seeds.aggregate(rows)
    assert [(r["task"], r["method"]) for r in out] == list(values)
    for row in out:
        vs = np.array(values[(row["task"], row["method"])], dtype=np.float64)
        assert row["seeds"] == [0, 1, 2] and row["n"] == 3 and row["metric"] == "accuracy"
        assert row["value_mean"] == pytest.approx(vs.mean(), abs=1e-15)
        assert row["value_std"] == pytest.approx(vs.std(ddof=1), abs=1e-15)
        assert row["steps_run_mean"] == 1200 and row["steps_run_std"] == pytest.approx(200.0)
        assert row["best_step_mean"] == 600 and row["best_step_std"] == 0.0      # seed 2's None left out
        assert row["cpu_seconds_mean"] == 20.0
        assert row["train_seconds_mean"] is None and row["train_seconds_std"] is None   # never measured


# ----------------------------------------------------------------------------- the spread rule


def test_spread_swallows_a_small_difference():
    rule = seeds.compare(0.80, 0.02, 0.83, 0.015)          # 3 points apart, spread 3.5 points
    assert rule["difference"] == pytest.approx(-0.03)
    assert rule["spread"] == pytest.approx(0.035)
    assert rule["exceeds_spread"] is False


def test_a_difference_beyond_the_spread_counts():
    rule = seeds.compare(0.80, 0.004, 0.83, 0.006)         # 3 points apart, spread 1 point
    assert rule["exceeds_spread"] is True and rule["spread"] == pytest.approx(0.01)
    assert seeds.compare(0.80, None, 0.83, 0.006)["exceeds_spread"] is None   # one seed: unknown
    assert seeds.compare(None, 0.1, 0.83, 0.006) == {"difference": None, "spread": None,
                                                   "exceeds_spread": None}


def _agg(task, tt, lora, adapter):
    """Aggregate rows of one task: (mean, std) per method."""
    return [{"task": task, "method": m, "metric": "accuracy", "value_mean": v[0], "value_std": v[1]}
            for m, v in zip(report.METHODS, (tt, lora, adapter))]


def test_claim_per_task_outcomes_against_the_weaker_baseline():
    aggregate = (_agg("sst2", (0.80, 0.01), (0.81, 0.01), (0.85, 0.01))     # 1 point below LoRA
                 + _agg("rte", (0.50, 0.04), (0.55, 0.03), (0.58, 0.02))    # 5 below, spread 7
                 + _agg("cola", (0.05, 0.01), (0.20, 0.02), (0.25, 0.02))   # 15 below, spread 3
                 + _agg("mrpc", (0.70, None), (0.75, None), (0.76, None)))  # one seed, 5 below
    comparisons, outcomes = methods.claim_per_task(aggregate, ["sst2", "rte", "cola", "mrpc"])
    assert [o["outcome"] for o in outcomes] == ["within", "inside spread", "below", "below"]
    assert all(o["weaker_baseline"] == "lora" for o in outcomes)
    assert len(comparisons) == 8
    rte = {c["baseline"]: c for c in comparisons if c["task"] == "rte"}
    assert rte["lora"]["difference"] == pytest.approx(-0.05) and rte["lora"]["spread"] == pytest.approx(0.07)
    assert rte["lora"]["exceeds_spread"] is False and rte["lora"]["within_margin"] is False
    assert rte["adapter"]["difference"] == pytest.approx(-0.08) and rte["adapter"]["spread"] == pytest.approx(0.06)
    assert rte["adapter"]["exceeds_spread"] is True
    edge = methods.claim_per_task(_agg("sst2", (0.706, 0.0), (0.726, 0.0), (0.73, 0.0)), ["sst2"])[1]
    assert edge[0]["outcome"] == "within"                  # exactly 2 points below (float noise)


# ----------------------------------------------------------------------------- runs and resume (tiny model)


def _tiny_budget():
    return dataclasses.replace(report.BUDGETS["small"], comparison_tasks=("sst2",), steps=4, batch_size=4,
                               max_length=32, train_rows=40, eval_rows=8, seeds=(0, 1), eval_every=1,
                               patience=1, min_steps=2)


def test_methods_over_seeds_and_a_resumed_run_keeps_each_seed(tiny_bert, samples_dir, tmp_path):
    budget = _tiny_budget()
    first = Run(budget=budget, backbone=tiny_bert, data_dir=samples_dir, comparison_tasks=["sst2"])
    report_run._work_dir(first, tmp_path / "w", False, {"settings": 1})
    saved = []                                   # the start's clock hears of every saved training
    first.clock = lambda force: saved.append(len(first.trainings)) if force else None
    exp = methods.exp_methods(first)
    assert saved == list(range(1, 2 * len(report.METHODS) + 1))
    assert {(r["method"], r["seed"]) for r in exp["rows"]} == {(m, s) for m in report.METHODS for s in (0, 1)}
    for method in report.METHODS:
        for seed in (0, 1):
            part = tmp_path / "w" / "experts" / f"sst2-{method}-seed{seed}"
            assert part.is_dir() and part.with_name(f"{part.name}.training.json").is_file()
            assert not part.with_name(f"{part.name}.checkpoint").exists()
    by_seed = {s: first._experts[("sst2", "tt-lora", s)] for s in (0, 1)}
    assert by_seed[0].config.seed == 0 and by_seed[1].config.seed == 1
    assert any(not torch.equal(by_seed[0].tensors[k], by_seed[1].tensors[k]) for k in by_seed[0].tensors)
    for row in exp["rows"]:
        assert 1 <= row["steps_run"] <= budget.steps and row["best_step"] <= row["steps_run"]
        assert row["cpu_seconds"] > 0 and row["train_seconds"] >= 0
    for entry in exp["aggregate"]:
        values = [r["value"] for r in exp["rows"] if (r["task"], r["method"]) == (entry["task"], entry["method"])]
        assert entry["n"] == 2 and entry["value_mean"] == pytest.approx(float(np.mean(values)), abs=1e-12)
        assert entry["value_std"] == pytest.approx(float(np.std(values, ddof=1)), abs=1e-12)
    assert {c["baseline"] for c in exp["comparisons"]} == {"lora", "adapter"}
    assert f"(rule: {seeds.SPREAD_RULE})" in exp["claim"]["evidence"]
    text = report.render_section({"meta": {"seed": 0, "budget": "tiny"}, "experiments": {
        "methods": {**exp, "run": {"started": "now", "seconds": 1.0}}}}, "methods", figure_links=False)
    assert f"Rule: {seeds.SPREAD_RULE}." in text and " ± " in text

    # resumed: every (task, method, seed) comes back from the work folder, nothing trains
    told = []
    again = Run(budget=budget, backbone=tiny_bert, data_dir=samples_dir, comparison_tasks=["sst2"],
                progress=lambda stage, done, total: told.append(stage))
    report_run._work_dir(again, tmp_path / "w", True, {"settings": 1})
    again.clock = lambda force: saved.append("again") if force else None
    resumed = methods.exp_methods(again)
    assert not [t for t in told if t.startswith("training")] and "again" not in saved
    assert resumed["rows"] == exp["rows"] and resumed["aggregate"] == exp["aggregate"]
    for key, expert in first._experts.items():
        for name, tensor in expert.tensors.items():
            assert torch.equal(again._experts[key].tensors[name], tensor)
    # a third seed is new: only it trains
    more = Run(budget=dataclasses.replace(budget, seeds=(0, 1, 2)), backbone=tiny_bert,
               data_dir=samples_dir, comparison_tasks=["sst2"],
               progress=lambda stage, done, total: told.append(stage))
    told.clear()
    report_run._work_dir(more, tmp_path / "w", True, {"settings": 1})
    three = methods.exp_methods(more)
    trained = sorted({t for t in told if t.startswith("training")})
    assert trained == sorted(f"training {report.METHOD_LABELS[m]} expert on sst2 (seed 2)" for m in report.METHODS)
    assert all(e["n"] == 3 for e in three["aggregate"])
    assert all(math.isfinite(e["value_std"]) for e in three["aggregate"])

    # ``report --status`` reads the same numbers back from the folder alone, without a model
    work = tmp_path / "w"
    store.write_json(work / "settings.json", {"settings": dataclasses.replace(budget, seeds=(0, 1, 2)).to_dict()})
    # another experiment's expert in the same folder (a task not compared) is not experiment 2's
    shutil.copy(work / "experts" / "sst2-lora-seed0.training.json", work / "experts" / "rte-lora-seed0.training.json")
    (work / "experts" / "rte-lora-seed0.training.json").write_text(
        (work / "experts" / "sst2-lora-seed0.training.json").read_text().replace('"sst2"', '"rte"'))
    status = report.work_status(work)
    assert (status["trainings_done"], status["trainings_total"]) == (9, 9) and not status["running"]
    assert len(status["aggregate"]) == len(three["aggregate"]) == 3
    assert [{k: r[k] for k in entry} for r, entry in zip(three["aggregate"], status["aggregate"])] == \
        status["aggregate"] and status["comparisons"] == three["comparisons"]
    assert status["cpu_seconds_done"] == pytest.approx(sum(r["cpu_seconds"] for r in three["rows"]))
    # a seed-2 LoRA run missing: LoRA shows two seeds; TT-LoRA is compared over seeds 0 and 1 only
    (work / "experts" / "sst2-lora-seed2.training.json").unlink()
    partial = report.work_status(work)
    assert partial["trainings_done"] == 8 and partial["compared_seeds"] == {"sst2": [0, 1]}
    assert {(r["method"], r["n"]) for r in partial["aggregate"]} == {("tt-lora", 3), ("lora", 2), ("adapter", 3)}
    two = [r for r in three["rows"] if r["seed"] < 2]
    tt_values = [r["value"] for r in two if r["method"] == "tt-lora"]
    assert partial["comparisons"][0]["tt_lora_mean"] == pytest.approx(float(np.mean(tt_values)), abs=1e-12)
    assert partial["comparisons"][0]["tt_lora_std"] == pytest.approx(float(np.std(tt_values, ddof=1)), abs=1e-12)
    # no adapter run at all: no seed has all three methods, nothing is compared
    for seed in (0, 1, 2):
        (work / "experts" / f"sst2-adapter-seed{seed}.training.json").unlink()
    assert report.work_status(work)["comparisons"] == []
    text = report.render_status(partial)
    assert "**8 of 9**" in text and f"Rule: {seeds.SPREAD_RULE}." in text and "(sst2: 0, 1)" in text
    threads = torch.get_num_threads()
    assert f"| alone, {threads} thread{'s' if threads != 1 else ''} |" in text   # how each run shared the cores
    # a frontier run (another size of a method) is the frontier's, never experiment 2's
    frontier_run = json.loads((work / "experts" / "sst2-tt-lora-seed0.training.json").read_text())
    store.write_json(work / "experts" / "sst2-tt-lora-r2-seed0.training.json",
                     frontier_run | {"variant": "tt-lora-r2", "value": 0.25})
    store.write_json(work / "settings.json", {"settings": dataclasses.replace(
        budget, seeds=(0, 1, 2), frontier_tasks=("sst2",),
        frontier=(("tt-lora", 2, None), ("tt-lora", 5, None))).to_dict()})
    with_frontier = report.work_status(work)
    assert with_frontier["trainings_done"] == partial["trainings_done"] - 3       # adapters gone
    assert [r["variant"] for r in with_frontier["frontier_finished"]] == ["tt-lora-r2"]
    assert with_frontier["frontier_total"] == 2 * 1 * 3
    assert "| sst2 | tt-lora-r2 | 0 | accuracy | 0.250 |" in report.render_status(with_frontier)
    with pytest.raises(report.ReportError, match="not a report work folder"):
        report.work_status(tmp_path)


def test_budgets_share_one_stopping_rule_for_every_method():
    full, small = report.BUDGETS["full"], report.BUDGETS["small"]
    assert full.seeds == (0, 1, 2) and full.seed in full.seeds and small.seed in small.seeds
    assert (full.steps, full.batch_size, full.max_length) == (4000, 16, 128)
    assert (full.eval_every, full.patience, full.min_steps, full.schedule) == (200, 5, 1600, "linear")
    assert full.lr_of("tt-lora") == 1e-3 and full.lr_of("lora") is None and full.lr_of("adapter") is None
    # AdapterFusion under the experts' rule and cap; the mixtures' router by the shipped recipe
    assert full.fusion_budget == full.steps and small.fusion_budget == small.steps
    shipped = json.loads((Path(__file__).resolve().parents[1] / "assets" / "demo" / "router_config.json").read_text())["config"]
    assert report.MIXTURE_ROUTER == (shipped["variant"], shipped["layer"])   # the shipped recipe
    assert (full.mixture_router_cap, full.mixture_router_epochs) == (8000, 8)
    assert small.mixture_router_cap < full.mixture_router_cap
    assert len(small.seeds) >= 2 and small.patience >= 1 and small.eval_every < small.steps
    demo = report.BUDGETS["full-demo"]
    assert demo.comparison_tasks == tuple(report.plan.DEMO_TASKS) and demo.min_integration_experts == 6
    assert dataclasses.replace(demo, name="full", comparison_tasks=None, min_integration_experts=10) == full


# ----------------------------------------------------------------------------- trainings side by side


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.mark.slow
def test_trainings_side_by_side_match_one_at_a_time(samples_dir, tmp_path, two_threads):
    """``report --jobs 2``: experiment 2's experts train two at a time in fresh one-thread
    processes; each comes out bit-identical to the same training run alone in a fresh process
    with the same thread count, its record says it shared the cores, and a resumed run reuses it."""
    from tests.tinymodels import saved_tiny_bert
    from ttmoe_core.report import worker

    bb = saved_tiny_bert(tmp_path / "model")
    budget = dataclasses.replace(_tiny_budget(), seeds=(0,), measure_memory=True)
    run = Run(budget=budget, backbone=bb, data_dir=samples_dir, comparison_tasks=["sst2"], jobs=2)
    report_run._work_dir(run, tmp_path / "w", False, {"settings": 1})
    exp = methods.exp_methods(run)                  # two threads (fixture): one a training
    assert {(r["method"], r["side_by_side"], r["threads"]) for r in exp["rows"]} == \
        {(m, 2, 1) for m in report.METHODS}
    assert all(r["peak_growth_mib"] > 0 and r["cpu_seconds"] > 0 for r in run.trainings.values())
    assert {r["cpu"] for r in exp["rows"]} == {runinfo.cpu_name()}      # the host that trained each
    # the first two ran at the same time: the second started before the first ended
    spans = sorted((datetime.fromisoformat(r["started"]).timestamp(), r["wall_seconds"]) for r in run.trainings.values())
    assert spans[1][0] < spans[0][0] + spans[0][1]
    assert any("ran side by side (2 at a time" in d for d in exp["differences"])
    for method in report.METHODS:
        part = tmp_path / "w" / "experts" / f"sst2-{method}-seed0"
        assert part.is_dir() and not part.with_name(f"{part.name}.checkpoint").exists()
        # each process was told to checkpoint (a run with a work folder can be resumed)
        assert run._experts[("sst2", method, 0)].config.checkpoint_every == 100

    # the same TT-LoRA training, alone, in a fresh one-thread process: the same weights and metric
    key, config, _ = run._plan("sst2", "tt-lora", 0)
    alone = worker.train_in_fresh_process(config.to_dict(), bb.info.name, run.data("sst2", "train"),
                                          run.data("sst2", "validation"), threads=1)["expert"]
    shared = run._experts[key]
    assert set(alone.tensors) == set(shared.tensors)
    for name, tensor in alone.tensors.items():
        assert torch.equal(shared.tensors[name], tensor), name
    assert alone.metrics["accuracy"] == shared.metrics["accuracy"]

    # resumed with --jobs 2: nothing left to train, the records come back unchanged
    told = []
    again = Run(budget=budget, backbone=bb, data_dir=samples_dir, comparison_tasks=["sst2"], jobs=2,
                progress=lambda stage, done, total: told.append(stage))
    report_run._work_dir(again, tmp_path / "w", True, {"settings": 1})
    assert methods.exp_methods(again)["rows"] == exp["rows"] and not [t for t in told if "train" in t]


def test_jobs_need_a_positive_count_the_cpu_and_a_thread_each(two_threads):
    from ttmoe_core.report.experiment import check_jobs

    check_jobs(1, torch.device("cuda"))                     # one at a time runs anywhere
    check_jobs(2, torch.device("cpu"))
    with pytest.raises(report.ReportError, match="at least 1"):
        check_jobs(0, torch.device("cpu"))
    with pytest.raises(report.ReportError, match="side by side on CPU"):
        check_jobs(2, torch.device("cuda"))
    with pytest.raises(report.ReportError, match="needs a torch thread per training; this process has 2"):
        check_jobs(3, torch.device("cpu"))


def test_a_failed_training_stops_the_others_and_keeps_the_finished(tiny_bert, samples_dir, tmp_path,
                                                                   monkeypatch, two_threads):
    """Pool of 2 over TT-LoRA, LoRA, adapter: TT-LoRA finishes and is kept; LoRA fails; the
    adapter (started when TT-LoRA finished) is told to stop; ReportError names the failure."""
    from tests.tinymodels import tiny_expert
    from ttmoe_core.report import experiment

    finished = tiny_expert(tiny_bert, "sst2")
    calls, stopped = [], []

    def fake(config, model_name, train, valid, checkpoint_dir=None, resume=False, threads=None, stop=None):
        calls.append((config["method"], threads, config["checkpoint_every"]))
        if config["method"] == "tt-lora":
            return {"expert": finished, "peak_growth_mib": 1.5}
        if config["method"] == "lora":
            time.sleep(0.5)
            raise report.ReportError("boom")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:                  # a long training, until told to stop
            if stop():
                stopped.append(config["method"])
                raise report.ReportError("stopped")
            time.sleep(0.02)
        raise AssertionError("never told to stop")

    monkeypatch.setattr(experiment, "train_in_fresh_process", fake)
    budget = dataclasses.replace(_tiny_budget(), seeds=(0,), measure_memory=True)
    run = Run(budget=budget, backbone=tiny_bert, data_dir=samples_dir, comparison_tasks=["sst2"], jobs=2)
    report_run._work_dir(run, tmp_path / "w", False, {"settings": 1})
    with pytest.raises(report.ReportError, match=r"LoRA on sst2 \(seed 0\): boom.*1 of 3 trainings finished"):
        run.train_side_by_side(methods.training_order(run), 2)
    assert sorted(c[0] for c in calls) == ["adapter", "lora", "tt-lora"] and stopped == ["adapter"]
    assert {c[1] for c in calls} == {1} and {c[2] for c in calls} == {100}   # a thread each; checkpoints
    assert list(run.trainings) == [("sst2", "tt-lora", 0)]
    record = run.trainings[("sst2", "tt-lora", 0)]
    assert (record["side_by_side"], record["threads"], record["peak_growth_mib"]) == (2, 1, 1.5)
    assert (tmp_path / "w" / "experts" / "sst2-tt-lora-seed0.training.json").is_file()
    assert not (tmp_path / "w" / "experts" / "sst2-lora-seed0.training.json").exists()


def test_a_stopped_fresh_process_is_terminated(samples_dir):
    from ttmoe_core.report import worker

    train = tasks.load_task("sst2", "train", data_dir=samples_dir, limit=16)
    config = experts.ExpertConfig(task="sst2", steps=10_000, batch_size=4, max_length=32, eval_limit=8)
    with pytest.raises(report.ReportError, match="stopped"):
        worker.train_in_fresh_process(config.to_dict(), "all-minilm-l6-v2", train, train, stop=lambda: True)
