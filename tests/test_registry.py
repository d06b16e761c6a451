"""The router registry: a variant registered elsewhere is built, fed and swept by the engine's
doors; an unknown name is refused with the known ones; every shipped variant is registered."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ttmoe_core import routing
from ttmoe_core.routing import registry

HIDDEN, LAYERS, EXPERTS = 8, 2, 3


class ConstantRouter(routing.Router):
    """A router of a test variant: one linear map of the last pooled layer."""

    def __init__(self, config, num_experts, hidden_size, generator=None):
        super().__init__(config, num_experts, hidden_size, generator)
        self.proj = nn.Linear(hidden_size, num_experts)

    def forward(self, feats):
        return self.proj(feats["pooled"][:, -1]) + feats["length"]


def _length(texts, text_pairs, config):
    return {"length": torch.tensor([[float(len(t))] for t in texts])}


@pytest.fixture
def constant_variant(monkeypatch):
    """The test variant "constant", registered for one test only."""
    routing.known_variants()        # the shipped variants registered first (lazy modules)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    return routing.register_variant("constant", ConstantRouter, routing.pooled_states, _length,
                                    last_layer_only=True)


def test_a_registered_variant_is_built_and_fed(constant_variant):
    assert "constant" in routing.known_variants()
    assert routing.variant_spec("constant") is constant_variant
    config = routing.RouterConfig(variant="constant", layer=0)
    assert config.resolved(LAYERS).layer == LAYERS                   # last_layer_only
    model = routing.build(config, EXPERTS, HIDDEN, LAYERS)
    assert isinstance(model, ConstantRouter) and model.config.layer == LAYERS
    assert routing.params(model) == HIDDEN * EXPERTS + EXPERTS
    states = [torch.randn(2, 5, HIDDEN) for _ in range(LAYERS + 1)]            # [B, T, H] each
    batch = {"attention_mask": torch.ones(2, 5, dtype=torch.long)}
    feats = routing.state_features(states, batch, model.config) | routing.text_features(
        ["ab", "abcd"], None, model.config)
    assert feats["pooled"].shape == (2, LAYERS + 1, HIDDEN) and feats["length"].shape == (2, 1)
    assert model(feats).shape == (2, EXPERTS)
    with pytest.raises(routing.RouterError, match="registered already"):
        routing.register_variant("constant", ConstantRouter, routing.pooled_states, _length)


def test_unknown_variant_names_the_known_ones():
    with pytest.raises(routing.RouterError) as info:
        routing.build(routing.RouterConfig(variant="attention"), EXPERTS, HIDDEN, LAYERS)
    message = str(info.value)
    assert "'attention'" in message
    for name in routing.known_variants():
        assert name in message
    with pytest.raises(routing.RouterError, match="use one of paper, linear"):
        routing.variant_spec("attention")


def test_every_shipped_variant_is_registered():
    assert set(routing.VARIANTS) <= set(routing.known_variants())
    for name in routing.VARIANTS:
        entry = routing.variant_spec(name)
        assert entry.name == name
        model = routing.build(routing.RouterConfig(variant=name, layer=1, hidden=4), EXPERTS,
                              HIDDEN, LAYERS)
        assert model.num_experts == EXPERTS
    assert [n for n in routing.VARIANTS if routing.variant_spec(n).last_layer_only] == ["paper"]
    assert [n for n in routing.VARIANTS if routing.variant_spec(n).keeps_replay] == ["ngram"]


def test_a_grown_config_builds_a_grown_router_of_any_variant():
    for name in ("mlp", "fusion", "ngram"):
        config = routing.RouterConfig(variant=name, layer=1, hidden=4, added_experts=1)
        model = routing.build(config, EXPERTS + 1, HIDDEN, LAYERS)
        assert isinstance(model, routing.GrownRouter) and model.num_experts == EXPERTS + 1
        assert (model.ngrams is not None) == (name == "ngram")
