"""Packs on disk: the manifest, building a pack, changing one in one step (an expert appended, a
router saved, any ``update_pack``), and loading one whole (``layout`` says what a pack holds).

Every change works on a hard-linked copy of the pack swapped into place: a reader finds the old
or the new pack, and files a change does not touch keep their bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..base.backbone import BackboneInfo
from ..experts import Expert
from ..files import safefs, tensorfile
from ..files.locks import locked
from ..files.names import NAME_RULE, is_valid_name
from ..files.safefs import StoreError, atomic_dir, write_json
from ..routing.registry import build
from .experts import check_expert_name, load_expert, write_expert
from .layout import (
    PACK_FILE,
    PACK_FORMAT,
    ROUTER_CONFIG_FILE,
    ROUTER_WEIGHTS_FILE,
    check_base,
    check_replaceable,
    expert_folder,
    pack_manifest,
    read_json,
)
from .publish import write_pack_card
from .routers import read_router, write_router_files, write_router_into


@dataclass
class Pack:
    path: Path
    experts: list[Expert]
    base_model: dict
    router_config: object | None          # router.RouterConfig
    router_state: dict[str, torch.Tensor] | None
    router_metrics: dict
    manifest: dict
    max_length: int = 128

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.experts]

    def build_router(self):
        """The trained router, rebuilt from its config and tensors (eval mode)."""
        router = build(self.router_config, len(self.experts),
                       self.base_model["hidden_size"], self.base_model["num_layers"])
        router.load_state_dict(self.router_state)
        return router.eval()


def read_pack_manifest(path: Path, expected_fingerprint: str | None = None) -> dict:
    """pack.json, schema-checked, its expert names valid and distinct; with
    ``expected_fingerprint``, made on that base model (the loaded one)."""
    what = f"pack {path.name!r}"
    data = read_json(path / PACK_FILE, what, "pack", PACK_FORMAT)
    for name in data["experts"]:
        if not is_valid_name(name):
            raise StoreError(f"{what}: {PACK_FILE} lists the expert {name[:100]!r}, which is not a "
                             f"valid name ({NAME_RULE})")
    if len(set(data["experts"])) != len(data["experts"]):
        raise StoreError(f"{what}: {PACK_FILE} lists an expert twice")
    if expected_fingerprint is not None:
        base = data["base_model"]
        check_base(expected_fingerprint, base["fingerprint"],
                   f"{what} (base model {base.get('name')!r})")
    return data


def _list_expert(folder: Path, expert: Expert, names: list[str]) -> None:
    """Write ``expert`` into the unpublished pack ``folder`` that lists ``names`` and list it."""
    target = expert_folder(folder, expert.name)
    safefs.remove(target)
    write_expert(expert, target)
    write_json(folder / PACK_FILE, pack_manifest(folder, names + [expert.name], expert.base,
                                                 {"router": None}))


def _check_pack_target(pack_dir: Path) -> dict | None:
    """The manifest of the pack at ``pack_dir`` (None if absent or empty); StoreError when it is
    something else than a pack."""
    safefs.recover(pack_dir.parent, pack_dir.name)
    if pack_dir.is_symlink():
        raise StoreError(f"{pack_dir} is a symbolic link: a pack is changed only in a real folder")
    if os.path.lexists(pack_dir / PACK_FILE):
        return read_pack_manifest(pack_dir)
    if os.path.lexists(pack_dir) and (not pack_dir.is_dir() or any(pack_dir.iterdir())):
        raise StoreError(f"{pack_dir} is not a pack (no {PACK_FILE}): choose another folder")
    return None


def append_expert(pack_dir: str | Path, expert: Expert) -> Path:
    """Write one expert into ``<pack>/experts/<name>`` and list it (the files only: the router is
    not grown, ``moe.add_expert`` does that); other experts' files keep their bytes. The pack
    changes in one step (a hard-linked copy swapped into place)."""
    pack_dir = Path(pack_dir)
    check_expert_name(expert.name, "a folder of a pack")
    with locked(pack_dir):
        manifest = _check_pack_target(pack_dir)
        names = manifest["experts"] if manifest else []
        if expert.name in names:
            raise StoreError(f"pack {pack_dir} already has an expert named {expert.name!r}")
        if names:
            check_base(manifest["base_model"]["fingerprint"], expert.base.fingerprint,
                       f"expert {expert.name!r}", reference="the pack's experts")
        with atomic_dir(pack_dir, template=pack_dir) as tmp:
            _list_expert(tmp, expert, names)
            write_pack_card(tmp, pack_dir.resolve().name)
    return pack_dir


def build_pack(pack_dir: str | Path, experts: Sequence[Expert | str | Path], *, router=None,
               router_metrics: Mapping | None = None, extra: Mapping | None = None,
               replace: bool = False) -> list[Expert]:
    """Write a new pack of ``experts`` (Expert objects or expert folders, validated on reading)
    and, given one, its ``router`` (``save_router`` with ``router_metrics`` and ``extra``).

    The pack is built in a temporary sibling folder published in one step: it appears whole or
    not at all. StoreError when ``pack_dir`` exists (with ``replace``: unless it is a valid pack
    or an empty folder), when there are no experts, two share a name, a name is not a valid
    folder name, or they were trained on different base models. Returns the experts.
    """
    pack_dir = Path(pack_dir)
    with locked(pack_dir):
        return _build_pack(pack_dir, experts, router, router_metrics, extra, replace)


def _build_pack(pack_dir: Path, experts: Sequence[Expert | str | Path], router,
                router_metrics: Mapping | None, extra: Mapping | None, replace: bool) -> list[Expert]:
    if os.path.lexists(pack_dir):
        if not replace:
            raise StoreError(f"{pack_dir} already exists: choose another pack name")
        check_replaceable(pack_dir, "pack", load_pack)
    loaded = [e if isinstance(e, Expert) else load_expert(e) for e in experts]
    if not loaded:
        raise StoreError("a pack needs at least one expert")
    names = [expert.name for expert in loaded]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise StoreError(f"two chosen experts are both named {clashes[0]!r}: rename one on "
                         "the Experts page first")
    for expert in loaded:
        check_expert_name(expert.name, "a folder of a pack")
        check_base(loaded[0].base.fingerprint, expert.base.fingerprint, f"expert {expert.name!r}",
                   reference="the pack's experts")
    with atomic_dir(pack_dir) as building:
        for i, expert in enumerate(loaded):
            _list_expert(building, expert, names[:i])
        if router is not None:
            write_router_files(building, router, names, router_metrics or {}, loaded[0].base, extra)
        elif extra:
            write_json(building / PACK_FILE, {**read_json(building / PACK_FILE, "pack"), **extra})
        write_pack_card(building, pack_dir.resolve().name)
    return loaded


def update_pack(pack_dir: str | Path, write: Callable[[Path, list[str]], None]) -> None:
    """Change the pack at ``pack_dir`` in one step: ``write(folder, expert names)`` works on a
    hard-linked copy (replace files with ``write_json`` / new files, never write through a
    link) that is swapped into place; untouched files keep their bytes."""
    pack_dir = Path(pack_dir)
    with locked(pack_dir):          # read-modify-write: no other writer in between
        if not os.path.lexists(pack_dir / PACK_FILE):
            raise StoreError(f"{pack_dir} is not a pack (no {PACK_FILE})")
        names = _check_pack_target(pack_dir)["experts"]
        with atomic_dir(pack_dir, template=pack_dir) as tmp:
            write(tmp, names)
            write_pack_card(tmp, pack_dir.resolve().name)


def write_expert_into(folder: Path, expert: Expert, names: list[str]) -> None:
    """``expert`` written into the unpublished pack ``folder`` (``update_pack``) and listed
    after ``names``."""
    check_expert_name(expert.name, "a folder of a pack")
    if expert.name in names:
        raise StoreError(f"pack {folder.name!r} already has an expert named {expert.name!r}")
    _list_expert(folder, expert, names)


def save_router(pack_dir: str | Path, router, names: list[str], metrics: Mapping,
                base: BackboneInfo, extra: Mapping | None = None,
                companions: Callable[[Path], None] | None = None) -> None:
    """Write (or replace) the pack's router, for its experts ``names``; the pack changes in one
    step (a hard-linked copy swapped into place) and expert files keep their bytes. The old
    router's companions (out-of-pool detector, replay rows) are removed; ``companions(folder)``
    may write new ones in the same step."""
    pack_dir = Path(pack_dir)
    with locked(pack_dir):
        if not os.path.lexists(pack_dir / PACK_FILE):
            raise StoreError(f"{pack_dir} is not a pack (no {PACK_FILE})")
        listed = _check_pack_target(pack_dir)["experts"]
        if list(names) != listed:
            raise StoreError(f"pack {pack_dir.name!r} lists experts {listed[:20]}, the router was "
                             f"trained for {list(names)[:20]}: the pack changed meanwhile; "
                             "train the router again")
        for name in names:
            if not is_valid_name(name) or not expert_folder(pack_dir, name).is_dir():
                raise StoreError(f"pack {pack_dir.name!r} has no expert {str(name)[:100]!r} for the router")
        with atomic_dir(pack_dir, template=pack_dir) as tmp:
            write_router_into(tmp, router, names, metrics, base, extra)
            if companions is not None:
                companions(tmp)
            write_pack_card(tmp, pack_dir.resolve().name)


def load_pack(path: str | Path, expected_fingerprint: str | None = None) -> Pack:
    """Read and validate a pack: names are folder names inside it, every part (experts, router)
    was made on the manifest's base model (and that on ``expected_fingerprint``'s), the router
    fits the experts; JSON and headers before tensor data."""
    path = Path(path)
    if not path.is_dir():
        raise StoreError(f"pack folder {path} does not exist")
    data = read_pack_manifest(path, expected_fingerprint)
    base = data["base_model"]
    if not data["experts"]:
        raise StoreError(f"pack {path.name!r} lists no experts")
    folders = [expert_folder(path, name) for name in data["experts"]]
    router = read_router(path, data) if os.path.lexists(path / ROUTER_CONFIG_FILE) else None
    experts = []
    for name, folder in zip(data["experts"], folders):
        expert = load_expert(folder, base["fingerprint"], reference="the pack's manifest")
        what = f"pack {path.name!r}: expert {name!r}"
        if expert.name != name:
            raise StoreError(f"{what}: its folder holds the expert {expert.name!r}")
        if (expert.base.hidden_size, expert.base.num_layers) != (base["hidden_size"], base["num_layers"]):
            raise StoreError(f"{what}: its base model has hidden size {expert.base.hidden_size} and "
                             f"{expert.base.num_layers} layers, {PACK_FILE} says {base['hidden_size']} "
                             f"and {base['num_layers']}")
        experts.append(expert)
    router_config, router_state, router_metrics = None, None, {}
    if router is not None:
        router_config, header, router_metrics = router
        router_state = tensorfile.load(path / ROUTER_WEIGHTS_FILE, header,
                                       f"router of pack {path.name!r}")
    return Pack(path=path, experts=experts, base_model=base, router_config=router_config,
                router_state=router_state, router_metrics=router_metrics, manifest=data,
                max_length=router_config.max_length if router_config else 128)
