"""Experiments 4 and 5 on a tiny model: the shipped recipe's router (variant ngram, trained once,
counted in the parameters), one mixture per seed with mean ± std over seeds (checked against
numpy on the returned rows), AdapterFusion under the stopping rule, and the Markdown of new and
old results."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from test_report import REPO_ROOT, synthetic_results, untraced_numbers
from tinymodels import SAMPLES, tiny_bert

from ttmoe_core import report, routing
from ttmoe_core.report.experiment import Run
from ttmoe_core.report.integration import exp_integration
from ttmoe_core.report.mixed import exp_mixed
from ttmoe_core.tasks import DEMO_TASKS

RUN = {"started": "2026-01-01T00:00:00+00:00", "seconds": 1.5, "load_average_at_start": [1.0, 1.0, 1.0]}


@pytest.fixture(scope="module")
def done():
    """Experiments 4 and 5 of a tiny budget (two seeds) on one run: (run, integration, mixed)."""
    budget = dataclasses.replace(report.BUDGETS["small"], steps=4, batch_size=4, max_length=32,
                                 train_rows=24, eval_rows=12, router_eval_rows=8,
                                 mixture_router_cap=16, mixture_router_epochs=2, fusion_tasks=("sst2",),
                                 eval_every=2, patience=1, min_steps=2, seeds=(0, 1))
    run = Run(budget=budget, backbone=tiny_bert(), data_dir=SAMPLES, comparison_tasks=["sst2", "rte"],
              integration_tasks=list(DEMO_TASKS))
    return run, exp_integration(run), exp_mixed(run)


def _mean_std(values):
    return float(np.mean(values)), float(np.std(values, ddof=1))


def test_the_mixtures_router_is_the_shipped_recipe_trained_once_and_counted(done):
    run, integration, mixed = done
    assert list(run.recipe_router) == [tuple(DEMO_TASKS)]           # one router for both experiments
    router = run.recipe_router[tuple(DEMO_TASKS)]["router"]
    assert (router.config.variant, router.config.layer) == report.MIXTURE_ROUTER and router.config.epochs == 2
    record = integration["router"]
    assert mixed["router"] == record
    assert (record["variant"], record["layer"], record["params"]) == (*report.MIXTURE_ROUTER, routing.params(router))
    assert record["recipe"]["train_rows"] == 16 * len(DEMO_TASKS)          # the cap, every task
    assert record["recipe"]["distinct_rows"] <= record["recipe"]["train_rows"] < record["recipe"]["rows_available"]
    assert record["held_out_rows"] == 8 * len(DEMO_TASKS) and 0.0 <= record["accuracy"] <= 1.0
    experts_params = sum(run.expert(t, "tt-lora", seed=0).trainable_params() for t in DEMO_TASKS)
    assert integration["params"] == {"experts": experts_params, "router": record["params"],
                                     "total": experts_params + record["params"]}
    p = mixed["params"]
    assert (p["moe_experts"], p["moe_router"], p["moe_total"]) == (
        experts_params, record["params"], experts_params + record["params"])
    assert p["moe_fraction_of_fusion"] == p["moe_total"] / p["fusion_total"]


def test_one_mixture_per_seed_with_that_seeds_experts_and_mean_std_over_seeds(done):
    run, integration, _ = done
    per_seed = integration["per_seed"]
    assert [e["seed"] for e in per_seed] == [0, 1] and integration["seeds"] == [0, 1]
    for entry in per_seed:
        assert [r["task"] for r in entry["rows"]] == list(DEMO_TASKS)
        for row in entry["rows"]:               # each seed's mixture holds that seed's experts
            assert row["expert_at_training"] == run.trainings[(row["task"], "tt-lora", entry["seed"])]["value"]
            assert row["gap"] == row["mixture"] - row["expert_alone"]
    assert per_seed[0]["rows"] != per_seed[1]["rows"]
    for k, row in enumerate(integration["rows"]):
        assert row["task"] == DEMO_TASKS[k] and row["n"] == 2
        for key in ("expert_alone", "mixture", "gap"):
            mean, std = _mean_std([e["rows"][k][key] for e in per_seed])
            assert row[key] == pytest.approx(mean, abs=1e-12) and row[f"{key}_std"] == pytest.approx(std, abs=1e-12)
    gaps = [np.mean([r["gap"] for r in e["rows"]]) for e in per_seed]
    assert [e["mean_gap"] for e in per_seed] == pytest.approx(gaps, abs=1e-12)
    mean, std = _mean_std(gaps)
    agg = integration["aggregate"]
    assert integration["mean_gap"] == agg["mean_gap"] == pytest.approx(mean, abs=1e-12)
    assert agg["mean_gap_std"] == pytest.approx(std, abs=1e-12) and agg["n"] == 2
    # one router: every seed's mixture routes the same rows the same way
    assert per_seed[0]["routing_accuracy"] == per_seed[1]["routing_accuracy"] == integration["routing_accuracy"]
    assert f"{len(per_seed)} seed(s)" in integration["claim"]["evidence"]
    assert integration["claim"]["verdict"] in ("holds", "partly holds", "does not hold")


def test_mixed_test_set_per_seed_against_one_adapterfusion(done):
    _, _, mixed = done
    per_seed = mixed["per_seed"]
    assert [e["seed"] for e in per_seed] == [0, 1]
    fusion = [r["fusion"] for r in per_seed[0]["rows"]]
    assert [r["fusion"] for r in per_seed[1]["rows"]] == fusion          # one AdapterFusion
    for k, row in enumerate(mixed["per_task"]):
        for key in ("moe", "gain_points"):
            mean, std = _mean_std([e["rows"][k][key] for e in per_seed])
            assert row[key] == pytest.approx(mean, abs=1e-9) and row[f"{key}_std"] == pytest.approx(std, abs=1e-9)
        assert row["fusion"] == fusion[k]
    gains = [100 * (np.mean([r["moe"] for r in e["rows"]]) - np.mean(fusion)) for e in per_seed]
    mean, std = _mean_std(gains)
    assert mixed["gain_points"] == pytest.approx(mean, abs=1e-9)
    assert mixed["gain_points_std"] == pytest.approx(std, abs=1e-9)
    moe_mean, moe_std = _mean_std([e["moe_mean"] for e in per_seed])
    assert (mixed["moe_mean"], mixed["moe_mean_std"]) == (pytest.approx(moe_mean), pytest.approx(moe_std))
    assert mixed["fusion_mean"] == pytest.approx(np.mean(fusion))
    verdict = mixed["claim"]["verdict"]
    assert verdict == ("holds" if mean >= 4 else "partly holds" if mean > 0 else "does not hold")
    # AdapterFusion under the rule: the budget's steps as the cap, stopped by its hold-out
    assert mixed["fusion_steps"] == 4 and 1 <= mixed["fusion_steps_run"] <= 4
    assert mixed["fusion_best_step"] is not None


def test_integration_fusion_follows_the_stopping_rule(done):
    _, integration, _ = done
    (row,) = integration["fusion_rows"]
    assert row["task"] == "sst2" and row["steps"] == 4 and 1 <= row["steps_run"] <= 4
    assert row["best_step"] <= row["steps_run"]


def test_markdown_renders_the_seeds_tables_and_traces_every_number(done):
    _, integration, mixed = done
    results = synthetic_results()
    results["experiments"]["integration"] = {**json.loads(json.dumps(integration)), "run": RUN}
    results["experiments"]["mixed"] = {**json.loads(json.dumps(mixed)), "run": RUN}
    text = report.render_markdown(results)
    four = report.render_section(results, "integration", figure_links=False)
    five = report.render_section(results, "mixed", figure_links=False)
    assert "Mean over tasks, per seed and over seeds:" in four and f"| ngram | {report.MIXTURE_ROUTER[1]} |" in four
    assert f"| {report.fmt(integration['params']['total'], 'int')} |" in four
    assert "Per seed (average over tasks):" in five and f"| ngram | {report.MIXTURE_ROUTER[1]} |" in five
    assert f"{report.fmt(mixed['gain_points'], 'signed1')} ± {report.fmt(mixed['gain_points_std'], 'f1')}" in five
    assert "steps run" in four and integration["claim"]["evidence"] in four
    assert untraced_numbers(text, results) == []
    figures = report.build_figures(results)
    assert list(figures["mixed"].data[0].error_y.array)[-1] == mixed["moe_mean_std"]


def test_old_results_without_seeds_still_render():
    """Results of experiments 4-5 from before the per-seed mixtures (no ``per_seed``)."""
    results = synthetic_results()
    assert "per_seed" not in results["experiments"]["integration"]
    text = report.render_section(results, "integration", figure_links=False)
    assert "| sst2 | accuracy | 0.800 | 0.750 | -0.050 | 0.900 |" in text and "steps run" not in text
    assert "| **average** |  |  | 0.700 | 0.650 | +5.0 |  |" in report.render_section(results, "mixed")
    committed = json.loads((REPO_ROOT / "reports" / report.RESULTS_FILE).read_text(encoding="utf-8"))
    assert "per_seed" not in committed["experiments"]["mixed"]
    assert untraced_numbers(report.render_markdown(committed), committed) == []
    report.build_figures(committed)
