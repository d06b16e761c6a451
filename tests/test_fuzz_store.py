"""Property-based fuzzing of the files people share: experts, routers and packs.

Every generated case (random manifests with wrong types, missing, extra and huge values; random
byte flips and truncations of every file of a pack) must end in the store's own error,
``store.StoreError``, or a pack that loads and is internally consistent; never another exception,
never a hang, never memory growth above a bound. Listings never break on one bad folder.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.tinymodels import tiny_bert, tiny_pack
from ttmoe_core import runinfo, store, workspace

FILES = ("pack.json", "router_config.json", "router.safetensors",
         "experts/sst2/adapter_config.json", "experts/sst2/adapter_model.safetensors")
FUZZ = settings(max_examples=400, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


class PackFiles(dict):
    """File contents by relative path (a short repr keeps hypothesis' failure reports readable)."""

    def __repr__(self) -> str:
        return f"PackFiles({sorted(self)})"


@pytest.fixture(scope="module")
def pack_files(tmp_path_factory) -> PackFiles:
    """A tiny two-expert pack with a router, as bytes by relative path."""
    folder = tmp_path_factory.mktemp("pack") / "pack"
    tiny_pack(folder, tiny_bert(), tasks=["sst2", "rte"], epochs=2)
    return PackFiles({str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()})


def _write(files: dict[str, bytes], root: Path) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _load_or_store_error(root: Path) -> None:
    """Load the pack, each expert and the listing; only StoreError may come out."""
    started = time.perf_counter()
    try:
        pack = store.load_pack(root)
    except store.StoreError:
        pass
    else:
        assert pack.experts and all(e.tensors for e in pack.experts)
        for expert in pack.experts:
            assert all(torch.isfinite(t).all() for t in expert.tensors.values() if t.is_floating_point())
        if pack.router_config is not None:
            pack.build_router()
    for folder in sorted((root / "experts").glob("*")):
        try:
            store.load_expert(folder)
        except store.StoreError:
            pass
    valid, invalid = workspace.list_experts(root / "experts")
    assert {Path(p).name for p in valid} | {Path(p).name for p in invalid} <= {"sst2", "rte"}
    assert all(isinstance(reason, str) and reason for reason in invalid.values())
    assert time.perf_counter() - started < 10.0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=5)


def _paths(data, prefix=()):
    """Every (path to a value) in a JSON document, objects and lists alike."""
    yield prefix
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(data, list):
        for i, value in enumerate(data[:4]):
            yield from _paths(value, prefix + (i,))


@st.composite
def manifest_edits(draw, files: dict[str, bytes]):
    """One JSON file of the pack with values replaced, keys removed and keys added."""
    name = draw(st.sampled_from([f for f in FILES if f.endswith(".json")]))
    data = json.loads(files[name])
    paths = [p for p in _paths(data) if p]
    for path in draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3)):
        parent = data
        try:
            for key in path[:-1]:
                parent = parent[key]
            if draw(st.booleans()):
                parent[path[-1]] = draw(json_values)
            elif isinstance(parent, dict):
                parent.pop(path[-1], None)
        except (KeyError, IndexError, TypeError):
            continue
    if isinstance(data, dict) and draw(st.booleans()):
        data[draw(st.text(max_size=8))] = draw(json_values)
    return name, json.dumps(data).encode()


@FUZZ
@given(data=st.data())
def test_random_manifests_end_in_store_error_or_a_good_pack(pack_files, data):
    name, content = data.draw(manifest_edits(pack_files))
    with tempfile.TemporaryDirectory() as tmp:
        _load_or_store_error(_write({**pack_files, name: content}, Path(tmp)))


@FUZZ
@given(name=st.sampled_from(FILES), data=st.data())
def test_byte_flips_and_truncations_end_in_store_error_or_a_good_pack(pack_files, name, data):
    content = bytearray(pack_files[name])
    if data.draw(st.booleans(), label="truncate"):
        content = content[:data.draw(st.integers(0, len(content) - 1), label="length")]
    else:
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            i = data.draw(st.integers(0, len(content) - 1), label="offset")
            content[i] = data.draw(st.integers(0, 255), label="byte")
    with tempfile.TemporaryDirectory() as tmp:
        _load_or_store_error(_write({**pack_files, name: bytes(content)}, Path(tmp)))


@pytest.mark.parametrize("field, value", [
    ("rank", "abc"), ("rank", 10**12), ("label_names", "ab"), ("tensors", 3),
    ("base_model", {"hidden_size": 2**31}), ("training", {"task": "sst2", "rank": 1e9}),
])
def test_known_bad_manifests_are_store_errors(pack_files, tmp_path, field, value):
    data = json.loads(pack_files["experts/sst2/adapter_config.json"])
    data[field] = value
    _write({**pack_files, "experts/sst2/adapter_config.json": json.dumps(data).encode()}, tmp_path)
    with pytest.raises(store.StoreError, match="adapter_config.json"):
        store.load_expert(tmp_path / "experts" / "sst2")
    valid, invalid = workspace.list_experts(tmp_path / "experts")
    assert [Path(p).name for p in valid] == ["rte"] and [Path(p).name for p in invalid] == ["sst2"]


def test_router_hidden_size_is_checked_before_memory_is_allocated(pack_files, tmp_path):
    """A router config asking for a huge MLP is refused from its tensor manifest, not allocated."""
    data = json.loads(pack_files["router_config.json"])
    data["config"]["hidden"] = 60_000
    _write({**pack_files, "router_config.json": json.dumps(data).encode()}, tmp_path)
    before = runinfo.peak_rss_mib()
    try:
        store.load_pack(tmp_path).build_router()
    except store.StoreError:
        pass
    assert runinfo.peak_rss_mib() - before < 100


def test_fuzzing_does_not_grow_memory(pack_files):
    """Loading 200 corrupted packs in a row leaves resident memory within 100 MiB."""
    rss = runinfo.rss_mib()
    for i in range(200):
        content = bytearray(pack_files[FILES[i % len(FILES)]])
        content[(i * 7919) % len(content)] ^= 0xFF
        with tempfile.TemporaryDirectory() as tmp:
            _load_or_store_error(_write({**pack_files, FILES[i % len(FILES)]: bytes(content)}, Path(tmp)))
    assert runinfo.rss_mib() - rss < 100
