"""Open-world scoring: AUROC against a brute-force count, the pool scorer separates rows far from
the pool's tasks, the threshold flags the chosen share of in-pool rows, state round trip,
growing by one task, the n-gram model, temperature and ECE."""

from __future__ import annotations

import itertools

import pytest
import torch

from ttmoe_core.routing import detector

D, E = 12, 3


def pool_rows(n_per_class: int, seed: int, shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows around three class means (fixed), moved by ``shift`` along every axis."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(E, D, generator=torch.Generator().manual_seed(99)) * 4
    labels = torch.arange(E).repeat_interleave(n_per_class)
    return means[labels] + torch.randn(len(labels), D, generator=gen) + shift, labels


def brute_auroc(pos, neg) -> float:
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_equals_pairwise_count_with_ties(seed):
    gen = torch.Generator().manual_seed(seed)
    pos = torch.randint(0, 6, (17,), generator=gen).float()
    neg = torch.randint(0, 6, (11,), generator=gen).float()
    assert detector.auroc(pos, neg) == pytest.approx(brute_auroc(pos.tolist(), neg.tolist()))
    assert detector.auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert detector.auroc(torch.tensor([0.0]), torch.tensor([1.0])) == 0.0
    with pytest.raises(detector.OpenWorldError):
        detector.auroc(torch.tensor([]), torch.tensor([1.0]))


def fitted() -> tuple[detector.PoolScorer, dict]:
    train, labels = pool_rows(60, seed=0)
    scorer = detector.PoolScorer.fit(train, labels, E, k=5)
    calib, _ = pool_rows(40, seed=1)
    logits = -torch.cdist(calib, scorer.means.float() * scorer.scale.float() + scorer.center.float())
    parts = scorer.components(calib, logits)
    return scorer, parts


def test_pool_scorer_separates_far_rows_and_flags_the_chosen_share():
    scorer, parts = fitted()
    assert set(parts) == {"maha", "knn", "msp", "energy"}
    threshold = scorer.calibrate(parts, max_false_flag=0.05, weights={"maha": 1.0, "knn": 1.0})
    inside, _ = pool_rows(100, seed=2)
    outside, _ = pool_rows(100, seed=3, shift=6.0)
    s_in, s_out = scorer.score(inside), scorer.score(outside)
    assert detector.auroc(s_in, s_out) > 0.99
    calib_scores = scorer.combine(parts)
    assert float((calib_scores < threshold).float().mean()) <= 0.05 + 1e-9
    report = detector.ood_report(s_in, {"far": s_out}, threshold)
    assert report["families"]["far"]["caught"] > 0.95 and report["false_flag"] < 0.15
    assert scorer.in_pool(s_in).float().mean() > 0.85
    with pytest.raises(detector.OpenWorldError, match="unknown components"):
        scorer.calibrate(parts, weights={"nope": 1.0})
    with pytest.raises(detector.OpenWorldError, match="not available"):
        scorer.combine({"maha": parts["maha"]})


def test_projected_scorer_keeps_separating_and_round_trips():
    train, labels = pool_rows(60, seed=0)
    scorer = detector.PoolScorer.fit(train, labels, E, k=5, dims=4)
    assert scorer.basis.shape == (D, 4) and scorer.precision.shape == (4, 4)
    torch.testing.assert_close(scorer.basis.T @ scorer.basis, torch.eye(4, dtype=torch.float64))
    parts = scorer.components(pool_rows(40, seed=1)[0])
    scorer.calibrate(parts, weights={"maha": 1.0, "knn": 1.0})
    inside, outside = pool_rows(50, seed=2)[0], pool_rows(50, seed=3, shift=6.0)[0]
    assert detector.auroc(scorer.score(inside), scorer.score(outside)) > 0.95
    again = detector.PoolScorer.from_state(scorer.state_dict(), sorted(scorer.z))
    torch.testing.assert_close(again.score(outside), scorer.score(outside))
    assert scorer.add_class(outside) == E and scorer.means.shape == (E + 1, 4)


def test_state_round_trip_gives_the_same_scores():
    scorer, parts = fitted()
    scorer.calibrate(parts, weights={"maha": 0.5, "knn": 2.0})
    state = scorer.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    again = detector.PoolScorer.from_state(state, sorted(scorer.z))
    rows, _ = pool_rows(10, seed=5, shift=1.0)
    torch.testing.assert_close(again.score(rows), scorer.score(rows), atol=1e-3, rtol=1e-4)
    assert again.threshold == scorer.threshold and again.weights == scorer.weights


def test_add_class_accepts_the_new_task_and_keeps_the_others():
    scorer, parts = fitted()
    scorer.calibrate(parts, weights={"maha": 1.0, "knn": 1.0})
    means, bank = scorer.means.clone(), scorer.bank.clone()
    new_rows, _ = pool_rows(60, seed=6, shift=6.0)
    before = scorer.score(new_rows)
    assert scorer.add_class(new_rows[:40]) == E
    torch.testing.assert_close(scorer.means[:E], means)
    torch.testing.assert_close(scorer.bank[: len(bank)], bank)
    after = scorer.score(new_rows[40:])
    assert float(after.mean()) > float(before.mean()) + 1.0


def test_scores_after_growing_match_a_scorer_built_from_the_same_tensors():
    scorer, parts = fitted()
    scorer.calibrate(parts, weights={"maha": 1.0, "knn": 1.0})
    rows, _ = pool_rows(20, seed=7, shift=2.0)

    def fresh() -> detector.PoolScorer:            # nothing computed before: no cached terms
        return detector.PoolScorer(scorer.center, scorer.scale, scorer.means, scorer.precision,
                                   scorer.bank, scorer.bank_labels, scorer.basis, k=scorer.k,
                                   z=scorer.z, weights=scorer.weights)

    assert torch.equal(scorer.components(rows)["maha"], fresh().components(rows)["maha"])
    scorer.add_class(pool_rows(40, seed=8, shift=6.0)[0])       # new means and bank
    for name in ("maha", "knn"):
        assert torch.equal(scorer.components(rows)[name], fresh().components(rows)[name])


def test_fit_rejects_bad_shapes():
    with pytest.raises(detector.OpenWorldError):
        detector.PoolScorer.fit(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), 2)


def test_ngram_model_prefers_the_style_it_saw():
    texts = ["what is the capital of france ?", "how do i learn python ?", "why is the sky blue ?",
             "the film is a charming journey .", "a dull , lifeless movie .", "great acting ."]
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    lm = detector.NgramLM.fit(texts, None, labels, 2, buckets=1 << 10)
    ll = lm.loglik(["What is the best way to learn French?", "A charming, lifeless film."], None)
    assert ll.shape == (2, 2) and ll.argmax(-1).tolist() == [0, 1]
    # casing and spacing do not matter (canonical text)
    torch.testing.assert_close(lm.loglik(["A dull, lifeless movie."], None),
                               lm.loglik(["a dull , lifeless movie ."], None))
    assert lm.add_class(["(a) one (b) two", "(a) red (b) blue"], None) == 2
    assert lm.loglik(["(a) green (b) two"], None).argmax(-1).item() == 2
    scorer, _ = fitted()
    rows, _ = pool_rows(2, seed=9)
    assert "lm" in scorer.components(rows, lm=ll[:1].repeat(len(rows), 1))


def test_temperature_and_ece():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (400,), generator=gen)
    logits = torch.randn(400, 4, generator=gen)
    logits[torch.arange(400), labels] += 1.0
    sharp = logits * 8                                          # over-confident
    t = detector.fit_temperature(sharp, labels)
    assert t > 3
    ece_before = detector.expected_calibration_error(torch.softmax(sharp, -1), labels)
    ece_after = detector.expected_calibration_error(torch.softmax(sharp / t, -1), labels)
    assert ece_after < ece_before
    assert torch.equal((sharp / t).argmax(-1), sharp.argmax(-1))


def test_float32_projection_agrees_with_float64():
    """The projection runs in float32; the projected rows and the scores equal a float64
    computation to ~1e-6 of their scale, on rows far from the training centre too."""
    train, labels = pool_rows(200, seed=0)
    scorer = detector.PoolScorer.fit(train * 50 + 300, labels, E, k=5, dims=4)  # offset, scale
    rows = torch.cat([pool_rows(40, seed=1)[0], pool_rows(40, seed=3, shift=6.0)[0]]) * 50 + 300
    got = scorer._project(rows)
    want = ((rows.double() - scorer.center) / scorer.scale) @ scorer.basis
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * float(want.abs().max()))
    maha = scorer.components(rows)["maha"]
    xp = want @ scorer.precision
    dist = ((xp * want).sum(1, keepdim=True) - 2 * xp @ scorer.means.T
            + ((scorer.means @ scorer.precision) * scorer.means).sum(1)[None])
    torch.testing.assert_close(maha.double(), -dist.min(1).values / want.shape[1],
                               rtol=1e-4, atol=1e-4)
