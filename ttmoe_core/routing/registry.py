"""The router variants by name: each variant module registers itself here, callers ask here.

In the spirit of PEFT's ``register_peft_method``: a variant is registered once, by the module
that defines it (``variants``: paper / linear / mlp / fusion; ``ngram``), with what it is made of
(a builder and its feature functions) and the facts that differ between variants (which layer it
reads, how it grows, what its pack keeps). Nothing outside the variant modules names a variant to
decide what to do: callers ask ``variant_spec(name)``, ``build``, ``grow``, ``params``; an unknown
name is a RouterError naming the known ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..errors import RouterError
from ..runtime import rng
from . import growth

# builder(resolved config, E, H, generator) -> router (``forward(feats) -> [N, E]``)
Builder = Callable[..., nn.Module]
# state_features(hidden states 0..k each [B, T, H], tokenized batch, config) -> {name: [B, ...]}
StateFn = Callable[..., dict[str, torch.Tensor]]
# text_features(texts [N], text pairs [N] or None, config) -> {name: [N, ...]} on the CPU
TextFn = Callable[..., dict[str, torch.Tensor]]


def _no_table(router: nn.Module) -> None:
    return None


@dataclass(frozen=True)
class VariantSpec:
    """One registered router variant (see ``register_variant``)."""

    name: str
    builder: Builder
    state_features: StateFn
    text_features: TextFn
    last_layer_only: bool = False          # reads the last layer, whatever ``config.layer`` says
    grow_table: Callable[[nn.Module], int | None] = _no_table   # rows of its per-expert n-gram
    #                                        table, which a grown router extends by a column
    keeps_replay: bool = False             # train-router saves replay rows with it (add-expert)
    stand_in: str | None = None            # the variant routing a large random pool in its place


_REGISTRY: dict[str, VariantSpec] = {}
SHIPPED_MODULES = (".variants", ".ngram")   # they register the shipped variants


def register_variant(name: str, builder: Builder, state_features: StateFn, text_features: TextFn,
                     **facts) -> VariantSpec:
    """Register the router variant ``name`` (``facts``: the other fields of ``VariantSpec``);
    RouterError when the name is taken."""
    if name in _REGISTRY:
        raise RouterError(f"router variant {name!r} is registered already")
    entry = VariantSpec(name, builder, state_features, text_features, **facts)
    _REGISTRY[name] = entry
    return entry


def _with_shipped() -> dict[str, VariantSpec]:
    """The registry once the shipped variants are in it: their modules register them when
    imported, and the package imports its modules lazily (by name, as for plug-ins)."""
    for module in SHIPPED_MODULES:
        importlib.import_module(module, __package__)
    return _REGISTRY


def known_variants() -> tuple[str, ...]:
    """The registered variants, in registration order."""
    return tuple(_with_shipped())


def variant_spec(name: str) -> VariantSpec:
    """The registered variant ``name``; RouterError naming the known ones for any other."""
    if name not in _with_shipped():
        raise RouterError(f"unknown router variant {name!r}: use one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def build(config, num_experts: int, hidden_size: int, num_layers: int,
          generator: torch.Generator | None = None) -> nn.Module:
    """A fresh router of ``config``'s variant (a ``RouterConfig``) with ``num_experts`` outputs;
    with ``config.added_experts = A > 0`` a frozen base of E - A outputs wrapped in a
    ``growth.GrownRouter`` (its added rows zero until loaded). ``generator`` (None: one seeded
    with ``config.seed``) draws the weights and stays with the router for dropout, noise and
    batch order. RouterError for a bad config."""
    config = config.resolved(num_layers)
    entry = variant_spec(config.variant)
    added = config.added_experts
    if num_experts - added < 1:
        raise RouterError(f"{added} added experts out of {num_experts}: the base router needs one")
    base_cfg = replace(config, added_experts=0, grow_source="hidden")
    generator = rng.given_or_seeded(generator, config.seed)
    with rng.drawing_from(generator):
        base = entry.builder(base_cfg, num_experts - added, hidden_size, generator)
    if not added:
        return base
    try:
        width = growth.phi_width(base, config.grow_source)
    except growth.GrowthError as exc:
        raise RouterError(str(exc)) from None
    grown = growth.GrownRouter(base, added, width, entry.grow_table(base), config.grow_source)
    grown.config = config
    return grown


def grow(model: nn.Module, replay: dict[str, torch.Tensor], replay_labels: torch.Tensor,
         new: dict[str, torch.Tensor], **kwargs) -> tuple[nn.Module, dict]:
    """``growth.grow_router`` whose result carries a config that ``build`` rebuilds
    (``added_experts``, ``grow_source``): it saves and loads like any router."""
    grown, info = growth.grow_router(model, replay, replay_labels, new, **kwargs)
    grown.config = replace(grown.base.config, added_experts=int(grown.weight.shape[0]),
                           grow_source=grown.source)
    return grown, info


def params(model: nn.Module) -> int:
    """The router's parameter count."""
    return sum(p.numel() for p in model.parameters())
