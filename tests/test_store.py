"""Tests of ttmoe_core.store: expert round trip (bit-equal), atomic writes, and one clear
StoreError per kind of corruption; nothing is unpickled."""

from __future__ import annotations

import json
import os
import pickle
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from ttmoe_core import experts, store, tasks
from ttmoe_core.store import CONFIG_FILE, WEIGHTS_FILE, StoreError


def _config(**overrides) -> experts.ExpertConfig:
    settings = dict(task="sst2", steps=3, batch_size=4, max_length=32, eval_limit=8, train_limit=16)
    settings.update(overrides)
    return experts.ExpertConfig(**settings)


@pytest.fixture(scope="module")
def sst2(samples_dir):
    return (tasks.load_task("sst2", "train", data_dir=samples_dir, limit=16),
            tasks.load_task("sst2", "validation", data_dir=samples_dir, limit=8))


@pytest.fixture(scope="module")
def tt_expert(tiny_bert, sst2) -> experts.Expert:
    train, valid = sst2
    return experts.train_expert(_config(), tiny_bert, train_data=train, eval_data=valid)


@pytest.fixture(scope="module")
def lora_expert(tiny_bert, sst2) -> experts.Expert:
    train, valid = sst2
    return experts.train_expert(_config(method="lora", lr=5e-3), tiny_bert, train_data=train,
                                eval_data=valid)


@pytest.fixture
def saved(tt_expert, tmp_path):
    path = tmp_path / "experts" / "sst2"
    store.save_expert(tt_expert, path)
    return path


def _read_config(path):
    return json.loads((path / CONFIG_FILE).read_text())


def _write_config(path, data):
    (path / CONFIG_FILE).write_text(json.dumps(data))


def _rewrite_weights(path, change, update_manifest=False):
    """Apply ``change`` to the tensor dict of the weights file (and optionally to the manifest)."""
    tensors = load_file(str(path / WEIGHTS_FILE))
    change(tensors)
    save_file(tensors, str(path / WEIGHTS_FILE))
    if update_manifest:
        data = _read_config(path)
        data["tensors"] = {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                           for k, v in tensors.items()}
        _write_config(path, data)


def _core_key(expert, target="query", layer=0, k=0):
    return f"encoder.layer.{layer}.attention.self.{target}.cores.{k}"


# ----------------------------------------------------------------------------- round trip


def test_round_trip_is_exact(tt_expert, saved, tmp_path):
    assert sorted(os.listdir(saved)) == sorted([CONFIG_FILE, WEIGHTS_FILE, store.CARD_FILE])
    assert os.listdir(saved.parent) == ["sst2"]                  # no temporary leftovers
    loaded = store.load_expert(saved, expected_fingerprint=tt_expert.base.fingerprint)
    assert set(loaded.tensors) == set(tt_expert.tensors)
    for key, tensor in tt_expert.tensors.items():
        assert loaded.tensors[key].dtype == tensor.dtype
        assert torch.equal(loaded.tensors[key], tensor), key
    assert loaded.config == tt_expert.config
    assert loaded.metrics == tt_expert.metrics and loaded.metrics["eval_rows"] == 8
    assert loaded.base == tt_expert.base
    assert loaded.label_names == tt_expert.label_names
    assert loaded.tt_layout == tt_expert.tt_layout
    assert loaded.history == tt_expert.history
    assert loaded.name == tt_expert.name and loaded.created == tt_expert.created
    assert loaded.trainable_params() == tt_expert.trainable_params()
    # saving the loaded expert again gives the same tensors and the same config file
    again = tmp_path / "again"
    store.save_expert(loaded, again)
    reread = load_file(str(again / WEIGHTS_FILE))
    assert set(reread) == set(tt_expert.tensors)
    assert all(torch.equal(reread[k], v) for k, v in tt_expert.tensors.items())
    assert _read_config(again) == _read_config(saved)


def test_config_records_paper_layout(tt_expert, saved):
    data = _read_config(saved)
    assert data["format"] == store.FORMAT and data["method"] == "tt-lora"
    assert data["rank"] == 5 and data["alpha"] == 16.0 and data["targets"] == ["query", "value"]
    assert data["trainable_params"] == sum(t.numel() for t in tt_expert.tensors.values())
    for target in ("query", "value"):
        info = data["tt"][target]
        assert info["core_shapes"][0][0] == 1 and info["core_shapes"][-1][2] == 1
        assert [s[1] for s in info["core_shapes"]] == info["in_factors"] + info["out_factors"]
    for key, spec in data["tensors"].items():
        assert spec["shape"] == list(tt_expert.tensors[key].shape)


def test_weights_file_is_safetensors_not_pickle(saved):
    raw = (saved / WEIGHTS_FILE).read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    assert set(header) - {"__metadata__"} == set(_read_config(saved)["tensors"])
    assert not raw.startswith(b"\x80") and b"PK\x03\x04" not in raw[:4]   # neither pickle nor zip


def test_loading_never_unpickles(saved, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the store must not unpickle")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    expert = store.load_expert(saved)
    assert expert.tensors


def test_overwrite_replaces_whole_folder(tt_expert, saved):
    (saved / "stale.txt").write_text("from an older version")
    renamed = experts.Expert(**{**tt_expert.__dict__, "name": "renamed"})
    store.save_expert(renamed, saved)
    assert sorted(os.listdir(saved)) == sorted([CONFIG_FILE, WEIGHTS_FILE, store.CARD_FILE])
    assert os.listdir(saved.parent) == ["sst2"]
    assert store.load_expert(saved).name == "renamed"


def test_failed_save_leaves_previous_folder_untouched(tt_expert, saved, monkeypatch):
    before = {name: (saved / name).read_bytes() for name in os.listdir(saved)}

    def disk_full(path, data):
        raise OSError("disk full")

    monkeypatch.setattr(store.experts, "write_json", disk_full)
    changed = experts.Expert(**{**tt_expert.__dict__, "name": "changed",
                                "tensors": {k: v + 1 for k, v in tt_expert.tensors.items()}})
    with pytest.raises(OSError, match="disk full"):
        store.save_expert(changed, saved)
    assert {name: (saved / name).read_bytes() for name in os.listdir(saved)} == before
    assert os.listdir(saved.parent) == ["sst2"]                  # temp folder removed


def test_atomic_dir_failure_keeps_old_content(tmp_path):
    target = tmp_path / "folder"
    with store.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("old")
    assert (target / "a.txt").read_text() == "old"
    with pytest.raises(RuntimeError):
        with store.atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("new")
            (tmp / "b.txt").write_text("new")
            raise RuntimeError("crash while writing")
    assert os.listdir(target) == ["a.txt"] and (target / "a.txt").read_text() == "old"
    assert os.listdir(tmp_path) == ["folder"]


# ----------------------------------------------------------------------------- corruption


def test_missing_folder(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        store.load_expert(tmp_path / "nope")


def test_missing_weights_file(saved):
    (saved / WEIGHTS_FILE).unlink()
    with pytest.raises(StoreError, match=f"{WEIGHTS_FILE}.* is missing"):
        store.load_expert(saved)


def test_missing_config_file(saved):
    (saved / CONFIG_FILE).unlink()
    with pytest.raises(StoreError, match=f"{CONFIG_FILE}.* is missing"):
        store.load_expert(saved)


def test_malformed_json_mentions_line(saved):
    (saved / CONFIG_FILE).write_text('{\n  "format": "ttmoe-expert",\n  "name": oops\n}\n')
    with pytest.raises(StoreError, match="not valid JSON.*line 3"):
        store.load_expert(saved)


def test_json_not_an_object(saved):
    (saved / CONFIG_FILE).write_text("[1, 2, 3]")
    with pytest.raises(StoreError, match="JSON object"):
        store.load_expert(saved)


def test_truncated_weights(saved):
    raw = (saved / WEIGHTS_FILE).read_bytes()
    (saved / WEIGHTS_FILE).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(StoreError, match="truncated or corrupt"):
        store.load_expert(saved)


def test_garbage_weights(saved):
    (saved / WEIGHTS_FILE).write_bytes(b"\x80\x04not a safetensors file at all")
    with pytest.raises(StoreError, match="safetensors"):
        store.load_expert(saved)


def test_extra_tensor(saved):
    _rewrite_weights(saved, lambda t: t.update({"sneaky.weight": torch.zeros(2)}))
    with pytest.raises(StoreError, match="unexpected tensors.*sneaky.weight"):
        store.load_expert(saved)


def test_missing_tensor(tt_expert, saved):
    key = _core_key(tt_expert, layer=1, k=2)
    _rewrite_weights(saved, lambda t: t.pop(key))
    with pytest.raises(StoreError, match=f"missing.*{key}"):
        store.load_expert(saved)


def test_wrong_shape_with_consistent_manifest(tt_expert, saved):
    key = _core_key(tt_expert, target="value", layer=0, k=0)       # [1, s, r] -> [s, r, 1]
    shape = tt_expert.tensors[key].shape
    assert shape[0] == 1

    def reshape(t):
        t[key] = t[key].reshape(shape[1], shape[2], 1).contiguous()

    _rewrite_weights(saved, reshape, update_manifest=True)
    with pytest.raises(StoreError, match="value.* shapes"):
        store.load_expert(saved)


def test_wrong_shape_against_manifest(tt_expert, saved):
    key = _core_key(tt_expert)

    def grow(t):
        t[key] = torch.cat([t[key], t[key]], dim=1)

    _rewrite_weights(saved, grow)
    with pytest.raises(StoreError, match=f"{key} has shape"):
        store.load_expert(saved)


def test_wrong_head_shape_with_consistent_manifest(saved):
    _rewrite_weights(saved, lambda t: t.update({"head.weight": torch.zeros(3, 48)}),
                     update_manifest=True)
    with pytest.raises(StoreError, match="head.weight"):
        store.load_expert(saved)


def test_wrong_dtype(tt_expert, saved):
    key = _core_key(tt_expert)
    assert _read_config(saved)["tensors"][key]["dtype"] == "float32"

    def to_double(t):
        t[key] = t[key].double()

    _rewrite_weights(saved, to_double)
    with pytest.raises(StoreError, match="dtype float64.*float32"):
        store.load_expert(saved)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_tensor(tt_expert, saved, value):
    key = _core_key(tt_expert, target="value", layer=1, k=1)

    def poison(t):
        t[key] = t[key].clone()
        t[key].view(-1)[3] = value

    _rewrite_weights(saved, poison)
    with pytest.raises(StoreError, match="NaN or infinite"):
        store.load_expert(saved)


def test_foreign_base_model(tt_expert, saved):
    with pytest.raises(StoreError, match="fingerprint"):
        store.load_expert(saved, expected_fingerprint="0" * 64)
    assert store.load_expert(saved, expected_fingerprint=tt_expert.base.fingerprint).tensors


def test_wrong_format_tag(saved):
    data = _read_config(saved)
    data["format"] = "peft-lora"
    _write_config(saved, data)
    with pytest.raises(StoreError, match="format 'peft-lora'"):
        store.load_expert(saved)


@pytest.mark.parametrize("change,pattern", [
    (lambda d: d.pop("tensors"), r"adapter_config.json: field \$: 'tensors' is a required"),
    (lambda d: d["training"].update(rank=0), r"adapter_config.json: field \$.training.rank: 0 is less"),
    (lambda d: d["training"].update(bogus=1), "bad training settings"),
    (lambda d: d["base_model"].pop("fingerprint"),
     r"field \$.base_model: 'fingerprint' is a required property"),
    (lambda d: d.update(name="../escape"), "the expert name '../escape' is not a valid name"),
    (lambda d: d["training"].update(alpha=float("nan")), r"field \$.training.alpha: nan"),
])
def test_bad_config_content(saved, change, pattern):
    data = _read_config(saved)
    change(data)
    _write_config(saved, data)
    with pytest.raises(StoreError, match=pattern):
        store.load_expert(saved)


def test_missing_layer_with_consistent_manifest(tt_expert, saved):
    missing = [k for k in tt_expert.tensors if k.startswith("encoder.layer.1.attention.self.query.")]
    assert missing

    def drop(t):
        for key in missing:
            t.pop(key)

    _rewrite_weights(saved, drop, update_manifest=True)
    with pytest.raises(StoreError, match=r"target 'query' in layer\(s\) \[1\]"):
        store.load_expert(saved)


def test_layer_beyond_the_base_model_with_consistent_manifest(tt_expert, saved):
    layers = tt_expert.base.num_layers

    def add(t):
        for key in [k for k in t if k.startswith("encoder.layer.0.attention.self.value.")]:
            t[key.replace("layer.0.", f"layer.{layers}.")] = t[key].clone()

    _rewrite_weights(saved, add, update_manifest=True)
    with pytest.raises(StoreError, match=rf"'value' in layer\(s\) \[{layers}\]"):
        store.load_expert(saved)


def test_cores_of_an_untargeted_module_with_consistent_manifest(tt_expert, saved):
    def add(t):
        for key in [k for k in t if k.startswith("encoder.layer.0.attention.self.query.")]:
            t[key.replace(".query.", ".key.")] = t[key].clone()

    _rewrite_weights(saved, add, update_manifest=True)
    with pytest.raises(StoreError, match="attention.self.key.cores.0 is not an adapter tensor"):
        store.load_expert(saved)


def test_lora_module_without_its_b_matrix(lora_expert, tmp_path):
    path = store.save_expert(lora_expert, tmp_path / "lora")
    key = next(k for k in lora_expert.tensors if "layer.0" in k and k.endswith("lora_B.weight"))
    _rewrite_weights(path, lambda t: t.pop(key), update_manifest=True)
    with pytest.raises(StoreError, match="expected \\['A.weight', 'B.weight'\\]"):
        store.load_expert(path)


# ----------------------------------------------------------------------------- LoRA


def test_lora_round_trip_same_logits(lora_expert, tiny_bert, sst2, tmp_path, reference_logits):
    _, valid = sst2
    assert lora_expert.config.method == "lora" and lora_expert.config.rank == 16
    assert any("lora_B" in k for k in lora_expert.tensors)
    path = store.save_expert(lora_expert, tmp_path / "lora")
    loaded = store.load_expert(path)
    assert set(loaded.tensors) == set(lora_expert.tensors)
    assert all(torch.equal(loaded.tensors[k], v) for k, v in lora_expert.tensors.items())
    assert loaded.config == lora_expert.config and loaded.metrics == lora_expert.metrics
    before = experts.predict_logits(experts.build_expert_model(lora_expert, tiny_bert), tiny_bert,
                                    valid.texts, valid.text_pairs, max_length=32)
    after = experts.predict_logits(experts.build_expert_model(loaded, tiny_bert), tiny_bert,
                                   valid.texts, valid.text_pairs, max_length=32)
    assert torch.equal(before, after)
    # and they are the logits of the merged W + (α/r)·B·A model, so the LoRA weights are applied
    ref = reference_logits(tiny_bert, loaded, valid.texts, valid.text_pairs, 32)
    torch.testing.assert_close(after, ref, rtol=1e-4, atol=1e-5)
    b_norm = sum(float(v.norm()) for k, v in loaded.tensors.items() if "lora_B" in k)
    assert b_norm > 0                                             # trained away from B = 0


# ----------------------------------------------------------------------------- checked before allocation


def _set_config(path, **changes):
    data = _read_config(path)
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        target = data
        for parent in parents:
            target = target[parent]
        target[key] = value
    _write_config(path, data)


def test_huge_lora_rank_is_refused_from_the_header(lora_expert, tmp_path, monkeypatch):
    """A LoRA config whose rank disagrees with its stored matrices is refused before any tensor
    data is read (the loader is never called)."""
    path = store.save_expert(lora_expert, tmp_path / "lora")
    _set_config(path, **{"training.rank": 4096})
    monkeypatch.setattr(store.experts.tensorfile, "load_file", lambda *a, **k: pytest.fail("data was read"))
    with pytest.raises(StoreError, match="rank 4096 needs A"):
        store.load_expert(path)
    _set_config(path, **{"training.rank": 10**9})
    with pytest.raises(StoreError, match=r"field \$.training.rank: 1000000000 is greater"):
        store.load_expert(path)


def test_tt_rank_that_disagrees_with_the_cores_is_refused_from_the_header(saved, monkeypatch):
    _set_config(saved, **{"training.rank": 4000})
    data = _read_config(saved)
    for info in data["tt"].values():
        info.pop("core_shapes")
    _write_config(saved, data)
    monkeypatch.setattr(store.experts.tensorfile, "load_file", lambda *a, **k: pytest.fail("data was read"))
    with pytest.raises(StoreError, match="cores of .* have shapes"):
        store.load_expert(saved)


@pytest.mark.parametrize("header, pattern", [
    (struct.pack("<Q", 2**62) + b"{}", "a header of"),                       # length past the end
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    (struct.pack("<Q", 2) + b"{}" + b"\0" * 4, "the tensors hold 0 bytes, the file 4"),
    (b"\1\2", "shorter than a header"),
])
def test_bad_headers_are_store_errors(saved, header, pattern):
    (saved / WEIGHTS_FILE).write_bytes(header)
    with pytest.raises(StoreError, match=pattern):
        store.load_expert(saved)


def test_a_header_entry_that_lies_about_its_bytes(tt_expert, saved):
    raw = (saved / WEIGHTS_FILE).read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    key = _core_key(tt_expert)
    header[key]["shape"] = [10**6, 10**6, 10**6]               # a 4 EB tensor in a small file
    new = json.dumps(header).encode()
    (saved / WEIGHTS_FILE).write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + length:])
    with pytest.raises(StoreError, match="truncated or corrupt"):
        store.load_expert(saved)


def test_weights_or_config_that_are_links_or_fifos_are_refused(saved, tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_bytes((saved / CONFIG_FILE).read_bytes())
    (saved / CONFIG_FILE).unlink()
    (saved / CONFIG_FILE).symlink_to(outside)
    with pytest.raises(StoreError, match="symbolic link"):
        store.load_expert(saved)
    (saved / CONFIG_FILE).unlink()
    os.mkfifo(saved / CONFIG_FILE)                              # must not block
    with pytest.raises(StoreError, match="not a regular file"):
        store.load_expert(saved)


def test_json_bombs_are_store_errors(saved):
    for content in ("[" * 100_000 + "]" * 100_000, '{"rank": ' + "9" * 5000 + "}", '{"a": NaN}'):
        (saved / CONFIG_FILE).write_text(content)
        with pytest.raises(StoreError):
            store.load_expert(saved)


# ----------------------------------------------------------------------------- replace and recover


def test_save_replaces_only_an_expert_or_an_empty_folder(tt_expert, tmp_path):
    (tmp_path / "empty").mkdir()
    store.save_expert(tt_expert, tmp_path / "empty")
    assert store.load_expert(tmp_path / "empty").name == tt_expert.name
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text("keep me")
    (tmp_path / "file").write_text("keep me")
    for target in ("data", "file"):
        with pytest.raises(StoreError, match="not a valid expert|not a folder"):
            store.save_expert(tt_expert, tmp_path / target)
    assert (tmp_path / "data" / "train.csv").read_text() == "keep me"
    assert (tmp_path / "file").read_text() == "keep me"


def test_swap_fallback_and_recovery_of_each_interrupted_step(tt_expert, saved, monkeypatch):
    """Without RENAME_EXCHANGE (other OS or file system) the replace is backup + rename; a crash
    after the backup leaves no folder, and ``recover`` puts the backup back."""
    from ttmoe_core.files import safefs

    old = store.load_expert(saved)
    monkeypatch.setattr(safefs, "exchange", lambda a, b: False)
    newer = experts.Expert(**{**tt_expert.__dict__, "metrics": {"accuracy": 1.0}})
    store.save_expert(newer, saved)
    assert store.load_expert(saved).metrics == {"accuracy": 1.0}
    assert os.listdir(saved.parent) == ["sst2"]
    calls, real_rename = [], os.rename

    def crash_on_second_rename(src, dest):
        calls.append((src, dest))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed between the two renames")
        real_rename(src, dest)

    monkeypatch.setattr(safefs.os, "rename", crash_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        store.save_expert(old, saved)
    monkeypatch.setattr(safefs.os, "rename", real_rename)
    leftovers = sorted(os.listdir(saved.parent))
    assert "sst2" not in leftovers and any(".old-" in name for name in leftovers)
    # a dead process's leftovers: rename them as if another pid made them
    for name in leftovers:
        os.rename(saved.parent / name, saved.parent / name.replace(f"-{os.getpid()}-", "-999999999-"))
    done = store.recover(saved.parent)
    assert any(line.startswith("restored") for line in done)
    assert os.listdir(saved.parent) == ["sst2"]
    assert store.load_expert(saved).metrics == {"accuracy": 1.0}


def test_recover_keeps_what_live_processes_are_writing(saved):
    from ttmoe_core.files import safefs

    mine = saved.parent / f".sst2.tmp-{os.getpid()}-0123abcd"
    dead = saved.parent / ".sst2.tmp-999999999-0123abcd"
    legacy = saved.parent / ".sst2.tmp-k2j3h4g5"                # older versions: no pid
    for folder in (mine, dead, legacy):
        folder.mkdir()
    os.utime(legacy, (0, 0))
    assert sorted(store.recover(saved.parent)) == sorted([f"removed {dead}", f"removed {legacy}"])
    assert mine.is_dir() and safefs.is_leftover(mine.name)
    safefs.remove(mine)
