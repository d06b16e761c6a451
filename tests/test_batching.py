"""Length-aware batching (ttmoe_core.batching): every row once, longest first, budgets kept,
answers back in input order, repeated rows found."""

from __future__ import annotations

import math
import random

import pytest
import torch

from ttmoe_core.base import batching


def check_plan(lengths: list[int], batches: list[list[int]], max_tokens: int | None,
               max_rows: int) -> None:
    flat = [row for batch in batches for row in batch]
    assert sorted(flat) == list(range(len(lengths)))                      # every row once
    assert [lengths[r] for r in flat] == sorted(lengths, reverse=True)    # longest first
    for batch in batches:
        assert 1 <= len(batch) <= max_rows
        width = max(lengths[r] for r in batch)
        assert lengths[batch[0]] == width
        if max_tokens is not None and len(batch) > 1:
            assert len(batch) * width <= max_tokens
    for row, nxt in zip(flat, flat[1:]):                                   # ties in input order
        if lengths[row] == lengths[nxt]:
            assert row < nxt


@pytest.mark.parametrize("seed", range(20))
def test_plan_keeps_budgets_and_sorts(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 130) for _ in range(rng.randint(1, 120))]
    max_tokens = rng.choice([None, 64, 300, 1000, 5000])
    max_rows = rng.randint(1, 40)
    check_plan(lengths, batching.plan(lengths, max_tokens, max_rows), max_tokens, max_rows)


def test_plan_examples():
    assert batching.plan([], 100, 4) == []
    assert batching.plan([3, 9, 3, 5], None, 2) == [[1, 3], [0, 2]]
    # 3 rows of 9 tokens fit a budget of 27, the 4th does not; a row over the budget goes alone
    assert batching.plan([9, 9, 9, 9, 40], 27, 10) == [[4], [0, 1, 2], [3]]
    # micro-batches of alike rows carry little padding: 96 rows of 10-128 tokens
    lengths = [10 + (37 * i) % 119 for i in range(96)]
    padded = sum(len(b) * lengths[b[0]] for b in batching.plan(lengths, 2048, 16))
    assert padded < 1.15 * sum(lengths) and len(lengths) * max(lengths) > 1.8 * sum(lengths)


@pytest.mark.parametrize("max_tokens, max_rows", [(0, 4), (10, 0)])
def test_plan_refuses_empty_budgets(max_tokens, max_rows):
    with pytest.raises(ValueError):
        batching.plan([1, 2], max_tokens, max_rows)


def test_restore_order_puts_rows_back():
    rng = random.Random(0)
    lengths = [rng.randint(1, 50) for _ in range(37)]
    batches = batching.plan(lengths, 120, 5)
    assert len(batches) > 3
    outputs = [torch.tensor([[float(r), lengths[r]] for r in rows]) for rows in batches]
    back = batching.restore_order(batches, outputs)
    assert back[:, 0].tolist() == list(range(len(lengths)))
    assert back[:, 1].tolist() == lengths
    with pytest.raises(ValueError):
        batching.restore_order(batches, outputs[:-1])


def test_distinct_finds_repeated_rows():
    keys = [("a", None), ("b", "x"), ("a", None), ("a", "x"), ("b", "x"), ("a", None)]
    first, slot = batching.distinct(keys)
    assert first == [0, 1, 3]
    assert slot == [0, 1, 0, 2, 1, 0]
    assert [keys[first[s]] for s in slot] == keys
    assert batching.distinct([]) == ([], [])


# ----------------------------------------------------------------------------- training buckets


def epochs(lengths, batch_size, seed, count, bucket_batches=batching.BUCKET_BATCHES):
    """``count`` epochs of batches (each epoch: as many batches as it has) from one stream."""
    stream = batching.bucketed_batches(lengths, batch_size, torch.Generator().manual_seed(seed),
                                       bucket_batches)
    bucket = batch_size * bucket_batches
    per_epoch = sum(math.ceil(min(bucket, len(lengths) - start) / batch_size)
                    for start in range(0, len(lengths), bucket))
    return [[next(stream) for _ in range(per_epoch)] for _ in range(count)]


@pytest.mark.parametrize("rows, batch_size", [(1, 4), (37, 4), (100, 8), (256, 32)])
def test_bucketed_batches_hold_every_row_once_per_epoch(rows, batch_size):
    rng = random.Random(rows)
    lengths = [rng.randint(3, 128) for _ in range(rows)]
    for epoch in epochs(lengths, batch_size, seed=1, count=3):
        flat = [r for batch in epoch for r in batch]
        assert sorted(flat) == list(range(rows))                            # every row once
        assert all(1 <= len(b) <= batch_size for b in epoch)
        assert sum(len(b) < batch_size for b in epoch) <= 1                 # one partial at most


def test_bucketed_batches_group_lengths_and_shuffle_buckets():
    rng = random.Random(0)
    lengths = [rng.randint(3, 128) for _ in range(640)]
    batch_size = 16
    first, second = epochs(lengths, batch_size, seed=2, count=2)
    # rows of a batch come from one bucket of 4 batches of neighbours in length order
    ranked = sorted(lengths)
    span = max(max(lengths[r] for r in b) - min(lengths[r] for r in b) for b in first)
    widest_bucket = max(ranked[i + 63] - ranked[i] for i in range(0, 640, 64))
    assert span <= widest_bucket < 0.2 * (max(lengths) - min(lengths))
    padded = sum(len(b) * max(lengths[r] for r in b) for b in first)
    assert padded < 1.1 * sum(lengths)
    # buckets in random order, not sorted by length, and another order the next epoch
    means = [sum(lengths[r] for r in b) / len(b) for b in first]
    assert means != sorted(means) and means != sorted(means, reverse=True)
    assert [sorted(b) for b in first] != [sorted(b) for b in second]
    # rows shuffled within their bucket: batch contents change between epochs
    assert {tuple(sorted(b)) for b in first} != {tuple(sorted(b)) for b in second}
    # the same generator seed gives the same stream
    assert epochs(lengths, batch_size, seed=2, count=1)[0] == first


def test_bucketed_batches_draw_every_row_uniformly_over_positions():
    """Same expected gradient as uniform batches: over many epochs, each row lands in the first
    half of the epoch's steps about half of the time."""
    lengths = [i % 50 + 1 for i in range(96)]
    hits = [0] * len(lengths)
    runs = epochs(lengths, 8, seed=3, count=400)
    for epoch in runs:
        for batch in epoch[: len(epoch) // 2]:
            for row in batch:
                hits[row] += 1
    assert all(0.38 < h / len(runs) < 0.62 for h in hits)


def test_bucketed_batches_refuse_empty_sizes():
    with pytest.raises(ValueError):
        next(batching.bucketed_batches([1, 2], 0, torch.Generator()))
