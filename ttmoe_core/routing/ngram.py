"""The ``ngram`` router: pooled states per segment + hashed n-grams of case-free, canonical text.

Measured on the six demo tasks (ROUTING_STUDY.md), the shipped ``fusion`` router errs where the
frozen MiniLM pools two data sets alike (MNLI ↔ RTE, SST-2 ↔ CoLA). This variant adds what tells
them apart without relying on GLUE's preprocessing artefacts:

- ``pooled`` [B, k+1, H] and ``seg`` [B, k+1, 2, H]: mean-pooled states of layers 0..k over all
  real tokens and over each segment (token type 0 / 1) separately: a pair's premise and
  hypothesis are seen apart, not only averaged together;
- ``ngram_ids`` / ``ngram_w`` [B, L]: hashed word 1-2-grams and character 2-5-grams of each
  segment of the *canonical* text (``canonical``: lower-cased, punctuation and clitics split off),
  so "It's great." and GLUE's "it 's great ." give the same features: routing is invariant to
  casing and to the tokenisation artefacts of SST-2's text by construction; hashed into 4 blocks
  (word / char × first / second segment) of ``RouterConfig.buckets`` ids each (default 2^16:
  the table, 4·buckets·E weights, is most of the router's parameters; smaller tables trade
  accuracy for size, measured by the report's experiment 3);
- ``flags`` [B, F]: case-free shape of the input (pair present, words and characters per
  segment, question mark, final punctuation, digits, word overlap of the segments).
Logits = MLP(LayerNorm(pooled ⊕ seg) ⊕ flags) + a linear map of the n-grams (an embedding bag).

``NgramFusionRouter`` is a ``variants.Router`` (``forward(feats) -> [N, E]``), trains with
``train.train_router`` on cached features and registers itself with ``registry`` (its pack keeps
replay rows for add-expert; a grown one extends its n-gram table by a column). ``pool_dense``:
the out-of-pool detector's input, read from this variant's features.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..runtime import rng
from .config import BUCKETS, RouterConfig
from .registry import register_variant
from .variants import Router

# BUCKETS (config): the default hash buckets per block; 4 blocks: (word, char) × (first, second
# segment); a router's own count is ``RouterConfig.buckets``
MAX_NGRAMS = 768           # n-grams kept per row (the most frequent); rows rarely have more
FLAGS = 15


def canonical(text: str | None) -> str:
    """Lower-cased text with punctuation and clitics split off by spaces (GLUE's SST-2 style),
    so cased, typed and pre-tokenised spellings of a sentence coincide: "Doesn't work." and
    "does n't work ." both give "does n 't work ."."""
    if not text:
        return ""
    text = text.lower()
    text = re.sub(r"n't\b", " n't", text)
    text = re.sub(r"([^\w\s'])", r" \1 ", text)
    text = re.sub(r"(\w)'(\w)", r"\1 '\2", text)
    return re.sub(r"\s+", " ", text).strip()


def _hashers(buckets: int):
    # heavy: scikit-learn (~1 s to import), loaded on first use
    from sklearn.feature_extraction.text import HashingVectorizer

    word = HashingVectorizer(analyzer="word", ngram_range=(1, 2), lowercase=False, norm="l2",
                             token_pattern=r"\S+", n_features=buckets, alternate_sign=False)
    char = HashingVectorizer(analyzer="char_wb", ngram_range=(2, 5), lowercase=False, norm="l2",
                             n_features=buckets, alternate_sign=False)
    return word, char


def ngram_features(texts: Sequence[str], text_pairs: Sequence[str | None] | None,
                   buckets: int = BUCKETS, max_ngrams: int = MAX_NGRAMS,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Hashed n-grams of the canonical segments as (ids [N, L] long, weights [N, L] float32).

    Block b ∈ {word/first, word/second, char/first, char/second} occupies ids
    [b·buckets, (b+1)·buckets); each block's weights are l2-normalised counts. Rows are padded
    with id 0, weight 0; L = the most n-grams of a row, at most ``max_ngrams`` (largest kept).
    """
    # heavy: scipy, loaded on first use
    import scipy.sparse as sp
    import sklearn

    pairs = list(text_pairs) if text_pairs is not None else [None] * len(texts)
    first = [canonical(t) for t in texts]
    second = [canonical(p) for p in pairs]
    word, char = _hashers(buckets)
    n = len(first)
    with sklearn.config_context(skip_parameter_validation=True):    # fixed cost, for one row
        # both segments in one call per hasher (rows are hashed independently): half the calls
        words, chars = word.transform(first + second), char.transform(first + second)   # [2N, b]
    matrix = sp.hstack([words[:n], words[n:], chars[:n], chars[n:]]).tocsr()   # [N, 4·buckets]
    width = max(1, min(max_ngrams, int(np.diff(matrix.indptr).max(initial=1))))
    ids = np.zeros((len(texts), width), dtype=np.int64)
    weights = np.zeros((len(texts), width), dtype=np.float32)
    for row in range(len(texts)):
        lo, hi = matrix.indptr[row], matrix.indptr[row + 1]
        cols, vals = matrix.indices[lo:hi], matrix.data[lo:hi]
        if len(cols) > width:
            top = np.argsort(-vals, kind="stable")[:width]
            cols, vals = cols[top], vals[top]
        ids[row, : len(cols)] = cols
        weights[row, : len(cols)] = vals
    return torch.from_numpy(ids), torch.from_numpy(weights)


def text_flags(texts: Sequence[str], text_pairs: Sequence[str | None] | None) -> torch.Tensor:
    """Case-free shape of each row [N, FLAGS] (see the module docstring); no casing and no
    spacing-before-punctuation signal, which only GLUE's preprocessing would give."""
    pairs = list(text_pairs) if text_pairs is not None else [None] * len(texts)
    rows = []
    for text, pair in zip(texts, pairs):
        row: list[float] = []
        segments = canonical(text), canonical(pair)           # each once per row
        for segment in segments:
            words = segment.split()
            letters = sum(c.isalpha() for c in segment)
            row += [float(bool(segment)), math.log1p(len(words)) / 4, math.log1p(letters) / 6,
                    float(segment[-1:] in ".!?"), float("?" in segment),
                    sum(c.isdigit() for c in segment) / max(1, len(segment)) * 10,
                    sum(w in ".!?" for w in words) / max(1, len(words)) * 10]
        a, b = set(segments[0].split()), set(segments[1].split())
        row.append(len(a & b) / max(1, len(b)))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float32)


def segment_pools(states: Sequence[torch.Tensor], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean pools of layers 0..k: over all real tokens [B, k+1, H] and per segment
    [B, k+1, 2, H] (token type 0 / 1; zeros where a row has no second segment)."""
    stack = torch.stack(list(states), 1).float()                          # [B, k+1, T, H]
    mask = batch["attention_mask"].float()                                # [B, T]
    types = batch.get("token_type_ids")
    types = torch.zeros_like(mask) if types is None else types.float()

    def pool(weights: torch.Tensor) -> torch.Tensor:                      # [B, T] -> [B, k+1, H]
        total = weights.sum(1).clamp(min=1.0)[:, None, None]
        return (stack * weights[:, None, :, None]).sum(2) / total

    return pool(mask), torch.stack([pool(mask * (1 - types)), pool(mask * types)], 2)


def pool_dense(feats: dict[str, torch.Tensor], layer: int) -> torch.Tensor:
    """[N, (k+1)·3·H]: pooled ⊕ per-segment pooled states of layers 0..k (the out-of-pool
    detector's input; ``feats``: "pooled" [N, ≥k+1, H], "seg" [N, ≥k+1, 2, H])."""
    k = layer + 1
    return torch.cat([feats["pooled"][:, :k].flatten(1), feats["seg"][:, :k].flatten(1)], 1).float()


def ngram_states(states: Sequence[torch.Tensor], batch: dict[str, torch.Tensor],
                 config: RouterConfig) -> dict[str, torch.Tensor]:
    """The ``ngram`` router's inputs read from the states 0..k: pooled [B, k+1, H],
    seg [B, k+1, 2, H] (``segment_pools``)."""
    pooled, seg = segment_pools(states, batch)
    return {"pooled": pooled, "seg": seg}


def ngram_text(texts: Sequence[str], text_pairs: Sequence[str | None] | None,
               config: RouterConfig) -> dict[str, torch.Tensor]:
    """The ``ngram`` router's inputs read from the raw text: ngram_ids [N, L] (< 4·buckets),
    ngram_w [N, L], flags [N, FLAGS]."""
    ids, weights = ngram_features(texts, text_pairs, config.buckets)
    return {"ngram_ids": ids, "ngram_w": weights, "flags": text_flags(texts, text_pairs)}


class NgramFusionRouter(Router):
    """MLP over [LayerNorm(pooled ⊕ seg of layers 0..k), flags] + linear over hashed n-grams.

    Parameters: (k+1)·3·H·(hidden+2) + (FLAGS+1)·hidden + hidden·E + E + 4·buckets·E
    (``config.buckets``; the table dominates: 4·2^16·6 = 1,572,864 of the shipped pack's router).
    """

    def __init__(self, config: RouterConfig, num_experts: int, hidden_size: int,
                 generator: torch.Generator | None = None):
        super().__init__(config, num_experts, hidden_size, generator)
        dense = (config.layer + 1) * 3 * hidden_size
        self.norm = nn.LayerNorm(dense)
        self.mlp = nn.Sequential(nn.Linear(dense + FLAGS, config.hidden), nn.GELU(),
                                 rng.Dropout(config.dropout, self.generator),
                                 nn.Linear(config.hidden, num_experts))
        self.ngrams = nn.Embedding(4 * config.buckets, num_experts)       # [4·buckets, E]
        nn.init.zeros_(self.ngrams.weight)

    def dense_input(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """[N, (k+1)·3·H + FLAGS]: what the MLP reads."""
        k = self.config.layer + 1
        pooled = torch.cat([feats["pooled"][:, :k].flatten(1), feats["seg"][:, :k].flatten(1)], 1)
        return torch.cat([self.norm(pooled), feats["flags"]], 1)

    def ngram_logits(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """[N, E]: Σ_j w_j · W[id_j] (ids may arrive as floats: they are exact integers < 2^24)."""
        ids = feats["ngram_ids"].long()
        return (self.ngrams(ids) * feats["ngram_w"].unsqueeze(-1)).sum(1)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.mlp(self.dense_input(feats)) + self.ngram_logits(feats)


def _table_rows(router: NgramFusionRouter) -> int:
    return router.ngrams.weight.shape[0]


register_variant("ngram", NgramFusionRouter, ngram_states, ngram_text, grow_table=_table_rows,
                 keeps_replay=True, stand_in="fusion")
