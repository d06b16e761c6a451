"""A pack opened lazily: its manifest and router read and checked now, its experts' configs
checked now and their weights read when a batch first needs them (``pool.ExpertPool.open_folders``),
so a pack of thousands of experts is ready in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .. import store
from ..files import tensorfile
from ..routing.registry import build
from .pool import ExpertPool


def open_pack(path: str | Path, storage: torch.dtype | None = None
              ) -> tuple[ExpertPool, "object | None", int]:
    """(lazy pool of a pack's experts, cores kept in ``storage`` (None: float32), its router or
    None, max_length): the pack's manifest and router are read and checked now, the experts'
    weights on first use."""

    path = Path(path)
    if not path.is_dir():
        raise store.StoreError(f"pack folder {path} does not exist")
    manifest = store.read_pack_manifest(path)            # schema-checked, names valid and distinct
    names, base = manifest["experts"], manifest["base_model"]
    if not names:
        raise store.StoreError(f"pack {path.name!r} lists no experts")
    pool = ExpertPool.open_folders([store.expert_folder(path, name) for name in names],
                                   expected_fingerprint=base["fingerprint"],
                                   reference="the pack's manifest", storage=storage)
    for name, card in zip(names, pool.cards):
        if card.name != name:
            raise store.StoreError(f"pack {path.name!r}: expert {name!r}: its folder holds the "
                                   f"expert {card.name!r}")
    if not os.path.lexists(path / store.ROUTER_CONFIG_FILE):
        return pool, None, 128
    config, header, _metrics = store.read_router(path, manifest)   # fits experts and base model
    what = f"router of pack {path.name!r}"
    state = tensorfile.load(path / store.ROUTER_WEIGHTS_FILE, header, what)
    with torch.device("meta"):
        router = build(config, len(names), base["hidden_size"], base["num_layers"])
    router = router.to_empty(device="cpu")
    router.load_state_dict(state)
    return pool, router.eval(), config.max_length
