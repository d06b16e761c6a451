"""Zero-shot routing from the experts' own TT cores (Arrow; Ostapenko et al. 2024).

Arrow routes a token to the LoRA experts whose update ΔW it excites most: for each adapted layer,
the prototype of expert e is the top right singular vector v_e of its ΔW (a direction of the
layer's *input* space), and a token h scores |⟨v_e, h⟩|. No router is trained and no data of the
tasks is needed: the experts are the router.

For a TT-LoRA expert, ΔW is never formed. The chain splits at the input/output boundary into
A [d_in, r] and B [r, d_out] (``tt.tt_halves``: ΔWᵀ = A·B); with A = Q_a·R_a and Bᵀ = Q_b·R_b (thin
QR), ΔWᵀ = Q_a·(R_a·R_bᵀ)·Q_bᵀ, so the SVD of the small r×r core R_a·R_bᵀ = U·S·Vᵀ gives the
singular values S and the input-space singular vectors Q_a·U of ΔW: cost O(d·r²), exact.

``ArrowRouter`` (sequence level, as the mixture routes one expert per input): for every adapted
layer ℓ and real token t, p_{ℓ,t} = softmax_e(|⟨v_{e,ℓ}, h_{ℓ,t}⟩| / τ) over experts; the input's
scores are the mean of p over tokens and layers (query and value of a layer read the same h, and
count as two layers). ``energy`` scoring instead uses the share of the token's squared norm that
falls in each expert's top-k input subspace, weighted by the squared singular values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ttmoe_core import tt
from ttmoe_core.base.partial import hidden_states


class ArrowError(ValueError):
    """The experts' tensors or the hidden states do not fit (shapes, layers, no TT cores)."""


def input_directions(cores: Sequence[torch.Tensor], in_factors: Sequence[int],
                     out_factors: Sequence[int], alpha: float = 1.0, top: int = 1,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``top`` right singular vectors of α·ΔW [top, d_in] (unit rows, input space) and the
    singular values [top] (float64), from the cores without forming ΔW (module docstring)."""
    left, right = tt.tt_halves([c.double() for c in cores], in_factors, out_factors)  # [d_in, r], [r, d_out]
    q_a, r_a = torch.linalg.qr(left)                                       # [d_in, r], [r, r]
    r_b = torch.linalg.qr(right.T, mode="r")[1]                            # [r, r] (Q_b unused)
    u, s, _ = torch.linalg.svd(r_a @ r_b.T)                                # [r, r], [r]
    top = min(top, s.shape[0])
    return (q_a @ u[:, :top]).T.contiguous(), abs(alpha) * s[:top]


def _layer_index(module: str) -> int:
    parts = module.split(".")
    return next(int(p) for p in parts if p.isdigit())


def expert_directions(tensors: Mapping[str, torch.Tensor], tt_layout: Mapping[str, Mapping],
                      alpha: float, top: int = 1) -> dict[str, tuple[int, torch.Tensor, torch.Tensor]]:
    """{module: (layer index, directions [top, d_in], singular values [top])} of one expert's
    TT-LoRA layers (tensors ``<module>.cores.<k>``, factors from ``tt_layout[target]``)."""
    modules = sorted({key.rsplit(".cores.", 1)[0] for key in tensors if ".cores." in key})
    if not modules:
        raise ArrowError("the expert has no TT cores (Arrow needs TT-LoRA experts)")
    out = {}
    for module in modules:
        layout = tt_layout.get(module.rpartition(".")[2])
        if layout is None:
            raise ArrowError(f"no TT layout for {module}")
        count = sum(1 for key in tensors if key.startswith(module + ".cores."))
        cores = [tensors[f"{module}.cores.{k}"] for k in range(count)]
        dirs, sing = input_directions(cores, layout["in_factors"], layout["out_factors"], alpha, top)
        out[module] = (_layer_index(module), dirs, sing)
    return out


class ArrowRouter:
    """Arrow prototypes of E experts and the sequence-level scores of inputs (module docstring).

    ``directions`` [M, E, k, H]: per adapted module m (ordered by layer), each expert's top-k input
    directions; ``singular`` [M, E, k]; ``layers`` [M]: the encoder layer whose input module m reads.
    """

    def __init__(self, experts: Sequence, top: int = 1, temperature: float = 1.0):
        if not experts:
            raise ArrowError("Arrow needs at least one expert")
        per_expert = [expert_directions(e.tensors, e.tt_layout, e.config.alpha, top) for e in experts]
        modules = sorted(per_expert[0], key=lambda m: (per_expert[0][m][0], m))
        for e, dirs in zip(experts, per_expert):
            if sorted(dirs) != sorted(modules):
                raise ArrowError(f"expert {e.name!r} adapts other modules than {experts[0].name!r}")
        self.names = [e.name for e in experts]
        self.layers = torch.tensor([per_expert[0][m][0] for m in modules])
        self.directions = torch.stack([torch.stack([d[m][1] for d in per_expert]) for m in modules]).float()
        self.singular = torch.stack([torch.stack([d[m][2] for d in per_expert]) for m in modules]).float()
        self.temperature = temperature
        self.center: torch.Tensor | None = None       # [E] per-expert score mean (unlabeled rows)
        self.spread: torch.Tensor | None = None       # [E] per-expert score std

    def standardise(self, scores: torch.Tensor) -> None:
        """Remember each expert's mean and spread of ``scores`` [N, E] of unlabeled inputs, so
        that ``decide`` compares experts on their own scale (Arrow's raw scores favour experts
        whose top direction lies along what every input carries). No task labels are used."""
        self.center, self.spread = scores.mean(0), scores.std(0).clamp(min=1e-12)

    def decide(self, scores: torch.Tensor) -> torch.Tensor:
        """[B] expert index: argmax of the scores, standardised when ``standardise`` was called."""
        if self.center is not None:
            scores = (scores - self.center) / self.spread
        return scores.argmax(-1)

    def add(self, expert) -> None:
        """Add one expert's prototypes (the others are unchanged): routing grows for free."""
        dirs = expert_directions(expert.tensors, expert.tt_layout, expert.config.alpha,
                                 self.directions.shape[2])
        modules = sorted(dirs, key=lambda m: (dirs[m][0], m))
        self.directions = torch.cat([self.directions, torch.stack([dirs[m][1] for m in modules])[:, None].float()], 1)
        self.singular = torch.cat([self.singular, torch.stack([dirs[m][2] for m in modules])[:, None].float()], 1)
        self.names.append(expert.name)

    def scores(self, states: Sequence[torch.Tensor], mask: torch.Tensor,
               mode: str = "arrow") -> torch.Tensor:
        """[B, E] routing scores (rows sum to 1) of inputs whose layer-ℓ input states are
        ``states[ℓ]`` [B, T, H] (``states[0]``: embeddings), ``mask`` [B, T] real tokens.

        ``mode`` "arrow": mean over tokens and modules of softmax_e(|⟨v, h⟩| / τ) with the top
        direction; "energy": mean of softmax_e over Σ_k σ_k²⟨v_k, h⟩² / (Σ_k σ_k² · ‖h‖²) / τ.
        """
        if len(states) <= int(self.layers.max()):
            raise ArrowError(f"need the inputs of layers 0..{int(self.layers.max())}, got {len(states)} states")
        weight = mask.float()                                              # [B, T]
        total = 0
        for m, layer in enumerate(self.layers.tolist()):
            h = states[layer].float()                                      # [B, T, H]
            proj = torch.einsum("bth,ekh->btek", h, self.directions[m])    # [B, T, E, k]
            if mode == "arrow":
                score = proj[..., 0].abs()
            elif mode == "energy":
                sig = self.singular[m].pow(2)                              # [E, k]
                score = (proj.pow(2) * sig).sum(-1) / (sig.sum(-1) * h.pow(2).sum(-1, keepdim=True)).clamp(min=1e-12)
            else:
                raise ArrowError(f"unknown Arrow mode {mode!r}: use 'arrow' or 'energy'")
            probs = torch.softmax(score / self.temperature, -1)           # [B, T, E]
            total = total + (probs * weight[..., None]).sum(1) / weight.sum(1, keepdim=True)
        return total / len(self.layers)

    @torch.no_grad()
    def route(self, model, batch: dict[str, torch.Tensor], mode: str = "arrow") -> torch.Tensor:
        """[B, E] scores of a tokenized batch on the frozen base ``model`` (adapters off)."""
        states = hidden_states(model, batch, int(self.layers.max()))
        return self.scores(states, batch["attention_mask"], mode)
