"""Property-based fuzzing of the files people share: experts, routers and packs.

Every generated case (random manifests with wrong types, missing, extra and huge values; random
byte flips and truncations of every file of a pack; edited safetensors headers, with and without
a manifest that agrees; hostile names; random folder contents) must end in the store's own error,
``store.StoreError``, or a pack that loads and is internally consistent; never another exception,
never a hang, never memory growth above a bound, never a file touched outside the pack.
Listings never break on one bad folder. About 1,430 generated cases a run (``FUZZ_COUNTS``);
what hypothesis found is kept below as explicit regression cases.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from tests.tinymodels import tiny_bert, tiny_pack, tree_hashes
from ttmoe_core import store
from ttmoe_core.runtime import runinfo
from ttmoe_core.services import workspace

FILES = ("pack.json", "router_config.json", "router.safetensors",
         "experts/sst2/adapter_config.json", "experts/sst2/adapter_model.safetensors")
CONFIG, WEIGHTS = "experts/sst2/adapter_config.json", "experts/sst2/adapter_model.safetensors"
# generated cases per test: 1,430 in all
FUZZ_COUNTS = {"manifests": 420, "bytes": 420, "headers": 240, "names": 200, "folders": 150}


def fuzz(kind: str):
    return settings(max_examples=FUZZ_COUNTS[kind], deadline=None, database=None,
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


def _load_or_store_error(root: Path, names: set[str] = frozenset({"sst2", "rte"})) -> None:
    """Load the pack and list (so load) each expert; only StoreError may come out, and a pack
    that loads holds only experts of its own folders (``names``)."""
    started = time.perf_counter()
    try:
        pack = store.load_pack(root)
    except store.StoreError:
        pass
    else:
        assert pack.experts and all(e.tensors for e in pack.experts)
        assert {e.name for e in pack.experts} <= names
        for expert in pack.experts:
            assert all(torch.isfinite(t).all() for t in expert.tensors.values() if t.is_floating_point())
        if pack.router_config is not None:
            pack.build_router()
    valid, invalid = workspace.list_experts(root / "experts")    # reads where it is asked to
    assert not [reason for reason in invalid.values() if reason.startswith(workspace.UNEXPECTED)]
    if not (root / "experts").is_symlink():
        assert {Path(p).name for p in valid} <= names
        assert all(not p.is_symlink() for p in valid)
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


def _edit(draw, data, values=json_values):
    """``data`` (a JSON document, changed in place) with 1-3 values replaced or keys removed, and
    maybe a key added."""
    paths = [p for p in _paths(data) if p]
    for path in draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3)) if paths else []:
        parent = data
        try:
            for key in path[:-1]:
                parent = parent[key]
            if draw(st.booleans()):
                parent[path[-1]] = draw(values)
            elif isinstance(parent, dict):
                parent.pop(path[-1], None)
        except (KeyError, IndexError, TypeError):
            continue
    if isinstance(data, dict) and draw(st.booleans()):
        data[draw(st.text(max_size=8))] = draw(values)
    return data


@st.composite
def manifest_edits(draw, files: dict[str, bytes]):
    """One JSON file of the pack with values replaced, keys removed and keys added."""
    name = draw(st.sampled_from([f for f in FILES if f.endswith(".json")]))
    return name, json.dumps(_edit(draw, json.loads(files[name]))).encode()


@fuzz("manifests")
@given(data=st.data())
def test_random_manifests_end_in_store_error_or_a_good_pack(pack_files, data):
    name, content = data.draw(manifest_edits(pack_files))
    with tempfile.TemporaryDirectory() as tmp:
        _load_or_store_error(_write({**pack_files, name: content}, Path(tmp)))


@fuzz("bytes")
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


# ----------------------------------------------------------------------------- headers

header_values = (json_values | st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "BOOL", "U8", "F8_E4M3"])
                 | st.lists(st.integers(0, 2**40) | st.integers(0, 64), max_size=4)
                 | st.integers(-1, 2**64))
SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
                      "I64": "int64", "BOOL": "bool"}


def _split(raw: bytes) -> tuple[dict, bytes]:
    length = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + length]), raw[8 + length:]


@st.composite
def header_edits(draw, files: dict[str, bytes]):
    """The expert's weights file with its header edited (dtypes, shapes, offsets, entries), the
    length prefix right or not, the data cut or padded; half the time the config's manifest is
    made to agree, so the checks behind the manifest's are reached too."""
    header, body = _split(files[WEIGHTS])
    _edit(draw, header, header_values)
    body = draw(st.sampled_from([body, body[:-4], body + b"\0" * 4, b""]))
    raw = json.dumps(header).encode()
    length = draw(st.sampled_from([len(raw), len(raw) + 1, 2**63, 0]))
    note(f"header {raw.decode()[:2000]}, length prefix {length}, {len(body)} data bytes")
    changed = PackFiles({WEIGHTS: length.to_bytes(8, "little") + raw + body})
    if draw(st.booleans(), label="manifest agrees"):
        config = json.loads(files[CONFIG])
        config["tensors"] = {k: {"shape": v.get("shape"), "dtype": SAFETENSORS_DTYPES.get(str(v.get("dtype")))}
                             for k, v in header.items() if isinstance(v, dict) and k != "__metadata__"}
        changed[CONFIG] = json.dumps(config).encode()
    return changed


@fuzz("headers")
@given(data=st.data())
def test_edited_headers_end_in_store_error_or_a_good_pack(pack_files, data):
    changed = data.draw(header_edits(pack_files))
    with tempfile.TemporaryDirectory() as tmp:
        _load_or_store_error(_write({**pack_files, **changed}, Path(tmp)))


# ----------------------------------------------------------------------------- names and links

HOSTILE_NAMES = ["..", "../..", "../../outside", "/", "/tmp", ".", "", "sst2/../rte", "experts/../sst2",
                 "ｅｘｐｅｒｔ", "sst2\u202e", "\u202ertE", "a\x00b", "x" * 65, "y" * 5000, "-rf",
                 ".hidden", "sst2 ", "sst2\n", "link", "outside"]


@pytest.fixture(scope="module")
def sentinel(pack_files, tmp_path_factory) -> Path:
    """A folder outside every pack: an expert ``outside`` (copy of sst2) that must never be read
    through a pack nor changed."""
    folder = tmp_path_factory.mktemp("sentinel")
    config = json.loads(pack_files[CONFIG])
    config["name"] = "outside"
    _write({"outside/adapter_config.json": json.dumps(config).encode(),
            "outside/adapter_model.safetensors": pack_files[WEIGHTS]}, folder)
    return folder


@fuzz("names")
@given(data=st.data())
def test_hostile_names_and_links_never_leave_the_pack(pack_files, sentinel, data):
    before = tree_hashes(sentinel)
    name = data.draw(st.sampled_from(HOSTILE_NAMES + [str(sentinel / "outside")]) | st.text(max_size=70),
                     label="name")
    files = dict(pack_files)
    manifest, router, config = (json.loads(files[f]) for f in ("pack.json", "router_config.json", CONFIG))
    slot = data.draw(st.integers(0, 1), label="slot")
    for field in data.draw(st.lists(st.sampled_from(["pack", "router", "config"]), min_size=1,
                                    unique=True), label="fields"):
        {"pack": manifest["experts"], "router": router["experts"]}.get(field, [None, None])[slot] = name
        if field == "config":
            config["name"] = name
    files.update({"pack.json": json.dumps(manifest).encode(),
                  "router_config.json": json.dumps(router).encode(), CONFIG: json.dumps(config).encode()})
    with tempfile.TemporaryDirectory() as tmp:
        root = _write(files, Path(tmp) / "pack")
        link = data.draw(st.sampled_from([None, "expert", "experts", "file"]), label="link")
        try:
            if link == "expert":        # experts/<name> leads out of the pack
                (root / "experts" / name).symlink_to(sentinel / "outside", target_is_directory=True)
            elif link == "experts":     # the experts folder itself leads out
                os.rename(root / "experts", root / "experts.real")
                (root / "experts").symlink_to(sentinel, target_is_directory=True)
            elif link == "file":        # one file of an expert is a link
                (root / CONFIG).unlink()
                (root / CONFIG).symlink_to(sentinel / "outside" / "adapter_config.json")
        except (OSError, ValueError):   # a name the file system refuses: nothing to link
            pass
        _load_or_store_error(root)
    assert tree_hashes(sentinel) == before


# ----------------------------------------------------------------------------- folder contents

ENTRY_KINDS = ["file", "empty dir", "expert", "marker is a dir", "random bytes", "link out",
               "link loop", "dangling link", "fifo", "pack of links"]


def _make(path: Path, kind: str, pack_files: dict, sentinel: Path, junk: bytes) -> None:
    """A folder entry ``path`` of the given kind (see ``ENTRY_KINDS``)."""
    if kind == "file":
        path.write_bytes(junk)
    elif kind == "empty dir":
        path.mkdir()
    elif kind in ("expert", "random bytes"):
        _write({f"{path.name}/adapter_config.json": pack_files[CONFIG] if kind == "expert" else junk,
                f"{path.name}/adapter_model.safetensors": pack_files[WEIGHTS]}, path.parent)
    elif kind == "marker is a dir":
        (path / "adapter_config.json").mkdir(parents=True)
        (path / "pack.json").mkdir()
    elif kind == "link out":
        path.symlink_to(sentinel / "outside", target_is_directory=True)
    elif kind == "link loop":
        path.symlink_to(path)
    elif kind == "dangling link":
        path.symlink_to(path.parent / "nowhere")
    elif kind == "fifo":
        path.mkdir()
        os.mkfifo(path / "adapter_config.json")
        os.mkfifo(path / "pack.json")
    elif kind == "pack of links":
        (path / "experts").mkdir(parents=True)
        (path / "experts" / "sst2").symlink_to(sentinel / "outside", target_is_directory=True)
        (path / "pack.json").write_bytes(pack_files["pack.json"])


@fuzz("folders")
@given(entries=st.lists(st.tuples(st.sampled_from(["sst2", "rte", "packs", "x", ".hidden"]),
                                  st.sampled_from(ENTRY_KINDS)),
                        max_size=4, unique_by=lambda e: e[0]),
       junk=st.binary(max_size=64))
def test_listings_and_deletes_never_break_on_any_folder_content(pack_files, sentinel, entries, junk):
    before = tree_hashes(sentinel)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ws"
        root.mkdir()
        for name, kind in entries:
            _make(root / name, kind, pack_files, sentinel, junk)
        if any(name == "packs" for name, _ in entries):
            for name, kind in entries:
                if name != "packs" and not (root / "packs" / name).exists() and (root / "packs").is_dir() \
                        and not (root / "packs").is_symlink():
                    _make(root / "packs" / name, kind, pack_files, sentinel, junk)
        ws = workspace.Workspace(root)
        for listing in (ws.list_experts, ws.list_packs):
            valid, invalid = listing()
            assert all(isinstance(reason, str) and reason for reason in invalid.values())
            assert not [reason for reason in invalid.values() if reason.startswith(workspace.UNEXPECTED)]
            assert not {p.name for p in valid} & {n for n, k in entries if k != "expert"}
        for name, _ in entries:
            for delete in (ws.delete_expert, ws.delete_pack):
                try:
                    delete(name)
                except workspace.WorkspaceError:
                    pass
    assert tree_hashes(sentinel) == before


# ----------------------------------------------------------------------------- found by fuzzing

DELETE = object()
# (file, path to a value, new value or DELETE): each once raised something other than StoreError
FOUND = [
    ("router_config.json", ("tensors", "mlp.3.weight"), None),
    ("router_config.json", ("config", "dropout"), None),
    ("router_config.json", ("config", "hidden"), None),
    ("router_config.json", ("config", "layer"), []),
    ("router_config.json", ("config", "variant"), None),
    ("router_config.json", ("config", "variant"), DELETE),      # default variant: wrong tensors
    ("router_config.json", ("tensors", "mlp.0.weight", "dtype"), DELETE),
    ("router_config.json", ("tensors", "mlp.0.bias", "shape"), DELETE),
    ("pack.json", ("base_model", "num_layers"), None),
    ("pack.json", ("base_model", "hidden_size"), None),
    ("pack.json", ("base_model", "hidden_size"), DELETE),
    ("pack.json", ("experts", 0), None),
    ("pack.json", ("format",), DELETE),
    ("pack.json", ("base_model", "hidden_size"), 49),           # same fingerprint, other size
    (CONFIG, ("training", "alpha"), float("nan")),
    (CONFIG, ("name",), "rte"),                                 # folder sst2 holds "rte"
]


@pytest.mark.parametrize("file, path, value", FOUND)
def test_found_by_fuzzing_are_store_errors(pack_files, tmp_path, file, path, value):
    data = json.loads(pack_files[file])
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    _write({**pack_files, file: json.dumps(data).encode()}, tmp_path)
    with pytest.raises(store.StoreError):
        store.load_pack(tmp_path)
    _load_or_store_error(tmp_path)


@pytest.mark.parametrize("field, value", [
    ("rank", "abc"), ("rank", 10**12), ("label_names", "ab"), ("tensors", 3),
    ("base_model", {"hidden_size": 2**31}), ("training", {"task": "sst2", "rank": 1e9}),
])
def test_known_bad_manifests_are_store_errors(pack_files, tmp_path, field, value):
    data = json.loads(pack_files[CONFIG])
    data[field] = value
    _write({**pack_files, CONFIG: json.dumps(data).encode()}, tmp_path)
    with pytest.raises(store.StoreError, match="adapter_config.json"):
        store.load_expert(tmp_path / "experts" / "sst2")
    valid, invalid = workspace.list_experts(tmp_path / "experts")
    assert [Path(p).name for p in valid] == ["rte"] and [Path(p).name for p in invalid] == ["sst2"]


def test_router_hidden_size_is_checked_before_memory_is_allocated(pack_files, tmp_path):
    """A router config asking for a huge MLP is refused from its tensor manifest, before any
    router is built (the refusal itself is required: a peak-RSS check cannot see a 12 MiB
    allocation, so it proved nothing)."""
    data = json.loads(pack_files["router_config.json"])
    data["config"]["hidden"] = 60_000
    _write({**pack_files, "router_config.json": json.dumps(data).encode()}, tmp_path)
    with pytest.raises(store.StoreError, match="router"):
        store.load_pack(tmp_path)


def test_fuzzing_does_not_grow_memory(pack_files):
    """Loading 200 corrupted packs in a row leaves resident memory within 100 MiB."""
    rss = runinfo.rss_mib()
    for i in range(200):
        content = bytearray(pack_files[FILES[i % len(FILES)]])
        content[(i * 7919) % len(content)] ^= 0xFF
        with tempfile.TemporaryDirectory() as tmp:
            _load_or_store_error(_write({**pack_files, FILES[i % len(FILES)]: bytes(content)}, Path(tmp)))
    assert runinfo.rss_mib() - rss < 100


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10) | st.floats(allow_nan=True) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(["a", "b"]), field=st.sampled_from(["shape", "dtype", None]),
       value=JSON_VALUES)
def test_tensor_manifest_is_checked_exactly_against_the_header(key, field, value):
    """The manifest needs no schema check of its own: anything but the header's own shapes
    (ints, not 2.0 or true) and dtypes is a StoreError, never a crash or a pass."""
    from ttmoe_core.files import tensorfile

    header = {"a": ("float32", [2, 3]), "b": ("int64", [])}
    good = {"a": {"shape": [2, 3], "dtype": "float32"}, "b": {"shape": [], "dtype": "int64"}}
    tensorfile.check_manifest(header, good, "x")
    bad = json.loads(json.dumps(good))
    if field is None:
        bad[key] = value
    else:
        bad[key][field] = value
    if bad == good and all(type(d) is int for spec in bad.values() if isinstance(spec, dict)
                           for d in spec.get("shape", [])):
        tensorfile.check_manifest(header, bad, "x")
        return
    with pytest.raises(store.StoreError):
        tensorfile.check_manifest(header, bad, "x")
    for odd in ([2.0, 3], [True, 3], "2,3", [[2], 3]):
        with pytest.raises(store.StoreError):
            tensorfile.check_manifest(header, {**good, "a": {"shape": odd, "dtype": "float32"}}, "x")
    with pytest.raises(store.StoreError):
        tensorfile.check_manifest(header, [good], "x")
