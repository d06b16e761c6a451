"""Tests of ttmoe_core.tt against independent references (tensorly, explicit index loops, SVD
bounds, the paper's parameter count). All numerics in float64."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from ttmoe_core import tt

DT = torch.float64

# (in factors, out factors, rank): 2, 3 and 4 modes per side, unequal d_in / d_out, int and list ranks
CASES = [
    ([2, 3], [3, 2], 2),
    ([4, 3], [5, 2], 3),
    ([2, 3, 2], [5, 3], 4),
    ([3, 2, 2, 2], [2, 2, 5], [2, 3, 4, 3, 2, 2]),
    ([4, 4], [2, 3, 2, 2], [3, 5, 2, 4, 3]),
    ([6, 8], [4, 2], 1),
]


def _random_cores(m, n, rank, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(shape, generator=g, dtype=DT) for shape in tt.core_shapes(m, n, rank)]


def _tensorly_delta_w(cores, m, n):
    """ΔW [d_out, d_in] through tensorly's own TT -> full tensor (numpy backend)."""
    import tensorly as tl

    with tl.backend_context("numpy"):
        full = tl.tt_to_tensor([c.numpy() for c in cores])
    assert full.shape == tuple(m) + tuple(n)
    return torch.from_numpy(np.ascontiguousarray(full.reshape(math.prod(m), math.prod(n)).T))


# ----------------------------------------------------------------------------- shapes


def _largest_prime(n: int) -> int:
    largest, p = 1, 2
    while p * p <= n:
        while n % p == 0:
            largest, n = p, n // p
        p += 1
    return max(largest, n) if n > 1 else largest


def test_factorize_product_count_and_balance():
    for n in range(1, 1500):
        p_max = _largest_prime(n)
        for k in range(1, 6):
            f = tt.factorize(n, k)
            assert len(f) == k and math.prod(f) == n, (n, k, f)
            assert all(isinstance(x, int) and x >= 1 for x in f)
            assert f == sorted(f, reverse=True)
            # greedy bound: the largest slot was the smallest when it got its last prime
            assert max(f) <= min(f) * p_max, (n, k, f)


@pytest.mark.parametrize("exp,k", [(11, 4), (12, 3), (9, 3), (10, 2), (16, 4), (7, 7)])
def test_factorize_powers_of_two_are_nearly_equal(exp, k):
    f = tt.factorize(2 ** exp, k)
    assert math.prod(f) == 2 ** exp and max(f) / min(f) <= 2


def test_factorize_errors():
    for n, k in [(0, 2), (-4, 2), (6, 0), (6, -1)]:
        with pytest.raises(ValueError):
            tt.factorize(n, k)


def test_factorize_prime_goes_to_one_slot():
    assert tt.factorize(13, 3) == [13, 1, 1]
    assert tt.factorize(1, 2) == [1, 1]


def test_default_factors_fit_dimensions():
    for d_in, d_out in [(384, 384), (768, 768), (2048, 512), (48, 24), (12, 7)]:
        m, n = tt.default_factors(d_in, d_out)
        assert math.prod(m) == d_in and math.prod(n) == d_out
        assert len(m) >= 2 and len(n) >= 2


def test_split_shape_paper_shapes():
    assert tt.split_shape([16, 8, 4, 4, 4, 4, 8, 16], 2048, 2048) == ([16, 8, 4, 4], [4, 4, 8, 16])
    assert tt.split_shape([16, 16, 4, 2, 2, 16, 16], 2048, 512) == ([16, 16, 4, 2], [2, 16, 16])
    # RoBERTa-base q/v shape of the paper
    assert tt.split_shape([64, 4, 3, 3, 4, 64], 768, 768) == ([64, 4, 3], [3, 4, 64])


@pytest.mark.parametrize("shape,d_in,d_out", [
    ([16, 8, 4, 4, 4, 4, 8, 8], 2048, 2048),     # output product 1024
    ([16, 16, 4, 2, 2, 16, 16], 2048, 2048),     # v_proj shape on a square layer
    ([16, 8, 4, 4], 2048, 2048),                 # no output factors
    ([3, 5, 4], 12, 5),                          # no prefix multiplies to d_in
    ([4, 0, 3], 4, 3),                           # factor < 1
    ([4, 3, 2, 3], 12, 5),
])
def test_split_shape_wrong_products(shape, d_in, d_out):
    with pytest.raises(ValueError):
        tt.split_shape(shape, d_in, d_out)


@pytest.mark.parametrize("m,n,rank", CASES)
def test_core_shapes_and_param_count_match_init_tensors(m, n, rank):
    shapes = tt.core_shapes(m, n, rank)
    modes = m + n
    assert [s[1] for s in shapes] == modes
    assert shapes[0][0] == 1 and shapes[-1][2] == 1
    assert all(shapes[k][2] == shapes[k + 1][0] for k in range(len(shapes) - 1))
    cores = tt.init_cores(shapes, "kaiming", generator=torch.Generator().manual_seed(0))
    assert [tuple(c.shape) for c in cores] == [tuple(s) for s in shapes]
    assert tt.param_count(shapes) == sum(c.numel() for c in cores)


def test_paper_reference_parameter_count():
    """LLaMA-3.2-1B, rank 5, q_proj + v_proj in 16 layers: 33,920 parameters (the paper)."""
    q = tt.core_shapes(*tt.split_shape([16, 8, 4, 4, 4, 4, 8, 16], 2048, 2048), 5)
    v = tt.core_shapes(*tt.split_shape([16, 16, 4, 2, 2, 16, 16], 2048, 512), 5)
    assert 16 * (tt.param_count(q) + tt.param_count(v)) == 33_920


def test_ranks_for():
    assert tt.ranks_for(4, 3) == [1, 3, 3, 3, 1]
    assert tt.ranks_for(4, [2, 3, 4]) == [1, 2, 3, 4, 1]
    assert tt.ranks_for(4, [1, 2, 3, 4, 1]) == [1, 2, 3, 4, 1]
    for bad in (0, [2, 3], [2, 0, 3], [2, 2, 3, 4, 1]):
        with pytest.raises(ValueError):
            tt.ranks_for(4, bad)


@pytest.mark.parametrize("m,n", [([2, 3], [4, 2]), ([4, 3], [5, 2]), ([2, 3, 2], [5, 3])])
def test_max_ranks_are_unfolding_ranks(m, n):
    """Full TT ranks = ranks of the unfoldings of a generic (random) tensor."""
    modes = m + n
    tensor = torch.randn(modes, dtype=DT, generator=torch.Generator().manual_seed(0))
    ranks = [1] + [int(torch.linalg.matrix_rank(tensor.reshape(math.prod(modes[:k]), -1)))
                   for k in range(1, len(modes))] + [1]
    assert tt.max_ranks(m, n) == ranks


# ----------------------------------------------------------------------------- contraction


@pytest.mark.parametrize("m,n,rank", CASES)
@pytest.mark.parametrize("lead", [(7,), (3, 5)])
def test_contract_equals_dense_product(m, n, rank, lead):
    cores = _random_cores(m, n, rank, seed=1)
    x = torch.randn(*lead, math.prod(m), dtype=DT, generator=torch.Generator().manual_seed(2))
    dense = tt.reconstruct(cores, m, n)
    assert dense.shape == (math.prod(n), math.prod(m))
    expected = x @ dense.T
    for fn in (tt.tt_contract, tt.tt_contract_sequential):
        got = fn(x, cores, m, n)
        assert got.shape == (*lead, math.prod(n))
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("m,n,rank", CASES)
def test_reconstruct_equals_tensorly(m, n, rank):
    cores = _random_cores(m, n, rank, seed=3)
    torch.testing.assert_close(tt.reconstruct(cores, m, n), _tensorly_delta_w(cores, m, n),
                               rtol=0, atol=1e-12)


def test_contract_against_explicit_index_loops():
    """Independent reference: T[i1,i2,j1,j2] = G1[0,i1,:] G2[:,i2,:] G3[:,j1,:] G4[:,j2,0]."""
    m, n, rank = [2, 3], [3, 2], 2
    cores = _random_cores(m, n, rank, seed=4)
    g1, g2, g3, g4 = (c.numpy() for c in cores)
    d_in, d_out = 6, 6
    dw = np.zeros((d_out, d_in))
    for i1, i2, j1, j2 in itertools.product(range(2), range(3), range(3), range(2)):
        value = 0.0
        for a, b, c in itertools.product(range(rank), repeat=3):
            value += g1[0, i1, a] * g2[a, i2, b] * g3[b, j1, c] * g4[c, j2, 0]
        dw[j1 * 2 + j2, i1 * 3 + i2] = value   # row-major flattening of (n1, n2) and (m1, m2)
    dw = torch.from_numpy(dw)
    torch.testing.assert_close(tt.reconstruct(cores, m, n), dw, rtol=0, atol=1e-12)
    x = torch.randn(4, d_in, dtype=DT, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(tt.tt_contract(x, cores, m, n), x @ dw.T, rtol=0, atol=1e-12)


def test_contract_is_linear_in_x():
    m, n = [4, 3], [5, 2]
    cores = _random_cores(m, n, 3, seed=6)
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(3, 12, dtype=DT, generator=g), torch.randn(3, 12, dtype=DT, generator=g)
    torch.testing.assert_close(tt.tt_contract(2.5 * x - y, cores, m, n),
                               2.5 * tt.tt_contract(x, cores, m, n) - tt.tt_contract(y, cores, m, n),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("m,n,rank", CASES)
def test_contract_per_row_uses_each_rows_cores(m, n, rank):
    batch, tokens = 4, 3
    chains = [_random_cores(m, n, rank, seed=10 + b) for b in range(batch)]
    stacked = [torch.stack([chain[k] for chain in chains]) for k in range(len(chains[0]))]
    x = torch.randn(batch, tokens, math.prod(m), dtype=DT, generator=torch.Generator().manual_seed(8))
    expected = torch.stack([tt.tt_contract(x[b], chains[b], m, n) for b in range(batch)])
    for fn in (tt.tt_contract_per_row, tt.tt_contract_per_row_sequential):
        torch.testing.assert_close(fn(x, stacked, m, n), expected, rtol=0, atol=1e-12)
    # the rows really differ: using row 0's cores for every row gives something else
    assert not torch.allclose(expected[1], tt.tt_contract(x[1], chains[0], m, n))


# ----------------------------------------------------------------------------- TT-SVD


@pytest.mark.parametrize("m,n", [([2, 3], [3, 2]), ([4, 3], [5, 2]), ([2, 3, 2], [5, 3])])
def test_tt_svd_full_rank_round_trip(m, n):
    matrix = torch.randn(math.prod(n), math.prod(m), dtype=DT, generator=torch.Generator().manual_seed(9))
    cores = tt.tt_svd(matrix, m, n, tt.max_ranks(m, n))
    assert [tuple(c.shape) for c in cores] == [tuple(s) for s in tt.core_shapes(m, n, tt.max_ranks(m, n))]
    assert all(c.dtype == DT for c in cores)
    torch.testing.assert_close(tt.reconstruct(cores, m, n), matrix, rtol=0, atol=1e-10)


def _unfolding_tail_errors(matrix, m, n, ranks):
    """||tail singular values|| of each unfolding T[s_1..s_k ; s_k+1..] beyond rank r_k."""
    modes = m + n
    tensor = matrix.T.reshape(modes)
    errors = []
    for k in range(1, len(modes)):
        unfolding = tensor.reshape(math.prod(modes[:k]), -1)
        sigma = torch.linalg.svdvals(unfolding)
        errors.append(float(sigma[ranks[k]:].square().sum().sqrt()))
    return errors


def test_tt_svd_low_rank_error_bounds_and_monotone():
    m, n = [4, 3], [3, 4]
    matrix = torch.randn(12, 12, dtype=DT, generator=torch.Generator().manual_seed(11))
    full = tt.max_ranks(m, n)
    previous = math.inf
    for r in range(1, max(full) + 1):
        ranks = [min(r, f) for f in full]
        cores = tt.tt_svd(matrix, m, n, ranks)
        error = float((tt.reconstruct(cores, m, n) - matrix).norm())
        tails = _unfolding_tail_errors(matrix, m, n, ranks)
        # Oseledets (2011), Thm 2.2: max_k tail_k <= ||A - TT-SVD(A)|| <= sqrt(sum_k tail_k^2)
        assert max(tails) - 1e-9 <= error <= math.sqrt(sum(t * t for t in tails)) + 1e-9
        assert error <= previous + 1e-12
        previous = error
    assert previous < 1e-10


def test_tt_svd_rejects_wrong_factors():
    with pytest.raises(ValueError):
        tt.tt_svd(torch.zeros(6, 6, dtype=DT), [2, 2], [3, 2], 2)


# ----------------------------------------------------------------------------- init


@pytest.mark.parametrize("m,n,rank", CASES)
def test_init_zero_gives_zero_update(m, n, rank):
    cores = tt.init_cores(tt.core_shapes(m, n, rank), "zero", dtype=DT,
                          generator=torch.Generator().manual_seed(0))
    dense = tt.reconstruct(cores, m, n)
    assert torch.equal(dense, torch.zeros_like(dense))
    # only the last core is zero: the others still carry signal (so gradients reach them later)
    assert all(c.norm() > 0 for c in cores[:-1]) and cores[-1].abs().sum() == 0


@pytest.mark.parametrize("m,n,rank", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_init_kaiming_unit_norm_cores_and_nonzero_update(m, n, rank, dtype):
    cores = tt.init_cores(tt.core_shapes(m, n, rank), "kaiming", dtype=dtype,
                          generator=torch.Generator().manual_seed(0))
    assert all(c.dtype == dtype for c in cores)
    for core in cores:
        assert abs(float(core.double().norm()) - 1.0) < 1e-5
    assert float(tt.reconstruct([c.double() for c in cores], m, n).abs().max()) > 0


def test_init_kaiming_small_cores_have_unit_norm():
    shapes = [(1, 2, 1)]
    worst = 0.0
    for seed in range(300):
        (core,) = tt.init_cores(shapes, "kaiming", dtype=DT, generator=torch.Generator().manual_seed(seed))
        worst = max(worst, abs(float(core.norm()) - 1.0))
    assert worst < 1e-9


def test_init_unknown_raises():
    with pytest.raises(ValueError, match="init"):
        tt.init_cores(tt.core_shapes([2, 2], [2, 2], 2), "xavier")


def test_init_generator_is_deterministic():
    shapes = tt.core_shapes([4, 3], [5, 2], 3)
    a = tt.init_cores(shapes, "kaiming", generator=torch.Generator().manual_seed(42))
    b = tt.init_cores(shapes, "kaiming", generator=torch.Generator().manual_seed(42))
    c = tt.init_cores(shapes, "kaiming", generator=torch.Generator().manual_seed(43))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
