"""safetensors files read with care: first the header (bounded in size, checked entry by entry and
against the JSON manifest), the tensor data only once everything about it is known to fit.

A header is ``{tensor name: (dtype name, shape)}``; shapes checked from it cost no tensor memory.
"""
from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .safefs import StoreError, open_regular

HEADER_LIMIT = 100_000_000       # bytes of JSON header (safetensors' own limit)
# the largest |value| a stored float may hold: far above what the engine's training produces
# (TT cores, heads, routers and pool statistics stay within ±1e3), far below float32's 3.4e38, so a
# product or a softmax of stored values cannot overflow to inf/NaN
MAX_ABS = 1e6
# safetensors dtype code -> (torch dtype name, bytes per element)
DTYPES = {"F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2),
          "BF16": ("bfloat16", 2), "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2),
          "I8": ("int8", 1), "U8": ("uint8", 1), "BOOL": ("bool", 1)}
ENTRY_KEYS = {"dtype", "shape", "data_offsets"}

Header = dict[str, tuple[str, list[int]]]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def manifest(tensors: Mapping[str, torch.Tensor]) -> dict:
    """{name: {"shape", "dtype"}} of ``tensors``: what a JSON config records of its weights file."""
    return {k: {"shape": list(v.shape), "dtype": dtype_name(v.dtype)} for k, v in sorted(tensors.items())}


def _corrupt(path: Path, what: str, reason: str) -> StoreError:
    return StoreError(f"{what}: {path} is not a readable safetensors file (truncated or corrupt: "
                      f"{reason})")


def read_header(path: str | Path, what: str) -> Header:
    """The tensors a safetensors file declares, checked for consistency with the file's size
    (a truncated or padded file is refused); no tensor data is read."""
    path = Path(path)
    fd = open_regular(path, what)
    try:
        size = os.fstat(fd).st_size
        prefix = _read(fd, 8)
        if len(prefix) < 8:
            raise _corrupt(path, what, f"{size} bytes, shorter than a header")
        (length,) = struct.unpack("<Q", prefix)
        if length > HEADER_LIMIT or 8 + length > size:
            raise _corrupt(path, what, f"a header of {length:,} bytes in a file of {size:,}")
        raw = _read(fd, length)
    except OSError as exc:
        raise StoreError(f"{what}: {path} is unreadable ({exc.strerror})") from None
    finally:
        os.close(fd)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _corrupt(path, what, "its header is not JSON") from None
    try:
        return _entries(header, size - 8 - length)
    except ValueError as exc:
        raise _corrupt(path, what, str(exc)) from None


def _read(fd: int, size: int) -> bytes:
    """Up to ``size`` bytes from the file position of ``fd`` (fewer only at the end)."""
    chunks, left = [], size
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _entries(header: object, data_bytes: int) -> Header:
    """Checked header entries; ValueError unless every tensor's byte range fits its dtype and
    shape and the ranges tile the data exactly."""
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict)
                                     and all(isinstance(v, str) for v in metadata.values())):
        raise ValueError("bad __metadata__")
    entries: Header = {}
    ranges = []
    for name, spec in header.items():
        if not isinstance(spec, dict) or set(spec) != ENTRY_KEYS or not isinstance(spec["dtype"], str) \
                or spec["dtype"] not in DTYPES:
            raise ValueError(f"bad entry for tensor {name[:80]!r}")
        shape, offsets = spec["shape"], spec["data_offsets"]
        if not (_ints(shape) and _ints(offsets) and len(offsets) == 2):
            raise ValueError(f"bad shape or offsets of tensor {name[:80]!r}")
        dtype, itemsize = DTYPES[spec["dtype"]]
        if offsets[1] - offsets[0] != math.prod(shape) * itemsize:
            raise ValueError(f"tensor {name[:80]!r} has {offsets[1] - offsets[0]} bytes for "
                             f"shape {shape} of {dtype}")
        entries[name] = (dtype, list(shape))
        ranges.append(offsets)
    end = 0
    for begin, stop in sorted(ranges):
        if begin != end:
            raise ValueError(f"tensor data overlap or leave a gap at byte {end}")
        end = stop
    if end != data_bytes:
        raise ValueError(f"the tensors hold {end:,} bytes, the file {data_bytes:,}")
    return entries


def _ints(values: object) -> bool:
    return isinstance(values, list) and all(type(v) is int and v >= 0 for v in values)


def check_manifest(header: Header, expected: Any, what: str) -> None:
    """The file declares the same tensors, shapes and dtypes as the config's manifest
    ``expected`` ({name: {"shape": [int, ...], "dtype": str}}). Any JSON value is checked exactly
    here (an int is an int, not 5.0 or true), so a manifest equal to the checked header needs
    no schema check of its own: for an expert's 236 tensors that check was most of the cost
    of opening it."""
    if not isinstance(expected, Mapping):
        raise StoreError(f"{what}: the config's tensor manifest is not an object")
    missing, extra = sorted(set(expected) - set(header)), sorted(set(header) - set(expected))
    if missing:
        raise StoreError(f"{what}: tensors missing from the weights file: {missing[:5]}"
                         f"{' …' if len(missing) > 5 else ''}")
    if extra:
        raise StoreError(f"{what}: unexpected tensors in the weights file: {extra[:5]}")
    for key, spec in expected.items():
        dtype, shape = header[key]
        if not isinstance(spec, Mapping) or "shape" not in spec or "dtype" not in spec:
            raise StoreError(f"{what}: the config's entry for tensor {key} is not "
                             '{"shape": [...], "dtype": ...}')
        given = spec["shape"]
        if (not isinstance(given, list) or len(given) != len(shape)
                or any(type(d) is not int or d != s for d, s in zip(given, shape))):
            raise StoreError(f"{what}: tensor {key} has shape {shape}, the config says "
                             f"{str(given)[:80]}")
        if type(spec["dtype"]) is not str or spec["dtype"] != dtype:
            raise StoreError(f"{what}: tensor {key} has dtype {dtype}, the config says "
                             f"{str(spec['dtype'])[:40]}")


def load(path: str | Path, header: Header, what: str,
         empty_ok: Collection[str] = (), max_abs: float | None = MAX_ABS) -> dict[str, torch.Tensor]:
    """The tensors of a file whose ``header`` was checked: they must still match it (the file may
    have changed since), have no dimension 0 (the maths divides by sizes; ``empty_ok`` names those
    that may be empty) and hold only finite values within ±``max_abs`` (None: any finite value, for
    optimizer moments)."""
    for key, (_, shape) in header.items():
        if 0 in shape and key not in empty_ok:
            raise StoreError(f"{what}: tensor {key} has shape {shape}: every dimension must be at "
                             "least 1")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise _corrupt(Path(path), what, str(exc)) from None
    if manifest(tensors) != {k: {"shape": s, "dtype": d} for k, (d, s) in sorted(header.items())}:
        raise StoreError(f"{what}: {path} changed while it was read")
    for key, tensor in tensors.items():
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        if not bool(torch.isfinite(tensor).all()):
            raise StoreError(f"{what}: tensor {key} holds NaN or infinite values")
        peak = float(tensor.abs().max())
        if max_abs is not None and peak > max_abs:
            raise StoreError(f"{what}: tensor {key} holds a value of magnitude {peak:.3g}, more than "
                             f"the {max_abs:.0e} a trained file can hold (tampered or diverged)")
    return tensors
