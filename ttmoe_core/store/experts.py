"""Expert folders on disk: the config JSON of an expert, writing one atomically, opening one
(JSON and weights header checked, no tensor data) and loading it (``layout`` says what the
folder holds)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from .. import tt
from ..base.backbone import BackboneInfo
from ..base.sources import hub_id
from ..experts import ConfigError, Expert, ExpertConfig
from ..files import schema, tensorfile
from ..files.locks import locked
from ..files.names import NAME_RULE, NameRuleError, check_name, is_valid_name
from ..files.safefs import StoreError, atomic_dir, nan_to_null, write_json
from ..files.tensorfile import manifest
from ..tasks import TASKS
from . import publish, shapes
from .filenames import CARD_FILE
from .layout import (
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    check_base,
    check_replaceable,
    read_json,
    save_tensors,
)


def expert_config_dict(expert: Expert) -> dict:
    """The content of ``expert``'s ``adapter_config.json``: this project's keys, the base model's
    hub id (``base_model_name_or_path``) and, for a LoRA expert, PEFT's (``publish.peft_keys``);
    no absolute path."""
    cfg = expert.config
    tt_info = None
    if cfg.method == "tt-lora":
        tt_info = {target: {"in_factors": list(layout["in_factors"]),
                            "out_factors": list(layout["out_factors"]),
                            "core_shapes": [list(s) for s in tt.core_shapes(
                                layout["in_factors"], layout["out_factors"], cfg.rank)]}
                   for target, layout in expert.tt_layout.items()}
    return {
        **(publish.peft_keys(cfg, expert.base.name) if cfg.method == "lora" else {}),
        "base_model_name_or_path": hub_id(expert.base.name) or expert.base.name,
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "name": expert.name, "method": cfg.method, "task": cfg.task,
        "label_names": list(expert.label_names),
        "rank": cfg.rank, "alpha": cfg.alpha, "targets": cfg.targets, "tt": tt_info,
        "base_model": expert.base.to_dict(),
        "training": cfg.to_dict(),
        "metrics": nan_to_null(expert.metrics), "history": nan_to_null(expert.history),
        "data": publish.publishable(expert.data),
        "created": expert.created,
        "trainable_params": expert.trainable_params(),
        "tensors": manifest(expert.tensors),
    }


def check_expert_name(name: object, folder: str = "a folder") -> str:
    """``name`` when it can name an expert's folder; else StoreError (a name is never a path)."""
    if not is_valid_name(name):
        raise StoreError(f"expert name {str(name)[:100]!r} cannot name {folder} ({NAME_RULE})")
    return name


def write_expert(expert: Expert, folder: Path) -> None:
    """The files of ``expert`` (weights, config, model card) into the new (unpublished) folder
    ``folder``."""
    config = expert_config_dict(expert)
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors({k: v.contiguous() for k, v in expert.tensors.items()}, folder / WEIGHTS_FILE,
                 metadata={"format": FORMAT, "name": expert.name})
    write_json(folder / CONFIG_FILE, config)
    publish.expert_card(config).save(folder / CARD_FILE)


def save_expert(expert: Expert, path: str | Path, new: bool = False) -> Path:
    """Write an expert folder atomically, under its lock; returns its path. An existing ``path``
    is replaced only when it is an empty folder or (unless ``new``) a valid expert."""
    path = Path(path)
    check_expert_name(expert.name)
    with locked(path):
        if new and os.path.lexists(path) and (not path.is_dir() or any(path.iterdir())):
            raise StoreError(f"{path} already exists: another command wrote it meanwhile; "
                             "choose another name")
        check_replaceable(path, "expert", load_expert)
        with atomic_dir(path) as tmp:
            write_expert(expert, tmp)
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


def open_expert(path: str | Path, expected_fingerprint: str | None = None,
                reference: str = "the loaded base model", history: bool = True) -> OpenedExpert:
    """Read and validate an expert folder's JSON and its weights file's header (no tensor data):
    StoreError on any problem, or when ``expected_fingerprint`` (of ``reference``) is not its
    base model's. Lazy pools keep the result and read the data on first use.

    ``history=False``: the training curve is neither checked nor kept (``Expert.history`` []):
    serving never reads it, and checking its hundreds of entries is ~70 % of opening an expert
    (a 1,000-expert pack's pool, bench/RESULTS.md)."""
    path = Path(path)
    what = f"expert {path.name!r}"
    if not path.is_dir():
        raise StoreError(f"{what}: folder {path} does not exist")
    data = read_json(path / CONFIG_FILE, what, "expert", FORMAT, check=False)
    if not history:
        data = {key: value for key, value in data.items() if key != "history"}
    try:      # the tensor manifest is checked exactly against the header below
        schema.validate(data | ({"tensors": {}} if "tensors" in data else {}), "expert",
                        CONFIG_FILE)
    except schema.SchemaError as exc:
        raise schema.SchemaError(f"{what}: {exc}") from None
    try:
        check_name(data["name"], f"{what}: {CONFIG_FILE}: the expert name")
        config = ExpertConfig.from_dict(data["training"]).resolved()
        base = BackboneInfo(**data["base_model"])
    except NameRuleError as exc:
        raise StoreError(str(exc)) from None
    except (ConfigError, TypeError) as exc:
        raise StoreError(f"{what}: bad training settings or base model in {CONFIG_FILE}: {exc}") from None
    if expected_fingerprint is not None:
        check_base(expected_fingerprint, base.fingerprint, f"{what} (base model {base.name!r})",
                   reference)
    header = tensorfile.read_header(path / WEIGHTS_FILE, what)
    tensorfile.check_manifest(header, data["tensors"], f"{what}: {CONFIG_FILE}")
    shapes.check_expert(header, config.method, config.rank, config.targets, data.get("tt"),
                        data["label_names"], base.hidden_size, base.num_layers, what)
    known = TASKS.get(config.task)
    labels = len(data["label_names"])
    if known is not None and known.label_names and not labels:
        raise StoreError(f"{what}: {CONFIG_FILE} names no labels for the classification task "
                         f"{config.task!r} (it would be served as regression)")
    confusion = data.get("metrics", {}).get("confusion")
    if confusion and (len(confusion) != labels or any(len(row) != labels for row in confusion)):
        raise StoreError(f"{what}: {CONFIG_FILE}: metrics.confusion is not {labels}×{labels} "
                         "(one row and column per label)")
    layout = {target: {"in_factors": info["in_factors"], "out_factors": info["out_factors"]}
              for target, info in (data.get("tt") or {}).items()}
    expert = Expert(name=data["name"], config=config, label_names=list(data["label_names"]),
                    tensors={}, base=base, tt_layout=layout, metrics=data.get("metrics", {}),
                    history=data.get("history", []), data=data.get("data", {}),
                    created=data.get("created", ""))
    return OpenedExpert(expert, path / WEIGHTS_FILE, header, what)


def load_expert(path: str | Path, expected_fingerprint: str | None = None,
                reference: str = "the loaded base model") -> Expert:
    """Read and validate an expert folder; StoreError on any problem (``open_expert``). The JSON
    and the weights file's header are checked before the tensor data is read."""
    return open_expert(path, expected_fingerprint, reference).load()
