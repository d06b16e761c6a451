"""Experts, routers and packs on disk: safetensors + JSON, atomic writes, validation.

An expert folder follows PEFT's layout:

    <expert>/adapter_config.json        method, task, labels, TT shapes/ranks, α, targets,
                                        base model + fingerprint, training settings, metrics,
                                        and a manifest of every tensor (shape, dtype)
    <expert>/adapter_model.safetensors  TT cores (or LoRA A/B) + the task head

Writes go to a temporary sibling folder that is renamed into place, so a crash never leaves a
half-written expert. Loading checks everything and raises ``StoreError`` with a message a person
can act on; nothing is unpickled or executed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import tt
from .backbone import BackboneInfo, check_fingerprint
from .experts import ConfigError, Expert, ExpertConfig
from .names import NAME_RULE, is_valid_name

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
FORMAT = "ttmoe-expert"
FORMAT_VERSION = 1


class StoreError(ValueError):
    """A file or folder of the workspace is missing, malformed, or does not fit."""


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(src: str | Path, dest: str | Path) -> None:
    """Move a finished folder into place, replacing ``dest`` (two renames)."""
    src, dest = Path(src), Path(dest)
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{os.getpid()}"
        os.replace(dest, old)
    os.replace(src, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, data: Mapping) -> None:
    """Write JSON atomically (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise StoreError(f"{what}: {path} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise StoreError(f"{what}: {path} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise StoreError(f"{what}: {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise StoreError(f"{what}: {path} must hold a JSON object")
    return data


def read_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise StoreError(f"{what}: {path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise StoreError(f"{what}: {path} is not a readable safetensors file "
                         f"(truncated or corrupt: {exc})") from None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def manifest(tensors: Mapping[str, torch.Tensor]) -> dict:
    return {k: {"shape": list(v.shape), "dtype": _dtype_name(v.dtype)} for k, v in sorted(tensors.items())}


def check_tensors(tensors: Mapping[str, torch.Tensor], expected: Mapping[str, Mapping],
                  what: str) -> None:
    """Same keys, shapes and dtypes as the manifest, all finite; else StoreError."""
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing:
        raise StoreError(f"{what}: tensors missing from the weights file: {missing[:5]}"
                         f"{' …' if len(missing) > 5 else ''}")
    if extra:
        raise StoreError(f"{what}: unexpected tensors in the weights file: {extra[:5]}")
    for key, spec in expected.items():
        tensor = tensors[key]
        if list(tensor.shape) != list(spec["shape"]):
            raise StoreError(f"{what}: tensor {key} has shape {list(tensor.shape)}, "
                             f"the config says {spec['shape']}")
        if _dtype_name(tensor.dtype) != spec["dtype"]:
            raise StoreError(f"{what}: tensor {key} has dtype {_dtype_name(tensor.dtype)}, "
                             f"the config says {spec['dtype']}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise StoreError(f"{what}: tensor {key} holds NaN or infinite values")


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


def save_expert(expert: Expert, path: str | Path) -> Path:
    """Write an expert folder atomically; returns its path."""
    path = Path(path)
    config = expert_config_dict(expert)
    with atomic_dir(path) as tmp:
        save_file({k: v.contiguous() for k, v in expert.tensors.items()}, str(tmp / WEIGHTS_FILE),
                  metadata={"format": FORMAT, "name": expert.name})
        write_json(tmp / CONFIG_FILE, config)
    return path


def load_expert(path: str | Path, expected_fingerprint: str | None = None) -> Expert:
    """Read and validate an expert folder; StoreError on any problem."""
    path = Path(path)
    what = f"expert {path.name!r}"
    if not path.is_dir():
        raise StoreError(f"{what}: folder {path} does not exist")
    data = read_json(path / CONFIG_FILE, what)
    if data.get("format") != FORMAT:
        raise StoreError(f"{what}: {CONFIG_FILE} is not a TT-LoRA MoE expert config "
                         f"(format {data.get('format')!r}, expected {FORMAT!r})")
    for key in ("name", "method", "task", "label_names", "base_model", "training", "tensors"):
        if key not in data:
            raise StoreError(f"{what}: {CONFIG_FILE} lacks the key {key!r}")
    try:
        config = ExpertConfig.from_dict(data["training"]).resolved()
        base = BackboneInfo(**data["base_model"])
    except (ConfigError, TypeError) as exc:
        raise StoreError(f"{what}: bad training settings or base model in {CONFIG_FILE}: {exc}") from None
    if expected_fingerprint is not None:
        check_fingerprint(expected_fingerprint, base.fingerprint, f"{what} (base model {base.name!r})",
                          StoreError)
    tensors = read_tensors(path / WEIGHTS_FILE, what)
    check_tensors(tensors, data["tensors"], what)
    _check_structure(tensors, config, data, base, what)
    layout = {target: {"in_factors": info["in_factors"], "out_factors": info["out_factors"]}
              for target, info in (data.get("tt") or {}).items()}
    return Expert(name=data["name"], config=config, label_names=list(data["label_names"]),
                  tensors=tensors, base=base, tt_layout=layout, metrics=data.get("metrics", {}),
                  history=data.get("history", []), data=data.get("data", {}),
                  created=data.get("created", ""))


def _check_structure(tensors: Mapping[str, torch.Tensor], config: ExpertConfig, data: Mapping,
                     base: BackboneInfo, what: str) -> None:
    """The head fits the labels and model; the adapter tensors fit the config (``_check_modules``)."""
    num_labels = max(1, len(data["label_names"]))
    head = tensors.get("head.weight")
    if head is None or list(head.shape) != [num_labels, base.hidden_size]:
        raise StoreError(f"{what}: head.weight must have shape [{num_labels}, {base.hidden_size}] "
                         f"for labels {data['label_names']}")
    if config.method not in ADAPTER_TENSORS:
        return
    if not isinstance(base.num_layers, int) or base.num_layers < 1:
        raise StoreError(f"{what}: the base model's num_layers must be a positive integer, "
                         f"got {base.num_layers!r}")
    expected = _expected_suffixes(config, data.get("tt"), what)
    modules = _check_modules(tensors, config.method, expected, base.num_layers, what)
    if config.method != "tt-lora":
        return
    for module, target in modules.items():
        shapes = list(expected[target].values())
        got = [list(tensors[f"{module}.cores.{k}"].shape) for k in expected[target]]
        if got != shapes:
            raise StoreError(f"{what}: cores of {module} have shapes {got}, expected {shapes}")


# adapter tensors are named "<module><separator><suffix>": TT cores "….cores.<k>", PEFT LoRA
# "….lora_A.weight" / "….lora_B.weight"; the head's are "head.*"
ADAPTER_TENSORS = {"tt-lora": ".cores.", "lora": ".lora_"}


def _expected_suffixes(config: ExpertConfig, layout: object, what: str) -> dict[str, dict]:
    """{target: {tensor suffix: expected shape (TT cores) or None}} from the config and TT layout."""
    targets = list(config.targets or [])
    if config.method == "lora":
        return {target: {"A.weight": None, "B.weight": None} for target in targets}
    layout = layout if isinstance(layout, dict) else {}
    if set(layout) != set(targets):
        raise StoreError(f"{what}: TT layout covers {sorted(layout)}, targets are {targets}")
    expected = {}
    for target, info in layout.items():
        try:
            shapes = [list(s) for s in tt.core_shapes(info["in_factors"], info["out_factors"],
                                                      config.rank)]
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{what}: bad TT layout for {target}: {exc}") from None
        if shapes != [list(s) for s in info.get("core_shapes", shapes)]:
            raise StoreError(f"{what}: recorded core shapes of {target} disagree with its factors")
        expected[target] = {str(k): shape for k, shape in enumerate(shapes)}
    return expected


def _layer_index(module: str) -> int | None:
    """The layer number in a module path (``encoder.layer.3.attention.self.query`` -> 3)."""
    match = re.search(r"(?:^|\.)(\d+)\.", module)
    return int(match.group(1)) if match else None


def _check_modules(tensors: Mapping[str, torch.Tensor], method: str, expected: Mapping[str, Mapping],
                   num_layers: int, what: str) -> dict[str, str]:
    """Every adapter tensor belongs to a target module and every target module of every layer has
    all its tensors; returns {module: target}. StoreError names what is missing or extra."""
    separator = ADAPTER_TENSORS[method]
    found: dict[str, set[str]] = {}
    for key in tensors:
        if key.startswith("head."):
            continue
        module, sep, suffix = key.rpartition(separator)
        if not sep or module.rpartition(".")[2] not in expected:
            raise StoreError(f"{what}: tensor {key} is not an adapter tensor of the targets "
                             f"{sorted(expected)}")
        found.setdefault(module, set()).add(suffix)
    modules = {module: module.rpartition(".")[2] for module in found}
    for target, suffixes in expected.items():
        mine = [module for module, t in modules.items() if t == target]
        if not mine:
            raise StoreError(f"{what}: no adapter tensors for target {target!r}")
        for module in mine:
            missing, extra = set(suffixes) - found[module], found[module] - set(suffixes)
            if missing or extra:
                raise StoreError(f"{what}: {module} has tensors {sorted(found[module])}, "
                                 f"expected {sorted(suffixes)}")
        layers = Counter(_layer_index(module) for module in mine)
        if None in layers:      # module paths without a layer number: nothing more to check
            continue
        absent = sorted(set(range(num_layers)) - set(layers))
        if absent:
            raise StoreError(f"{what}: no adapter tensors for target {target!r} in layer(s) "
                             f"{absent} of the base model's {num_layers}")
        beyond = sorted(i for i in layers if i >= num_layers)
        if beyond:
            raise StoreError(f"{what}: adapter tensors for target {target!r} in layer(s) {beyond}, "
                             f"the base model has {num_layers}")
        if len(set(layers.values())) > 1:
            raise StoreError(f"{what}: the layers hold different numbers of {target!r} modules "
                             f"({dict(sorted(layers.items()))})")
    return modules


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
        from .router import build_router

        router = build_router(self.router_config, len(self.experts),
                              self.base_model["hidden_size"], self.base_model["num_layers"])
        router.load_state_dict(self.router_state)
        return router.eval()


def _pack_manifest(path: Path, names: list[str], base: BackboneInfo, extra: Mapping | None) -> dict:
    previous = read_json(path / PACK_FILE, "pack") if (path / PACK_FILE).exists() else {}
    return {**previous, "format": PACK_FORMAT, "format_version": FORMAT_VERSION,
            "experts": names, "base_model": base.to_dict(), **(extra or {})}


def add_expert_to_pack(pack_dir: str | Path, expert: Expert) -> Path:
    """Write one expert into ``<pack>/experts/<name>`` and list it; other experts' files untouched."""
    pack_dir = Path(pack_dir)
    if not is_valid_name(expert.name):
        raise StoreError(f"expert name {expert.name!r} cannot name a folder of a pack ({NAME_RULE})")
    names = read_json(pack_dir / PACK_FILE, "pack")["experts"] if (pack_dir / PACK_FILE).exists() else []
    if expert.name in names:
        raise StoreError(f"pack {pack_dir} already has an expert named {expert.name!r}")
    if names:
        first = load_expert(pack_dir / "experts" / names[0])
        check_fingerprint(first.base, expert.base.fingerprint, f"expert {expert.name!r}", StoreError,
                          reference="the pack's experts")
    save_expert(expert, pack_dir / "experts" / expert.name)
    write_json(pack_dir / PACK_FILE, _pack_manifest(pack_dir, names + [expert.name], expert.base,
                                                    {"router": None}))
    return pack_dir


def build_pack(pack_dir: str | Path, experts: Sequence[Expert | str | Path], *, router=None,
               router_metrics: Mapping | None = None, extra: Mapping | None = None,
               replace: bool = False) -> list[Expert]:
    """Write a new pack of ``experts`` (Expert objects or expert folders, validated on reading)
    and, given one, its ``router`` (``save_router`` with ``router_metrics`` and ``extra``).

    The pack is built in a temporary sibling folder renamed into place: it appears whole or not
    at all. StoreError when ``pack_dir`` exists (unless ``replace``), when there are no experts,
    two share a name, or they were trained on different base models. Returns the experts.
    """
    pack_dir = Path(pack_dir)
    if pack_dir.exists() and not replace:
        raise StoreError(f"{pack_dir} already exists: choose another pack name")
    loaded = [e if isinstance(e, Expert) else load_expert(e) for e in experts]
    if not loaded:
        raise StoreError("a pack needs at least one expert")
    names = [expert.name for expert in loaded]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise StoreError(f"two chosen experts are both named {clashes[0]!r}: rename one on "
                         "the Experts page first")
    with atomic_dir(pack_dir) as building:
        for expert in loaded:
            add_expert_to_pack(building, expert)
        if router is not None:
            save_router(building, router, names, router_metrics or {}, loaded[0].base, extra)
        elif extra:
            write_json(building / PACK_FILE, {**read_json(building / PACK_FILE, "pack"), **extra})
    return loaded


def save_router(pack_dir: str | Path, router, names: list[str], metrics: Mapping,
                base: BackboneInfo, extra: Mapping | None = None) -> None:
    """Write (or replace) the pack's router; expert folders are not touched."""
    pack_dir = Path(pack_dir)
    tensors = {k: v.detach().cpu().contiguous() for k, v in router.state_dict().items()}
    config = {"format": ROUTER_FORMAT, "format_version": FORMAT_VERSION,
              "config": router.config.to_dict(), "experts": list(names),
              "base_model": base.to_dict(), "metrics": dict(metrics),
              "params": sum(t.numel() for t in tensors.values()), "tensors": manifest(tensors)}
    tmp = pack_dir / f".{ROUTER_WEIGHTS_FILE}.tmp-{os.getpid()}"
    save_file(tensors, str(tmp))
    os.replace(tmp, pack_dir / ROUTER_WEIGHTS_FILE)
    write_json(pack_dir / ROUTER_CONFIG_FILE, config)
    write_json(pack_dir / PACK_FILE, _pack_manifest(pack_dir, list(names), base, {
        "router": {"variant": router.config.variant, "layer": router.config.layer,
                   "params": config["params"]},
        "metrics": {"router": dict(metrics)}, **(extra or {})}))


def load_pack(path: str | Path, expected_fingerprint: str | None = None) -> Pack:
    """Read and validate a pack: experts agree on the base model, router fits the experts."""
    from .router import RouterConfig, RouterError

    path = Path(path)
    if not path.is_dir():
        raise StoreError(f"pack folder {path} does not exist")
    data = read_json(path / PACK_FILE, f"pack {path.name!r}")
    if data.get("format") != PACK_FORMAT or not isinstance(data.get("experts"), list):
        raise StoreError(f"pack {path.name!r}: {PACK_FILE} is not a TT-LoRA MoE pack manifest")
    base = data.get("base_model") if isinstance(data.get("base_model"), dict) else {}
    experts = []
    for name in data["experts"]:
        expert = load_expert(path / "experts" / name)
        if not isinstance(base.get("fingerprint"), str):
            raise StoreError(f"pack {path.name!r}: {PACK_FILE} lacks the base model's fingerprint")
        check_fingerprint(base["fingerprint"], expert.base.fingerprint,
                          f"pack {path.name!r}: expert {name!r}", StoreError,
                          reference="the pack's manifest")
        experts.append(expert)
    if not experts:
        raise StoreError(f"pack {path.name!r} lists no experts")
    if expected_fingerprint is not None:
        check_fingerprint(expected_fingerprint, base["fingerprint"],
                          f"pack {path.name!r} (base model {base.get('name')!r})", StoreError)
    router_config = router_state = None
    router_metrics: dict = {}
    if (path / ROUTER_CONFIG_FILE).exists():
        what = f"router of pack {path.name!r}"
        rdata = read_json(path / ROUTER_CONFIG_FILE, what)
        if rdata.get("experts") != data["experts"]:
            raise StoreError(f"{what} was trained for experts {rdata.get('experts')}, the pack "
                             f"lists {data['experts']}: retrain the router (train-router)")
        try:
            router_config = RouterConfig.from_dict(rdata["config"])
        except (KeyError, TypeError, RouterError) as exc:
            raise StoreError(f"{what}: bad config ({exc})") from None
        router_state = read_tensors(path / ROUTER_WEIGHTS_FILE, what)
        check_tensors(router_state, rdata.get("tensors", {}), what)
        router_metrics = rdata.get("metrics", {})
    return Pack(path=path, experts=experts, base_model=base, router_config=router_config,
                router_state=router_state, router_metrics=router_metrics, manifest=data,
                max_length=router_config.max_length if router_config else 128)
