"""``train-expert --resume`` and ``build-demo --resume`` on a tiny BERT saved to a folder: an
interrupted run continues from its checkpoint to the uninterrupted result; a resumed build keeps
the experts it finished; the pack records each expert's validation metric and verdict."""

from __future__ import annotations

import json

import pytest
import torch

from tests.tinymodels import SAMPLES, saved_tiny_bert
from ttmoe_core import cli, experts, store, tasks
from ttmoe_core.training import TrainingError


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-base")
    return folder, saved_tiny_bert(folder)


TRAIN = ["--task", "sst2", "--max-steps", "8", "--batch-size", "8", "--max-length", "32",
         "--eval-limit", "8", "--eval-every", "2", "--checkpoint-every", "3", "--patience", "0",
         "--holdout-fraction", "0.2", "--lr", "0.01", "--data-dir", str(SAMPLES), "--quiet",
         "--device", "cpu", "--json"]


def test_train_expert_resume_continues_an_interrupted_run(capsys, base, tmp_path):
    folder, bb = base
    assert cli.main(["train-expert", "--out", str(tmp_path / "whole"), "--model", str(folder),
                     *TRAIN]) == 0
    whole = store.load_expert(tmp_path / "whole")
    assert not (tmp_path / "whole.checkpoint").exists()          # removed once the expert is saved
    # the same run, cancelled after 5 steps, as the CLI would have started it
    config = experts.ExpertConfig(task="sst2", steps=8, batch_size=8, max_length=32, eval_limit=8,
                                  eval_every=2, checkpoint_every=3, patience=0,
                                  holdout_fraction=0.2, lr=0.01, device="cpu")
    train = tasks.load_task("sst2", "train", data_dir=SAMPLES, seed=0)
    done = []
    with pytest.raises(TrainingError, match="cancelled at step 5"):
        experts.train_expert(config, bb, train_data=train, checkpoint_dir=tmp_path / "e.checkpoint",
                             data_dir=SAMPLES, progress=lambda e: done.append(e.step), log_every=1,
                             should_stop=lambda: bool(done) and done[-1] == 5)
    capsys.readouterr()
    assert cli.main(["train-expert", "--out", str(tmp_path / "e"), "--model", str(folder),
                     "--resume", *TRAIN]) == 0
    resumed = store.load_expert(tmp_path / "e")
    for key, value in whole.tensors.items():
        torch.testing.assert_close(resumed.tensors[key], value, rtol=0, atol=1e-6)
    assert resumed.metrics["accuracy"] == whole.metrics["accuracy"]
    assert not (tmp_path / "e.checkpoint").exists()


def test_build_demo_resume_keeps_finished_experts(capsys, base, tmp_path):
    folder, _ = base
    argv = ["build-demo", "--out", str(tmp_path / "pack"), "--model", str(folder),
            "--tasks", "sst2,rte", "--steps", "4", "--batch-size", "4", "--max-length", "32",
            "--eval-limit", "8", "--eval-every", "2", "--layer", "1", "--per-task", "8",
            "--eval-per-task", "4", "--data-dir", str(SAMPLES), "--device", "cpu"]
    assert cli.main(argv) == 0
    manifest = json.loads((tmp_path / "pack" / "pack.json").read_text())
    validation = manifest["validation"]
    assert set(validation) == {"sst2", "rte"}
    for name, entry in validation.items():
        expert = store.load_expert(tmp_path / "pack" / "experts" / name)
        assert entry["metric"] == "accuracy" and entry["value"] == expert.metrics["accuracy"]
        assert isinstance(entry["weak"], bool) and entry["reason"]
    first = {n: store.load_expert(tmp_path / "pack.parts" / n) for n in ("sst2", "rte")}
    capsys.readouterr()
    assert cli.main([*argv, "--resume", "--overwrite"]) == 0
    err = capsys.readouterr().err
    assert err.count("done earlier") == 2
    for name, expert in first.items():
        again = store.load_expert(tmp_path / "pack" / "experts" / name)
        for key, value in expert.tensors.items():
            assert torch.equal(again.tensors[key], value)
    # other settings: the finished part does not fit, so it is trained again
    assert cli.main([*argv[:8], "5", *argv[9:], "--resume", "--overwrite"]) == 0
    assert "done earlier" not in capsys.readouterr().err
