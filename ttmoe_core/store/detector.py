"""A pack's out-of-pool detector and routing replay rows on disk, read with the store's care.

    <pack>/pool_config.json           components, weights, z-scores, threshold, temperature, the
                                      feature layer, calibration figures, tensor manifest
    <pack>/pool.safetensors           PoolScorer statistics (center, scale, [basis], means,
                                      precision, kNN bank + labels) and NgramLM tables
    <pack>/router_replay.json         what the replay rows are (source of φ, experts)
    <pack>/router_replay.safetensors  replay rows of the old tasks (and calibration rows) as
                                      growth needs them: base logits, φ, n-grams (CSR)

Reading is as for experts and routers (``store``): the JSON against its schema, the weights
file's header against the JSON and against the shapes the JSON implies, then the data (finite
values), then value checks (labels in range, CSR offsets monotone): every problem is one
``StoreError``. Large statistics are stored in float16 (half the bytes; measured in
ROUTING_STUDY.md) and widened on reading. Writing happens inside an unpublished pack folder
(``packs.update_pack``), so the pack changes in one step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from ..files import tensorfile
from ..files.safefs import StoreError, write_json
from ..files.tensorfile import manifest
from ..routing import NgramLM, PoolModel, PoolScorer
from ..routing.ngram import BUCKETS, MAX_NGRAMS
from .layout import (
    FORMAT_VERSION,
    PACK_FILE,
    POOL_CONFIG_FILE,
    POOL_WEIGHTS_FILE,
    REPLAY_CONFIG_FILE,
    REPLAY_WEIGHTS_FILE,
    read_json,
    read_pack_part,
    save_tensors,
)

POOL_FORMAT = "ttmoe-pool"
REPLAY_FORMAT = "ttmoe-replay"
SCALE_FLOOR = 1e-6              # the smallest standardisation scale ``PoolScorer.fit`` makes
HALF = ("precision", "bank", "basis", "lm_tables")      # stored as float16
MAX_ROWS = 1 << 22


# ----------------------------------------------------------------------------- out-of-pool


def write_pool(folder: Path, model: PoolModel, names: list[str], base: Mapping) -> None:
    """``model``'s two files into the unpublished pack ``folder``."""
    sc = model.scorer
    tensors = {"center": sc.center.float(), "scale": sc.scale.float(), "means": sc.means.float(),
               "precision": sc.precision, "bank": sc.bank, "bank_labels": sc.bank_labels.long(),
               "lm_tables": model.lm.tables}
    if sc.basis is not None:
        tensors["basis"] = sc.basis
    tensors = {k: (v.half() if k in HALF else v).detach().cpu().contiguous() for k, v in tensors.items()}
    config = {"format": POOL_FORMAT, "format_version": FORMAT_VERSION, "experts": list(names),
              "base_model": dict(base), "layer": int(model.layer),
              "components": sorted(sc.z), "weights": dict(sc.weights),
              "z": {k: [float(m), float(s)] for k, (m, s) in sc.z.items()},
              "threshold": float(sc.threshold), "temperature": float(sc.temperature), "k": int(sc.k),
              "lm_alpha": float(model.lm.alpha), "metrics": dict(model.meta),
              "tensors": manifest(tensors)}
    save_tensors(tensors, folder / POOL_WEIGHTS_FILE)
    write_json(folder / POOL_CONFIG_FILE, config)
    pack = read_json(folder / PACK_FILE, "pack")
    pack["metrics"] = {**pack.get("metrics", {}), "pool": dict(model.meta)}
    pack["pool"] = {"threshold": config["threshold"], "components": config["components"],
                    "layer": config["layer"]}
    write_json(folder / PACK_FILE, pack)


def _pool_shapes(data: Mapping, header: tensorfile.Header, hidden: int, what: str) -> dict:
    """{tensor: shape} the pool's JSON implies (free sizes K, M, buckets read from the header)."""
    experts = len(data["experts"])
    dense = (data["layer"] + 1) * 3 * hidden

    def dim(name: str, axis: int) -> int:
        shape = header.get(name, (None, []))[1]
        if len(shape) <= axis:
            raise StoreError(f"{what}: tensor {name} is missing or has too few dimensions")
        return shape[axis]

    width = dim("basis", 1) if "basis" in header else dense
    if not 1 <= width <= dense:
        raise StoreError(f"{what}: basis keeps {width} directions of {dense}")
    shapes = {"center": [dense], "scale": [dense], "means": [experts, width],
              "precision": [width, width], "bank": [dim("bank", 0), width],
              "bank_labels": [dim("bank", 0)], "lm_tables": [2, dim("lm_tables", 1), experts]}
    if "basis" in header:
        shapes["basis"] = [dense, width]
    return shapes


def _check_tensors(header: tensorfile.Header, expected: Mapping[str, list[int]],
                   ints: set[str], what: str) -> None:
    got = {k: shape for k, (_, shape) in header.items()}
    if got != dict(expected):
        wrong = sorted(set(got) ^ set(expected)) or sorted(k for k in got if got[k] != expected[k])
        raise StoreError(f"{what}: its tensors do not fit its config (first misfit: {wrong[0]}: "
                         f"file {got.get(wrong[0])}, config {expected.get(wrong[0])})")
    for key, (dtype, _) in header.items():
        integer = dtype in ("int64", "int32")
        if integer != (key in ints) or dtype == "bool":
            raise StoreError(f"{what}: tensor {key} has dtype {dtype}")


def read_pool(path: str | Path, pack: Mapping) -> PoolModel | None:
    """The pack's out-of-pool detector (None when it has none); StoreError for any bad file."""
    path = Path(path)
    if not os.path.lexists(path / POOL_CONFIG_FILE):
        return None
    what = f"out-of-pool detector of pack {path.name!r}"
    data, header = read_pack_part(path, POOL_CONFIG_FILE, POOL_WEIGHTS_FILE, "pool", POOL_FORMAT, pack, what)
    _check_tensors(header, _pool_shapes(data, header, pack["base_model"]["hidden_size"], what),
                   {"bank_labels"}, what)
    if data["layer"] > pack["base_model"]["num_layers"]:
        raise StoreError(f"{what}: layer {data['layer']} beyond the base model's {pack['base_model']['num_layers']}")
    missing = sorted(set(data["weights"]) - set(data["z"])) + sorted(set(data["z"]) ^ set(data["components"]))
    if missing:
        raise StoreError(f"{what}: component {missing[0]!r} is weighted or listed but not calibrated")
    t = tensorfile.load(path / POOL_WEIGHTS_FILE, header, what)
    labels = t["bank_labels"]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(data["experts"])):
        raise StoreError(f"{what}: bank_labels outside 0..{len(data['experts']) - 1}")
    if bool((t["scale"] < SCALE_FLOOR).any()):
        raise StoreError(f"{what}: scale must be at least {SCALE_FLOOR:g} (fitting clamps it there)")
    scorer = PoolScorer(
        t["center"].double(), t["scale"].double(), t["means"].double(), t["precision"].double(),
        t["bank"].float(), labels, t["basis"].double() if "basis" in t else None, k=data["k"],
        temperature=data["temperature"], z={k: tuple(v) for k, v in data["z"].items()},
        weights=dict(data["weights"]), threshold=data["threshold"])
    lm = NgramLM(t["lm_tables"].float(), alpha=data["lm_alpha"])
    return PoolModel(scorer, lm, data["layer"], dict(data.get("metrics", {})))


# ----------------------------------------------------------------------------- replay rows


def _csr(ids: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded n-grams [R, L] (weight 0 = padding) -> (ptr [R+1] int64, ids [nnz] int32, w [nnz])."""
    mask = weights != 0
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), mask.sum(1).cumsum(0)])
    return ptr, ids[mask].int(), weights[mask]


def _padded(ptr: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of ``_csr``: ids [R, L] long, weights [R, L] float32."""
    counts = ptr[1:] - ptr[:-1]
    rows = len(counts)
    width = max(1, int(counts.max())) if rows else 1
    out_ids = torch.zeros(rows, width, dtype=torch.long)
    out_w = torch.zeros(rows, width)
    row = torch.repeat_interleave(torch.arange(rows), counts)
    col = torch.arange(len(ids)) - ptr[:-1][row]
    out_ids[row, col] = ids.long()
    out_w[row, col] = weights.float()
    return out_ids, out_w


def write_replay(folder: Path, sets: Mapping[str, dict[str, torch.Tensor]], names: list[str],
                 base: Mapping, source: str) -> None:
    """Replay rows into the unpublished pack ``folder``. ``sets``: "replay" (with "labels") and
    optionally "calibration", each ``growth.cached_outputs`` (+ labels) of its rows."""
    tensors = {}
    for prefix, feats in sets.items():
        ptr, ids, weights = _csr(feats["ngram_ids"], feats["ngram_w"])
        part = {"base_logits": feats["base_logits"].float(), "phi": feats[f"phi_{source}"].half(),
                "ngram_ptr": ptr, "ngram_ids": ids, "ngram_w": weights.half()}
        if "labels" in feats:
            part["labels"] = feats["labels"].long()
        tensors |= {f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in part.items()}
    config = {"format": REPLAY_FORMAT, "format_version": FORMAT_VERSION, "experts": list(names),
              "base_model": dict(base), "source": source, "tensors": manifest(tensors)}
    save_tensors(tensors, folder / REPLAY_WEIGHTS_FILE)
    write_json(folder / REPLAY_CONFIG_FILE, config)


def read_replay(path: str | Path, pack: Mapping, base_experts: int,
                buckets: int = BUCKETS) -> tuple[str, dict] | None:
    """(source, {"replay": feats with "labels", "calibration": feats}) of the pack's replay rows
    (None when it has none); feats as ``growth.cached_outputs``. ``base_experts``: the router's
    frozen outputs (its base logits' width); ``buckets``: its n-gram buckets per block (n-gram
    ids must be below 4·buckets, its table's rows). StoreError for any bad file."""
    path = Path(path)
    if not os.path.lexists(path / REPLAY_CONFIG_FILE):
        return None
    what = f"replay rows of pack {path.name!r}"
    data, header = read_pack_part(path, REPLAY_CONFIG_FILE, REPLAY_WEIGHTS_FILE, "replay", REPLAY_FORMAT,
                           pack, what)
    shapes = {k: s for k, (_, s) in header.items()}
    prefixes = sorted({k.partition(".")[0] for k in shapes})
    if "replay" not in prefixes or not set(prefixes) <= {"replay", "calibration"}:
        raise StoreError(f"{what}: expected replay (and calibration) rows, found {prefixes}")
    def dim(name: str, axis: int) -> int:
        shape = shapes.get(name, [])
        return shape[axis] if len(shape) > axis else 0

    expected = {}
    for prefix in prefixes:
        rows, width = dim(f"{prefix}.base_logits", 0), dim(f"{prefix}.phi", 1)
        nnz = dim(f"{prefix}.ngram_ids", 0)
        if rows > MAX_ROWS or width > 1 << 20:
            raise StoreError(f"{what}: {rows} rows of width {width} is more than a replay holds")
        expected |= {f"{prefix}.base_logits": [rows, base_experts], f"{prefix}.phi": [rows, width],
                     f"{prefix}.ngram_ptr": [rows + 1], f"{prefix}.ngram_ids": [nnz],
                     f"{prefix}.ngram_w": [nnz]}
        if prefix == "replay":
            expected["replay.labels"] = [rows]
    ints = {k for k in expected if k.endswith(("labels", "ngram_ptr", "ngram_ids"))}
    _check_tensors(header, expected, ints, what)
    t = tensorfile.load(path / REPLAY_WEIGHTS_FILE, header, what)
    out = {}
    for prefix in prefixes:
        ptr, ids = t[f"{prefix}.ngram_ptr"], t[f"{prefix}.ngram_ids"]
        steps = ptr[1:] - ptr[:-1]
        if int(ptr[0]) != 0 or int(ptr[-1]) != len(ids) or bool((steps < 0).any()) \
                or (len(steps) and int(steps.max()) > MAX_NGRAMS):
            raise StoreError(f"{what}: {prefix}.ngram_ptr is not a valid row index")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= 4 * buckets):
            raise StoreError(f"{what}: {prefix}.ngram_ids outside 0..{4 * buckets - 1}")
        ngram_ids, ngram_w = _padded(ptr, ids, t[f"{prefix}.ngram_w"])
        out[prefix] = {"base_logits": t[f"{prefix}.base_logits"].float(),
                       f"phi_{data['source']}": t[f"{prefix}.phi"].float(),
                       "ngram_ids": ngram_ids, "ngram_w": ngram_w}
    labels = t["replay.labels"]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(pack["experts"])):
        raise StoreError(f"{what}: replay labels outside 0..{len(pack['experts']) - 1}")
    out["replay"]["labels"] = labels
    return data["source"], out
