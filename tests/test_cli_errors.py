"""The CLI's catalogue of bad inputs: each case is argv (+ the files it names) -> exit code 2 and
ONE line ``error: ...`` on stderr naming the problem, no traceback, nothing written.

Cases run in-process (``cli.main``) on a tiny pack whose base model is a saved folder; a few also
run through a real ``python -m ttmoe_core`` subprocess. Placeholders in argv: {base} (tiny model
folder), {pack} (tiny pack with a router), {norouter} (the pack without its router), {entries}
(pack.json "experts": [1, null]), {garbage} (pack.json not JSON), {expert} (an expert folder),
{file} (a regular file), {notexpert} (a folder of other files), {link} (a symlink to a folder),
{samples}, {tmp}.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tinymodels import SAMPLES, saved_tiny_bert, tiny_pack, tree_hashes
from ttmoe_core import cli

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["train-expert", "--task", "sst2", "--model", "{base}", "--data-dir", "{samples}",
         "--max-steps", "2", "--batch-size", "4", "--max-length", "32", "--eval-limit", "8",
         "--quiet"]
ROUTER = ["train-router", "--pack", "{pack}", "--data-dir", "{samples}", "--per-task", "4",
          "--eval-per-task", "2", "--epochs", "1", "--quiet"]
DEMO = ["build-demo", "--model", "{base}", "--data-dir", "{samples}", "--tasks", "sst2,rte",
        "--steps", "1", "--per-task", "4", "--eval-per-task", "2", "--eval-limit", "4"]
NO_CUDA = not torch.cuda.is_available()



def output_cases(prefix: str, command: list[str], kind: str, other: str) -> list[tuple]:
    """The ``--out`` cases of a command writing an expert or a pack (``kind``); ``other``: a
    folder of the other kind, which --overwrite must not replace either."""
    return [(f"{prefix}out-is-a-file", [*command, "--out", "{file}"], "is a file, not a folder"),
            (f"{prefix}out-under-a-file", [*command, "--out", "{file}/x"], "is a file, not a folder"),
            (f"{prefix}out-under-proc", [*command, "--out", "/proc/ttmoe-test/x"],
             "does not accept new files"),
            (f"{prefix}out-not-empty", [*command, "--out", "{notexpert}"], "pass --overwrite"),
            (f"{prefix}overwrite-a-folder-of-other-files",
             [*command, "--out", "{notexpert}", "--overwrite"], f"not a valid {kind}"),
            (f"{prefix}overwrite-a-{other}", [*command, "--out", f"{{{other}}}", "--overwrite"],
             f"not a valid {kind}"),
            (f"{prefix}out-a-symlink", [*command, "--out", "{link}"], "symbolic link"),
            (f"{prefix}out-empty", [*command, "--out", ""], "--out is empty")]


# (id, argv, words the one error line must hold)
CASES = [
    # ---- train-expert and build-demo: the output folder, checked before any work
    *output_cases("", TRAIN, "expert", "pack"),
    *output_cases("demo-", DEMO, "pack", "expert"),
    # ---- train-expert: settings, model, targets
    ("unknown-targets", [*TRAIN, "--out", "{tmp}/e", "--targets", "foo,bar"],
     "no linear module named ['foo']"),
    ("one-unknown-target", [*TRAIN, "--out", "{tmp}/e", "--targets", "query,foo"], "'foo'"),
    ("lora-unknown-target", [*TRAIN, "--out", "{tmp}/e", "--method", "lora", "--targets", "nope"],
     "nope"),
    ("shape-of-no-target", [*TRAIN, "--out", "{tmp}/e", "--shape", "foo=2,24,24,2"],
     "not a target"),
    ("shape-that-does-not-fit", [*TRAIN, "--out", "{tmp}/e", "--shape", "query=7,7"],
     "--shape query"),
    ("bad-name", [*TRAIN, "--out", "{tmp}/e", "--name", "../x"], "not a valid name"),
    ("absurd-rank", [*TRAIN, "--out", "{tmp}/e", "--rank", "100000"], "must be <= 1,024"),
    ("absurd-batch", [*TRAIN, "--out", "{tmp}/e", "--batch-size", "100000000"], "must be <="),
    ("infinite-alpha", [*TRAIN, "--out", "{tmp}/e", "--alpha", "inf"], "finite number"),
    ("nan-lr", [*TRAIN, "--out", "{tmp}/e", "--lr", "nan"], "finite number"),
    ("negative-seed", [*TRAIN, "--out", "{tmp}/e", "--seed", "-1"], "must be >= 0"),
    ("huge-seed", [*TRAIN, "--out", "{tmp}/e", "--seed", str(10**20)], "must be <="),
    ("unknown-device", [*TRAIN, "--out", "{tmp}/e", "--device", "tpu"], "not a device"),
    ("max-length-beyond-the-model", [*TRAIN, "--out", "{tmp}/e", "--max-length", "100000"],
     "more than the base model takes"),
    ("max-length-too-small", [*TRAIN, "--out", "{tmp}/e", "--max-length", "4"], ">= 8"),
    ("missing-model-folder", [*TRAIN, "--out", "{tmp}/e", "--model", "{tmp}/no-model"],
     "no model folder"),
    ("model-is-a-file", [*TRAIN, "--out", "{tmp}/e", "--model", "{file}"], "is a file"),
    ("unknown-task", [*TRAIN, "--out", "{tmp}/e", "--task", "no-such-task"], "unknown task"),
    ("missing-data", [*TRAIN, "--out", "{tmp}/e", "--data-dir", "{tmp}/no-data"], "no folder"),
    # ---- train-router
    ("router-layer-99", [*ROUTER, "--layer", "99"], "out of range"),
    ("paper-router-layer-99", [*ROUTER, "--variant", "paper", "--layer", "99"], "out of range"),
    ("router-bad-layer-list", [*ROUTER, "--layer", "0,x"], "layer numbers"),
    ("router-hidden-0", [*ROUTER, "--hidden", "0"], "must be >= 1"),
    ("router-absurd-hidden", [*ROUTER, "--hidden", str(10**11)], "must be <="),
    ("router-infinite-lr", [*ROUTER, "--lr", "inf"], "finite number"),
    ("router-unknown-variant", [*ROUTER, "--variant", "huge"], "invalid choice"),
    ("router-max-length", [*ROUTER, "--max-length", "100000"], "more than the base model takes"),
    ("router-non-string-entries", [*ROUTER[:2], "{entries}", "--quiet"], "entries"),
    ("router-garbage-manifest", [*ROUTER[:2], "{garbage}", "--quiet"], "garbage"),
    ("router-missing-pack", [*ROUTER[:2], "{tmp}/no-pack", "--quiet"], "does not exist"),
    ("router-pack-is-a-file", [*ROUTER[:2], "{file}", "--quiet"], "afile"),
    ("router-missing-data", [*ROUTER, "--data-dir", "{tmp}/no-data"], "no folder"),
    # ---- predict
    ("predict-non-string-entries", ["predict", "--pack", "{entries}", "hello"], "entries"),
    ("predict-garbage-manifest", ["predict", "--pack", "{garbage}", "hello"], "garbage"),
    ("predict-no-router", ["predict", "--pack", "{norouter}", "hello"], "--expert"),
    ("predict-unknown-expert", ["predict", "--pack", "{pack}", "--expert", "nope", "hi"],
     "unknown expert"),
    ("predict-missing-pack", ["predict", "--pack", "{tmp}/no-pack", "hello"], "does not exist"),
    ("predict-nothing", ["predict", "--pack", "{pack}"], "nothing to predict"),
    ("predict-blank-text", ["predict", "--pack", "{pack}", "   "], "empty text"),
    ("predict-surrogate-text", ["predict", "--pack", "{pack}", "caf\udce9"], "not UTF-8"),
    ("predict-missing-input", ["predict", "--pack", "{pack}", "--input-file", "{tmp}/no.jsonl"],
     "cannot read"),
    ("predict-input-is-a-folder", ["predict", "--pack", "{pack}", "--input-file", "{tmp}"],
     "cannot read"),
    ("predict-input-not-utf8", ["predict", "--pack", "{pack}", "--input-file", "{latin1}"],
     "not UTF-8"),
    ("predict-input-blank", ["predict", "--pack", "{pack}", "--input-file", "{blank}"],
     "no input lines"),
    ("predict-file-and-text", ["predict", "--pack", "{pack}", "--input-file", "{blank}", "hi"],
     "not both"),
    ("predict-endless-input", ["predict", "--pack", "{pack}", "--input-file", "/dev/zero"],
     "more than the 268,435,456 bytes"),
    ("predict-unknown-device", ["predict", "--pack", "{pack}", "--device", "tpu", "hi"],
     "not a device"),
    # ---- eval-moe
    ("eval-moe-no-router", ["eval-moe", "--pack", "{norouter}", "--data-dir", "{samples}"],
     "has no router"),
    ("eval-moe-non-string-entries", ["eval-moe", "--pack", "{entries}"], "entries"),
    ("eval-moe-missing-pack", ["eval-moe", "--pack", "{tmp}/no-pack"], "does not exist"),
    ("eval-moe-per-task-0", ["eval-moe", "--pack", "{pack}", "--per-task", "0"], ">= 1"),
    ("eval-moe-missing-data", ["eval-moe", "--pack", "{pack}", "--data-dir", "{tmp}/no-data"],
     "no folder"),
    # ---- eval-expert
    ("eval-expert-missing", ["eval-expert", "{tmp}/no-expert"], "does not exist"),
    ("eval-expert-a-file", ["eval-expert", "{file}"], "afile"),
    ("eval-expert-garbage-config", ["eval-expert", "{badexpert}"], "not valid JSON"),
    ("eval-expert-input-is-a-folder", ["eval-expert", "{expert}", "--input-file", "{tmp}"],
     "{tmp}"),
    ("eval-expert-missing-input", ["eval-expert", "{expert}", "--input-file", "{tmp}/no.csv"],
     "no.csv"),
    ("eval-expert-model-is-a-file", ["eval-expert", "{expert}", "--model", "{file}"], "is a file"),
    # ---- build-demo: settings, checked before the first expert trains
    ("demo-unknown-task", [*DEMO, "--out", "{tmp}/p", "--tasks", "sst2,foo"], "unknown task"),
    ("demo-no-tasks", [*DEMO, "--out", "{tmp}/p", "--tasks", ",,"], "at least one task name"),
    ("demo-layer-99", [*DEMO, "--out", "{tmp}/p", "--layer", "99"], "out of range"),
    ("demo-max-length", [*DEMO, "--out", "{tmp}/p", "--max-length", "100000"],
     "more than the base model takes"),
    # ---- budget, report, the command line itself
    ("budget-unknown-targets", ["budget", "--targets", "foo,bar"], "unknown target module 'foo'"),
    ("budget-garbage-config", ["budget", "--model", "{file}"], "not valid JSON"),
    ("budget-bad-shape", ["budget", "--shape", "q_proj=0,0", "--model", "llama-3.2-1b"],
     "factor < 1"),
    ("report-out-is-a-file", ["report", "--out", "{file}"], "is a file, not a folder"),
    ("report-out-under-proc", ["report", "--out", "/proc/ttmoe-test/r"], "does not accept"),
    ("report-missing-data", ["report", "--out", "{tmp}/r", "--data-dir", "{tmp}/no"],
     "not a folder"),
    ("unknown-command", ["frobnicate"], "invalid choice"),
    ("unknown-flag", ["predict", "--frobnicate"], "unrecognized arguments"),
]
if NO_CUDA:
    CASES.append(("cuda-without-gpu", [*TRAIN, "--out", "{tmp}/e", "--device", "cuda"],
                  "no CUDA GPU"))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """A tiny base model folder and a two-expert pack with a router, made once."""
    root = tmp_path_factory.mktemp("cli-errors")
    base = saved_tiny_bert(root / "base")
    pack = tiny_pack(root / "pack", base, ["sst2", "rte"], epochs=2)[0]
    return {"base": root / "base", "pack": pack}


@pytest.fixture
def scene(built, tmp_path) -> dict[str, str]:
    """The placeholders' files, fresh for each test (the built pack is never written to)."""
    pack = tmp_path / "pack"
    shutil.copytree(built["pack"], pack)
    norouter = tmp_path / "norouter"
    shutil.copytree(built["pack"], norouter)
    for name in ("router_config.json", "router.safetensors"):
        (norouter / name).unlink()
    manifest = json.loads((norouter / "pack.json").read_text())
    (norouter / "pack.json").write_text(json.dumps({**manifest, "router": None}))
    entries = tmp_path / "entries"
    shutil.copytree(built["pack"], entries)
    (entries / "pack.json").write_text(json.dumps({**manifest, "experts": [1, None]}))
    garbage = tmp_path / "garbage"
    shutil.copytree(built["pack"], garbage)
    (garbage / "pack.json").write_text("{not json")
    badexpert = tmp_path / "badexpert"
    shutil.copytree(built["pack"] / "experts" / "sst2", badexpert)
    (badexpert / "adapter_config.json").write_text('{"format": ')
    (tmp_path / "afile").write_text("not a folder\n")
    (tmp_path / "notexpert").mkdir()
    (tmp_path / "notexpert" / "thesis.txt").write_text("precious\n")
    (tmp_path / "target").mkdir()
    os.symlink(tmp_path / "target", tmp_path / "link")
    (tmp_path / "latin1.jsonl").write_bytes('{"text": "caf\u00e9"}\n'.encode("latin-1"))
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    return {"base": str(built["base"]), "pack": str(pack), "norouter": str(norouter),
            "entries": str(entries), "garbage": str(garbage), "badexpert": str(badexpert),
            "expert": str(pack / "experts" / "sst2"), "file": str(tmp_path / "afile"),
            "notexpert": str(tmp_path / "notexpert"), "link": str(tmp_path / "link"),
            "latin1": str(tmp_path / "latin1.jsonl"), "blank": str(tmp_path / "blank.jsonl"),
            "samples": str(SAMPLES), "tmp": str(tmp_path)}


def fill(argv: list[str], scene: dict[str, str]) -> list[str]:
    return [a.format(**scene) for a in argv]


def assert_one_error_line(code: int, err: str, words: str, expected_code: int = 2) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert code == expected_code, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert words in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("case_id, argv, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_error_line(capsys, scene, case_id, argv, words):
    if any(a.startswith("/proc/") for a in argv) and not Path("/proc/self").is_dir():
        pytest.skip("no /proc on this system")
    tmp = Path(scene["tmp"])
    before = {p: tree_hashes(p) for p in (tmp / "notexpert", tmp / "pack")}
    code = cli.main(fill(argv, scene))
    out, err = capsys.readouterr()
    assert_one_error_line(code, err, words.format(**scene))
    assert out == ""
    # nothing was written: no new folder, the folders named stay as they were
    assert not any((tmp / name).exists() for name in ("e", "p", "r"))
    assert {p: tree_hashes(p) for p in before} == before
    assert (tmp / "afile").read_text() == "not a folder\n"


@pytest.mark.parametrize("case_id, argv, words", [
    c for c in CASES if c[0] in ("out-is-a-file", "predict-non-string-entries",
                                 "eval-moe-no-router", "out-under-proc")])
def test_bad_input_through_a_real_process(scene, case_id, argv, words):
    proc = subprocess.run([sys.executable, "-m", "ttmoe_core", *fill(argv, scene)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert_one_error_line(proc.returncode, proc.stderr, words)
    assert proc.stdout == ""


def test_an_unforeseen_error_is_one_line_with_its_own_code(capsys, monkeypatch):
    """A bug (an exception no check foresaw) prints one line and exits 70; TTMOE_DEBUG=1 shows
    the traceback."""
    from ttmoe_core.cli import experts as cli_experts

    def broken(args):
        raise KeyError("oops")

    monkeypatch.setattr(cli_experts, "cmd_budget", broken)
    code = cli.main(["budget"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_BUG and err.startswith("error: unexpected KeyError") and "TTMOE_DEBUG" in err
    assert len(err.strip().splitlines()) == 1
    monkeypatch.setenv("TTMOE_DEBUG", "1")
    with pytest.raises(KeyError):
        cli.main(["budget"])


def test_running_out_of_memory_is_a_usage_error(capsys, monkeypatch):
    from ttmoe_core.cli import experts as cli_experts

    def greedy(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 480000000000 bytes.")

    monkeypatch.setattr(cli_experts, "cmd_budget", greedy)
    code = cli.main(["budget"])
    assert_one_error_line(code, capsys.readouterr().err, "not enough memory")


# ----------------------------------------------------------------------------- --overwrite


def test_overwrite_replaces_a_valid_expert_and_fills_an_empty_folder(capsys, scene):
    tmp = Path(scene["tmp"])
    expert = tmp / "pack" / "experts" / "sst2"
    before = tree_hashes(expert)
    code = cli.main(fill([*TRAIN, "--out", str(expert), "--overwrite", "--json"], scene))
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["expert"] == str(expert)
    assert tree_hashes(expert) != before
    (tmp / "empty").mkdir()
    assert cli.main(fill([*TRAIN, "--out", str(tmp / "empty"), "--json"], scene)) == 0
    assert (tmp / "empty" / "adapter_config.json").is_file()


def test_train_router_on_a_pack_folder_it_cannot_write(capsys, scene, monkeypatch):
    """The pack's folder is probed before the features are read."""
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    code = cli.main(fill(ROUTER, scene))
    assert_one_error_line(code, capsys.readouterr().err, "does not accept new files")
