"""Int8 storage of expert rows, one scale per TT core (``ExpertPool(storage=torch.int8)``).

A row of P numbers (an expert's cores, one after another) is kept as int8 codes and one float32
scale per core, the core's largest magnitude ÷ 127 (absmax quantisation): a core is one tensor of
one scale (α sits in the first core of each chain, so the cores of a row differ in magnitude by
orders; a scale shared across cores would zero the small ones). About 1.03 bytes a number for a
MiniLM expert instead of 4 (float32) or 2 (float16): 10,000 q,k,v,dense experts in ~0.35 GB. A
number's error is at most half a step, 0.4 % of its core's largest; the pool widens rows back to
its compute dtype before merging a chain, so only storage changes (answers measured against
float32 in ``bench serve``). Hand-written: torch's quantised tensors scale per tensor or per
channel of one tensor, not per segment of a flat row, and bring kernels we do not need.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def segment_ids(sizes: Sequence[int]) -> torch.Tensor:
    """[P] long: the segment (core) of each number of a row made of segments of ``sizes``."""
    return torch.repeat_interleave(torch.arange(len(sizes)),
                                   torch.tensor(list(sizes), dtype=torch.long))


def quantize(row: torch.Tensor, segments: torch.Tensor, count: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Row [P] (float) -> (codes [P] int8, scales [count] float32): each segment of ``segments``
    ([P] ids in 0..count-1) scaled by its absmax / 127; an all-zero segment gets scale 0."""
    wide = row.double()
    peak = torch.zeros(count, dtype=torch.float64, device=row.device).scatter_reduce(
        0, segments, wide.abs(), reduce="amax")                           # [count]
    scale = (peak / 127.0).float()
    step = scale.double()[segments]                                       # [P]
    codes = torch.where(step > 0, wide / step.clamp(min=1e-300), torch.zeros_like(wide))
    return codes.round().clamp(-127, 127).to(torch.int8), scale


def dequantize(codes: torch.Tensor, scales: torch.Tensor, segments: torch.Tensor,
               dtype: torch.dtype) -> torch.Tensor:
    """Codes [U, P] int8 and scales [U, count] -> rows [U, P] in ``dtype``."""
    return codes.to(dtype) * scales.to(dtype)[:, segments]
