"""The router variants of the paper's comparison: ``paper``, ``linear``, ``mlp`` and ``fusion``.

Each reads the frozen base model's representations and picks one expert per input; each registers
itself with ``registry`` (builder, feature functions, facts):

- ``paper``: the authors' router: the last hidden state projected to E logits at the last real
  token, with Shazeer noisy gating in training (``logits + N(0,1)·softplus(W_noise · mean h)``);
  it reads the last layer only (a full pass).
- ``linear`` / ``mlp``: on the mean-pooled hidden state of layer k.
- ``fusion`` (ours): an MLP over the mean-pooled states of layers 0..k concatenated with cheap
  surface features of the raw text (hashed, cased character n-grams of each segment and segment
  lengths: what the uncased tokenizer cannot see, e.g. SST-2's lower-cased, space-tokenised
  sentences vs CoLA's, or RTE's long news premises vs MNLI's).
Cost: ``linear``/``mlp``/``fusion`` run the base model up to layer k only (k/L of a pass), for
BERT-family encoders and LLaMA-style decoders alike. Randomness (initial weights, dropout, gating
noise, batch order) comes from the router's own generator, seeded with ``RouterConfig.seed`` by
``registry.build``; the global RNG is never used.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..base.backbone import last_token, mean_pool
from ..runtime import rng
from .config import RouterConfig
from .features import SURFACE_DIM, pooled_states, surface_features
from .registry import register_variant


class Router(nn.Module):
    """Features -> logits [N, E]. Subclasses read the feature keys they need.

    ``generator`` draws dropout masks and noise (and the weights, when built by ``registry.build``).
    """

    def __init__(self, config: RouterConfig, num_experts: int, hidden_size: int,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        self.num_experts = num_experts
        self.hidden_size = hidden_size
        self.generator = rng.given_or_seeded(generator, config.seed)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class PaperRouter(Router):
    """Last hidden state at the last real token -> E logits; noisy gating while training."""

    def __init__(self, config, num_experts, hidden_size, generator=None):
        super().__init__(config, num_experts, hidden_size, generator)
        self.gate = nn.Linear(hidden_size, num_experts)
        self.noise = nn.Linear(hidden_size, num_experts)

    def forward(self, feats):
        logits = self.gate(feats["last"])
        if self.training:
            noise_std = nn.functional.softplus(self.noise(feats["mean_last"]))
            logits = logits + rng.gaussian(logits, self.generator) * noise_std
        return logits


class LinearRouter(Router):
    def __init__(self, config, num_experts, hidden_size, generator=None):
        super().__init__(config, num_experts, hidden_size, generator)
        self.proj = nn.Linear(hidden_size, num_experts)

    def forward(self, feats):
        return self.proj(feats["pooled"][:, self.config.layer])


class MLPRouter(Router):
    def __init__(self, config, num_experts, hidden_size, generator=None):
        super().__init__(config, num_experts, hidden_size, generator)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, config.hidden), nn.GELU(),
                                 rng.Dropout(config.dropout, self.generator),
                                 nn.Linear(config.hidden, num_experts))

    def forward(self, feats):
        return self.mlp(feats["pooled"][:, self.config.layer])


class FusionRouter(Router):
    """MLP over [pooled layers 0..k, surface features of the raw text]."""

    def __init__(self, config, num_experts, hidden_size, generator=None):
        super().__init__(config, num_experts, hidden_size, generator)
        width = (config.layer + 1) * hidden_size + 2 * SURFACE_DIM + 6
        self.norm = nn.LayerNorm((config.layer + 1) * hidden_size)
        self.mlp = nn.Sequential(nn.Linear(width, config.hidden), nn.GELU(),
                                 rng.Dropout(config.dropout, self.generator),
                                 nn.Linear(config.hidden, num_experts))

    def forward(self, feats):
        pooled = self.norm(feats["pooled"][:, : self.config.layer + 1].flatten(1))
        return self.mlp(torch.cat([pooled, feats["surface"]], dim=1))


ROUTERS: dict[str, type[Router]] = {"paper": PaperRouter, "linear": LinearRouter,
                                    "mlp": MLPRouter, "fusion": FusionRouter}


def paper_states(states: Sequence[torch.Tensor], batch: dict[str, torch.Tensor],
                 config: RouterConfig) -> dict[str, torch.Tensor]:
    """``pooled_states`` and, of the last state [B, T, H]: "last" [B, H] (last real token) and
    "mean_last" [B, H] (mean-pooled)."""
    mask = batch["attention_mask"]
    return pooled_states(states, batch, config) | {
        "last": last_token(states[-1], mask).float(), "mean_last": mean_pool(states[-1], mask).float()}


def no_text(texts: Sequence[str], text_pairs: Sequence[str | None] | None,
            config: RouterConfig) -> dict[str, torch.Tensor]:
    """No input read from the raw text."""
    return {}


def surface_text(texts: Sequence[str], text_pairs: Sequence[str | None] | None,
                 config: RouterConfig) -> dict[str, torch.Tensor]:
    """"surface" [N, 2·SURFACE_DIM+6]: ``surface_features`` of the raw text."""
    return {"surface": surface_features(texts, text_pairs)}


register_variant("paper", PaperRouter, paper_states, no_text, last_layer_only=True)
register_variant("linear", LinearRouter, pooled_states, no_text)
register_variant("mlp", MLPRouter, pooled_states, no_text)
register_variant("fusion", FusionRouter, pooled_states, surface_text)
