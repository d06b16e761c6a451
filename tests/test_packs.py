"""Packs on disk: round trip, adding an expert without touching the others, and validation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.tinymodels import tiny_bert, tiny_expert, tiny_pack, tiny_router, tree_hashes
from ttmoe_core import moe, store
from ttmoe_core.base import backbone
from ttmoe_core.store import StoreError

TEXTS = ["a gorgeous , witty , seductive movie .", "The cat sat on the mat.",
         "Is this a question?", "the film is dull"]
PAIRS = [None, "A cat is sitting.", "Yes it is.", None]


@pytest.fixture(scope="module")
def bb() -> backbone.Backbone:
    return tiny_bert(seed=0)


@pytest.fixture(scope="module")
def built(tmp_path_factory, bb):
    """A pack of three experts (mnli, sst2, rte; ranks 3, 4, 5) and its router."""
    path, expert_list, trained = tiny_pack(tmp_path_factory.mktemp("packs") / "pack", bb,
                                           ["mnli", "sst2", "rte"])
    return path, expert_list, trained


@pytest.fixture
def pack_copy(built, tmp_path) -> Path:
    dest = tmp_path / "pack"
    shutil.copytree(built[0], dest)
    return dest


def test_layout_on_disk(built):
    path, expert_list, _ = built
    assert (path / "pack.json").is_file()
    assert (path / "router_config.json").is_file() and (path / "router.safetensors").is_file()
    manifest = json.loads((path / "pack.json").read_text())
    assert manifest["experts"] == [e.name for e in expert_list]
    for e in expert_list:
        assert (path / "experts" / e.name / "adapter_config.json").is_file()
        assert (path / "experts" / e.name / "adapter_model.safetensors").is_file()
    assert json.loads((path / "router_config.json").read_text())["experts"] == manifest["experts"]


def test_round_trip_same_predictions(built, bb):
    path, expert_list, trained = built
    in_memory = moe.TTLoRAMoE(bb, expert_list, trained)
    loaded = moe.TTLoRAMoE.from_pack(path, backbone=bb)
    assert loaded.names == in_memory.names
    assert loaded.router is not None and type(loaded.router) is type(trained)
    assert loaded.predict(TEXTS, PAIRS) == in_memory.predict(TEXTS, PAIRS)
    for name in in_memory.names:
        assert loaded.predict(TEXTS, PAIRS, expert=name) == in_memory.predict(TEXTS, PAIRS, expert=name)


def test_add_expert_keeps_others_byte_identical(pack_copy, built, bb):
    _, expert_list, _ = built
    before = {e.name: tree_hashes(pack_copy / "experts" / e.name) for e in expert_list}
    assert all(before.values())
    fourth = tiny_expert(bb, "cola", rank=2, seed=7)
    store.append_expert(pack_copy, fourth)
    # the old router was trained for three experts: the pack asks for a new one
    with pytest.raises(StoreError, match="retrain"):
        store.load_pack(pack_copy)
    four = expert_list + [fourth]
    trained, report, train = tiny_router(bb, four, epochs=2)
    store.save_router(pack_copy, trained, train.names, {"accuracy": report.accuracy}, bb.info)
    after = {e.name: tree_hashes(pack_copy / "experts" / e.name) for e in expert_list}
    assert after == before
    pack = store.load_pack(pack_copy, expected_fingerprint=bb.info.fingerprint)
    assert pack.names == [e.name for e in four]
    mixture = moe.TTLoRAMoE.from_pack(pack_copy, backbone=bb)
    assert mixture.predict(TEXTS[:1], expert="cola")[0]["expert"] == "cola"


# ----------------------------------------------------------------------------- validation


def test_pack_json_missing(pack_copy):
    (pack_copy / "pack.json").unlink()
    with pytest.raises(StoreError):
        store.load_pack(pack_copy)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"format": "something-else"}',
                                     '{"format": "ttmoe-pack", "experts": "sst2"}'])
def test_pack_json_malformed(pack_copy, content):
    (pack_copy / "pack.json").write_text(content)
    with pytest.raises(StoreError):
        store.load_pack(pack_copy)


def test_pack_folder_missing(tmp_path):
    with pytest.raises(StoreError):
        store.load_pack(tmp_path / "nope")


def test_expert_with_other_fingerprint(pack_copy):
    config_path = pack_copy / "experts" / "sst2" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model"]["fingerprint"] = "f" * 64
    config_path.write_text(json.dumps(config))
    with pytest.raises(StoreError):
        store.load_pack(pack_copy)


def test_router_for_other_experts(pack_copy):
    path = pack_copy / "router_config.json"
    config = json.loads(path.read_text())
    config["experts"] = ["mnli", "sst2", "qqp"]
    path.write_text(json.dumps(config))
    with pytest.raises(StoreError, match="retrain"):
        store.load_pack(pack_copy)


def test_truncated_router_weights(pack_copy):
    path = pack_copy / "router.safetensors"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(StoreError):
        store.load_pack(pack_copy)


def test_truncated_expert_weights(pack_copy):
    path = pack_copy / "experts" / "rte" / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(StoreError):
        store.load_pack(pack_copy)


def test_duplicate_expert_name(pack_copy, built):
    with pytest.raises(StoreError):
        store.append_expert(pack_copy, built[1][0])


def test_expert_from_other_base_refused_on_add(pack_copy):
    other = tiny_bert(seed=1)
    foreign = tiny_expert(other, "qqp", rank=2, steps=1)
    with pytest.raises(StoreError):
        store.append_expert(pack_copy, foreign)
    assert json.loads((pack_copy / "pack.json").read_text())["experts"] == ["mnli", "sst2", "rte"]
    assert not (pack_copy / "experts" / "qqp").exists()


def test_expected_fingerprint_mismatch(pack_copy):
    with pytest.raises(StoreError):
        store.load_pack(pack_copy, expected_fingerprint="0" * 64)
    with pytest.raises(StoreError):
        moe.TTLoRAMoE.from_pack(pack_copy, backbone=tiny_bert(seed=1))


# ----------------------------------------------------------------------------- build_pack


def _hidden(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_build_pack_copies_expert_folders(tmp_path):
    from test_jobs import _expert

    folders = [store.save_expert(_expert(n), tmp_path / n) for n in ("a", "b")]
    pack = tmp_path / "packs" / "p1"
    loaded = store.build_pack(pack, folders)
    assert [e.name for e in loaded] == ["a", "b"]
    assert store.load_pack(pack).names == ["a", "b"]
    assert store.load_pack(pack).router_config is None
    assert _hidden(tmp_path / "packs") == []


def test_build_pack_refuses_clashes_existing_folders_bad_names_and_other_base_models(tmp_path):
    from test_jobs import _expert

    one = store.save_expert(_expert("same"), tmp_path / "one")
    two = store.save_expert(_expert("same"), tmp_path / "two")
    with pytest.raises(StoreError, match="both named 'same'"):
        store.build_pack(tmp_path / "packs" / "p", [one, two])
    (tmp_path / "packs" / "taken").mkdir(parents=True)
    with pytest.raises(StoreError, match="already exists"):
        store.build_pack(tmp_path / "packs" / "taken", [one])
    foreign = store.save_expert(_expert("foreign", fingerprint="0" * 64), tmp_path / "foreign")
    with pytest.raises(StoreError, match="another base model"):
        store.build_pack(tmp_path / "packs" / "mixed", [one, foreign])
    victim = tmp_path / "victim"
    victim.mkdir()
    with pytest.raises(StoreError, match="cannot name a folder"):
        store.build_pack(tmp_path / "packs" / "escape", [_expert(str(victim))])
    with pytest.raises(StoreError, match="at least one expert"):
        store.build_pack(tmp_path / "packs" / "empty", [])
    assert victim.is_dir()
    assert sorted(p.name for p in (tmp_path / "packs").iterdir()) == ["taken"]


def test_build_pack_with_a_router_in_one_step(built, bb, tmp_path):
    _, expert_list, trained = built
    pack = tmp_path / "with-router"
    store.build_pack(pack, expert_list, router=trained, router_metrics={"accuracy": 0.5},
                     extra={"build": {"command": "test"}})
    loaded = store.load_pack(pack, expected_fingerprint=bb.info.fingerprint)
    assert loaded.names == [e.name for e in expert_list]
    assert loaded.router_metrics == {"accuracy": 0.5}
    assert loaded.manifest["build"] == {"command": "test"}
    assert loaded.manifest["router"]["variant"] == trained.config.variant
    again = moe.TTLoRAMoE.from_pack(pack, backbone=bb)
    assert again.predict(TEXTS, PAIRS) == moe.TTLoRAMoE(bb, expert_list, trained).predict(TEXTS, PAIRS)
    # replace=True rebuilds it in place, atomically
    store.build_pack(pack, expert_list[:2], replace=True)
    assert store.load_pack(pack).names == [e.name for e in expert_list[:2]]
    assert _hidden(tmp_path) == []


def test_a_failed_router_save_leaves_the_pack_byte_identical(pack_copy, built, bb, monkeypatch):
    """The pack is changed through a hard-linked copy: a crash after the new router's tensors are
    written (before the swap) leaves every file of the live pack as it was, and no leftovers."""
    _, expert_list, _ = built
    before = tree_hashes(pack_copy)
    trained, report, train = tiny_router(bb, expert_list, variant="linear", epochs=1)

    def crash(path, data):
        raise OSError("disk full")

    monkeypatch.setattr(store.routers, "write_json", crash)
    with pytest.raises(OSError, match="disk full"):
        store.save_router(pack_copy, trained, train.names, {"accuracy": 0.0}, bb.info)
    assert tree_hashes(pack_copy) == before
    assert _hidden(pack_copy.parent) == [] and _hidden(pack_copy) == []
