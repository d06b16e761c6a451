"""Routers: every variant learns separable features; noisy gating only in training; config errors;
the k-layer prefix equals transformers' own hidden states; layer sweeps; surface features."""

from __future__ import annotations

import math

import pytest
import torch

from tests.tinymodels import SAMPLES, tiny_bert
from ttmoe_core import routing
from ttmoe_core.base import backbone
from ttmoe_core.base import partial as layers
from ttmoe_core.routing import SURFACE_DIM, RouterConfig, RouterError

HIDDEN, LAYERS, EXPERTS = 16, 2, 3


def synthetic_features(n_per_class: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Features of every key a router reads; each class has its own mean (separable)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(EXPERTS, HIDDEN, generator=torch.Generator().manual_seed(123)) * 3
    surf_means = torch.randn(EXPERTS, 2 * SURFACE_DIM + 6,
                             generator=torch.Generator().manual_seed(321)) * 0.2
    labels = torch.arange(EXPERTS).repeat_interleave(n_per_class)
    n = labels.shape[0]
    pooled = means[labels][:, None, :] + torch.randn(n, LAYERS + 1, HIDDEN, generator=g)
    feats = {"pooled": pooled,
             "last": means[labels] + torch.randn(n, HIDDEN, generator=g),
             "mean_last": torch.randn(n, HIDDEN, generator=g),
             "surface": surf_means[labels] + 0.05 * torch.randn(n, 2 * SURFACE_DIM + 6, generator=g)}
    return feats, labels


@pytest.mark.parametrize("variant", sorted(routing.ROUTERS))     # ngram: tests/test_ngram.py
def test_each_variant_learns_separable_features(variant):
    train, train_labels = synthetic_features(40, seed=0)
    held, held_labels = synthetic_features(20, seed=1)
    cfg = RouterConfig(variant=variant, layer=1, hidden=32, epochs=30, batch_size=32, lr=1e-2)
    model = routing.build(cfg, EXPERTS, HIDDEN, LAYERS)
    assert isinstance(model, routing.ROUTERS[variant])
    assert routing.params(model) > 0
    history = routing.train_router(model, train, train_labels)
    assert len(history) == cfg.epochs and history[-1]["loss"] < history[0]["loss"]
    assert not model.training
    report = routing.evaluate_router(model, held, held_labels, ["a", "b", "c"])
    assert report.accuracy >= 0.9, report
    assert report.rows == len(held_labels)


def test_paper_router_noise_only_in_training():
    feats, _ = synthetic_features(5, seed=0)
    model = routing.build(RouterConfig(variant="paper"), EXPERTS, HIDDEN, LAYERS)
    model.train()
    a, b = model(feats), model(feats)
    assert not torch.equal(a, b)
    model.eval()
    c, d = model(feats), model(feats)
    assert torch.equal(c, d)
    torch.testing.assert_close(c, model.gate(feats["last"]))


def test_paper_router_forces_last_layer():
    cfg = RouterConfig(variant="paper", layer=0).resolved(LAYERS)
    assert cfg.layer == LAYERS
    assert RouterConfig(variant="mlp", layer=None).resolved(LAYERS).layer == LAYERS
    assert RouterConfig(variant="mlp", layer=1).resolved(LAYERS).layer == 1


@pytest.mark.parametrize("cfg", [RouterConfig(variant="attention"), RouterConfig(layer=LAYERS + 1),
                                 RouterConfig(variant="linear", layer=-1)])
def test_resolved_errors(cfg):
    with pytest.raises(RouterError):
        cfg.resolved(LAYERS)
    with pytest.raises(RouterError):
        routing.build(cfg, EXPERTS, HIDDEN, LAYERS)


def test_config_round_trip_and_unknown_keys():
    cfg = RouterConfig(variant="linear", layer=1, epochs=3)
    assert RouterConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(RouterError):
        RouterConfig.from_dict({**cfg.to_dict(), "bogus": 1})


# ----------------------------------------------------------------------------- tiny model


@pytest.fixture(scope="module")
def bb() -> backbone.Backbone:
    return tiny_bert(seed=0)


def test_hidden_states_prefix_equals_transformers_output(bb):
    texts = ["short", "a much longer sentence with quite a few more words in it", "mid length one"]
    pairs = [None, None, "and a second segment"]
    batch, _ = backbone.tokenize_mixed(bb.tokenizer, texts, pairs, 64, bb.device)
    mask = batch["attention_mask"]
    assert not bool(mask.all()), "the batch must contain padding"
    assert bool((batch["token_type_ids"] == 1).any())
    with torch.no_grad():
        want = bb.model(**batch, output_hidden_states=True).hidden_states
        for k in range(bb.info.num_layers + 1):
            got = layers.hidden_states(bb.model, batch, k)
            assert len(got) == k + 1
            for layer, (g, w) in enumerate(zip(got, want)):
                real = mask.bool()
                torch.testing.assert_close(g[real], w[real], rtol=1e-5, atol=1e-5,
                                           msg=f"k={k}, layer {layer}")
        assert len(layers.hidden_states(bb.model, batch)) == bb.info.num_layers + 1
    with pytest.raises(ValueError):
        layers.hidden_states(bb.model, batch, bb.info.num_layers + 1)


@pytest.fixture(scope="module")
def routing_sets():
    names = [("sst2", "sst2"), ("mnli", "mnli"), ("cola", "cola")]
    return (routing.routing_data(names, "train", 10, SAMPLES, 0),
            routing.routing_data(names, "validation", 6, SAMPLES, 0))


def test_routing_data_labels(routing_sets):
    train, held = routing_sets
    assert train.names == ["sst2", "mnli", "cola"]
    assert train.labels.tolist() == [0] * 10 + [1] * 10 + [2] * 10
    assert len(train.texts) == len(train.text_pairs) == 30
    assert all(p is None for p in train.text_pairs[:10]) and all(train.text_pairs[10:20])
    assert held.labels.shape[0] == 18


def check_report(report: routing.RouterReport, rows: int, names: list[str]) -> None:
    confusion = torch.tensor(report.confusion)
    assert confusion.shape == (len(names), len(names))
    assert int(confusion.sum()) == rows == report.rows
    assert math.isclose(report.accuracy, float(confusion.diag().sum()) / rows, abs_tol=1e-6)
    for i, name in enumerate(names):
        assert math.isclose(report.per_task[name],
                            float(confusion[i, i]) / max(1, int(confusion[i].sum())), abs_tol=1e-6)


@pytest.mark.parametrize("variant", ["linear", "fusion"])
def test_sweep_layers_one_result_per_layer(bb, routing_sets, variant):
    train, held = routing_sets
    cfg = RouterConfig(variant=variant, hidden=16, epochs=3)
    results = routing.sweep_layers(cfg, [0, 1, 2], bb, train, held)
    assert [r["layer"] for r in results] == [0, 1, 2]
    for r in results:
        assert r["cost"] == pytest.approx(r["layer"] / bb.info.num_layers)
        assert r["router"].config.layer == r["layer"]
        assert len(r["report"].history) == 3
        check_report(r["report"], len(held.labels), train.names)


def test_sweep_layers_of_the_ngram_variant(bb, routing_sets):
    assert set(routing.VARIANTS) == set(routing.ROUTERS) | {"ngram"}
    train, held = routing_sets
    results = routing.sweep_layers(RouterConfig(variant="ngram", hidden=16, epochs=3), [0, 1], bb,
                                   train, held)
    assert [r["layer"] for r in results] == [0, 1]
    for r in results:
        assert isinstance(r["router"], routing.NgramFusionRouter)
        check_report(r["report"], len(held.labels), train.names)


def test_sweep_paper_uses_last_layer_only(bb, routing_sets):
    train, held = routing_sets
    results = routing.sweep_layers(RouterConfig(variant="paper", epochs=2), [0, 1], bb, train, held)
    assert len(results) == 1
    assert results[0]["layer"] == bb.info.num_layers and results[0]["cost"] == 1.0
    check_report(results[0]["report"], len(held.labels), train.names)


def test_evaluate_router_confusion_matches_predictions():
    feats, labels = synthetic_features(7, seed=3)
    model = routing.build(RouterConfig(variant="linear", layer=0), EXPERTS, HIDDEN, LAYERS)
    report = routing.evaluate_router(model, feats, labels, ["a", "b", "c"])
    check_report(report, len(labels), ["a", "b", "c"])
    with torch.no_grad():
        pred = model(feats).argmax(-1)
    assert report.accuracy == pytest.approx(float((pred == labels).float().mean()))


# ----------------------------------------------------------------------------- surface


def test_surface_features():
    texts = ["Hello world.", "hello world.", "A pair"]
    pairs = [None, None, "Second part"]
    a = routing.surface_features(texts, pairs)
    b = routing.surface_features(texts, pairs)
    assert a.shape == (3, 2 * SURFACE_DIM + 6) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])            # case is visible
    assert torch.equal(a[0, SURFACE_DIM:2 * SURFACE_DIM], torch.zeros(SURFACE_DIM))  # no pair
    assert float(a[2, SURFACE_DIM:2 * SURFACE_DIM].abs().sum()) > 0
    assert torch.equal(routing.surface_features(texts[:2], None), a[:2])
    single = routing.surface_features(["Hello"], None)
    lower = routing.surface_features(["hello"], None)
    assert not torch.equal(single, lower)
