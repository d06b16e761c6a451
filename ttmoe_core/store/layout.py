"""What the store's folders hold: file names, formats and versions, bounded JSON reading, where an
expert sits in a pack, the one base-model check, recovery and replace checks.

An expert folder (PEFT's file names; a LoRA expert's config also holds PEFT's keys):

    <expert>/adapter_config.json        method, task, labels, TT shapes/ranks, α, targets,
                                        base model + fingerprint + hub id, training settings,
                                        metrics, and a manifest of every tensor (shape, dtype)
    <expert>/adapter_model.safetensors  TT cores (or LoRA A/B) + the task head
    <expert>/README.md                  its model card (``publish``)

A pack adds:

    <pack>/pack.json                 experts by name, base model + fingerprint, router variant
                                     and layer, metrics, date
    <pack>/experts/<name>/           one expert folder each (as above)
    <pack>/router_config.json        RouterConfig, expert order, metrics, tensor manifest
    <pack>/router.safetensors
    <pack>/pool_*, router_replay.*   the router's companions (``detector``)
    <pack>/README.md                 its model card (``publish``)

Writes go to a temporary sibling folder published in one rename or swap (``safefs``): a reader
finds the old or the new folder, never half of one; ``recover`` cleans what a killed process left.
Reading checks everything before any tensor memory is allocated: each JSON file against its
schema (``schema``), then the weights file's header against the JSON (``tensorfile``, ``shapes``),
and only then the tensor data. Names are never paths (``names``); nothing inside an expert or a
pack may be a symbolic link. Every problem is a ``StoreError`` with a message a person can act
on; nothing is unpickled or executed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..base.backbone import BackboneInfo, check_fingerprint
from ..files import safefs, schema, tensorfile
from ..files.names import NameRuleError, inside
from ..files.safefs import StoreError
from .filenames import (
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    JSON_LIMIT,
    PACK_FILE,
    PACK_FORMAT,
    POOL_CONFIG_FILE,
    POOL_WEIGHTS_FILE,
    REPLAY_CONFIG_FILE,
    REPLAY_WEIGHTS_FILE,
    ROUTER_COMPANIONS,
    ROUTER_CONFIG_FILE,
    ROUTER_FORMAT,
    ROUTER_WEIGHTS_FILE,
    WEIGHTS_FILE,
)
from .publish import publishable


def read_json(path: Path, what: str, kind: str | None = None, fmt: str | None = None,
              check: bool = True) -> dict:
    """A JSON object read from the regular file ``path`` (bounded size); with ``fmt``, its
    ``format`` tag must be that; with ``kind``, it must follow that ``schema`` (unless ``check``
    is False: the caller checks it, e.g. part by part)."""
    raw = safefs.read_bounded(path, JSON_LIMIT, what)
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise StoreError(f"{what}: {path} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise StoreError(f"{what}: {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (ValueError, RecursionError):
        raise StoreError(f"{what}: {path} is not valid JSON (nested too deeply or a number too "
                         "long)") from None
    if not isinstance(data, dict):
        raise StoreError(f"{what}: {path} must hold a JSON object")
    if fmt is not None and data.get("format") != fmt:
        description = {"expert": "expert config", "pack": "pack manifest"}.get(kind, f"{kind} config")
        raise StoreError(f"{what}: {path.name} is not a TT-LoRA MoE {description} "
                         f"(format {data.get('format')!r:.80}, expected {fmt!r})")
    if kind is not None and check:
        try:
            schema.validate(data, kind, path.name)
        except schema.SchemaError as exc:
            raise schema.SchemaError(f"{what}: {exc}") from None
    return data


def save_tensors(tensors: Mapping[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    """A new safetensors file at ``path``: a hard link there (a pack being changed is a linked
    copy, ``safefs.link_tree``) is removed first, never written through."""
    safefs.remove(path)
    save_file(dict(tensors), str(path), metadata=metadata)


def check_base(expected: str, found: str, what: str, reference: str = "the loaded base model") -> None:
    """The store's one base-model check: ``what``, made on the base model whose fingerprint is
    ``found``, must fit the one whose fingerprint is ``expected`` (``reference`` names it);
    StoreError otherwise. Every open path (expert, pack, a pack's router and detector) and every
    write that puts experts together calls it."""
    check_fingerprint(expected, found, what, StoreError, reference=reference)


def expert_folder(pack: Path, name: str) -> Path:
    """``<pack>/experts/<name>``: inside the pack, no symbolic link on the way (not necessarily there)."""
    folder = pack / "experts" / name
    for step in (folder.parent, folder):
        if step.is_symlink():
            raise StoreError(f"pack {pack.name!r}: {step} is a symbolic link: a pack holds only "
                             "real folders")
    try:
        inside(pack, "experts", name)
    except NameRuleError as exc:
        raise StoreError(f"pack {pack.name!r}: {exc}") from None
    return folder


def pack_manifest(folder: Path, names: list[str], base: BackboneInfo, extra: Mapping | None) -> dict:
    """The new content of ``folder``'s pack.json: its experts ``names`` on ``base``, ``extra``
    entries (no absolute paths), and what it held before."""
    previous = read_json(folder / PACK_FILE, "pack") if (folder / PACK_FILE).exists() else {}
    return {**previous, "format": PACK_FORMAT, "format_version": FORMAT_VERSION,
            "experts": names, "base_model": base.to_dict(), **publishable(extra or {})}


def read_pack_part(path: Path, config_file: str, weights_file: str, kind: str, fmt: str,
                   pack: Mapping, what: str, made: str = "made",
                   remedy: str = "") -> tuple[dict, tensorfile.Header]:
    """(JSON, checked header) of one of a pack's parts made for its experts (the router, the
    out-of-pool detector, the replay rows): made for the pack's experts, in order, on its base
    model; the weights file's header agrees with the JSON's tensor manifest. ``made`` and
    ``remedy`` word the message for other experts ("trained", ": retrain the router")."""
    data = read_json(path / config_file, what, kind, fmt)
    if data["experts"] != pack["experts"]:
        raise StoreError(f"{what} was {made} for experts {data['experts'][:20]}, the pack lists "
                         f"{pack['experts'][:20]}{remedy}")
    check_base(pack["base_model"]["fingerprint"], data["base_model"]["fingerprint"], what,
               reference="the pack's manifest")
    header = tensorfile.read_header(path / weights_file, what)
    tensorfile.check_manifest(header, data["tensors"], what)
    return data, header


def recover(folder: str | Path) -> list[str]:
    """Finish or undo what killed saves left in ``folder`` and in each pack folder in it (and its
    ``experts/``): temporary folders removed, interrupted replacements completed. Call it on
    start before writing; never raises; returns what was done."""
    folder = Path(folder)
    done = safefs.recover(folder)
    try:
        packs = [p for p in folder.iterdir() if not p.name.startswith(".") and not p.is_symlink()
                 and (p / PACK_FILE).is_file()]
    except OSError:
        return done
    for pack in packs:
        done += safefs.recover(pack) + safefs.recover(pack / "experts")
    return done


def check_replaceable(path: Path, kind: str, load: Callable[[Path], object]) -> None:
    """``path`` may be written over: it is absent, an empty folder, or a valid ``kind`` (expert
    or pack, checked by ``load``); else StoreError."""
    safefs.recover(path.parent, path.name)
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        raise StoreError(f"{path} is a {'symbolic link' if path.is_symlink() else 'file'}, not "
                         f"a folder: it cannot be replaced by a {kind}")
    if not any(path.iterdir()):
        return
    try:
        load(path)
    except StoreError as exc:
        raise StoreError(f"{path} is not a valid {kind}, so it is not replaced ({exc})") from None
