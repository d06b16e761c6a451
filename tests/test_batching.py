"""Length-aware batching (ttmoe_core.batching): every row once, longest first, budgets kept,
answers back in input order, repeated rows found."""

from __future__ import annotations

import random

import pytest
import torch

from ttmoe_core import batching


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
