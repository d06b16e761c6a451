"""The package as users meet it: a fast ``--help`` without torch, every option explained, lazy
re-exports that resolve, caches under HF_HOME / XDG_CACHE_HOME, the embedded weights' hash,
publishable experts and packs (no absolute paths, PEFT-loadable LoRA, model cards, hub repo ids,
``push`` against a stub hub), and run tracking (TensorBoard files read back, trackio stubbed)."""

from __future__ import annotations

import argparse
import ast
import copy
import importlib
import json
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ttmoe_core import experts, store, tasks
from ttmoe_core.base import sources
from ttmoe_core.cli import build_parser, main
from ttmoe_core.runtime import tracking

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("adapters", "base", "baselines", "experts", "files", "moe", "report", "routing",
            "runtime", "services", "store", "tasks")


# ----------------------------------------------------------------------------- the command line


def test_help_answers_without_importing_torch():
    probe = ("import sys, runpy; sys.argv = ['ttmoe', '--help']\n"
             "try:\n    runpy.run_module('ttmoe_core', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'pandas', 'sklearn') "
             "if m in sys.modules))")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    seconds = time.perf_counter() - start
    assert "train-expert" in out and "push" in out
    assert out.strip().splitlines()[-1] == "HEAVY []"
    assert seconds < 2.5, f"--help took {seconds:.2f} s"      # ~0.3 s idle; was ~3 s with torch


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.split()[-1] == importlib.import_module("ttmoe_core").__version__


def _parsers(parser: argparse.ArgumentParser, prefix: str = ""):
    yield prefix or "ttmoe", parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{prefix} {name}".strip())


def test_every_option_has_help_and_shows_its_default():
    missing = [f"{name} {a.option_strings or a.dest}" for name, p in _parsers(build_parser())
               for a in p._actions if not a.help]
    assert missing == []
    text = " ".join(dict(_parsers(build_parser()))["train-expert"].format_help().split())
    assert "(default: 300)" in text and "(default: 0.1)" in text      # --max-steps, holdout
    assert "(default: None)" not in text


# ----------------------------------------------------------------------------- lazy packages


@pytest.mark.parametrize("name", PACKAGES)
def test_a_package_exports_exactly_its_all_and_every_name_resolves(name):
    """``__all__`` is the lazy map's names (``lazy_exports`` returns both), each listed once, each
    found in the module the map names; an unknown name is an AttributeError."""
    init = ROOT / "ttmoe_core" / name / "__init__.py"
    call = next(n.value for n in ast.parse(init.read_text()).body
                if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Tuple)
                and [e.id for e in n.targets[0].elts] == ["__getattr__", "__all__"])
    listed = [entry.strip().partition(" as ")[2] or entry.strip().partition(" as ")[0]
              for value in ast.literal_eval(call.args[1]).values() for entry in value.split(",")]
    assert len(listed) == len(set(listed)), "a name exported from two modules"
    package = importlib.import_module(f"ttmoe_core.{name}")
    assert package.__all__ == sorted(listed)
    for module, value in ast.literal_eval(call.args[1]).items():
        source = importlib.import_module(module, f"ttmoe_core.{name}")
        for entry in value.split(","):
            attr, _, alias = entry.strip().partition(" as ")
            assert getattr(package, alias or attr) is getattr(source, attr)
    with pytest.raises(AttributeError):
        package.no_such_name     # noqa: B018


# ----------------------------------------------------------------------------- caches, hashes


def test_models_cache_follows_ttmoe_models_hf_home_then_xdg(monkeypatch, tmp_path):
    for var in ("TTMOE_MODELS", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    assert sources.cache_dir() == Path.home() / ".cache" / "ttmoe" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert sources.cache_dir() == tmp_path / "xdg" / "ttmoe" / "models"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert sources.cache_dir() == tmp_path / "hf" / "ttmoe" / "models"
    monkeypatch.setenv("TTMOE_MODELS", str(tmp_path / "mine"))
    assert sources.cache_dir() == tmp_path / "mine"


def test_embedded_weights_are_checked_by_sha256(monkeypatch):
    assert (sources.embedded_path() / "model.safetensors").is_file()
    monkeypatch.setattr(sources, "EMBEDDED_SHA256", "0" * 64)
    with pytest.raises(sources.ModelError, match="sha256"):
        sources.embedded_path()


# ----------------------------------------------------------------------------- publishable


def test_publishable_cuts_absolute_paths_and_keeps_the_rest():
    data = {"train": "/work/shared/datasets/cola/train-00000-of-00001.parquet",
            "note": "500 held-out rows of /data/rte/validation.parquet; seeded 80/20 split",
            "url": "https://huggingface.co/owner/model", "rows": 3,
            "list": ["--out /tmp/x/demo --resume", "cola/train.parquet"]}
    assert store.publishable(data) == {
        "train": "cola/train-00000-of-00001.parquet",
        "note": "500 held-out rows of rte/validation.parquet; seeded 80/20 split",
        "url": "https://huggingface.co/owner/model", "rows": 3,
        "list": ["--out x/demo --resume", "cola/train.parquet"]}


@given(st.lists(st.text(alphabet="abc-_.", min_size=1, max_size=6), min_size=1, max_size=5),
       st.sampled_from(["", "rows of ", "(", "'"]))
def test_no_absolute_path_survives(parts, before):
    text = store.publishable(before + "/" + "/".join(parts))
    assert text.startswith(before) and not text[len(before):].startswith("/")
    assert text.endswith(parts[-1])


def _config(**overrides) -> experts.ExpertConfig:
    settings = dict(task="sst2", steps=3, batch_size=4, max_length=32, eval_limit=8, train_limit=16)
    return experts.ExpertConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def sst2(samples_dir):
    return (tasks.load_task("sst2", "train", data_dir=samples_dir, limit=16),
            tasks.load_task("sst2", "validation", data_dir=samples_dir, limit=8))


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_a_lora_expert_loads_in_peft_and_computes_what_ours_does(tiny_bert, sst2, tmp_path):
    from peft import PeftModel

    expert = experts.train_expert(_config(method="lora", lr=5e-2), tiny_bert, train_data=sst2[0],
                                  eval_data=sst2[1])
    path = store.save_expert(expert, tmp_path / "lora")
    config = json.loads((path / store.CONFIG_FILE).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == expert.config.rank
    assert config["target_modules"] == ["query", "value"]
    ours = experts.build_expert_model(store.load_expert(path), tiny_bert).eval()   # still ours
    with warnings.catch_warnings():           # PEFT warns of the keys it ignores (our own)
        warnings.simplefilter("ignore", UserWarning)
        theirs = PeftModel.from_pretrained(copy.deepcopy(tiny_bert.model), str(path)).eval()
    batch = dict(tiny_bert.tokenizer(["a gorgeous movie", "the worst film"], padding=True,
                                     return_tensors="pt"))
    with torch.no_grad():
        want = ours.encoder(**batch).last_hidden_state                  # [B, T, H]
        got = theirs(**batch).last_hidden_state
        base = tiny_bert.model(**batch).last_hidden_state
    assert torch.equal(got, want)
    assert (want - base).abs().max() > 1e-4          # the adapter changes the output
    card = (path / store.CARD_FILE).read_text()
    assert "library_name: peft" in card and "PeftModel.from_pretrained" in card


def test_tt_experts_and_packs_are_publishable(tiny_bert, sst2, tmp_path):
    expert = experts.train_expert(_config(), tiny_bert, train_data=sst2[0], eval_data=sst2[1])
    assert expert.data["train"].startswith(str(ROOT))             # absolute in memory
    store.build_pack(tmp_path / "pack", [expert])
    folder = tmp_path / "pack" / "experts" / "sst2"
    config = json.loads((folder / store.CONFIG_FILE).read_text())
    assert "peft_type" not in config and config["base_model_name_or_path"] == "tiny-bert"
    assert config["data"]["train"].startswith("sst2/train.parquet")
    for file in (tmp_path / "pack").rglob("*.json"):
        assert not [s for s in _strings(json.loads(file.read_text())) if s.startswith("/")]
    expert_card = (folder / store.CARD_FILE).read_text()
    assert "TT-LoRA expert" in expert_card and "not a PEFT adapter" in expert_card
    assert "ttmoe train-expert --task sst2 --method tt-lora --rank 5" in expert_card
    pack_card = (tmp_path / "pack" / store.CARD_FILE).read_text()
    assert "- mixture-of-experts" in pack_card and "| sst2 | sst2 | tt-lora |" in pack_card
    assert "# pack: TT-LoRA MoE pack" in pack_card      # the folder's name, not the temporary one's
    assert store.load_pack(tmp_path / "pack").names == ["sst2"]          # the card is allowed


def test_the_base_model_is_recorded_by_its_hub_id():
    assert sources.hub_id("all-minilm-l6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert sources.hub_id("owner/model") == "owner/model"
    assert sources.hub_id("/some/folder") is None


def _fake_hub_cache(root: Path, repo_id: str, files: dict[str, str]) -> Path:
    """The hub cache's layout for one model repo: refs/main -> snapshots/<commit>/files."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    for name, text in files.items():
        (snapshot / name).write_text(text)
    return snapshot


def test_a_hub_repo_id_resolves_from_the_local_cache_offline(monkeypatch, tmp_path):
    from transformers.utils import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "TRANSFORMERS_CACHE", str(tmp_path / "hub"), raising=False)
    snapshot = _fake_hub_cache(tmp_path / "hub", "me/mypack", {"pack.json": "{}"})
    assert store.resolve_folder("me/mypack") == snapshot
    assert store.resolve_folder(str(tmp_path)) == tmp_path            # a folder as it is
    with pytest.raises(store.StoreError, match="not in the local cache"):
        store.resolve_folder("me/other")
    assert main(["predict", "--pack", "me/other", "hello"]) == 2


def test_push_uploads_a_valid_folder_with_its_card(monkeypatch, tmp_path, tiny_bert, sst2,
                                                   capsys):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder",
                        lambda self, **kw: calls.append(("upload", kw["repo_id"],
                                                         sorted(p.name for p in
                                                                Path(kw["folder_path"]).iterdir())))
                        or types.SimpleNamespace(commit_url="https://hub/me/x/commit/1"))
    expert = experts.train_expert(_config(), tiny_bert, train_data=sst2[0], eval_data=sst2[1])
    path = store.save_expert(expert, tmp_path / "sst2")
    (path / store.CARD_FILE).unlink()                     # an older folder: the card is made
    assert main(["push", str(path), "me/x", "--private"]) == 0
    assert calls == [("create", "me/x", {"private": True, "exist_ok": True}),
                     ("upload", "me/x", [store.CARD_FILE, store.CONFIG_FILE, store.WEIGHTS_FILE])]
    assert capsys.readouterr().out.strip() == "https://hub/me/x/commit/1"
    assert main(["push", str(tmp_path), "me/x"]) == 2      # neither an expert nor a pack


# ----------------------------------------------------------------------------- run tracking


def test_tracking_is_off_without_a_tracker(monkeypatch):
    monkeypatch.delenv(tracking.TRACK_ENV, raising=False)
    seen = []
    with tracking.tracked(tracking.default_tracker(), "run", {}, seen.append) as track:
        track.progress(types.SimpleNamespace(step=1, loss=0.5, examples_per_s=3.0, holdout=None))
        track.end({"accuracy": 1.0})
    assert track.run is None and len(seen) == 1
    with pytest.raises(tracking.ConfigError, match="unknown tracker"):
        tracking.open_run("wandb", "run", {})


def test_a_training_run_is_logged_to_tensorboard(tiny_bert, sst2, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tracking.tracked("tensorboard", "sst2-run", {"lr": 0.005}, log_dir=tmp_path) as track:
        expert = experts.train_expert(_config(steps=4, eval_every=2), tiny_bert,
                                      train_data=sst2[0], eval_data=sst2[1],
                                      progress=track.progress, log_every=1)
        track.end(expert.metrics)
    events = EventAccumulator(str(tmp_path / tracking.PROJECT / "sst2-run"))
    events.Reload()
    losses = events.Scalars("loss")
    assert [e.step for e in losses] == [1, 2, 3, 4]
    assert [e.value for e in losses] == pytest.approx([h["loss"] for h in expert.history])
    assert "holdout/accuracy" in events.Tags()["scalars"]
    assert events.Scalars("final/accuracy")[0].value == pytest.approx(expert.metrics["accuracy"])


def test_a_run_is_logged_to_trackio_through_its_api(monkeypatch):
    logged = []
    run = types.SimpleNamespace(log=lambda metrics, step: logged.append((step, metrics)),
                                finish=lambda: logged.append("finished"))
    fake = types.SimpleNamespace(init=lambda **kw: logged.append(kw) or run)
    monkeypatch.setitem(sys.modules, "trackio", fake)
    with tracking.tracked("trackio", "rte", {"lr": 1e-3}) as track:
        track.progress(types.SimpleNamespace(step=5, loss=0.25, examples_per_s=9.0,
                                             holdout={"accuracy": 0.75}))
        track.end({"accuracy": 0.5, "confusion": [[1]]})
    assert logged == [{"project": "ttmoe", "name": "rte", "config": {"lr": 1e-3}},
                      (5, {"loss": 0.25, "examples_per_s": 9.0, "holdout/accuracy": 0.75}),
                      (5, {"final/accuracy": 0.5}), "finished"]
