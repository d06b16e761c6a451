"""Block-wise int8 rows (moe.quant) against float64: error bound, zeros, padding, shapes."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ttmoe_core.moe import quant
from ttmoe_core.runtime import precision

rows = hnp.arrays(np.float64, st.integers(1, 200),
                  elements=st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False))


@settings(max_examples=200, deadline=None)
@given(rows, st.lists(st.integers(1, 60), min_size=1, max_size=8))
def test_round_trip_is_within_half_a_step_of_each_core(values, sizes):
    row = torch.from_numpy(values)
    sizes = (sizes * (1 + row.numel() // sum(sizes)))
    cut, total = [], 0
    for size in sizes:                                   # segments covering the row exactly
        take = min(size, row.numel() - total)
        if take > 0:
            cut.append(take)
            total += take
    segments = quant.segment_ids(cut)
    codes, scales = quant.quantize(row, segments, len(cut))
    assert codes.dtype == torch.int8 and scales.dtype == torch.float32 and scales.numel() == len(cut)
    back = quant.dequantize(codes[None], scales[None], segments, torch.float64)[0]
    assert back.shape == row.shape
    peak = torch.tensor([float(part.abs().max()) for part in row.split(cut)], dtype=torch.float64)
    bound = (peak / 127 * (0.5 + 1e-5))[segments]        # half a step (+ the scale's float32)
    assert bool(((back - row).abs() <= bound + 1e-12).all())
    assert int(codes.abs().max()) <= 127


def test_zero_cores_and_a_small_core_beside_a_large_one():
    row = torch.cat([torch.zeros(40), torch.tensor([127.0, -127.0, 1.0, 0.0]),
                     torch.full((10,), 1e-4)]).double()
    segments = quant.segment_ids([40, 4, 10])
    codes, scales = quant.quantize(row, segments, 3)
    assert scales[0] == 0 and bool((codes[:40] == 0).all())      # an all-zero core
    back = quant.dequantize(codes[None], scales[None], segments, torch.float64)[0]
    torch.testing.assert_close(back[40:43], row[40:43], rtol=0, atol=1e-6)   # on the grid: exact
    torch.testing.assert_close(back[44:], row[44:], rtol=1e-6, atol=0)        # its own scale


def test_storage_names():
    assert precision.parse_storage("int8") == torch.int8
    assert precision.parse_storage(None) is None
    with pytest.raises(ValueError, match="unknown pool dtype"):
        precision.parse_storage("int4")
