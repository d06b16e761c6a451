"""Serve chosen expert folders without a pack: a router-less ``TTLoRAMoE`` (the oracle choice).

A trained expert can be tried at once: ``mixture_from_folders([dir])`` reads the folders, checks
they share a base model and TT layout, and stacks them as a mixture with ``router=None``; every
``predict`` call then names the expert of each row (``expert=...``). Nothing is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..base.backbone import Backbone, BackboneError, load_backbone
from ..store import StoreError, load_expert
from .mixture import MoEError, TTLoRAMoE


def mixture_from_folders(folders: Sequence[str | Path], backbone: Backbone | None = None,
                         device: str | None = None, dtype: str | None = None) -> TTLoRAMoE:
    """The router-less mixture of the experts in ``folders`` (in that order), on ``backbone`` or
    else on the first expert's base model loaded here. Inputs are cut at the longest
    ``max_length`` the experts were trained with.

    StoreError for a folder that is not an expert (or a base model that does not match);
    MoEError for no folders, repeated names, a LoRA/adapter expert or TT layouts that differ.
    """
    if not folders:
        raise MoEError("choose at least one expert folder")
    experts = [load_expert(folder) for folder in folders]
    names = [e.name for e in experts]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise MoEError(f"two folders hold an expert named {repeated[0]!r}: choose one of them")
    backbone = backbone or load_backbone(experts[0].base.name, device=device, dtype=dtype)
    max_length = max(e.config.max_length for e in experts)
    try:
        return TTLoRAMoE(backbone, experts, router=None, max_length=max_length)
    except BackboneError as exc:
        raise StoreError(f"expert {experts[0].name!r}: {exc}") from None
