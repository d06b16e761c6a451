"""Router inputs: what a variant reads of the frozen base model's states and of the raw text.

Each variant registers two feature functions (``registry.variant_spec``): ``state_features``
(from the hidden states 0..k of a tokenized batch) and ``text_features`` (from the raw text, all
rows at once on the CPU). This module runs the base model with its adapters off and calls them:
``batch_features`` for one tokenized batch, ``extract_features`` for N rows in length-sorted
micro-batches. The shared pieces the variants are made of live here too: ``pooled_states``
(mean-pooled layers 0..k) and ``surface_features`` (hashed cased character n-grams).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..adapters import adapters_off
from ..base import batching
from ..base.backbone import encode_rows, mean_pool
from ..base.partial import hidden_states
from . import registry

SURFACE_DIM = 512          # hashed char n-gram features per segment


def surface_features(texts: Sequence[str], text_pairs: Sequence[str | None] | None,
                     dim: int = SURFACE_DIM) -> torch.Tensor:
    """Cased character n-grams (1-4, hashed) of each segment + length statistics: [N, 2*dim+6].

    Both segments of all rows are hashed in one call, without sklearn's per-call argument checks
    (``skip_parameter_validation``, a thread-local setting): the fixed cost matters for one row.
    """
    import sklearn  # heavy: sklearn, loaded when a router first reads text

    # heavy: scikit-learn (~1 s to import), loaded on first use
    from sklearn.feature_extraction.text import HashingVectorizer

    pairs = list(text_pairs) if text_pairs is not None else [None] * len(texts)
    hasher = HashingVectorizer(analyzer="char_wb", ngram_range=(1, 4), lowercase=False,
                               n_features=dim, alternate_sign=False, norm="l2")
    with sklearn.config_context(skip_parameter_validation=True):
        hashed = hasher.transform(list(texts) + [p or "" for p in pairs]).toarray()   # [2N, dim]
    first, second = hashed[: len(texts)], hashed[len(texts):]

    def stats(segment: str | None) -> list[float]:
        if not segment:
            return [0.0, 0.0, 0.0]
        words = segment.split()
        return [math.log1p(len(segment)) / 6, math.log1p(len(words)) / 5,
                sum(c.isupper() for c in segment) / max(1, len(segment)) * 10]

    lengths = np.array([stats(t) + stats(p) for t, p in zip(texts, pairs)], dtype=np.float32)
    return torch.from_numpy(np.concatenate([first, second, lengths], axis=1).astype(np.float32))


def pooled_states(states: Sequence[torch.Tensor], batch: dict[str, torch.Tensor],
                  config) -> dict[str, torch.Tensor]:
    """"pooled" [B, k+1, H]: the states 0..k (each [B, T, H]) mean-pooled over real tokens."""
    mask = batch["attention_mask"]
    return {"pooled": torch.stack([mean_pool(h, mask) for h in states], 1).float()}


def state_features(states: Sequence[torch.Tensor], batch: dict[str, torch.Tensor],
                   config) -> dict[str, torch.Tensor]:
    """The variant's inputs read from the frozen states 0..k (each [B, T, H])."""
    return registry.variant_spec(config.variant).state_features(states, batch, config)


def text_features(texts: Sequence[str], text_pairs: Sequence[str | None] | None,
                  config) -> dict[str, torch.Tensor]:
    """The variant's inputs read from the raw text, all N rows at once (CPU)."""
    return registry.variant_spec(config.variant).text_features(texts, text_pairs, config)


@torch.no_grad()
def base_states(model: nn.Module, batch: dict[str, torch.Tensor], layer: int) -> list[torch.Tensor]:
    """Hidden states 0..``layer`` of ``model`` with its adapters off (the frozen base model)."""
    with adapters_off(batch["input_ids"].shape[0], batch["input_ids"].device):
        return hidden_states(model, batch, layer)


@torch.no_grad()
def batch_features(model: nn.Module, batch: dict[str, torch.Tensor], texts: Sequence[str],
                   text_pairs: Sequence[str | None] | None, config) -> dict[str, torch.Tensor]:
    """The variant's inputs of one tokenized batch, read from the base model with adapters off
    (``state_features`` of ``base_states`` and ``text_features``), on the batch's device."""
    feats = state_features(base_states(model, batch, config.layer), batch, config)
    device = batch["attention_mask"].device
    return feats | {k: v.to(device) for k, v in text_features(texts, text_pairs, config).items()}


def extract_features(model: nn.Module, tokenizer, texts: Sequence[str],
                     text_pairs: Sequence[str | None] | None, config,
                     batch_size: int = 64, max_tokens: int | None = 4096,
                     progress: Callable[[int, int], None] | None = None,
                     ) -> dict[str, torch.Tensor]:
    """The variant's inputs of N rows, on the CPU in input order: rows tokenized once, run in
    length-sorted micro-batches (at most ``batch_size`` rows, ``max_tokens`` padded tokens);
    text features in one call. ``progress(rows done, N)`` after each micro-batch."""
    device = next(model.parameters()).device
    encoded = encode_rows(tokenizer, texts, text_pairs, config.max_length)
    batches = batching.plan(encoded.lengths, max_tokens, batch_size)
    parts: list[dict[str, torch.Tensor]] = []
    done = 0
    for rows in batches:
        batch = encoded.batch(rows, device)                                   # [B, T_max] each
        states = base_states(model, batch, config.layer)
        parts.append({k: v.cpu() for k, v in state_features(states, batch, config).items()})
        done += len(rows)
        if progress is not None:
            progress(done, len(encoded))
    feats = {k: batching.restore_order(batches, [p[k] for p in parts]) for k in parts[0]}
    return feats | text_features(texts, text_pairs, config)
