"""Length-aware batching: rows sorted by token length, micro-batches cut by a token budget,
answers put back in input order.

A padded batch costs rows × its longest row, whatever the other rows hold; sorted rows make
neighbours alike, so micro-batches of them carry little padding and the cost tracks real tokens.
Pure functions on lengths and indices (no model, no tokenizer):

    batches = plan(lengths, max_tokens=2048, max_rows=16)      # [[row, ...], ...]
    batches = plan_by_group(lengths, experts, 1024, 16, 4)     # one expert a batch where it pays
    outputs = [run(rows) for rows in batches]                  # each [len(rows), ...]
    answer = restore_order(batches, outputs)                   # [N, ...] in input order

Training draws its batches from ``bucketed_batches``: rows of similar length together, yet every
row once per epoch in a random batch order, so a step's expected gradient is the full-data mean
as with uniformly shuffled batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Sequence

import torch

MAX_ROWS = 16          # rows per micro-batch when serving or evaluating (CPU-tuned)
MAX_TOKENS = 1024      # padded tokens (rows × longest row) per micro-batch (CPU-tuned)
GROUP_MIN_ROWS = 32    # serving: an expert with this many rows gets micro-batches of its own
OVERHEAD_TOKENS = 24   # a forward's fixed cost in padded tokens: MiniLM on one core costs
                       # ≈ 5 ms + 0.26 ms a token (bench/RESULTS.md, "Micro-batch plans")
BUCKET_BATCHES = 4     # training: a length bucket holds this many batches


def plan(lengths: Sequence[int], max_tokens: int | None, max_rows: int,
         overhead_tokens: int = OVERHEAD_TOKENS) -> list[list[int]]:
    """Micro-batches of row indices, longest rows first (equal lengths in input order).

    ``lengths[i]``: tokens of row i. A micro-batch holds at most ``max_rows`` rows, and its padded
    size (rows × its longest row) stays within ``max_tokens`` (None: no budget); a row longer than
    the budget goes alone. Every row appears in exactly one micro-batch. Among the cuts of the
    sorted rows into such runs, the one of least cost Σ (``overhead_tokens`` + padded tokens):
    a forward's fixed cost counted in tokens, so a long row is not made to pad a whole batch of
    short ones when a batch of its own costs less (dynamic programming over the sorted rows,
    O(N · max_rows)).
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    n = len(order)
    best = [0.0] + [math.inf] * n            # best[j]: least cost of the first j sorted rows
    cut = [0] * (n + 1)                      # cut[j]: where the last batch of that cost starts
    for j in range(1, n + 1):
        for i in range(j - 1, max(-1, j - 1 - max_rows), -1):
            rows, longest = j - i, lengths[order[i]]          # batch order[i:j]; order[i] longest
            if rows > 1 and max_tokens is not None and rows * longest > max_tokens:
                break                                          # longer runs only pad more
            cost = best[i] + overhead_tokens + rows * longest
            if cost < best[j]:
                best[j], cut[j] = cost, i
    batches: list[list[int]] = []
    j = n
    while j > 0:
        batches.append(order[cut[j]:j])
        j = cut[j]
    return batches[::-1]


def plan_by_group(lengths: Sequence[int], groups: Sequence[Hashable], max_tokens: int | None,
                  max_rows: int, min_rows: int) -> list[list[int]]:
    """``plan``'s micro-batches, but each group (e.g. the expert of a row) of at least
    ``min_rows`` rows is planned on its own, so its micro-batches hold that group only; the rows
    of smaller groups are planned together after them. Every row appears in exactly one
    micro-batch; groups in order of first appearance."""
    if min_rows < 1:
        raise ValueError(f"min_rows must be at least 1, got {min_rows}")
    if len(groups) != len(lengths):
        raise ValueError(f"{len(lengths)} lengths but {len(groups)} groups")
    members: dict[Hashable, list[int]] = {}
    for row, group in enumerate(groups):
        members.setdefault(group, []).append(row)
    batches: list[list[int]] = []
    mixed: list[int] = []
    for rows in members.values():
        if len(rows) < min_rows:
            mixed += rows
            continue
        batches += [[rows[i] for i in batch]
                    for batch in plan([lengths[r] for r in rows], max_tokens, max_rows)]
    mixed.sort()
    batches += [[mixed[i] for i in batch]
                for batch in plan([lengths[r] for r in mixed], max_tokens, max_rows)]
    return batches


def restore_order(batches: Sequence[Sequence[int]], outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-micro-batch outputs (``outputs[j]``: [len(batches[j]), ...]) as one tensor [N, ...] whose
    row i is row i's output; ``batches`` as given by ``plan`` (each row once)."""
    stacked = torch.cat(list(outputs))
    rows = torch.tensor([row for batch in batches for row in batch], dtype=torch.long,
                        device=stacked.device)
    if rows.numel() != stacked.shape[0]:
        raise ValueError(f"{rows.numel()} rows planned but {stacked.shape[0]} outputs")
    result = torch.empty_like(stacked)
    result[rows] = stacked
    return result


def distinct(keys: Sequence[Hashable]) -> tuple[list[int], list[int]]:
    """(first, slot): the index of the first row of each distinct key, in order of appearance,
    and for every row the position of its key in ``first`` (so a repeated row is computed once:
    ``answers_of_first[slot]`` is every row's answer)."""
    position: dict[Hashable, int] = {}
    first: list[int] = []
    slot = []
    for row, key in enumerate(keys):
        if key not in position:
            position[key] = len(first)
            first.append(row)
        slot.append(position[key])
    return first, slot


def bucketed_batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator,
                     bucket_batches: int = BUCKET_BATCHES) -> Iterator[list[int]]:
    """Endless training batches of row indices, epoch after epoch, drawn from ``generator``.

    Per epoch: rows sorted by length (ties in random order), cut into buckets of
    ``bucket_batches × batch_size`` neighbours; each bucket shuffled and cut into batches; all
    batches of the epoch in random order. Every row appears once per epoch; every batch is full but
    at most one per epoch (in the bucket of the longest rows).
    """
    if batch_size < 1 or bucket_batches < 1:
        raise ValueError(f"batch_size and bucket_batches must be >= 1, got {batch_size}, "
                         f"{bucket_batches}")
    while True:
        yield from bucketed_epoch(lengths, batch_size, generator, bucket_batches)


def bucketed_epoch(lengths: Sequence[int], batch_size: int, generator: torch.Generator,
                   bucket_batches: int = BUCKET_BATCHES) -> list[list[int]]:
    """One epoch of ``bucketed_batches`` (the same draws from ``generator``, in the same order)."""
    bucket = batch_size * bucket_batches
    ties = torch.randperm(len(lengths), generator=generator).tolist()
    order = sorted(ties, key=lambda row: lengths[row])           # stable: random ties
    batches = []
    for start in range(0, len(order), bucket):
        rows = order[start:start + bucket]
        rows = [rows[i] for i in torch.randperm(len(rows), generator=generator).tolist()]
        batches += [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def shuffled_epoch(num_rows: int, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """One epoch of uniformly shuffled mini-batches of the rows 0..num_rows-1."""
    order = torch.randperm(num_rows, generator=generator).tolist()
    return [order[start:start + batch_size] for start in range(0, num_rows, batch_size)]


class BatchStream:
    """Endless training batches, one epoch (``next_epoch()``: a list of batches) after another,
    whose position can be saved and restored: ``state_dict()`` holds the current epoch's batches
    and how many of them were used, so a resumed run draws exactly the batches an uninterrupted
    one would (with the generator's state saved at the same moment)."""

    def __init__(self, next_epoch: Callable[[], list[list[int]]]):
        self._next_epoch = next_epoch
        self._epoch: list[list[int]] = []
        self._used = 0
        self.epochs = 0

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> list[int]:
        if self._used >= len(self._epoch):
            self._epoch, self._used = self._next_epoch(), 0
            self.epochs += 1
            if not self._epoch:
                raise ValueError("an epoch of training batches is empty (no training rows)")
        self._used += 1
        return self._epoch[self._used - 1]

    def state_dict(self) -> dict:
        return {"epoch": [list(b) for b in self._epoch], "used": self._used, "epochs": self.epochs}

    def load_state_dict(self, state: dict) -> None:
        epoch = [[int(r) for r in batch] for batch in state["epoch"]]
        used = int(state["used"])
        if not 0 <= used <= len(epoch):
            raise ValueError(f"batch position {used} outside an epoch of {len(epoch)} batches")
        self._epoch, self._used, self.epochs = epoch, used, int(state.get("epochs", 0))
