"""What a verdict points to (report/verdicts.py): one sentence from the measured numbers, for
claims that do not hold; nothing for claims that hold or reports without the numbers."""
from __future__ import annotations

import copy
import json
from pathlib import Path

from ttmoe_core import report
from ttmoe_core.report import frontier
from ttmoe_core.report.plan import Setting

REPO_ROOT = Path(__file__).resolve().parents[1]


def committed() -> dict:
    return json.loads((REPO_ROOT / "reports" / report.RESULTS_FILE).read_text(encoding="utf-8"))


def test_each_claim_that_does_not_hold_names_its_measured_factor():
    results = committed()
    for name, exp in results["experiments"].items():
        sentence = report.factor(name, results)
        assert (sentence is None) == (exp["claim"]["verdict"] == "holds"), name
    integration = results["experiments"]["integration"]
    said = report.factor("integration", results)
    assert said.startswith("routing:") and f"{100 * integration['routing_accuracy']:.1f}%" in said
    worst = min(integration["rows"], key=lambda r: r["gap"])
    assert worst["task"] in said and f"{100 * worst['gap']:+.1f} points" in said
    routers = results["experiments"]["routers"]
    paper = next(r for r in routers["rows"] if r["variant"] == "paper")
    assert f"({paper['accuracy']:.3f})" in report.factor("routers", results)


def test_methods_factor_follows_the_frontier_when_there_is_one():
    results = copy.deepcopy(committed())
    assert report.factor("methods", results).startswith("not separable here")

    def rows(tt_values, lora_values):
        out = []
        for setting, params, values in ((Setting("tt-lora", 5), 9_360, tt_values),
                                        (Setting("lora", 1), 9_216, lora_values)):
            out += [{"task": "sst2", "setting": setting.tag, "method": setting.method, "rank": setting.rank,
                     "modules": "q,v", "adapter_params": params, "metric": "accuracy", "seed": s,
                     "value": v} for s, v in enumerate(values)]
        return out

    results["experiments"]["frontier"] = frontier.summarise(rows([0.80, 0.81], [0.85, 0.86]))
    assert report.factor("methods", results).startswith("the method: at equal parameters TT-LoRA still trails")
    results["experiments"]["frontier"] = frontier.summarise(rows([0.85, 0.86], [0.85, 0.86]))
    assert report.factor("methods", results).startswith("the sizes compared")


def test_holds_and_missing_numbers_say_nothing():
    results = committed()
    results["experiments"]["mixed"]["claim"]["verdict"] = "holds"
    assert report.factor("mixed", results) is None
    assert report.factor("integration", {"experiments": {"integration": {
        "claim": {"verdict": "does not hold"}}}}) is None
    assert report.factor("nonexistent", results) is None


def test_integration_factor_skips_a_task_without_a_mixture_score():
    """Over seeds a regression task's undefined gap is None (NaN in older results): left out."""
    results = committed()
    integration = results["experiments"]["integration"]
    worst = min(integration["rows"], key=lambda r: r["gap"])
    integration["rows"].insert(0, {**worst, "task": "stsb", "gap": None})
    integration["rows"].insert(0, {**worst, "task": "stsb-old", "gap": float("nan")})
    said = report.factor("integration", results)
    assert said is not None and f"worst {worst['task']}:" in said and "stsb" not in said
