"""The ``ngram`` router: canonical text, hashed n-grams and flags are invariant to casing and to
GLUE-style tokenisation; features of a real batch have the documented shapes; the router learns
separable tasks with ``routing.train_router`` and routes lower-cased inputs as cased ones."""

from __future__ import annotations

import pytest
import torch

from tests.tinymodels import tiny_bert
from ttmoe_core import routing
from ttmoe_core.base import backbone

CASED = ["It's a charming, often affecting journey.", "Doesn't work (at all)!",
         "Why is the sky blue?"]
GLUE_STYLE = ["it 's a charming , often affecting journey .", "does n 't work ( at all ) !",
              "why is the sky blue ?"]


def test_canonical_merges_casing_and_tokenisation():
    for cased, glue in zip(CASED, GLUE_STYLE):
        assert routing.canonical(cased) == routing.canonical(glue) == glue
        assert routing.canonical(cased.upper()) == glue
    assert routing.canonical("does n't work .") == "does n 't work ."
    assert routing.canonical(None) == "" and routing.canonical("") == ""


def test_ngram_features_shapes_blocks_and_invariance():
    pairs = [None, "The Second Segment.", None]
    ids, weights = routing.ngram_features(CASED, pairs)
    assert ids.shape == weights.shape and ids.dtype == torch.long and ids.shape[0] == 3
    assert int(ids.max()) < 4 * routing.BUCKETS and int(ids.min()) >= 0
    # blocks: row 1 has a second segment (blocks 1 and 3), the others do not
    block = ids // routing.BUCKETS
    used = [set(block[r][weights[r] > 0].tolist()) for r in range(3)]
    assert used[0] == {0, 2} and used[1] == {0, 1, 2, 3} and used[2] == {0, 2}
    for r in range(3):   # each block's weights are l2-normalised
        for b in used[r]:
            sel = (block[r] == b) & (weights[r] > 0)
            assert float(weights[r][sel].pow(2).sum()) == pytest.approx(1.0, abs=1e-5)
    ids2, weights2 = routing.ngram_features(GLUE_STYLE, [p and p.lower() for p in pairs])
    assert torch.equal(ids, ids2) and torch.equal(weights, weights2)
    capped, _ = routing.ngram_features(["word " * 400], None, max_ngrams=16)
    assert capped.shape[1] == 16
    flags = routing.text_flags(CASED, pairs)
    assert flags.shape == (3, routing.FLAGS)
    assert torch.equal(flags, routing.text_flags(GLUE_STYLE, [p and p.upper() for p in pairs]))


def test_batch_features_shapes_and_casing_robustness():
    bb = tiny_bert()
    cfg = routing.RouterConfig(variant="ngram", layer=1)
    pairs = [None, "A hypothesis here.", None]

    def feats(texts, text_pairs):
        batch = backbone.tokenize(bb.tokenizer, texts, text_pairs, 32, torch.device("cpu"))
        return routing.batch_features(bb.model, batch, texts, text_pairs, cfg)

    cased = feats(CASED, pairs)
    hidden = bb.info.hidden_size
    assert cased["pooled"].shape == (3, 2, hidden) and cased["seg"].shape == (3, 2, 2, hidden)
    assert cased["flags"].shape == (3, routing.FLAGS)
    assert not cased["seg"][0, :, 1].any() and cased["seg"][1, :, 1].abs().sum() > 0
    lower = feats([t.lower() for t in CASED], [p and p.lower() for p in pairs])
    for key in cased:
        torch.testing.assert_close(cased[key], lower[key])
    model = routing.build(cfg, 4, hidden, bb.info.num_layers)
    with torch.no_grad():
        assert torch.equal(model.eval()(cased).argmax(-1), model(lower).argmax(-1))


def test_router_learns_separable_tasks_and_counts_its_parameters():
    gen = torch.Generator().manual_seed(0)
    texts = [["a movie with great acting", "the plot is thin"], ["why is it so", "how do i do it"],
             ["the cat sat", "a dog ran off"]]
    labels = torch.arange(3).repeat_interleave(30)
    rows = [texts[c][i % 2] + f" {i}" for i, c in enumerate(labels.tolist())]
    ids, weights = routing.ngram_features(rows, None)
    means = torch.randn(3, 8, generator=gen)
    pooled = means[labels][:, None] + 0.5 * torch.randn(len(rows), 2, 8, generator=gen)
    feats = {"pooled": pooled, "seg": pooled[:, :, None].repeat(1, 1, 2, 1), "ngram_ids": ids,
             "ngram_w": weights, "flags": routing.text_flags(rows, None)}
    cfg = routing.RouterConfig(variant="ngram", layer=1, hidden=16, epochs=20, lr=1e-2, batch_size=16)
    model = routing.build(cfg, 3, 8, 2)
    expected = 2 * 3 * 8 * 2 + (2 * 3 * 8 + routing.FLAGS) * 16 + 16 + 16 * 3 + 3 + 4 * routing.BUCKETS * 3
    assert routing.params(model) == expected
    history = routing.train_router(model, feats, labels)
    assert history[-1]["loss"] < history[0]["loss"]
    report = routing.evaluate_router(model, feats, labels, ["a", "b", "c"])
    assert report.accuracy >= 0.95
    # float ids (a caller that casts every feature to the router's dtype) give the same logits
    with torch.no_grad():
        torch.testing.assert_close(model({**feats, "ngram_ids": ids.float()}), model(feats))


def test_build_errors_and_layer_default():
    with pytest.raises(routing.RouterError, match="layer"):
        routing.build(routing.RouterConfig(variant="ngram", layer=5), 3, 8, 2)
    model = routing.build(routing.RouterConfig(variant="ngram", layer=None), 3, 8, 2)
    assert model.config.layer == 2
