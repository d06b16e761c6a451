"""The frontier's analysis (report/frontier.py): points over seeds, the Pareto front, TT-LoRA
against LoRA at equal parameters, the smallest TT-LoRA close to the reference LoRA."""
from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttmoe_core.report import frontier
from ttmoe_core.report.plan import Setting


def _rows(task: str, setting: Setting, params: int, values: list[float]) -> list[dict]:
    return [{"task": task, "setting": setting.tag, "method": setting.method, "rank": setting.rank,
             "modules": setting.modules, "adapter_params": params, "metric": "accuracy",
             "seed": seed, "value": v, "steps_run": 100 * (seed + 1), "cpu_seconds": 10.0}
            for seed, v in enumerate(values)]


TT5, TT16, TT2 = Setting("tt-lora", 5), Setting("tt-lora", 16), Setting("tt-lora", 2)
L1, L4, L16 = Setting("lora", 1), Setting("lora", 4), Setting("lora", 16)
AD = Setting("adapter", 16)


def _example() -> list[dict]:
    return (_rows("sst2", TT2, 1_728, [0.82, 0.83, 0.83]) + _rows("sst2", TT5, 9_360, [0.84, 0.842, 0.841])
            + _rows("sst2", TT16, 89_088, [0.843, 0.845, 0.841]) + _rows("sst2", L1, 9_216, [0.853, 0.85, 0.856])
            + _rows("sst2", L4, 36_864, [0.859, 0.86, 0.858]) + _rows("sst2", L16, 147_456, [0.866, 0.86, 0.872])
            + _rows("sst2", AD, 113_040, [0.88, 0.87, 0.885]))


def test_setting_tags_are_unique_and_say_the_size():
    tags = {Setting("tt-lora", 5).tag, Setting("tt-lora", 5, ("query", "key", "value", "dense")).tag,
            Setting("lora", 5).tag, Setting("adapter", 16).tag}
    assert len(tags) == 4
    assert Setting("adapter", 64).tag == "adapter-rf64"
    assert frontier.settings_from([("lora", 1, None), ("tt-lora", 5, ["query", "value"])]) == [
        Setting("lora", 1), Setting("tt-lora", 5, ("query", "value"))]


def test_points_are_means_and_sample_stds_over_seeds():
    points = {p["setting"]: p for p in frontier.aggregate_points(_example())}
    assert points[TT5.tag]["value_mean"] == pytest.approx(statistics.fmean([0.84, 0.842, 0.841]))
    assert points[TT5.tag]["value_std"] == pytest.approx(statistics.stdev([0.84, 0.842, 0.841]))
    assert points[TT5.tag]["n"] == 3 and points[TT5.tag]["params"] == 9_360
    assert points[L16.tag]["steps_mean"] == pytest.approx(200.0)


def test_front_of_the_example():
    points = frontier.aggregate_points(_example())
    # tt r2 (smallest), lora r1 beats tt r5 and r16, lora r4, then the adapter beats lora r16
    assert frontier.pareto_front(points) == [TT2.tag, L1.tag, L4.tag, AD.tag]


def _brute_front(points):
    keep = []
    for p in points:
        if not any((q["params"] <= p["params"] and q["value_mean"] > p["value_mean"])
                   or (q["params"] < p["params"] and q["value_mean"] >= p["value_mean"]) for q in points):
            keep.append(p)
    return sorted(p["setting"] for p in keep)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 10**6), st.floats(0, 1)), min_size=1, max_size=12))
def test_front_equals_a_brute_force_definition(pairs):
    points = [{"setting": f"s{i}", "params": n, "value_mean": v} for i, (n, v) in enumerate(pairs)]
    front = frontier.pareto_front(points)
    assert sorted(front) == _brute_front(points)
    assert [p for p in front] == sorted(front, key=lambda s: next(p["params"] for p in points if p["setting"] == s))


def test_tt_r5_is_matched_with_lora_r1_and_r16_is_interpolated():
    out = {m["setting"]: m for m in frontier.matched(frontier.aggregate_points(_example()))}
    r5 = out[TT5.tag]
    assert r5["how"].startswith(L1.tag)                      # 9,216 is within 15% of 9,360
    assert r5["difference"] == pytest.approx(statistics.fmean([0.84, 0.842, 0.841]) - statistics.fmean([0.853, 0.85, 0.856]))
    assert r5["verdict"] == "below, beyond the spread"
    r16 = out[TT16.tag]                                      # 89,088: between lora r4 and r16
    t = (math.log(89_088) - math.log(36_864)) / (math.log(147_456) - math.log(36_864))
    lo, hi = statistics.fmean([0.859, 0.86, 0.858]), statistics.fmean([0.866, 0.86, 0.872])
    assert r16["lora_mean"] == pytest.approx(lo + t * (hi - lo))
    assert "interpolated between" in r16["how"]
    assert out[TT2.tag]["verdict"] == "no LoRA at this size"   # below LoRA r1's 9,216


def test_verdict_words():
    assert frontier._word(0.005, True) == "within 1 point"
    assert frontier._word(0.03, False) == "above, inside the spread"
    assert frontier._word(-0.03, None) == "below, spread not measured"


def test_smallest_tt_within_one_point_of_lora_r16():
    rows = _example() + _rows("qnli", TT5, 9_360, [0.80, 0.81, 0.80]) + _rows("qnli", TT16, 89_088, [0.82, 0.818, 0.822]) \
        + _rows("qnli", L16, 147_456, [0.823, 0.822, 0.824])
    found = {e["task"]: e for e in frontier.smallest_within(frontier.aggregate_points(rows), L16.tag)}
    assert found["sst2"]["setting"] is None                # best TT 0.843 vs LoRA 0.866
    assert found["sst2"]["best_tt_setting"] == TT16.tag
    assert found["qnli"]["setting"] == TT16.tag            # 0.820 >= 0.823 - 0.01; r5 0.803 is not
    assert found["qnli"]["fraction"] == pytest.approx(89_088 / 147_456)


def test_summary_is_json_ready():
    import json

    summary = frontier.summarise(_example())
    assert json.loads(json.dumps(summary)) == summary
    assert summary["reference"] == L16.tag and summary["front"]["sst2"][0] == TT2.tag


# ----------------------------------------------------------------------------- what the app reads
def _results(model: str = "all-minilm-l6-v2") -> dict:
    rows = _example() + _rows("sst2", Setting("tt-lora", 8), 23_040, [0.842, 0.84, 0.844])
    return {"meta": {"base_model": {"name": model}},
            "experiments": {"frontier": frontier.summarise(rows),
                            "methods": {"aggregate": [
                                {"task": "cola", "method": "lora", "metric": "mcc", "value_mean": 0.29,
                                 "value_std": 0.01, "n": 3},
                                {"task": "sst2", "method": "lora", "metric": "accuracy", "value_mean": 0.9,
                                 "value_std": 0.0, "n": 3}]}}}


def test_measured_reads_the_frontier_then_experiment_2():
    results = _results()
    lora16 = frontier.measured(results, "all-minilm-l6-v2", "lora", 16, ["value", "query"])
    # sst2 from the frontier (not experiment 2's 0.9), cola from experiment 2
    assert [(m["task"], m["source"]) for m in lora16] == [("sst2", "frontier"), ("cola", "experiment 2")]
    assert lora16[0]["mean"] == pytest.approx(statistics.fmean([0.866, 0.86, 0.872]))
    assert frontier.measured(results, "all-minilm-l6-v2", "lora", 3, None) == []
    assert frontier.measured(results, "all-minilm-l6-v2", "lora", 16, ["query", "key", "value"]) == []
    assert frontier.measured(results, "bert-base-uncased", "lora", 16, None) == []


def test_suggested_rank_is_the_smallest_within_one_point_of_the_best():
    hint = frontier.suggested_rank(_results(), "all-minilm-l6-v2", "sst2")
    # ranks 2 (0.827), 5 (0.841), 8 (0.842), 16 (0.843): best 16; 5 is the smallest within 1 point
    assert hint["rank"] == 5 and hint["best_rank"] == 16 and hint["ranks_measured"] == [2, 5, 8, 16]
    assert frontier.suggested_rank(_results(), "all-minilm-l6-v2", "qnli") is None
    assert frontier.suggested_rank(_results("other-model"), "other-model", "sst2") is not None
    assert frontier.suggested_rank(_results(), "other-model", "sst2") is None
