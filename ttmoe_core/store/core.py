"""Experts, routers and packs on disk: safetensors + JSON, atomic writes, validation.

An expert folder follows PEFT's layout:

    <expert>/adapter_config.json        method, task, labels, TT shapes/ranks, α, targets,
                                        base model + fingerprint, training settings, metrics,
                                        and a manifest of every tensor (shape, dtype)
    <expert>/adapter_model.safetensors  TT cores (or LoRA A/B) + the task head

Writes go to a temporary sibling folder published in one rename or swap (``safefs``): a reader
finds the old or the new folder, never half of one; ``recover`` cleans what a killed process left.
Reading checks everything before any tensor memory is allocated: each JSON file against its
schema (``schema``), then the weights file's header against the JSON (``tensorfile``, ``shapes``),
and only then the tensor data. Names are never paths (``names``); nothing inside an expert or a
pack may be a symbolic link. Every problem is a ``StoreError`` with a message a person can act
on; nothing is unpickled or executed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from .. import tt
from ..base.backbone import BackboneInfo, check_fingerprint
from ..experts import ConfigError, Expert, ExpertConfig
from ..files import safefs, schema, tensorfile
from ..files.names import NAME_RULE, NameRuleError, check_name, inside, is_valid_name
from ..files.safefs import StoreError, atomic_dir, write_json
from ..files.tensorfile import manifest
from . import shapes

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
FORMAT = "ttmoe-expert"
FORMAT_VERSION = 1
JSON_LIMIT = 64 << 20                  # bytes: the largest JSON file read


def read_json(path: Path, what: str, kind: str | None = None, fmt: str | None = None) -> dict:
    """A JSON object read from the regular file ``path`` (bounded size); with ``fmt``, its
    ``format`` tag must be that; with ``kind``, it must follow that ``schema``."""
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
    if kind is not None:
        try:
            schema.validate(data, kind, path.name)
        except schema.SchemaError as exc:
            raise schema.SchemaError(f"{what}: {exc}") from None
    return data


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


def expert_config_dict(expert: Expert) -> dict:
    cfg = expert.config
    tt_info = None
    if cfg.method == "tt-lora":
        tt_info = {target: {"in_factors": list(layout["in_factors"]),
                            "out_factors": list(layout["out_factors"]),
                            "core_shapes": [list(s) for s in tt.core_shapes(
                                layout["in_factors"], layout["out_factors"], cfg.rank)]}
                   for target, layout in expert.tt_layout.items()}
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "name": expert.name, "method": cfg.method, "task": cfg.task,
        "label_names": list(expert.label_names),
        "rank": cfg.rank, "alpha": cfg.alpha, "targets": cfg.targets, "tt": tt_info,
        "base_model": expert.base.to_dict(),
        "training": cfg.to_dict(),
        "metrics": expert.metrics, "history": expert.history, "data": expert.data,
        "created": expert.created,
        "trainable_params": expert.trainable_params(),
        "tensors": manifest(expert.tensors),
    }


def _check_expert_name(name: object, folder: str = "a folder") -> str:
    """``name`` when it can name an expert's folder; else StoreError (a name is never a path)."""
    if not is_valid_name(name):
        raise StoreError(f"expert name {str(name)[:100]!r} cannot name {folder} ({NAME_RULE})")
    return name


def _save_tensors(tensors: Mapping[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    """A new safetensors file at ``path``: a hard link there (a pack being changed is a linked
    copy, ``safefs.link_tree``) is removed first, never written through."""
    safefs.remove(path)
    save_file(dict(tensors), str(path), metadata=metadata)


save_tensors = _save_tensors


def _write_expert(expert: Expert, folder: Path) -> None:
    """The two files of ``expert`` into the new (unpublished) folder ``folder``."""
    config = expert_config_dict(expert)
    folder.mkdir(parents=True, exist_ok=True)
    _save_tensors({k: v.contiguous() for k, v in expert.tensors.items()}, folder / WEIGHTS_FILE,
                  metadata={"format": FORMAT, "name": expert.name})
    write_json(folder / CONFIG_FILE, config)


def save_expert(expert: Expert, path: str | Path) -> Path:
    """Write an expert folder atomically; returns its path. An existing ``path`` is replaced only
    when it is an empty folder or a valid expert."""
    path = Path(path)
    _check_expert_name(expert.name)
    check_replaceable(path, "expert", load_expert)
    with atomic_dir(path) as tmp:
        _write_expert(expert, tmp)
    return path


@dataclass(frozen=True)
class OpenedExpert:
    """An expert folder read and checked up to its tensor data: ``expert`` has no tensors yet;
    ``header`` is its weights file's checked header (``tensorfile.load`` reads the data)."""
    expert: Expert
    weights: Path
    header: tensorfile.Header
    what: str

    def load(self) -> Expert:
        """The expert with its tensors (checked again against the header, finite)."""
        return dataclasses.replace(self.expert, tensors=tensorfile.load(self.weights, self.header, self.what))


def open_expert(path: str | Path, expected_fingerprint: str | None = None) -> OpenedExpert:
    """Read and validate an expert folder's JSON and its weights file's header (no tensor data):
    StoreError on any problem. Lazy pools keep the result and read the data on first use."""
    path = Path(path)
    what = f"expert {path.name!r}"
    if not path.is_dir():
        raise StoreError(f"{what}: folder {path} does not exist")
    data = read_json(path / CONFIG_FILE, what, "expert", FORMAT)
    try:
        check_name(data["name"], f"{what}: {CONFIG_FILE}: the expert name")
        config = ExpertConfig.from_dict(data["training"]).resolved()
        base = BackboneInfo(**data["base_model"])
    except NameRuleError as exc:
        raise StoreError(str(exc)) from None
    except (ConfigError, TypeError) as exc:
        raise StoreError(f"{what}: bad training settings or base model in {CONFIG_FILE}: {exc}") from None
    if expected_fingerprint is not None:
        check_fingerprint(expected_fingerprint, base.fingerprint, f"{what} (base model {base.name!r})",
                          StoreError)
    header = tensorfile.read_header(path / WEIGHTS_FILE, what)
    tensorfile.check_manifest(header, data["tensors"], what)
    shapes.check_expert(header, config.method, config.rank, config.targets, data.get("tt"),
                        data["label_names"], base.hidden_size, base.num_layers, what)
    layout = {target: {"in_factors": info["in_factors"], "out_factors": info["out_factors"]}
              for target, info in (data.get("tt") or {}).items()}
    expert = Expert(name=data["name"], config=config, label_names=list(data["label_names"]),
                    tensors={}, base=base, tt_layout=layout, metrics=data.get("metrics", {}),
                    history=data.get("history", []), data=data.get("data", {}),
                    created=data.get("created", ""))
    return OpenedExpert(expert, path / WEIGHTS_FILE, header, what)


def load_expert(path: str | Path, expected_fingerprint: str | None = None) -> Expert:
    """Read and validate an expert folder; StoreError on any problem. The JSON and the weights
    file's header are checked before the tensor data is read."""
    return open_expert(path, expected_fingerprint).load()


# ----------------------------------------------------------------------------- packs
#
#   <pack>/pack.json                 experts by name, base model + fingerprint, router variant
#                                    and layer, metrics, date
#   <pack>/experts/<name>/           one expert folder each (as above)
#   <pack>/router_config.json        RouterConfig, expert order, metrics, tensor manifest
#   <pack>/router.safetensors

PACK_FILE = "pack.json"
ROUTER_CONFIG_FILE = "router_config.json"
ROUTER_WEIGHTS_FILE = "router.safetensors"
PACK_FORMAT = "ttmoe-pack"
ROUTER_FORMAT = "ttmoe-router"
# the router's companions (``poolfiles``): valid only with the router they were made for
POOL_CONFIG_FILE, POOL_WEIGHTS_FILE = "pool_config.json", "pool.safetensors"
REPLAY_CONFIG_FILE, REPLAY_WEIGHTS_FILE = "router_replay.json", "router_replay.safetensors"
ROUTER_COMPANIONS = (POOL_CONFIG_FILE, POOL_WEIGHTS_FILE, REPLAY_CONFIG_FILE, REPLAY_WEIGHTS_FILE)


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
        from ..routing.registry import build

        router = build(self.router_config, len(self.experts),
                              self.base_model["hidden_size"], self.base_model["num_layers"])
        router.load_state_dict(self.router_state)
        return router.eval()


def _pack_manifest(folder: Path, names: list[str], base: BackboneInfo, extra: Mapping | None) -> dict:
    previous = read_json(folder / PACK_FILE, "pack") if (folder / PACK_FILE).exists() else {}
    return {**previous, "format": PACK_FORMAT, "format_version": FORMAT_VERSION,
            "experts": names, "base_model": base.to_dict(), **(extra or {})}


def read_pack_manifest(path: Path) -> dict:
    """pack.json, schema-checked, its expert names valid and distinct."""
    what = f"pack {path.name!r}"
    data = read_json(path / PACK_FILE, what, "pack", PACK_FORMAT)
    for name in data["experts"]:
        if not is_valid_name(name):
            raise StoreError(f"{what}: {PACK_FILE} lists the expert {name[:100]!r}, which is not a "
                             f"valid name ({NAME_RULE})")
    if len(set(data["experts"])) != len(data["experts"]):
        raise StoreError(f"{what}: {PACK_FILE} lists an expert twice")
    return data


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


def _add_expert(folder: Path, expert: Expert, names: list[str]) -> None:
    """Write ``expert`` into the unpublished pack ``folder`` that lists ``names`` and list it."""
    target = expert_folder(folder, expert.name)
    safefs.remove(target)
    _write_expert(expert, target)
    write_json(folder / PACK_FILE, _pack_manifest(folder, names + [expert.name], expert.base,
                                                  {"router": None}))


def _check_pack_target(pack_dir: Path) -> list[str]:
    """The expert names of the pack at ``pack_dir`` (none if absent or empty); StoreError when
    it is something else than a pack."""
    safefs.recover(pack_dir.parent, pack_dir.name)
    if pack_dir.is_symlink():
        raise StoreError(f"{pack_dir} is a symbolic link: a pack is changed only in a real folder")
    if os.path.lexists(pack_dir / PACK_FILE):
        return read_pack_manifest(pack_dir)["experts"]
    if os.path.lexists(pack_dir) and (not pack_dir.is_dir() or any(pack_dir.iterdir())):
        raise StoreError(f"{pack_dir} is not a pack (no {PACK_FILE}): choose another folder")
    return []


def add_expert_to_pack(pack_dir: str | Path, expert: Expert) -> Path:
    """Write one expert into ``<pack>/experts/<name>`` and list it; other experts' files keep
    their bytes. The pack changes in one step (a hard-linked copy swapped into place)."""
    pack_dir = Path(pack_dir)
    _check_expert_name(expert.name, "a folder of a pack")
    names = _check_pack_target(pack_dir)
    if expert.name in names:
        raise StoreError(f"pack {pack_dir} already has an expert named {expert.name!r}")
    if names:
        first = load_expert(expert_folder(pack_dir, names[0]))
        check_fingerprint(first.base, expert.base.fingerprint, f"expert {expert.name!r}", StoreError,
                          reference="the pack's experts")
    with atomic_dir(pack_dir, template=pack_dir) as tmp:
        _add_expert(tmp, expert, names)
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
        _check_expert_name(expert.name, "a folder of a pack")
        check_fingerprint(loaded[0].base, expert.base.fingerprint, f"expert {expert.name!r}",
                          StoreError, reference="the pack's experts")
    with atomic_dir(pack_dir) as building:
        for i, expert in enumerate(loaded):
            _add_expert(building, expert, names[:i])
        if router is not None:
            _write_router(building, router, names, router_metrics or {}, loaded[0].base, extra)
        elif extra:
            write_json(building / PACK_FILE, {**read_json(building / PACK_FILE, "pack"), **extra})
    return loaded


def update_pack(pack_dir: str | Path, write: Callable[[Path, list[str]], None]) -> None:
    """Change the pack at ``pack_dir`` in one step: ``write(folder, expert names)`` works on a
    hard-linked copy (replace files with ``write_json`` / new files, never write through a
    link) that is swapped into place; untouched files keep their bytes."""
    pack_dir = Path(pack_dir)
    if not os.path.lexists(pack_dir / PACK_FILE):
        raise StoreError(f"{pack_dir} is not a pack (no {PACK_FILE})")
    names = _check_pack_target(pack_dir)
    with atomic_dir(pack_dir, template=pack_dir) as tmp:
        write(tmp, names)


def write_expert_into(folder: Path, expert: Expert, names: list[str]) -> None:
    """``expert`` written into the unpublished pack ``folder`` (``update_pack``) and listed
    after ``names``."""
    _check_expert_name(expert.name, "a folder of a pack")
    if expert.name in names:
        raise StoreError(f"pack {folder.name!r} already has an expert named {expert.name!r}")
    _add_expert(folder, expert, names)


def save_router(pack_dir: str | Path, router, names: list[str], metrics: Mapping,
                base: BackboneInfo, extra: Mapping | None = None,
                companions: Callable[[Path], None] | None = None) -> None:
    """Write (or replace) the pack's router, for its experts ``names``; the pack changes in one
    step (a hard-linked copy swapped into place) and expert files keep their bytes. The old
    router's companions (out-of-pool detector, replay rows) are removed; ``companions(folder)``
    may write new ones in the same step."""
    pack_dir = Path(pack_dir)
    if not os.path.lexists(pack_dir / PACK_FILE):
        raise StoreError(f"{pack_dir} is not a pack (no {PACK_FILE})")
    _check_pack_target(pack_dir)
    for name in names:
        if not is_valid_name(name) or not expert_folder(pack_dir, name).is_dir():
            raise StoreError(f"pack {pack_dir.name!r} has no expert {str(name)[:100]!r} for the router")
    with atomic_dir(pack_dir, template=pack_dir) as tmp:
        write_router_into(tmp, router, names, metrics, base, extra)
        if companions is not None:
            companions(tmp)


def write_router_into(folder: Path, router, names: list[str], metrics: Mapping, base: BackboneInfo,
                      extra: Mapping | None = None) -> None:
    """The router's files into the unpublished pack ``folder``; its old companions removed."""
    for name in ROUTER_COMPANIONS:
        safefs.remove(folder / name)
    _write_router(folder, router, names, metrics, base, extra)


def _write_router(folder: Path, router, names: list[str], metrics: Mapping, base: BackboneInfo,
                  extra: Mapping | None) -> None:
    """The router's two files and the updated pack.json into the unpublished pack ``folder``."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in router.state_dict().items()}
    config = {"format": ROUTER_FORMAT, "format_version": FORMAT_VERSION,
              "config": router.config.to_dict(), "experts": list(names),
              "base_model": base.to_dict(), "metrics": dict(metrics),
              "params": sum(t.numel() for t in tensors.values()), "tensors": manifest(tensors)}
    _save_tensors(tensors, folder / ROUTER_WEIGHTS_FILE)
    write_json(folder / ROUTER_CONFIG_FILE, config)
    write_json(folder / PACK_FILE, _pack_manifest(folder, list(names), base, {
        "router": {"variant": router.config.variant, "layer": router.config.layer,
                   "params": config["params"]},
        "metrics": {"router": dict(metrics)}, **(extra or {})}))


def read_router(path: Path, pack: Mapping) -> tuple[object, tensorfile.Header, dict]:
    """(RouterConfig, checked header, metrics) of the pack's router, from its JSON and the
    weights file's header: its tensors fit the config, the experts and the base model."""
    from ..routing import RouterConfig, RouterError

    what = f"router of pack {path.name!r}"
    data = read_json(path / ROUTER_CONFIG_FILE, what, "router", ROUTER_FORMAT)
    if data["experts"] != pack["experts"]:
        raise StoreError(f"{what} was trained for experts {data['experts'][:20]}, the pack lists "
                         f"{pack['experts'][:20]}: retrain the router (train-router)")
    check_fingerprint(pack["base_model"]["fingerprint"], data["base_model"]["fingerprint"], what,
                      StoreError, reference="the pack's manifest")
    try:
        config = RouterConfig.from_dict(data["config"])
        expected = shapes.router_shapes(config, len(pack["experts"]), pack["base_model"]["hidden_size"],
                                        pack["base_model"]["num_layers"])
    except (TypeError, RouterError, StoreError) as exc:
        raise StoreError(f"{what}: bad config ({exc})") from None
    header = tensorfile.read_header(path / ROUTER_WEIGHTS_FILE, what)
    tensorfile.check_manifest(header, data["tensors"], what)
    shapes.check_router(header, expected, what)
    return config, header, data.get("metrics", {})


def load_pack(path: str | Path, expected_fingerprint: str | None = None) -> Pack:
    """Read and validate a pack: names are folder names inside it, experts agree with the
    manifest's base model, the router fits the experts; JSON and headers before tensor data."""
    path = Path(path)
    if not path.is_dir():
        raise StoreError(f"pack folder {path} does not exist")
    data = read_pack_manifest(path)
    base = data["base_model"]
    if not data["experts"]:
        raise StoreError(f"pack {path.name!r} lists no experts")
    if expected_fingerprint is not None:
        check_fingerprint(expected_fingerprint, base["fingerprint"],
                          f"pack {path.name!r} (base model {base.get('name')!r})", StoreError)
    folders = [expert_folder(path, name) for name in data["experts"]]
    router = read_router(path, data) if os.path.lexists(path / ROUTER_CONFIG_FILE) else None
    experts = []
    for name, folder in zip(data["experts"], folders):
        expert = load_expert(folder)
        what = f"pack {path.name!r}: expert {name!r}"
        if expert.name != name:
            raise StoreError(f"{what}: its folder holds the expert {expert.name!r}")
        check_fingerprint(base["fingerprint"], expert.base.fingerprint, what, StoreError,
                          reference="the pack's manifest")
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
