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
from ..adapters import TTLoRALinear, current_expert_index, replace_submodule, tt_layers
from ..moe import TTLoRAMoE, per_row_logits
from ..router import batch_features


class GateWeightedTTLoRA(nn.Module):
    """The paper's MoE layer: ``y = W x + b + Σ_e gate[b, e] · α·TT_e(x_b)`` over ALL E experts.

    Holds a copy of a ``TTLoRALinear``'s stacked cores [E, r, s, r']. The gate [B, E] is the
    one-hot of the per-row expert index given by ``adapters.use_experts`` (row -1: zero gate, the
    frozen base), so it is computed per call, not stored. Every expert's TT output is computed for
    the whole batch and weighted: the cost grows with E (what the mixture avoids).
    """

    def __init__(self, layer: TTLoRALinear):
        super().__init__()
        self.base = layer.base
        self.in_factors, self.out_factors = list(layer.in_factors), list(layer.out_factors)
        self.alpha = layer.alpha
        self.cores = nn.ParameterList(nn.Parameter(c.detach().clone(), requires_grad=False)
                                      for c in layer.cores)

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

    The encoder is a copy of the mixture's, with each ``TTLoRALinear`` replaced (its stacked cores
    copied); heads and router are the mixture's. The router reads the same features as in the
    mixture, but the base model runs through all its layers first, as the paper's router reads
    the last hidden state.
    """

    def __init__(self, mixture: TTLoRAMoE):
        super().__init__()
        self.encoder = copy.deepcopy(mixture.encoder)
        for name, layer in tt_layers(self.encoder).items():
            replace_submodule(self.encoder, name, GateWeightedTTLoRA(layer))
        self.register_buffer("head_weight", mixture.head_weight.clone())   # [E, C_max, H]
        self.register_buffer("head_bias", mixture.head_bias.clone())       # [E, C_max]
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
        return self.router({k: v.to(dtype) for k, v in feats.items()}).argmax(-1)

    @torch.no_grad()
    def expert_logits(self, batch: dict[str, torch.Tensor], expert_idx: torch.Tensor) -> torch.Tensor:
        """Logits [B, C_max] from the second pass, gate = one-hot(expert_idx)."""
        return per_row_logits(self.encoder, self.head_weight, self.head_bias, batch, expert_idx)

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
