"""Full fine-tuning, the reference point: every base weight trained through the experts' loop,
the shared base model left alone, the record scoring the weights it kept, an interrupted run
resumed to the uninterrupted result, and the CLI's checks."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from tests.tinymodels import SAMPLES, saved_tiny_bert
from ttmoe_core import cli, experts, tasks
from ttmoe_core.baselines import fullft
from ttmoe_core.experts.loop import TrainingError


@pytest.fixture(scope="module")
def sst2(samples_dir):
    return (tasks.load_task("sst2", "train", data_dir=samples_dir, limit=40),
            tasks.load_task("sst2", "validation", data_dir=samples_dir, limit=8))


def _config(**overrides) -> fullft.FullConfig:
    settings = dict(task="sst2", lr=1e-3, steps=8, batch_size=4, max_length=32, holdout_fraction=0.25,
                    eval_every=2, patience=0, checkpoint_every=3)
    return fullft.FullConfig(**{**settings, **overrides})


def test_every_weight_trains_and_the_shared_base_is_left_alone(tiny_bert, sst2):
    train, valid = sst2
    before = {n: p.detach().clone() for n, p in tiny_bert.model.named_parameters()}
    record, model = fullft.train_full(_config(), tiny_bert, train_data=train, eval_data=valid,
                                      return_model=True)
    for name, p in tiny_bert.model.named_parameters():
        assert torch.equal(p, before[name]) and not p.requires_grad, name
    changed = {n for n, p in model.encoder.named_parameters() if not torch.equal(p.detach(), before[n])}
    # the head reads the mean-pooled last hidden state: BERT's pooler gets no gradient
    assert changed == {n for n in before if not n.startswith("pooler.")}
    assert record["trainable_params"] == sum(p.numel() for p in model.parameters())
    assert record["trainable_params"] > sum(p.numel() for p in tiny_bert.model.parameters())
    # the record scores the weights returned (those of the best hold-out evaluation)
    again = experts.evaluate_model(model, tiny_bert, valid, "sst2", max_length=32)
    assert record["value"] == again["metrics"]["accuracy"] == record["metrics"]["accuracy"]
    assert record["method"] == "full" and record["data"]["holdout_rows"] == 10
    assert [c["step"] for c in record["curve"]] == [2, 4, 6, 8] and record["steps_run"] == 8


def test_it_fits_its_training_rows(tiny_bert, sst2):
    train, _ = sst2
    few = train.select(list(range(12)))
    _, model = fullft.train_full(_config(steps=40, holdout_fraction=0.0, eval_every=0, checkpoint_every=0,
                                         lr=3e-3), tiny_bert, train_data=few, eval_data=few, return_model=True)
    assert experts.evaluate_model(model, tiny_bert, few, "sst2", max_length=32)["metrics"]["accuracy"] == 1.0


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tiny_bert, sst2, tmp_path):
    train, valid = sst2
    whole, model = fullft.train_full(_config(), tiny_bert, train_data=train, eval_data=valid,
                                     return_model=True, log_every=1)
    done = []
    with pytest.raises(TrainingError, match="cancelled at step 5"):
        fullft.train_full(_config(), tiny_bert, train_data=train, eval_data=valid, log_every=1,
                          checkpoint_dir=tmp_path / "ck", progress=lambda e: done.append(e.step),
                          should_stop=lambda: bool(done) and done[-1] == 5)
    resumed, again = fullft.train_full(_config(), tiny_bert, train_data=train, eval_data=valid, log_every=1,
                                       checkpoint_dir=tmp_path / "ck", resume=True, return_model=True)
    for (name, p), q in zip(model.named_parameters(), again.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-6, msg=name)
    assert resumed["value"] == whole["value"] and resumed["curve"] == whole["curve"]


def test_a_half_precision_base_trains_float32_weights(tiny_bert, sst2):
    train, valid = sst2
    half = dataclasses.replace(tiny_bert, model=copy.deepcopy(tiny_bert.model).to(torch.bfloat16),
                               dtype=torch.bfloat16)
    record, model = fullft.train_full(_config(steps=2, eval_every=0, lr=3e-5), half, train_data=train,
                                      eval_data=valid, return_model=True)
    assert record["config"]["dtype"] == "bfloat16"
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    start = half.model.embeddings.word_embeddings.weight.float()
    moved = model.encoder.embeddings.word_embeddings.weight.detach() != start
    assert moved.any(dim=1).sum() >= 10        # a 3e-5 step survives on the rows the batches used


@pytest.mark.parametrize("overrides,pattern", [({"dtype": "float64"}, "dtype"), ({"lr": 0.0}, "lr"), ({"steps": 0}, "steps"),
                                               ({"holdout_fraction": 1.0}, "hold-out"),
                                               ({"schedule": "steps"}, "schedule")])
def test_bad_settings_are_refused(overrides, pattern):
    with pytest.raises(experts.ConfigError, match=pattern):
        _config(**overrides).checked()


def test_cli_writes_the_record_and_refuses_bad_output(tmp_path, capsys):
    folder = tmp_path / "base"
    saved_tiny_bert(folder)
    args = ["full-finetune", "--task", "sst2", "--model", str(folder), "--max-steps", "4",
            "--batch-size", "4", "--max-length", "32", "--eval-limit", "8", "--train-limit", "24",
            "--eval-every", "2", "--lr", "1e-3", "--data-dir", str(SAMPLES), "--quiet", "--json",
            "--device", "cpu", "--checkpoint-every", "2"]
    out = tmp_path / "runs" / "sst2-full.json"
    assert cli.main([*args, "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    record = json.loads(out.read_text())
    assert summary["accuracy"] == record["value"] and record["steps_run"] == 4
    assert record["config"]["lr"] == 1e-3 and record["config"]["eval_every"] == 2
    assert not (tmp_path / "runs" / "sst2-full.json.checkpoint").exists()   # written, then removed
    assert record["config"]["dtype"] == "float32" and record["encoder_dropout"] is False
    assert cli.main([*args, "--out", str(out)]) == 2                      # exists: --overwrite needed
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main([*args, "--out", str(tmp_path)]) == 2                 # a folder
    assert cli.main([*args[:2], "nosuchtask", *args[3:], "--out", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()
