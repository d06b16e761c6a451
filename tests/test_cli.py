"""``python -m ttmoe_core``: budget numbers, one-line usage errors (exit 2, no traceback), predict /
train-router / eval-moe on a tiny pack whose base model is a loadable folder, and slow end-to-end
runs on the embedded model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tinymodels import SAMPLES, saved_tiny_bert, tiny_pack, tree_hashes
from ttmoe_core import cli, experts, store, tasks
from ttmoe_core.base import backbone
from ttmoe_core.experts.loop import TrainingError
from ttmoe_core.services.workflows import finished_part

REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_usage_error(code: int, err: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err


def run_module(*argv: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ttmoe_core", *map(str, argv)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------- budget


def test_budget_paper_call(capsys):
    code, out, _ = run_cli(capsys, "budget", "--model", "llama-3.2-1b", "--method", "tt-lora",
                           "--rank", "5", "--targets", "q_proj,v_proj",
                           "--shape", "q_proj=16,8,4,4,4,4,8,16", "--shape", "v_proj=16,16,4,2,2,16,16",
                           "--json")
    assert code == 0
    report = json.loads(out)
    assert report["trainable_params"] == 33920
    assert report["lora_params"] == 1703936


def test_budget_lora(capsys):
    code, out, _ = run_cli(capsys, "budget", "--model", "llama-3.2-1b", "--method", "lora",
                           "--rank", "16", "--json")
    assert code == 0 and json.loads(out)["trainable_params"] == 1703936


def test_budget_bad_shape_subprocess():
    proc = run_module("budget", "--model", "llama-3.2-1b", "--shape", "q_proj=16,8,4,4,4,4,8",
                      "--json", timeout=120)
    assert_usage_error(proc.returncode, proc.stderr)
    assert proc.stdout == ""


@pytest.mark.parametrize("argv", [
    ["budget", "--rank", "0"],
    ["budget", "--shape", "q_proj"],
    ["budget", "--method", "nope"],
    ["budget", "--model", "no-such-model"],
])
def test_budget_bad_values(capsys, argv):
    assert_usage_error(*run_cli(capsys, *argv)[::2])


# ----------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize("extra", [["--task", "no-such-task"],
                                   ["--task", "sst2", "--max-steps", "0"],
                                   ["--task", "sst2", "--lr", "-1"],
                                   ["--task", "sst2", "--lr", "abc"],
                                   ["--task", "sst2", "--batch-size", "-3"]])
def test_train_expert_usage_errors(capsys, tmp_path, extra):
    code, out, err = run_cli(capsys, "train-expert", "--out", tmp_path / "e", "--data-dir", SAMPLES,
                             *extra)
    assert_usage_error(code, err)
    assert not (tmp_path / "e").exists()


def test_eval_expert_missing_folder(capsys, tmp_path):
    assert_usage_error(*run_cli(capsys, "eval-expert", tmp_path / "nope", "--json")[::2])


def test_unknown_command_and_no_command(capsys):
    assert_usage_error(*run_cli(capsys, "frobnicate")[::2])
    assert run_cli(capsys)[0] == 2


# ----------------------------------------------------------------------------- tiny pack


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> backbone.Backbone:
    """A tiny BERT saved to a folder: its name is that folder, so the CLI can load it."""
    folder = tmp_path_factory.mktemp("tiny-base")
    bb = saved_tiny_bert(folder)
    again = backbone.load_backbone(str(folder), device="cpu")
    assert again.info.fingerprint == bb.info.fingerprint and again.info.name == str(folder)
    return bb


@pytest.fixture(scope="module")
def pack(tmp_path_factory, tiny_base) -> Path:
    return tiny_pack(tmp_path_factory.mktemp("cli") / "pack", tiny_base, ["mnli", "sst2", "rte"])[0]


@pytest.fixture
def pack_copy(pack, tmp_path) -> Path:
    dest = tmp_path / "pack"
    shutil.copytree(pack, dest)
    return dest


def test_predict_json_one_line(capsys, pack):
    code, out, err = run_cli(capsys, "predict", "--json", "--pack", pack,
                             "a gorgeous , witty , seductive movie .")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    row = json.loads(lines[0])
    assert {"expert", "router_probs", "label", "label_probs"} <= set(row)
    assert row["expert"] in ("mnli", "sst2", "rte")
    assert sum(row["router_probs"].values()) == pytest.approx(1.0, abs=1e-5)


def test_predict_without_the_detector_answers_the_same_with_no_pool_fields(capsys, pack):
    """The demo pack (it has a detector; the default pack) with and without it."""
    text = "a gorgeous , witty , seductive movie ."
    _, full, _ = run_cli(capsys, "predict", "--json", text)
    code, lean, err = run_cli(capsys, "predict", "--json", "--no-detector", text)
    assert code == 0, err
    a, b = json.loads(full), json.loads(lean)
    assert a["in_pool"] is not None and a["pool_score"] is not None
    assert b["in_pool"] is None and b["pool_score"] is None
    assert (a["expert"], a["label"], a["router_probs"]) == (b["expert"], b["label"], b["router_probs"])
    code, _, err = run_cli(capsys, "predict", "--pack", pack, "--no-detector", "--abstain", text)
    assert code == 2 and "--no-detector" in err


def test_predict_with_smaller_cores_gives_the_same_answers(capsys, pack):
    text = "a gorgeous , witty , seductive movie ."
    _, full, _ = run_cli(capsys, "predict", "--json", "--pack", pack, text)
    for storage in ("float16", "int8"):
        code, half, err = run_cli(capsys, "predict", "--json", "--pack", pack, "--pool-dtype",
                                  storage, text)
        assert code == 0, err
        a, b = json.loads(full), json.loads(half)
        assert (a["expert"], a["label"]) == (b["expert"], b["label"])
        assert all(abs(a["label_probs"][k] - b["label_probs"][k]) < 1e-2 for k in a["label_probs"])
    code, _, err = run_cli(capsys, "predict", "--pack", pack, "--pool-dtype", "int4", text)
    assert code == 2 and "--pool-dtype" in err


def test_predict_forced_expert_and_table(capsys, pack):
    code, out, _ = run_cli(capsys, "predict", "--json", "--pack", pack, "--expert", "rte",
                           "--text-pair", "A man is outside.", "A man walks his dog.", "Nobody.")
    assert code == 0
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["expert"] for r in rows] == ["rte", "rte"]
    assert all(r["text_pair"] == "A man is outside." for r in rows)
    code, out, _ = run_cli(capsys, "predict", "--pack", pack, "hello there")
    assert code == 0 and "expert=" in out and "label=" in out


def test_predict_input_file_mixed_lines(capsys, pack, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join([
        json.dumps({"text": "a gorgeous , witty , seductive movie ."}),
        "this is {not json",
        json.dumps({"text": "   "}),
        json.dumps({"text": "The cat sat.", "text_pair": "A cat is sitting."}),
    ]) + "\n", encoding="utf-8")
    code, out, err = run_cli(capsys, "predict", "--json", "--pack", pack, "--input-file", path)
    assert code == 1
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert len(rows) == 4
    assert "error" not in rows[0] and rows[0]["text"].startswith("a gorgeous")
    assert rows[1]["line"] == 2 and "error" in rows[1]
    assert rows[2]["line"] == 3 and "error" in rows[2]
    assert "error" not in rows[3] and rows[3]["text_pair"] == "A cat is sitting."
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "Traceback" not in err


def test_predict_truncation_note(capsys, pack):
    code, out, err = run_cli(capsys, "predict", "--json", "--pack", pack, " ".join(["word"] * 200))
    assert code == 0 and json.loads(out)["truncated"] is True
    assert "truncated" in err


@pytest.mark.parametrize("argv", [
    ["predict", "--pack", "{pack}"],                                  # no input
    ["predict", "--pack", "{pack}", "   "],                           # empty text
    ["predict", "--pack", "{pack}", "--expert", "nope", "hello"],     # unknown expert
    ["predict", "--pack", "{missing}", "hello"],                      # missing pack
    ["predict", "--pack", "{pack}", "--input-file", "{missing}"],     # missing input file
    ["predict", "--pack", "{pack}", "--input-file", "{latin1}"],      # not UTF-8
    ["predict", "--pack", "{pack}", "--input-file", "{blank}"],       # no lines
    ["predict", "--pack", "{pack}", "--input-file", "{latin1}", "text"],  # both
])
def test_predict_usage_errors(capsys, pack, tmp_path, argv):
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"text": "caf\u00e9"}\n'.encode("latin-1"))
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n", encoding="utf-8")
    values = {"pack": pack, "missing": tmp_path / "missing", "latin1": latin1, "blank": blank}
    assert_usage_error(*run_cli(capsys, *[a.format(**values) for a in argv])[::2])


def test_mixture_commands_missing_pack(capsys, tmp_path):
    assert_usage_error(*run_cli(capsys, "eval-moe", "--pack", tmp_path / "nope", "--json")[::2])
    assert_usage_error(*run_cli(capsys, "train-router", "--pack", tmp_path / "nope",
                                "--quiet")[::2])


def test_eval_expert_model_folder_without_tokenizer(capsys, tmp_path, pack):
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    base = Path(json.loads((pack / "pack.json").read_text())["base_model"]["name"])
    shutil.copy(base / "config.json", folder / "config.json")
    shutil.copy(base / "model.safetensors", folder / "model.safetensors")
    assert_usage_error(*run_cli(capsys, "eval-expert", pack / "experts" / "sst2",
                                "--model", folder, "--data-dir", SAMPLES, "--json")[::2])


def test_train_router_keeps_experts(capsys, pack_copy):
    names = ["mnli", "sst2", "rte"]
    before = {n: tree_hashes(pack_copy / "experts" / n) for n in names}
    code, out, err = run_cli(capsys, "train-router", "--pack", pack_copy, "--per-task", "10",
                             "--eval-per-task", "5", "--epochs", "2", "--data-dir", SAMPLES,
                             "--layer", "0,1", "--json", "--quiet")
    assert code == 0, err
    summary = json.loads(out)
    assert len(summary["per_layer"]) == 2 and set(summary["per_layer"]) == {"0", "1"}
    assert summary["layer"] in (0, 1) and summary["names"] == names
    assert sum(map(sum, summary["confusion"])) == 15
    assert {n: tree_hashes(pack_copy / "experts" / n) for n in names} == before
    router_config = json.loads((pack_copy / "router_config.json").read_text())
    assert router_config["config"]["variant"] == "fusion"
    assert router_config["config"]["layer"] == summary["layer"]


def test_train_router_bad_layer(capsys, pack_copy):
    code, _, err = run_cli(capsys, "train-router", "--pack", pack_copy, "--per-task", "4",
                           "--eval-per-task", "2", "--epochs", "1", "--data-dir", SAMPLES,
                           "--layer", "9", "--quiet")
    assert_usage_error(code, err)


def test_eval_moe(capsys, pack):
    code, out, err = run_cli(capsys, "eval-moe", "--pack", pack, "--per-task", "5",
                             "--data-dir", SAMPLES, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert {"routing_accuracy", "confusion", "per_task"} <= set(result)
    assert 0 <= result["routing_accuracy"] <= 1
    assert sum(map(sum, result["confusion"])) == 15
    for name in ("mnli", "sst2", "rte"):
        row = result["per_task"][name]
        assert "mixture" in row and "oracle" in row and row["metric"] in row["oracle"]


# ----------------------------------------------------------------------------- embedded model


@pytest.mark.slow
def test_end_to_end_embedded_expert(tmp_path, tiny_base):
    out = tmp_path / "mrpc"
    proc = run_module("train-expert", "--task", "mrpc", "--method", "tt-lora", "--max-steps", "20",
                      "--batch-size", "8", "--max-length", "64", "--eval-limit", "100",
                      "--data-dir", SAMPLES, "--out", out, "--quiet", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["task"] == "mrpc" and 0 <= summary["accuracy"] <= 1
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()

    proc = run_module("eval-expert", out, "--json", "--data-dir", SAMPLES)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert 0 <= report["accuracy"] <= 1 and report["rows"] == 100

    samples = tmp_path / "five.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in [
        {"text": "He said the food was good.", "text_pair": "He stated the meal was good.", "label": 1},
        {"text": "The stock rose 5 percent.", "text_pair": "It rained all day in Paris.", "label": 0},
        {"text": "She left early.", "text_pair": "She departed ahead of time.", "label": "equivalent"},
        {"text": "The court ruled today.", "text_pair": "Bananas are yellow.", "label": "not_equivalent"},
        {"text": "Profits fell sharply.", "text_pair": "Earnings dropped steeply.", "label": 1},
    ]), encoding="utf-8")
    proc = run_module("eval-expert", out, "--input-file", samples, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["rows"] == 5 and 0 <= report["accuracy"] <= 1

    proc = run_module("eval-expert", out, "--model", tiny_base.info.name, "--json")
    assert_usage_error(proc.returncode, proc.stderr)


@pytest.mark.slow
def test_demo_pack_routes_sst2():
    if not (REPO / "assets" / "demo" / "pack.json").is_file():
        pytest.skip("no demo pack at assets/demo (built by `python -m ttmoe_core build-demo`)")
    proc = run_module("predict", "--json", "a gorgeous , witty , seductive movie .")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["expert"] == "sst2"


# ----------------------------------------------------------------------------- --resume
# train-expert --resume continues an interrupted run to the uninterrupted result; build-demo
# --resume keeps the experts it finished; pack.json records each expert's validation verdict

RESUME_TRAIN = ["--task", "sst2", "--max-steps", "8", "--batch-size", "8", "--max-length", "32",
         "--eval-limit", "8", "--eval-every", "2", "--checkpoint-every", "3", "--patience", "0",
         "--holdout-fraction", "0.2", "--lr", "0.01", "--data-dir", str(SAMPLES), "--quiet",
         "--device", "cpu", "--json"]


def test_train_expert_resume_continues_an_interrupted_run(capsys, tiny_base, tmp_path):
    bb = tiny_base
    folder = bb.info.name
    assert cli.main(["train-expert", "--out", str(tmp_path / "whole"), "--model", str(folder),
                     *RESUME_TRAIN]) == 0
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
                     "--resume", *RESUME_TRAIN]) == 0
    resumed = store.load_expert(tmp_path / "e")
    for key, value in whole.tensors.items():
        torch.testing.assert_close(resumed.tensors[key], value, rtol=0, atol=1e-6)
    assert resumed.metrics["accuracy"] == whole.metrics["accuracy"]
    assert not (tmp_path / "e.checkpoint").exists()


def test_build_demo_resume_keeps_finished_experts(capsys, tiny_base, tmp_path):
    folder = tiny_base.info.name
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
    # one task's learning rate changed: only that expert trains again, the pack records each lr
    assert cli.main([*argv, "--resume", "--overwrite", "--task-lr", "rte=0.02"]) == 0
    assert capsys.readouterr().err.count("done earlier") == 1
    manifest = json.loads((tmp_path / "pack" / "pack.json").read_text())
    default_lr = experts.METHOD_DEFAULTS["tt-lora"]["lr"]
    assert manifest["build"]["lr"] == {"sst2": default_lr, "rte": 0.02}
    assert store.load_expert(tmp_path / "pack" / "experts" / "rte").config.lr == 0.02
    for bad in ("qqp=1e-3", "rte=0", "rte", "rte=nan"):
        assert cli.main([*argv, "--resume", "--overwrite", "--task-lr", bad]) == 2
    assert cli.main([*argv, "--resume", "--overwrite", "--task-lr", "rte=0.1", "--task-lr", "rte=0.2"]) == 2
    err = capsys.readouterr().err
    assert "not among the tasks built" in err and "gives a task twice" in err
    # other settings: the finished part does not fit, so it would be trained again
    config = experts.ExpertConfig(task="sst2", steps=4, batch_size=4, max_length=32, eval_limit=8,
                                  eval_every=2, checkpoint_every=100)
    assert finished_part(tmp_path / "pack.parts" / "sst2", config) is not None
    for change in ({"steps": 5}, {"patience": 2}, {"targets": ["query"]}):
        other = experts.ExpertConfig(**{**config.to_dict(), **change})
        assert finished_part(tmp_path / "pack.parts" / "sst2", other) is None
    assert finished_part(tmp_path / "nothing", config) is None
