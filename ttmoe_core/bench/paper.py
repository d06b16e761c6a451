"""The paper's serving scheme, as the baseline the mixture is measured against.

A router pass over the WHOLE base model, then a second full pass where every TT layer sums the
gate-weighted outputs of ALL E experts (``GateWeightedTTLoRA``): the cost grows with E, which the
mixture's per-row gathered cores avoid. ``GateWeightedMoE`` is built from a ``TTLoRAMoE`` and gives
the same routing and logits (checked before any timing).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from .. import tt
from ..adapters import GatheredTTLinear, current_expert_index, replace_submodule, use_experts
from ..base.backbone import pool
from ..moe import TTLoRAMoE
from ..routing import batch_features


def per_row_logits(encoder: nn.Module, head_weight: torch.Tensor, head_bias: torch.Tensor,
                   batch: dict[str, torch.Tensor], expert_idx: torch.Tensor,
                   last_token: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [B, C_max]: one pass of ``encoder`` with row b's expert ``expert_idx[b]`` in every
    adapted layer (``adapters.use_experts``), pooled as expert e pools (``last_token`` [E] bool;
    None: mean), through row b's head (head_weight [E, C_max, H], head_bias [E, C_max])."""
    with use_experts(expert_idx):
        hidden = encoder(**batch).last_hidden_state                       # [B, T, H]
    how = "mean" if last_token is None else last_token.to(expert_idx.device)[expert_idx]
    pooled = pool(hidden, batch["attention_mask"], how)                   # [B, H]
    weight, bias = head_weight[expert_idx], head_bias[expert_idx]         # [B, C_max, H], [B, C_max]
    return torch.einsum("bch,bh->bc", weight, pooled) + bias


class GateWeightedTTLoRA(nn.Module):
    """The paper's MoE layer: ``y = W x + b + Σ_e gate[b, e] · α·TT_e(x_b)`` over ALL E experts.

    Holds every expert's cores of one module stacked, [E, R, s, R'] (α folded in). The gate [B, E] is the
    one-hot of the per-row expert index given by ``adapters.use_experts`` (row -1: zero gate, the
    frozen base), so it is computed per call, not stored. Every expert's TT output is computed for
    the whole batch and weighted: the cost grows with E (what the mixture avoids).
    """

    def __init__(self, base: nn.Linear, cores: Sequence[torch.Tensor], in_factors: Sequence[int],
                 out_factors: Sequence[int], alpha: float = 1.0):
        super().__init__()
        self.base = base
        self.in_factors, self.out_factors = list(in_factors), list(out_factors)
        self.alpha = alpha
        self.cores = nn.ParameterList(nn.Parameter(c.detach().clone(), requires_grad=False)
                                      for c in cores)

    @property
    def num_experts(self) -> int:
        return self.cores[0].shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, d_in] -> [B, T, d_out]; the rows' experts come from ``adapters.use_experts``."""
        expert_idx = current_expert_index()                              # [B]
        if expert_idx is None:
            raise RuntimeError("GateWeightedTTLoRA needs the per-row experts: adapters.use_experts")
        out = self.base(x)                                               # [B, T, d_out]
        if bool((expert_idx < 0).all()):
            return out
        gate = nn.functional.one_hot(expert_idx.clamp(min=0), self.num_experts).to(x.dtype)
        gate = gate * (expert_idx >= 0).to(x.dtype)[:, None]             # [B, E]
        gate = gate.reshape(gate.shape[0], *([1] * (x.dim() - 1)), self.num_experts)  # [B, 1, 1, E]
        for expert in range(self.num_experts):
            delta = tt.tt_contract(x, [c[expert] for c in self.cores], self.in_factors,
                                   self.out_factors)                     # [B, T, d_out]
            out = out + gate[..., expert] * (self.alpha * delta)
        return out


class GateWeightedMoE(nn.Module):
    """The paper's serving scheme built from a ``TTLoRAMoE``: a router pass over the WHOLE base
    model, then a second full pass whose TT layers are ``GateWeightedTTLoRA`` (all E experts).

    The encoder is a copy of the mixture's, each ``GatheredTTLinear`` replaced by a
    ``GateWeightedTTLoRA`` holding all E experts' cores of its module (from the mixture's pool);
    heads and router are the mixture's. The router reads the same features as in the
    mixture, but the base model runs through all its layers first, as the paper's router reads
    the last hidden state.
    """

    def __init__(self, mixture: TTLoRAMoE):
        super().__init__()
        self.encoder = copy.deepcopy(mixture.encoder)
        slots = {slot.name: slot for slot in mixture.pool.slots}
        for name, layer in list(self.encoder.named_modules()):
            if isinstance(layer, GatheredTTLinear):
                slot = slots[layer.name]
                replace_submodule(self.encoder, name, GateWeightedTTLoRA(
                    layer.base, mixture.pool.dense_cores(slot.name), slot.in_factors,
                    slot.out_factors))
        head_weight, head_bias = mixture.pool.dense_heads()
        self.register_buffer("head_weight", head_weight)                   # [E, C_max, H]
        self.register_buffer("head_bias", head_bias)                       # [E, C_max]
        self.register_buffer("last_token", torch.tensor(                    # [E] bool
            [card.pooling == "last" for card in mixture.pool.cards]))
        self.router = mixture.router
        self.eval()

    @torch.no_grad()
    def route(self, batch: dict[str, torch.Tensor], texts: Sequence[str],
              text_pairs: Sequence[str | None]) -> torch.Tensor:
        """Expert index [B]: the router on a full pass of the frozen base model (adapters off)."""
        if self.router is None:
            raise ValueError("the mixture has no router")
        full = replace(self.router.config, layer=self.encoder.config.num_hidden_layers)
        feats = batch_features(self.encoder, batch, texts, text_pairs, full)
        dtype = next(self.router.parameters()).dtype
        return self.router({k: v.to(dtype) if v.is_floating_point() else v
                            for k, v in feats.items()}).argmax(-1)

    @torch.no_grad()
    def expert_logits(self, batch: dict[str, torch.Tensor], expert_idx: torch.Tensor) -> torch.Tensor:
        """Logits [B, C_max] from the second pass, gate = one-hot(expert_idx)."""
        return per_row_logits(self.encoder, self.head_weight, self.head_bias, batch, expert_idx,
                              self.last_token)

    @torch.no_grad()
    def forward(self, batch: dict[str, torch.Tensor], texts: Sequence[str],
                text_pairs: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """(expert index [B], logits [B, C_max])."""
        expert_idx = self.route(batch, texts, text_pairs)
        return expert_idx, self.expert_logits(batch, expert_idx)


def max_logit_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b| over finite entries; inf when the -inf padding differs."""
    if not torch.equal(torch.isfinite(a), torch.isfinite(b)):
        return math.inf
    finite = torch.isfinite(a)
    return float((a[finite] - b[finite]).abs().max()) if bool(finite.any()) else 0.0
