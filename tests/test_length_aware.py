"""Length-aware batching where experts are evaluated and routers read features (same answers as
row by row, input order kept, duplicates and truncated rows included), training on length buckets,
and upper-layer experts (``ExpertConfig.min_layer``): trained, saved, reloaded, served."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.tinymodels import SAMPLES, tiny_bert, tiny_expert
from ttmoe_core import adapters, experts, routing, store, tasks
from ttmoe_core.base import backbone
from ttmoe_core.moe import TTLoRAMoE
from ttmoe_core.moe.pool import ExpertPool

MAX_LENGTH = 24


@pytest.fixture(scope="module")
def bb():
    return tiny_bert(seed=0)


@pytest.fixture(scope="module")
def rows() -> tuple[list[str], list[str | None]]:
    """Pairs and singles of three tasks, long rows (truncated at MAX_LENGTH), duplicates."""
    texts, pairs = [], []
    for task in ("mnli", "sst2", "rte"):
        data = tasks.load_task(task, "validation", data_dir=SAMPLES, limit=5, seed=0)
        texts += data.texts
        pairs += data.text_pairs or [None] * len(data)
    long = " ".join(f"word{i}" for i in range(3 * MAX_LENGTH))
    texts += [long, texts[0], long, "short"]
    pairs += [None, pairs[0], "a pair", None]
    return texts, pairs


def test_expert_evaluation_in_micro_batches_equals_row_by_row(bb, rows):
    expert = tiny_expert(bb, "sst2", rank=3, steps=1)
    model = experts.build_expert_model(expert, bb).double().eval()
    texts, pairs = rows
    got = experts.predict_logits(model, bb, texts, pairs, MAX_LENGTH, batch_size=3, max_tokens=40)
    with torch.no_grad():
        want = torch.cat([model(backbone.tokenize(bb.tokenizer, [t], [p] if p else None,
                                                  MAX_LENGTH, bb.device)) for t, p in zip(texts, pairs)])
    torch.testing.assert_close(got, want.float(), rtol=0, atol=1e-6)


def test_router_features_in_micro_batches_equal_row_by_row(bb, rows):
    texts, pairs = rows
    for variant in ("fusion", "paper"):
        config = routing.RouterConfig(variant=variant, layer=1, max_length=MAX_LENGTH).resolved(2)
        model = copy_double(bb.model)
        done = []
        feats = routing.extract_features(model, bb.tokenizer, texts, pairs, config, batch_size=4,
                                         max_tokens=50, progress=lambda d, n: done.append((d, n)))
        assert done[-1] == (len(texts), len(texts)) and len(done) > 2
        for i, (text, pair) in enumerate(zip(texts, pairs)):
            batch = backbone.tokenize(bb.tokenizer, [text], [pair], MAX_LENGTH, bb.device)
            alone = routing.batch_features(model, batch, [text], [pair], config)
            for key, value in alone.items():
                torch.testing.assert_close(feats[key][i], value[0].cpu().float(), rtol=0,
                                           atol=1e-6)


def copy_double(model):
    import copy

    return copy.deepcopy(model).double()


def test_training_on_length_buckets_is_repeatable_and_learns(bb):
    config = experts.ExpertConfig(task="sst2", rank=3, steps=6, batch_size=4, max_length=32,
                                  seed=0, device="cpu", train_limit=24, eval_limit=8,
                                  init="kaiming")
    first = experts.train_expert(config, bb, data_dir=SAMPLES, log_every=1)
    again = experts.train_expert(config, bb, data_dir=SAMPLES, log_every=1)
    shuffled = experts.train_expert(dataclasses.replace(config, length_buckets=False), bb,
                                    data_dir=SAMPLES, log_every=1)
    assert [h["loss"] for h in first.history] == [h["loss"] for h in again.history]
    assert [h["loss"] for h in first.history] != [h["loss"] for h in shuffled.history]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in first.history)
    assert first.config.length_buckets and not shuffled.config.length_buckets


def test_fit_draws_bucketed_batches_when_given_lengths():
    seen = []
    model = torch.nn.Module()
    model.encoder = torch.nn.Linear(1, 1).requires_grad_(False)
    model.head = torch.nn.Linear(1, 1)
    lengths = [5 + i // 2 if i % 2 else 50 + i for i in range(16)]    # 8 short, 8 long rows

    def loss(batch_rows):
        seen.append(sorted(batch_rows))
        return model.head(torch.ones(len(batch_rows), 1)).sum()

    config = experts.ExpertConfig(task="x", steps=8, batch_size=2, lr=0.1).resolved()
    experts.fit(model, loss, len(lengths), config, torch.Generator().manual_seed(0),
                lengths=lengths)
    assert sorted(r for b in seen for r in b) == list(range(16))   # one epoch, every row once
    assert all((lengths[a] < 20) == (lengths[b] < 20) for a, b in seen)   # short with short


# ----------------------------------------------------------------------------- upper-layer experts


@pytest.fixture(scope="module")
def upper(bb):
    """An sst2 expert adapting layer 1 only (of 2), trained a few steps (kaiming: nonzero)."""
    config = experts.ExpertConfig(task="sst2", rank=3, steps=3, batch_size=4, seed=0,
                                  max_length=MAX_LENGTH, device="cpu", train_limit=16,
                                  eval_limit=8, init="kaiming", min_layer=1)
    return experts.train_expert(config, bb, data_dir=SAMPLES, name="sst2-upper")


def test_min_layer_trains_only_the_upper_layers(bb, upper):
    cores = {k: v for k, v in upper.tensors.items() if ".cores." in k}
    lower = {k: v for k, v in cores.items() if adapters.layer_index(k) < 1}
    assert lower and all(not v.any() for v in lower.values())            # ΔW = 0 below layer 1
    assert all(v.any() for k, v in cores.items() if k not in lower)
    model = experts.build_expert_model(upper, bb)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("layer.0." not in n for n in trainable)
    assert upper.config.min_layer == 1


def test_min_layer_is_recorded_and_round_trips_through_the_store(upper, bb, tmp_path):
    import json

    store.save_expert(upper, tmp_path / "e")
    data = json.loads((tmp_path / "e" / store.CONFIG_FILE).read_text())
    assert data["training"]["min_layer"] == 1 and data["training"]["length_buckets"] is True
    loaded = store.load_expert(tmp_path / "e")
    assert loaded.config.min_layer == 1
    assert ExpertPool.from_experts([loaded]).gather(torch.tensor([0])).first_layer == 1
    assert ExpertPool.open_folders([tmp_path / "e"]).gather(torch.tensor([0])).first_layer == 1


@pytest.mark.parametrize("overrides, match", [({"min_layer": -1}, "min layer"),
                                              ({"min_layer": 1, "method": "lora"}, "tt-lora")])
def test_min_layer_bad_values(overrides, match):
    with pytest.raises(experts.ConfigError, match=match):
        experts.ExpertConfig(task="sst2", **overrides).resolved()


def test_min_layer_beyond_the_model_is_refused(bb):
    with pytest.raises(experts.ConfigError, match="0..1"):
        experts.build_expert_model(experts.ExpertConfig(task="sst2", min_layer=2), bb, num_labels=2)


def test_upper_expert_served_with_the_prefix_equals_its_own_model(bb, upper, rows):
    from tests.tinymodels import tiny_router

    trained_router = tiny_router(bb, [upper], variant="mlp", layers=(1,), epochs=1)[0]
    mixture = TTLoRAMoE(bb, [upper], trained_router, max_length=MAX_LENGTH).double()
    texts, pairs = rows
    out = mixture.predict(texts, pairs, batch_size=3)
    model = experts.build_expert_model(upper, bb).double().eval()
    want = experts.predict_logits(model, bb, texts, pairs, MAX_LENGTH)
    for got, logits in zip(out, want):
        torch.testing.assert_close(torch.tensor(list(got["label_probs"].values())),
                                   torch.softmax(logits.double(), -1).float(), atol=1e-6, rtol=0)
