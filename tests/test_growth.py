"""Adding an expert to a trained router: old logits unchanged (old-vs-old choices identical), the
new task is learned from its rows and a replay sample, growing twice keeps the first addition,
the grown router's state round-trips, routers without a final linear layer are refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ttmoe_core import routing
from ttmoe_core.routing import growth

H, LAYER = 8, 1
WORDS = [["movie", "film", "acting", "plot"], ["question", "why", "how", "what"],
         ["premise", "hypothesis", "entails", "claim"], ["passage", "answer", "yes", "no"],
         ["option", "choice", "blank", "pick"]]


def rows(cls: int, n: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``ngram`` router features of n rows of class ``cls`` (own words, own pooled mean)."""
    gen = torch.Generator().manual_seed(seed * 10 + cls)
    texts = [" ".join(WORDS[cls][int(i)] for i in torch.randint(0, 4, (5,), generator=gen))
             for _ in range(n)]
    ids, weights = routing.ngram_features(texts, None)
    mean = torch.randn(H, generator=torch.Generator().manual_seed(100 + cls)) * 2
    pooled = mean + torch.randn(n, LAYER + 1, H, generator=gen)
    return ({"pooled": pooled, "seg": pooled[:, :, None, :].repeat(1, 1, 2, 1),
             "ngram_ids": ids, "ngram_w": weights,
             "flags": routing.text_flags(texts, None)}, torch.full((n,), cls))


def merged(parts):
    feats = {}
    for key in parts[0][0]:
        width = max(p[0][key].shape[1] for p in parts) if parts[0][0][key].ndim == 2 else None
        feats[key] = torch.cat([nn.functional.pad(p[0][key], (0, width - p[0][key].shape[1]))
                                if width else p[0][key] for p in parts])
    return feats, torch.cat([p[1] for p in parts])


@pytest.fixture(scope="module")
def trained():
    feats, labels = merged([rows(c, 40, seed=0) for c in range(3)])
    cfg = routing.RouterConfig(variant="ngram", layer=LAYER, hidden=16, epochs=15, batch_size=32,
                               lr=1e-2)
    model = routing.build(cfg, 3, H, 2)
    routing.train_router(model, feats, labels)
    return model, feats, labels


def test_adding_an_expert_keeps_old_logits_and_learns_the_new_task(trained):
    model, feats, labels = trained
    held, held_labels = merged([rows(c, 20, seed=1) for c in range(3)])
    with torch.no_grad():
        before = model(held)
    replay = growth.replay_sample(labels, 10)
    new, _ = rows(3, 30, seed=0)
    grown, info = growth.grow_router(model, {k: v[replay] for k, v in feats.items()}, labels[replay],
                                     new, steps=60)
    assert grown.num_experts == 4 and info["rows_new"] == 30 and info["rows_replay"] == 30
    with torch.no_grad():
        after = grown(held)
        new_held = grown(rows(3, 20, seed=1)[0])
    torch.testing.assert_close(after[:, :3], before)        # old logits: bit for bit the same fn
    assert (after.argmax(-1) == held_labels).float().mean() >= 0.95
    assert (new_held.argmax(-1) == 3).float().mean() >= 0.95
    # the base router's parameters did not move
    assert all(not p.requires_grad for p in grown.base.parameters())

    # grow again: the first added row is kept as it was
    old_feats, old_labels = merged([(({k: v[replay] for k, v in feats.items()}), labels[replay]),
                                    (new, torch.full((30,), 3))])
    fifth, _ = rows(4, 30, seed=0)
    grown2, _ = growth.grow_router(grown, old_feats, old_labels, fifth, steps=60)
    assert grown2.num_experts == 5
    torch.testing.assert_close(grown2.weight[0], grown.weight[0])
    with torch.no_grad():
        torch.testing.assert_close(grown2(held)[:, :4], after)
        assert (grown2(rows(4, 20, seed=1)[0]).argmax(-1) == 4).float().mean() >= 0.95

    # state round trip into a fresh grown router around a fresh base
    fresh_base = routing.build(model.config, 3, H, 2)
    fresh = growth.GrownRouter(fresh_base, 2, grown2.weight.shape[1], grown2.ngrams.shape[0])
    fresh.load_state_dict(grown2.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(held), grown2(held))


@pytest.mark.parametrize("source", growth.SOURCES)
def test_growing_a_fusion_router_uses_its_mlp(source):
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(4, 3 * 16, generator=gen) * 3
    labels = torch.arange(4).repeat_interleave(30)
    pooled = (means[labels] + torch.randn(len(labels), 3 * 16, generator=gen)).reshape(-1, 3, 16)
    feats = {"pooled": pooled, "surface": torch.zeros(len(labels), 2 * routing.SURFACE_DIM + 6)}
    old = labels < 3
    cfg = routing.RouterConfig(variant="fusion", layer=2, hidden=16, epochs=20, lr=1e-2)
    model = routing.build(cfg, 3, 16, 2)
    routing.train_router(model, {k: v[old] for k, v in feats.items()}, labels[old])
    assert growth.last_linear(model) is model.mlp[-1]
    grown, _ = growth.grow_router(model, {k: v[old] for k, v in feats.items()}, labels[old],
                                  {k: v[~old] for k, v in feats.items()}, source=source)
    width = {"hidden": 16, "input": 3 * 16 + 2 * routing.SURFACE_DIM + 6}
    width["both"] = width["hidden"] + width["input"]
    assert grown.ngrams is None and grown.source == source and grown.weight.shape == (1, width[source])
    with torch.no_grad():
        assert (grown(feats).argmax(-1) == labels).float().mean() >= 0.9


def test_errors():
    with pytest.raises(growth.GrowthError):
        growth.last_linear(nn.Sequential(nn.ReLU()))
    model = routing.build(routing.RouterConfig(variant="ngram", layer=LAYER), 3, H, 2)
    feats, labels = rows(0, 4, seed=0)
    with pytest.raises(growth.GrowthError, match="unknown"):
        growth.base_outputs(model, feats, source="nope")
    with pytest.raises(growth.GrowthError, match="needs rows"):
        growth.grow_router(model, feats, labels, {k: v[:0] for k, v in feats.items()})


def test_capture_budget_limits_old_rows_taken_by_the_new_expert(trained):
    model, feats, labels = trained
    # the new task looks like class 0: without a budget it takes many of class 0's rows
    new, _ = rows(0, 30, seed=5)
    replay = growth.replay_sample(labels, 10)
    calib, _ = merged([rows(c, 40, seed=2) for c in range(3)])
    free, info = growth.grow_router(model, {k: v[replay] for k, v in feats.items()}, labels[replay],
                                    new, steps=60)
    assert info["bias_shift"] == 0.0
    capped, info = growth.grow_router(model, {k: v[replay] for k, v in feats.items()}, labels[replay],
                                      new, calibration=calib, max_capture=0.05, steps=60)
    with torch.no_grad():
        taken_free = float((free(calib).argmax(-1) == 3).float().mean())
        taken = float((capped(calib).argmax(-1) == 3).float().mean())
    assert info["captured_before"] == pytest.approx(taken_free)
    assert taken_free > 0.05 and taken <= 0.05 + 1e-6 and info["bias_shift"] < 0
    torch.testing.assert_close(capped.weight, free.weight)      # only the bias moved
