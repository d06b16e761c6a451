"""``predict --expert-dir DIR`` (repeatable): serve expert folders without a pack, the oracle
choice; and ``moe.mixture_from_folders`` under it. Tiny base model saved to a folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tinymodels import saved_tiny_bert, tiny_expert
from ttmoe_core import cli, moe, store
from ttmoe_core.moe import mixture_from_folders

REVIEW = "a gorgeous , witty , seductive movie ."


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_usage_error(code: int, err: str, text: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), err
    assert text in lines[0], lines[0]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Expert folders (sst2, rte, a LoRA one) trained on a tiny BERT whose name is its folder."""
    root = tmp_path_factory.mktemp("experts")
    base = saved_tiny_bert(root / "base")
    found = {}
    for name, task, method in (("sst2", "sst2", "tt-lora"), ("rte", "rte", "tt-lora"),
                               ("lora", "sst2", "lora")):
        found[name] = store.save_expert(tiny_expert(base, task, method=method, name=name),
                                        root / name)
    return found


def test_one_expert_folder_answers_with_that_expert(capsys, folders):
    code, out, err = run_cli(capsys, "predict", "--json", "--expert-dir", folders["sst2"], REVIEW)
    assert code == 0, err
    row = json.loads(out)
    assert row["expert"] == "sst2" and row["router_probs"] == {}
    assert row["label"] in ("negative", "positive")
    code, out, _ = run_cli(capsys, "predict", "--expert-dir", folders["sst2"], REVIEW)
    assert code == 0 and "expert=sst2" in out and "(forced)" in out


def test_several_folders_serve_the_chosen_expert_like_a_pack_does(capsys, folders, tmp_path):
    argv = ["predict", "--json", "--expert-dir", folders["sst2"], "--expert-dir", folders["rte"]]
    code, out, err = run_cli(capsys, *argv, "--expert", "rte", "--text-pair", "Nobody.", "A man.")
    assert code == 0, err
    adhoc_row = json.loads(out)
    assert adhoc_row["expert"] == "rte"
    # the same experts stacked in a pack (no router) give the same answer
    for name in ("sst2", "rte"):
        store.append_expert(tmp_path / "pack", store.load_expert(folders[name]))
    packed = moe.TTLoRAMoE.from_pack(tmp_path / "pack")
    row = packed.predict(["A man."], ["Nobody."], expert="rte")[0]
    assert row["label"] == adhoc_row["label"]
    assert row["label_probs"] == pytest.approx(adhoc_row["label_probs"], abs=1e-5)


@pytest.mark.parametrize("case, text", [
    ("several, none chosen", "choose one with --expert (sst2, rte)"),
    ("unknown expert", "unknown expert 'nope'"),
    ("with a pack", "not both"),
    ("not an expert", "does not exist"),
    ("a lora expert", "stacks TT-LoRA experts only"),
    ("the same folder twice", "two folders hold an expert named 'sst2'"),
])
def test_expert_dir_usage_errors(capsys, folders, tmp_path, case, text):
    argv = {
        "several, none chosen": ["--expert-dir", folders["sst2"], "--expert-dir", folders["rte"]],
        "unknown expert": ["--expert-dir", folders["sst2"], "--expert", "nope"],
        "with a pack": ["--expert-dir", folders["sst2"], "--pack", tmp_path],
        "not an expert": ["--expert-dir", tmp_path / "missing"],
        "a lora expert": ["--expert-dir", folders["lora"]],
        "the same folder twice": ["--expert-dir", folders["sst2"], "--expert-dir", folders["sst2"]],
    }[case]
    code, _, err = run_cli(capsys, "predict", *argv, REVIEW)
    assert_usage_error(code, err, text)


def test_mixture_from_folders_needs_a_folder():
    with pytest.raises(moe.MoEError, match="at least one"):
        mixture_from_folders([])
