"""A pack's router on disk: its two files written into an unpublished pack folder (pack.json
updated, the old router's companions removed) and read back checked against the pack.

    <pack>/router_config.json        RouterConfig, expert order, base model, metrics, params,
                                     tensor manifest
    <pack>/router.safetensors        the router's state dict
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..base.backbone import BackboneInfo
from ..files import safefs, tensorfile
from ..files.safefs import StoreError, nan_to_null, write_json
from ..files.tensorfile import manifest
from ..routing import RouterConfig, RouterError
from . import shapes
from .layout import (
    FORMAT_VERSION,
    PACK_FILE,
    ROUTER_COMPANIONS,
    ROUTER_CONFIG_FILE,
    ROUTER_FORMAT,
    ROUTER_WEIGHTS_FILE,
    pack_manifest,
    read_pack_part,
    save_tensors,
)
from .publish import publishable


def write_router_into(folder: Path, router, names: list[str], metrics: Mapping, base: BackboneInfo,
                      extra: Mapping | None = None) -> None:
    """The router's files into the unpublished pack ``folder``; its old companions removed."""
    for name in ROUTER_COMPANIONS:
        safefs.remove(folder / name)
    write_router_files(folder, router, names, metrics, base, extra)


def write_router_files(folder: Path, router, names: list[str], metrics: Mapping,
                       base: BackboneInfo, extra: Mapping | None) -> None:
    """The router's two files and the updated pack.json into the unpublished pack ``folder``."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in router.state_dict().items()}
    config = {"format": ROUTER_FORMAT, "format_version": FORMAT_VERSION,
              "config": router.config.to_dict(), "experts": list(names),
              "base_model": base.to_dict(), "metrics": publishable(nan_to_null(dict(metrics))),
              "params": sum(t.numel() for t in tensors.values()), "tensors": manifest(tensors)}
    save_tensors(tensors, folder / ROUTER_WEIGHTS_FILE)
    write_json(folder / ROUTER_CONFIG_FILE, config)
    write_json(folder / PACK_FILE, pack_manifest(folder, list(names), base, {
        "router": {"variant": router.config.variant, "layer": router.config.layer,
                   "params": config["params"]},
        "metrics": {"router": nan_to_null(dict(metrics))}, **(extra or {})}))


def read_router(path: Path, pack: Mapping) -> tuple[RouterConfig, tensorfile.Header, dict]:
    """(RouterConfig, checked header, metrics) of the pack's router, from its JSON and the
    weights file's header: its tensors fit the config, the experts and the base model."""
    what = f"router of pack {path.name!r}"
    data, header = read_pack_part(path, ROUTER_CONFIG_FILE, ROUTER_WEIGHTS_FILE, "router",
                                  ROUTER_FORMAT, pack, what, made="trained",
                                  remedy=": retrain the router (train-router)")
    try:
        config = RouterConfig.from_dict(data["config"])
        expected = shapes.router_shapes(config, len(pack["experts"]), pack["base_model"]["hidden_size"],
                                        pack["base_model"]["num_layers"])
    except (TypeError, RouterError, StoreError) as exc:
        raise StoreError(f"{what}: bad config ({exc})") from None
    shapes.check_router(header, expected, what)
    return config, header, data.get("metrics", {})
