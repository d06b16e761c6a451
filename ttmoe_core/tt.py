"""Tensor-train (TT) math for TT-LoRA, as pure functions on tensors.

A TT-LoRA update of a linear layer ``W: d_out x d_in`` is a chain of ``p + q`` cores

    G_k : [r_{k-1}, s_k, r_k],   s = (m_1..m_p, n_1..n_q),   r_0 = r_{p+q} = 1,

with ``prod(m) = d_in`` and ``prod(n) = d_out``. The cores represent the tensor
``T[m_1..m_p, n_1..n_q]``; ``T.reshape(d_in, d_out)`` is ``ΔW^T``, so ``TT(x) = x @ ΔW^T``.
``tt_contract`` applies it to a batch without ever forming ``ΔW`` (p + q small einsums);
``reconstruct`` builds ``ΔW`` and exists to verify the contraction and to compare speed.

The per-row variant ``tt_contract_per_row`` takes a leading batch axis on every core, so each
row of a batch can use a different expert's cores (gathered by index: cost independent of E).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

Shape = tuple[int, ...]
CoreShape = tuple[int, int, int]


# ----------------------------------------------------------------------------- shapes


MAX_FACTORIZABLE = 1 << 40   # trial division to 2^20 at most: bounded time for any input


def prime_factors(n: int) -> list[int]:
    """Prime factors of ``n`` in ascending order (``1 <= n <= MAX_FACTORIZABLE``)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"cannot factorise {n!r}: must be a positive integer")
    if n > MAX_FACTORIZABLE:
        raise ValueError(f"cannot factorise {n}: larger than {MAX_FACTORIZABLE:,} (no layer is that wide)")
    factors, p = [], 2
    while p * p <= n:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    if n > 1:
        factors.append(n)
    return factors


def factorize(n: int, k: int) -> list[int]:
    """Split ``n`` into ``k`` integer factors as balanced as possible, largest first.

    Greedy: hand each prime factor (largest first) to the currently smallest slot.
    ``prod(result) == n`` always; factors of 1 appear only when ``n`` has fewer than ``k`` primes.
    """
    if k < 1:
        raise ValueError(f"number of factors must be >= 1, got {k}")
    slots = [1] * k
    for prime in sorted(prime_factors(n), reverse=True):
        slots[slots.index(min(slots))] *= prime
    return sorted(slots, reverse=True)


def default_num_factors(dim: int) -> int:
    """How many TT modes a dimension gets by default: about log_8(dim), at least 2."""
    return max(2, round(math.log(dim) / math.log(8)))


def default_factors(d_in: int, d_out: int) -> tuple[list[int], list[int]]:
    """Balanced input and output factors; output factors mirror the input order as in the paper."""
    m = factorize(d_in, default_num_factors(d_in))
    n = factorize(d_out, default_num_factors(d_out))[::-1]
    return m, n


def parse_shape(text: str) -> list[int]:
    """A typed TT shape: ``"16,8,4,4"`` or ``"8,8,6 | 6,8,8"`` -> ``[16, 8, 4, 4]`` (spaces
    ignored, ``|`` between input and output factors counts as a comma); ValueError when a part
    is not an integer. Whether it fits a layer is ``split_shape``'s check."""
    try:
        return [int(part) for part in text.replace(" ", "").replace("|", ",").split(",") if part]
    except ValueError:
        raise ValueError(f"TT shape {text!r} must be comma-separated integers") from None


def split_shape(shape: Sequence[int], d_in: int, d_out: int) -> tuple[list[int], list[int]]:
    """Split a flat TT shape into (input factors, output factors).

    The input factors are the shortest prefix whose product is ``d_in``; the rest must multiply to
    ``d_out``. Raises ``ValueError`` with the products found when the shape does not fit.
    """
    shape = [int(s) for s in shape]
    if any(s < 1 for s in shape):
        raise ValueError(f"TT shape {shape} has a factor < 1")
    prod = 1
    for i, s in enumerate(shape):
        prod *= s
        if prod == d_in:
            m, n = shape[: i + 1], shape[i + 1 :]
            if n and math.prod(n) == d_out:
                return m, n
            break
        if prod > d_in:
            break
    raise ValueError(
        f"TT shape {shape} does not fit a {d_out}x{d_in} layer: it needs a prefix multiplying to "
        f"d_in={d_in} followed by factors multiplying to d_out={d_out} "
        f"(whole product {math.prod(shape)}, expected {d_in * d_out})"
    )


def ranks_for(num_cores: int, rank: int | Sequence[int]) -> list[int]:
    """Rank vector ``[1, r, ..., r, 1]`` (length ``num_cores + 1``) from an int or explicit list."""
    if isinstance(rank, int):
        if rank < 1:
            raise ValueError(f"TT rank must be >= 1, got {rank}")
        return [1] + [rank] * (num_cores - 1) + [1]
    ranks = [int(r) for r in rank]
    if len(ranks) == num_cores - 1:
        ranks = [1] + ranks + [1]
    if len(ranks) != num_cores + 1 or ranks[0] != 1 or ranks[-1] != 1 or min(ranks) < 1:
        raise ValueError(f"rank list {list(rank)} does not fit {num_cores} cores")
    return ranks


def core_shapes(in_factors: Sequence[int], out_factors: Sequence[int],
                rank: int | Sequence[int]) -> list[CoreShape]:
    """Shapes ``[r_{k-1}, s_k, r_k]`` of the ``p + q`` cores."""
    modes = list(in_factors) + list(out_factors)
    ranks = ranks_for(len(modes), rank)
    return [(ranks[k], modes[k], ranks[k + 1]) for k in range(len(modes))]


def param_count(shapes: Sequence[Sequence[int]]) -> int:
    """Number of parameters of cores with these shapes: ``Σ_k r_{k-1} s_k r_k``."""
    return sum(math.prod(s) for s in shapes)


# ----------------------------------------------------------------------------- init


def init_cores(shapes: Sequence[CoreShape], init: str = "kaiming", *,
               generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Initial cores.

    ``"kaiming"``: the authors' init: each core Kaiming-uniform (a = √8), then divided by its
    Frobenius norm, so ``ΔW ≠ 0`` at step 0. ``"zero"``: the same, but the last core is zero, so
    ``ΔW = 0`` at step 0 as in LoRA (the other cores still receive gradient after step 1).
    """
    if init not in ("kaiming", "zero"):
        raise ValueError(f"unknown TT init {init!r}: use 'kaiming' or 'zero'")
    cores = []
    for shape in shapes:
        core = torch.empty(shape, dtype=torch.float64)
        # Kaiming-uniform on a [r_in, s, r_out] tensor: fan_in = s * r_out (torch's convention)
        fan_in = shape[1] * shape[2]
        gain = math.sqrt(2.0 / (1 + 8.0))
        bound = gain * math.sqrt(3.0 / fan_in)
        core.uniform_(-bound, bound, generator=generator)
        core /= core.norm()
        cores.append(core.to(dtype))
    if init == "zero":
        cores[-1] = torch.zeros_like(cores[-1])
    return cores


# ----------------------------------------------------------------------------- forward


def merge_cores(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Contract a run of cores among themselves: [r_a, s_1, .] ... [., s_j, r_b] -> [r_a·Πs, r_b].

    Leading batch axes are allowed (cores [..., r, s, r'] -> [..., r_a·Πs, r_b]).
    """
    lead = cores[0].shape[:-3]
    full = cores[0].reshape(*lead, -1, cores[0].shape[-1])
    for core in cores[1:]:
        # [..., S, r] @ [..., r, s·r'] -> [..., S·s, r']
        full = (full @ core.reshape(*lead, core.shape[-3], -1)).reshape(*lead, -1, core.shape[-1])
    return full


def tt_halves(cores: Sequence[torch.Tensor], in_factors: Sequence[int],
              out_factors: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The chain split at the input/output boundary: A [..., d_in, r_p] and B [..., r_p, d_out].

    ``ΔW^T = A @ B`` but it is never formed: ``TT(x) = (x @ A) @ B`` costs N·r_p·(d_in + d_out)
    plus O(d·r²) to merge the cores, independent of N.
    """
    p = len(in_factors)
    left = merge_cores(cores[:p])                                   # [..., d_in, r_p]
    right = merge_cores(cores[p:])                                  # [..., r_p·d_out, 1]
    return left, right.reshape(*right.shape[:-2], cores[p].shape[-3], -1)


def tt_contract(x: torch.Tensor, cores: Sequence[torch.Tensor], in_factors: Sequence[int],
                out_factors: Sequence[int]) -> torch.Tensor:
    """``TT(x) = x @ ΔW^T`` without forming ``ΔW``: x: [..., d_in] -> [..., d_out].

    Contraction order chosen for speed: each half of the chain is contracted first (tiny), then
    two skinny GEMMs with x. Same result as ``tt_contract_sequential`` (mode by mode).
    """
    left, right = tt_halves(cores, in_factors, out_factors)
    return (x @ left) @ right


def tt_contract_sequential(x: torch.Tensor, cores: Sequence[torch.Tensor],
                           in_factors: Sequence[int], out_factors: Sequence[int]) -> torch.Tensor:
    """``TT(x)`` contracting x with one core at a time (the paper's order).

    x: [..., d_in] -> [..., d_out]. State after input core k: [N, m_{k+1}..m_p, r_k];
    after output core k: [N, n_1..n_k, r_k].
    """
    lead = x.shape[:-1]
    num_rows = math.prod(lead)
    p = len(in_factors)
    # [N, m_1, R] with R = remaining input modes, rank axis last (r_0 = 1)
    state = x.reshape(num_rows, in_factors[0], -1, 1)
    for k in range(p):
        # state [N, m_k, R, r_{k-1}] · G_k [r_{k-1}, m_k, r_k] -> [N, R, r_k]
        state = torch.einsum("nmRr,rms->nRs", state, cores[k])
        if k + 1 < p:
            state = state.reshape(num_rows, in_factors[k + 1], -1, state.shape[-1])
    # state [N, 1, r_p] -> output cores append one n mode each
    state = state.reshape(num_rows, 1, -1)
    for k, core in enumerate(cores[p:]):
        # [N, A, r] · [r, n, s] -> [N, A, n, s] -> [N, A*n, s]
        state = torch.einsum("nAr,rbs->nAbs", state, core).reshape(num_rows, -1, core.shape[-1])
    return state.reshape(*lead, -1)


def tt_contract_per_row(x: torch.Tensor, cores: Sequence[torch.Tensor], in_factors: Sequence[int],
                        out_factors: Sequence[int]) -> torch.Tensor:
    """Like ``tt_contract`` but every core has a leading row axis: row b uses ``cores[k][b]``.

    x: [B, T, d_in], cores[k]: [B, r_{k-1}, s_k, r_k] -> [B, T, d_out].
    Used by the mixture: gather each row's expert cores by index (``bank[k][expert_idx]``).
    """
    left, right = tt_halves(cores, in_factors, out_factors)        # [B, d_in, r], [B, r, d_out]
    return torch.bmm(torch.bmm(x, left), right)


def tt_contract_per_row_sequential(x: torch.Tensor, cores: Sequence[torch.Tensor],
                                   in_factors: Sequence[int], out_factors: Sequence[int]) -> torch.Tensor:
    """``tt_contract_per_row`` contracting one core at a time (reference for tests)."""
    batch, tokens = x.shape[0], x.shape[1]
    p = len(in_factors)
    state = x.reshape(batch, tokens, in_factors[0], -1, 1)
    for k in range(p):
        # [B, T, m_k, R, r_{k-1}] · [B, r_{k-1}, m_k, r_k] -> [B, T, R, r_k]
        state = torch.einsum("btmRr,brms->btRs", state, cores[k])
        if k + 1 < p:
            state = state.reshape(batch, tokens, in_factors[k + 1], -1, state.shape[-1])
    state = state.reshape(batch, tokens, 1, -1)
    for core in cores[p:]:
        # [B, T, A, r] · [B, r, n, s] -> [B, T, A*n, s]
        state = torch.einsum("btAr,brns->btAns", state, core).reshape(
            batch, tokens, -1, core.shape[-1])
    return state.reshape(batch, tokens, -1)


def reconstruct(cores: Sequence[torch.Tensor], in_factors: Sequence[int],
                out_factors: Sequence[int]) -> torch.Tensor:
    """Dense ``ΔW`` [d_out, d_in] from the cores (for checks and the speed comparison only)."""
    left, right = tt_halves(cores, in_factors, out_factors)
    return (left @ right).T


def tt_svd(matrix: torch.Tensor, in_factors: Sequence[int], out_factors: Sequence[int],
           rank: int | Sequence[int]) -> list[torch.Tensor]:
    """TT-SVD (tensorly) of a dense ``ΔW`` [d_out, d_in] into cores in our mode order."""
    # optional: tensorly only for TT-SVD
    import tensorly as tl
    from tensorly.decomposition import tensor_train

    d_out, d_in = matrix.shape
    if math.prod(in_factors) != d_in or math.prod(out_factors) != d_out:
        raise ValueError(f"factors {list(in_factors)}|{list(out_factors)} do not fit {d_out}x{d_in}")
    modes = list(in_factors) + list(out_factors)
    tensor = matrix.T.reshape(modes).detach().cpu().double().numpy()
    ranks = ranks_for(len(modes), rank)
    with tl.backend_context("numpy"):
        factors = tensor_train(tensor, rank=ranks)
    return [torch.from_numpy(f.copy()).to(matrix.dtype) for f in factors]


def max_ranks(in_factors: Sequence[int], out_factors: Sequence[int]) -> list[int]:
    """Largest useful TT ranks (full rank): ``r_k = min(prod(s[:k]), prod(s[k:]))``."""
    modes = list(in_factors) + list(out_factors)
    return [min(math.prod(modes[:k]), math.prod(modes[k:])) for k in range(len(modes) + 1)]


# ----------------------------------------------------------------------------- ΔW spectra


def delta_w_singular_values(cores: Sequence[torch.Tensor], in_factors: Sequence[int],
                            out_factors: Sequence[int], alpha: float = 1.0) -> torch.Tensor:
    """All singular values σ_1 ≥ σ_2 ≥ … of ``α·ΔW`` [d_out, d_in], from the cores (float64).

    ``ΔW^T = A @ B`` with A [d_in, r] and B [r, d_out] (``tt_halves``); with A = Q_a R_a and
    B^T = Q_b R_b, the singular values of ΔW are those of the small ``R_a @ R_b^T`` and the other
    ``min(d_in, d_out) - r`` are exactly 0. ΔW is never formed. Length ``min(d_in, d_out)``.
    """
    left, right = tt_halves([core.double() for core in cores], in_factors, out_factors)
    r_left = torch.linalg.qr(left, mode="r")[1]                # [min(d_in, r), r]
    r_right = torch.linalg.qr(right.T, mode="r")[1]            # [min(d_out, r), r]
    values = abs(alpha) * torch.linalg.svdvals(r_left @ r_right.T)
    size = min(left.shape[0], right.shape[1])
    return torch.cat([values, values.new_zeros(size - len(values))])
