"""Adapter layers: a frozen ``nn.Linear`` with a bank of E experts' TT-LoRA cores, and the
per-call expert context.

``TTLoRALinear`` computes ``y = W x + b + α · TT_e(x)`` where ``e`` is the expert of x's row.
Which expert each row uses is never module state: it comes from the caller through the
context variable set by ``use_experts`` (each thread/async task has its own context, so one
shared model serves concurrent requests correctly). With a single expert and no selection the
module behaves like a plain TT-LoRA layer (training). Rows with expert index -1 get no update
(the frozen base model, used by routers that read base representations).

``GatheredTTLinear`` is the mixture's layer: it holds no expert weights; each row's update comes
with the call as the merged halves of its expert's chain (``use_row_halves``), gathered from an
``pool.ExpertPool``, so the number of experts never shows in the layer. Putting these layers into
a model is ``inject``'s job.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from .. import tt

# Per-row expert index [B] (long) for the forward running in this context; None = "the only one".
_EXPERT_INDEX: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar(
    "ttmoe_expert_index", default=None)


@contextlib.contextmanager
def use_experts(expert_idx: torch.Tensor | None) -> Iterator[None]:
    """Within the block, row b of every TT-LoRA layer uses expert ``expert_idx[b]`` (-1: none)."""
    token = _EXPERT_INDEX.set(expert_idx)
    try:
        yield
    finally:
        _EXPERT_INDEX.reset(token)


def current_expert_index() -> torch.Tensor | None:
    """The per-row expert index of the running forward, or None."""
    return _EXPERT_INDEX.get()


# Per-row merged halves of the running forward, by qualified module name: A [B, d_in, R] and
# B [B, R, d_out] (row b: its expert's update is x_b @ A[b] @ B[b]), or [1, ...]: one expert's
# halves for every row; None: no update anywhere.
RowHalves = Mapping[str, tuple[torch.Tensor, torch.Tensor]]
_ROW_HALVES: contextvars.ContextVar[RowHalves | None] = contextvars.ContextVar(
    "ttmoe_row_halves", default=None)


@contextlib.contextmanager
def use_row_halves(halves: RowHalves | None) -> Iterator[None]:
    """Within the block, each ``GatheredTTLinear`` named in ``halves`` adds its rows' updates;
    the others (and all of them with None) are the frozen layers."""
    token = _ROW_HALVES.set(halves)
    try:
        yield
    finally:
        _ROW_HALVES.reset(token)


@contextlib.contextmanager
def adapters_off(rows: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Within the block every adapter layer of either kind is its frozen base (``rows``: batch size)."""
    with use_experts(torch.full((rows,), -1, dtype=torch.long, device=device)), use_row_halves(None):
        yield



class TTLoRALinear(nn.Module):
    """Frozen linear layer + E experts' TT cores stacked along a leading axis.

    cores[k]: [E, r_{k-1}, s_k, r_k]. Input x: [..., d_in] (for per-row experts: [B, T, d_in]).
    """

    def __init__(self, base: nn.Linear, in_factors: Sequence[int], out_factors: Sequence[int],
                 rank: int | Sequence[int], alpha: float, num_experts: int = 1,
                 init: str = "kaiming", generator: torch.Generator | None = None):
        super().__init__()
        if math.prod(in_factors) != base.in_features or math.prod(out_factors) != base.out_features:
            raise ValueError(
                f"TT factors {list(in_factors)} | {list(out_factors)} multiply to "
                f"{math.prod(in_factors)} x {math.prod(out_factors)}, the layer is "
                f"{base.in_features} x {base.out_features}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.in_factors = [int(m) for m in in_factors]
        self.out_factors = [int(n) for n in out_factors]
        self.alpha = float(alpha)
        self.core_shapes = tt.core_shapes(self.in_factors, self.out_factors, rank)
        weight = base.weight
        chains = [tt.init_cores(self.core_shapes, init, generator=generator)
                  for _ in range(num_experts)]
        banks = [torch.stack([chain[k] for chain in chains]) for k in range(len(self.core_shapes))]
        # cores follow a float32/float64 base; a half-precision base keeps float32 cores (the
        # forward then runs under autocast: ``precision``)
        dtype = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
        self.cores = nn.ParameterList(
            nn.Parameter(bank.to(device=weight.device, dtype=dtype)) for bank in banks)

    @property
    def num_experts(self) -> int:
        return self.cores[0].shape[0]

    def delta(self, x: torch.Tensor, expert_idx: torch.Tensor | None) -> torch.Tensor:
        """``α · TT(x)`` for every row: [..., d_in] -> [..., d_out]."""
        if expert_idx is None:
            if self.num_experts != 1:
                raise RuntimeError(
                    f"this layer holds {self.num_experts} experts: select them per row with "
                    "adapters.use_experts(expert_idx)")
            return self.alpha * tt.tt_contract(x, [c[0] for c in self.cores],
                                               self.in_factors, self.out_factors)
        if expert_idx.shape[0] != x.shape[0]:
            raise ValueError(f"expert_idx has {expert_idx.shape[0]} rows, input has {x.shape[0]}")
        active = expert_idx >= 0
        gathered = [c[expert_idx.clamp(min=0)] for c in self.cores]  # [B, r, s, r'] each
        x3 = x.reshape(x.shape[0], -1, x.shape[-1])
        out = tt.tt_contract_per_row(x3, gathered, self.in_factors, self.out_factors)
        if not bool(active.all()):
            out = out * active.to(out.dtype)[:, None, None]
        return self.alpha * out.reshape(*x.shape[:-1], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expert_idx = current_expert_index()
        if expert_idx is not None and bool((expert_idx < 0).all()):
            return self.base(x)
        return self.base(x) + self.delta(x, expert_idx)

    def delta_weight(self, expert: int = 0) -> torch.Tensor:
        """Dense ``α · ΔW`` [d_out, d_in] of one expert (for checks and plots)."""
        return self.alpha * tt.reconstruct([c[expert] for c in self.cores],
                                           self.in_factors, self.out_factors)


class GatheredTTLinear(nn.Module):
    """Frozen linear layer + the per-row TT-LoRA updates given with the call (``use_row_halves``
    under ``self.name``): ``y_b = W x_b + b + (x_b @ A[b]) @ B[b]`` for x [B, T, d_in]; halves
    with one row (A [1, d_in, R]) are one expert's for every row (``shared_update``). Holds no
    expert weights; without halves for its name it is the frozen layer."""

    def __init__(self, base: nn.Linear, name: str):
        super().__init__()
        self.base = base
        self.name = name
        for p in self.base.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        halves = _ROW_HALVES.get()
        pair = None if halves is None else halves.get(self.name)
        if pair is None:
            return self.base(x)
        left, right = pair                                       # [B, d_in, R], [B, R, d_out]
        if left.shape[0] == 1:                                   # one expert for every row
            return shared_update(self.base, x, left[0], right[0])
        if left.shape[0] != x.shape[0]:
            raise ValueError(f"{self.name}: halves for {left.shape[0]} rows, input has {x.shape[0]}")
        out = self.base(x)
        x3 = x.reshape(x.shape[0], -1, x.shape[-1])              # [B, T, d_in]
        out3 = out.reshape(x.shape[0], -1, out.shape[-1])        # [B, T, d_out]
        # x3 @ A as (Aᵀ x3ᵀ)ᵀ: CPU BLAS runs [R, d_in] @ [d_in, T] 3-5x faster than the skinny
        # [T, d_in] @ [d_in, R] (bench/RESULTS.md); the same products (rounding may differ)
        low = torch.bmm(left.mT, x3.mT).mT                       # [B, T, R]
        if _in_place_ok(out3, low, right):                       # out3 += low @ B, no new tensor
            return out3.baddbmm_(low, right).reshape(out.shape)
        return torch.baddbmm(out3, low, right).reshape(out.shape)


def _in_place_ok(out: torch.Tensor, *operands: torch.Tensor) -> bool:
    """``out`` (a layer's fresh output) may take the update in place: no autograd graph needs it
    and no dtype differs (under autocast the out-of-place op casts its operands)."""
    return not torch.is_grad_enabled() and all(t.dtype == out.dtype for t in operands)


def shared_update(base: nn.Linear, x: torch.Tensor, left: torch.Tensor, right: torch.Tensor
                  ) -> torch.Tensor:
    """``base(x) + (x @ A) @ B`` for one expert's halves A [d_in, R], B [R, d_out] shared by every
    row of x [..., d_in]. Over N tokens the update costs 2·N·R·(d_in + d_out) FLOPs as two skinny
    products, or 2·d_in·d_out·R once to merge ``W + ΔW`` and then nothing: past
    N = d_in·d_out / (d_in + d_out) tokens (192 for 384 × 384) the merged weight is cheaper, and
    its one GEMM runs at the frozen layer's speed (bench/RESULTS.md: 1.01–1.02× vs 1.06–1.22×)."""
    d_in, d_out = left.shape[0], right.shape[1]
    tokens = x.numel() // d_in
    weight = base.weight                                         # [d_out, d_in]
    if tokens * (d_in + d_out) >= d_in * d_out:
        merged = torch.addmm(weight, right.mT.to(weight.dtype), left.mT.to(weight.dtype))
        return nn.functional.linear(x, merged, base.bias)
    out = base(x)
    x2 = x.reshape(-1, d_in)                                     # [N, d_in]
    left, right = left.to(x2.dtype), right.to(x2.dtype)
    low = (left.mT @ x2.mT).mT                                   # [N, R]: the faster order (above)
    out2 = out.reshape(-1, d_out)                                # [N, d_out]
    if _in_place_ok(out2, low, right):
        return out2.addmm_(low, right).reshape(out.shape)
    return (out2 + (low @ right).to(out.dtype)).reshape(out.shape)


class ReconstructedTTLoRALinear(nn.Module):
    """The paper's slower path: rebuild ``W + α ΔW`` every call, then one dense GEMM.

    Exists only for the contraction-vs-reconstruction comparison; shares the cores of ``layer``.
    """

    def __init__(self, layer: TTLoRALinear):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.layer.base.weight + self.layer.delta_weight(0)
        return nn.functional.linear(x, weight, self.layer.base.bias)
