"""AdapterFusion in a long report survives interruption: its training checkpoints and a resumed
run ends with the same weights as an uninterrupted one; the report keeps each finished fusion's
scores in its work folder and a resumed report takes them instead of training again; and
``report --status`` shows both."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from tinymodels import SAMPLES, tiny_bert, tiny_expert

from ttmoe_core import baselines, report, store, tasks
from ttmoe_core.experts import TrainingError
from ttmoe_core.experts.checkpoint import Checkpointer
from ttmoe_core.report.experiment import Run


@pytest.fixture(scope="module")
def bb():
    return tiny_bert()


@pytest.fixture(scope="module")
def adapters(bb):
    return {task: tiny_expert(bb, task, rank=4, method="adapter") for task in ("sst2", "cola")}


def _train(bb, adapters, checkpoint=None, should_stop=None):
    train = {task: tasks.load_task(task, "train", data_dir=SAMPLES, limit=24) for task in adapters}
    config = baselines.FusionConfig(steps=6, batch_size=4, max_length=32, seed=3)
    return baselines.train_fusion(bb, adapters, train, config, log_every=1, checkpoint=checkpoint,
                                  should_stop=should_stop)


def test_a_resumed_fusion_training_ends_as_an_uninterrupted_one(bb, adapters, tmp_path):
    whole = _train(bb, adapters)
    calls = []

    def stop_after_three_steps():          # asked once before each step
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(TrainingError, match="cancelled at step 3"):
        _train(bb, adapters, Checkpointer(tmp_path / "ck", every=2), stop_after_three_steps)
    assert (tmp_path / "ck" / "state.json").is_file()
    resumed = _train(bb, adapters, Checkpointer(tmp_path / "ck", every=2, resume=True))
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    # a checkpoint of other settings is refused, not continued
    with pytest.raises(Exception, match="other settings|fingerprint"):
        _train(bb, adapters, Checkpointer(tmp_path / "ck", every=2, resume=True,
                                          fingerprint={"steps": 99}))


def _run(bb, work, resume):
    budget = dataclasses.replace(report.BUDGETS["small"], batch_size=4, max_length=32, train_rows=24,
                                 eval_rows=16)
    return Run(budget=budget, backbone=bb, data_dir=SAMPLES, work_dir=work, resume=resume)


def test_a_resumed_report_takes_a_finished_fusion_and_retrains_a_changed_one(bb, adapters, tmp_path,
                                                                              monkeypatch):
    work = tmp_path / "work"
    first = _run(bb, work, resume=False).fusion_scores("mixed", adapters, ["sst2", "cola"],
                                                       ["sst2", "cola"], 4, "fusion")
    assert set(first["metrics"]) == {"sst2", "cola"} and first["steps"] == 4
    assert 0.0 <= first["metrics"]["sst2"]["accuracy"] <= 1.0 and first["params"]["fusion"] > 0
    assert (work / "fusion" / "mixed.json").is_file()
    assert not (work / "fusion" / "mixed.checkpoint").exists()       # dropped once scored

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(baselines, "train_fusion", no_training)
    again = _run(bb, work, resume=True).fusion_scores("mixed", adapters, ["sst2", "cola"],
                                                      ["sst2", "cola"], 4, "fusion")
    assert again == first
    with pytest.raises(AssertionError, match="trained again"):       # other steps: other settings
        _run(bb, work, resume=True).fusion_scores("mixed", adapters, ["sst2", "cola"],
                                                  ["sst2", "cola"], 5, "fusion")
    with pytest.raises(AssertionError, match="trained again"):       # not resumed: trained anew
        _run(bb, work, resume=False).fusion_scores("mixed", adapters, ["sst2", "cola"],
                                                   ["sst2", "cola"], 4, "fusion")


def test_status_shows_finished_and_running_fusions(bb, adapters, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    store.write_json(work / "settings.json", {"settings": report.BUDGETS["small"].to_dict()})
    _run(bb, work, resume=False).fusion_scores("integration-sst2", adapters, ["sst2"], ["sst2"], 2,
                                               "fusion")
    calls = []
    run = dataclasses.replace(_run(bb, work, resume=False),   # stops before its 4th step
                              should_stop=lambda: (calls.append(1), len(calls) > 3)[1])
    with pytest.raises(TrainingError, match="cancelled at step 3"):
        run.fusion_scores("mixed", adapters, ["sst2", "cola"], ["sst2", "cola"], 150, "fusion")
    status = report.work_status(work)
    assert status["fusion_done"] == ["integration-sst2"]
    assert [(r["name"], r["step"], r["cap"]) for r in status["fusion_running"]] == [("mixed", 3, 150)]
    assert ("AdapterFusion trainings (experiments 4 and 5): finished integration-sst2; in progress "
            "(a checkpoint): mixed at step 3 of 150") in report.render_status(status)
