"""Length-aware batching (ttmoe_core.batching): every row once, longest first, budgets kept,
answers back in input order, repeated rows found."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

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


def greedy_cost(lengths, max_tokens, max_rows, overhead):
    """The cost of the old greedy plan (fill each micro-batch while it fits), for comparison."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches = []
    for row in order:
        cur = batches[-1] if batches else None
        if cur and len(cur) < max_rows and (max_tokens is None
                                            or (len(cur) + 1) * lengths[cur[0]] <= max_tokens):
            cur.append(row)
        else:
            batches.append([row])
    return sum(overhead + len(b) * lengths[b[0]] for b in batches)


def plan_cost(lengths, batches, overhead):
    return sum(overhead + len(b) * max(lengths[r] for r in b) for b in batches)


@settings(max_examples=150, deadline=None)
@given(lengths=st.lists(st.integers(1, 300), max_size=60),
       max_tokens=st.one_of(st.none(), st.integers(1, 2000)), max_rows=st.integers(1, 20),
       overhead=st.integers(0, 64))
def test_plan_is_the_cheapest_cut_of_the_sorted_rows(lengths, max_tokens, max_rows, overhead):
    """The plan keeps the rules and costs no more than greedy filling; on small inputs it is the
    optimum over every cut of the sorted rows (checked by brute force)."""
    batches = batching.plan(lengths, max_tokens, max_rows, overhead_tokens=overhead)
    check_plan(lengths, batches, max_tokens, max_rows)
    cost = plan_cost(lengths, batches, overhead)
    assert cost <= greedy_cost(lengths, max_tokens, max_rows, overhead)
    if len(lengths) <= 9:
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        best = math.inf
        for cuts in itertools.product([False, True], repeat=max(0, len(order) - 1)):
            parts, start = [], 0
            for i, cut in enumerate(cuts, start=1):
                if cut:
                    parts.append(order[start:i])
                    start = i
            parts.append(order[start:])
            if all(len(p) <= max_rows and (len(p) == 1 or max_tokens is None
                                           or len(p) * lengths[p[0]] <= max_tokens)
                   for p in parts if p):
                best = min(best, plan_cost(lengths, [p for p in parts if p], overhead))
        assert cost == (best if order else 0)


def test_plan_gives_a_long_row_its_own_batch_when_that_is_cheaper():
    # one row of 100 tokens and 15 of 5: greedy pads all 16 to 100 (1,600 tokens)
    lengths = [100] + [5] * 15
    assert batching.plan(lengths, 2048, 16, overhead_tokens=24) == [[0], list(range(1, 16))]
    assert len(batching.plan(lengths, 2048, 16, overhead_tokens=10_000)) == 1


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(1, 200), st.integers(0, 5)), max_size=80),
       min_rows=st.integers(1, 20), max_rows=st.integers(1, 16))
def test_plan_by_group_keeps_large_groups_apart(rows, min_rows, max_rows):
    lengths = [length for length, _ in rows]
    groups = [group for _, group in rows]
    batches = batching.plan_by_group(lengths, groups, 1024, max_rows, min_rows)
    flat = sorted(r for b in batches for r in b)
    assert flat == list(range(len(rows)))                                   # every row once
    sizes = {g: groups.count(g) for g in groups}
    for batch in batches:
        assert 1 <= len(batch) <= max_rows
        if len(batch) > 1:
            assert len(batch) * max(lengths[r] for r in batch) <= 1024
        members = {groups[r] for r in batch}
        if any(sizes[g] >= min_rows for g in members):
            assert len(members) == 1                                        # a large group alone
    with pytest.raises(ValueError):
        batching.plan_by_group([1, 2], [0], 100, 4, 2)
    with pytest.raises(ValueError):
        batching.plan_by_group([1], [0], 100, 4, 0)
