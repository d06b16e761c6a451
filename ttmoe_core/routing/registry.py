"""Every router variant behind one door: build (plain or grown), features, the training recipe.

``router`` defines the variants paper / linear / mlp / fusion, ``router_v2`` the ``ngram`` variant
(it subclasses ``router.Router``, so ``router`` cannot know it), ``growth`` the experts appended to
a trained router. This module dispatches on ``RouterConfig.variant`` and ``added_experts``:

- ``build(config, E, H, L)``: a fresh router; with ``config.added_experts = A > 0`` a frozen base
  of E - A outputs wrapped in a ``growth.GrownRouter`` (its added rows zero until loaded);
- ``state_features`` / ``text_features`` / ``batch_features`` / ``extract_features``: the
  variant's inputs (same signatures for every variant);
- ``pool_dense``: the features of the out-of-pool scorer (pooled ⊕ per-segment pooled states of
  layers 0..k, [B, (k+1)·3·H]), whatever the router's variant;
- the training recipe of the ``ngram`` router measured in ROUTING_STUDY.md: every training row
  (``routing_splits``: held-out and calibration rows apart), SST-2 whole sentences only
  (``sentence_level``), balanced to a cap per task (``balanced``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from . import growth, router
from . import ngram as router_v2
from .router import RouterConfig, RouterError, RoutingData

VARIANTS = router.VARIANTS


def build(config: RouterConfig, num_experts: int, hidden_size: int, num_layers: int,
          generator: torch.Generator | None = None) -> nn.Module:
    """A router of ``config``'s variant with ``num_experts`` outputs (see the module docstring);
    RouterError for a bad config."""
    config = config.resolved(num_layers)
    added = config.added_experts
    if num_experts - added < 1:
        raise RouterError(f"{added} added experts out of {num_experts}: the base router needs one")
    base_cfg = replace(config, added_experts=0, grow_source="hidden")
    if config.variant == router_v2.VARIANT:
        base = router_v2.build_ngram_router(base_cfg, num_experts - added, hidden_size, num_layers,
                                            generator)
    else:
        base = router.build_router(base_cfg, num_experts - added, hidden_size, num_layers, generator)
    if not added:
        return base
    try:
        width = growth.phi_width(base, config.grow_source)
    except growth.GrowthError as exc:
        raise RouterError(str(exc)) from None
    ngrams = getattr(base, "ngrams", None)
    grown = growth.GrownRouter(base, added, width, ngrams.weight.shape[0] if ngrams is not None
                               else None, config.grow_source)
    grown.config = config
    return grown


def grow(model: nn.Module, replay: dict[str, torch.Tensor], replay_labels: torch.Tensor,
         new: dict[str, torch.Tensor], **kwargs) -> tuple[nn.Module, dict]:
    """``growth.add_expert`` whose result carries a config that ``build`` rebuilds
    (``added_experts``, ``grow_source``): it saves and loads like any router."""
    grown, info = growth.add_expert(model, replay, replay_labels, new, **kwargs)
    grown.config = replace(grown.base.config, added_experts=int(grown.weight.shape[0]),
                           grow_source=grown.source)
    return grown, info


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- features


def _is_ngram(config: RouterConfig) -> bool:
    return config.variant == router_v2.VARIANT


def state_features(states: Sequence[torch.Tensor], batch: dict[str, torch.Tensor],
                   config: RouterConfig) -> dict[str, torch.Tensor]:
    """The variant's inputs read from the frozen states 0..k (each [B, T, H])."""
    if _is_ngram(config):
        pooled, seg = router_v2.segment_pools(states, batch)
        return {"pooled": pooled, "seg": seg}
    return router.state_features(states, batch["attention_mask"], config)


def text_features(texts: Sequence[str], text_pairs: Sequence[str | None] | None,
                  config: RouterConfig) -> dict[str, torch.Tensor]:
    """The variant's inputs read from the raw text, all N rows at once (CPU)."""
    if _is_ngram(config):
        ids, weights = router_v2.ngram_features(texts, text_pairs)
        return {"ngram_ids": ids, "ngram_w": weights,
                "flags": router_v2.text_flags(texts, text_pairs)}
    return router.text_features(texts, text_pairs, config)


def features_fn(config: RouterConfig) -> Callable:
    """``batch_features`` of the variant: (model, batch, texts, pairs, config) -> feats."""
    return router_v2.batch_features if _is_ngram(config) else router.batch_features


def batch_features(model: nn.Module, batch: dict[str, torch.Tensor], texts: Sequence[str],
                   text_pairs: Sequence[str | None] | None, config: RouterConfig) -> dict[str, torch.Tensor]:
    return features_fn(config)(model, batch, texts, text_pairs, config)


def extract_features(model: nn.Module, tokenizer, texts: Sequence[str],
                     text_pairs: Sequence[str | None] | None, config: RouterConfig,
                     **kwargs) -> dict[str, torch.Tensor]:
    """``router.extract_features`` for every variant (N rows, CPU, input order)."""
    return router.extract_features(model, tokenizer, texts, text_pairs, config,
                                   state_fn=state_features, text_fn=text_features, **kwargs)


def pool_dense(feats: dict[str, torch.Tensor], layer: int) -> torch.Tensor:
    """[N, (k+1)·3·H]: pooled ⊕ per-segment pooled states of layers 0..k (``feats`` of the
    ngram variant: "pooled" [N, ≥k+1, H], "seg" [N, ≥k+1, 2, H])."""
    k = layer + 1
    return torch.cat([feats["pooled"][:, :k].flatten(1), feats["seg"][:, :k].flatten(1)], 1).float()


def sweep_layers(config: RouterConfig, layers: Sequence[int], backbone, train: RoutingData,
                 held_out: RoutingData, progress=None) -> list[dict]:
    """``router.sweep_layers`` for every variant."""
    return router.sweep_layers(config, layers, backbone, train, held_out, progress,
                               build_fn=build, extract_fn=extract_features)


# ----------------------------------------------------------------------------- training recipe


def sentence_level(text: str) -> bool:
    """A whole sentence (SST-2's validation rows are; its training rows are mostly phrases of
    parse trees): ends in . ! ? and has at least 8 words."""
    return text.rstrip()[-1:] in ".!?" and len(text.split()) >= 8


def balanced(labels: torch.Tensor, num_classes: int, cap: int, seed: int = 0,
             keep: torch.Tensor | None = None) -> torch.Tensor:
    """Row indices with ``cap`` rows per class: a seeded sample of larger classes, every row of
    smaller ones repeated (with a seeded remainder) up to ``cap``. ``keep``: row filter [N] bool."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for c in range(num_classes):
        mask = labels == c if keep is None else (labels == c) & keep
        idx = torch.nonzero(mask).flatten()
        if len(idx) == 0:
            raise RouterError(f"no training rows for expert {c}")
        idx = idx[torch.randperm(len(idx), generator=gen)]
        out.append(idx.repeat(-(-cap // len(idx)))[:cap])
    return torch.cat(out)


def take(data: RoutingData, idx: torch.Tensor) -> RoutingData:
    rows = idx.tolist()
    return RoutingData([data.texts[i] for i in rows], [data.text_pairs[i] for i in rows],
                       data.labels[idx], data.names, data.sources)


def _subset_index(n: int, k: int, seed: int) -> np.ndarray:
    """The rows ``TaskData.subset(k, seed)`` keeps."""
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def routing_splits(expert_tasks: Sequence[tuple[str, str]], data_dir=None, seed: int = 0,
                   eval_per_task: int = 500, dev_per_task: int = 500, min_dev: int = 100,
                   ) -> tuple[RoutingData, RoutingData, RoutingData]:
    """(train, held, dev) rows of each expert's task, labelled with its index; disjoint.

    held: ``routing_data(validation, eval_per_task, seed)`` (the held-out rows reported);
    dev (calibration: temperature, out-of-pool threshold, growth's capture budget): up to
    ``dev_per_task`` other validation rows, or, where fewer than ``min_dev`` are left (RTE),
    a seeded fifth of the training rows (at most ``dev_per_task``), which train then lacks;
    train: every other training row.
    """
    from .. import tasks

    sets = {"train": ([], [], []), "held": ([], [], []), "dev": ([], [], [])}
    sources: dict[str, str] = {}

    def add(key, data, idx):
        texts, pairs, labels = sets[key]
        part = data.select(idx)
        texts += part.texts
        pairs += part.text_pairs if part.text_pairs is not None else [None] * len(part)
        labels += [index] * len(part)

    for index, (name, task) in enumerate(expert_tasks):
        val = tasks.load_task(task, "validation", data_dir=data_dir)
        train = tasks.load_task(task, "train", data_dir=data_dir)
        held = _subset_index(len(val), eval_per_task, seed)
        rest = np.setdiff1d(np.arange(len(val)), held)
        add("held", val, held)
        if len(rest) >= min_dev:
            add("dev", val, rest[_subset_index(len(rest), dev_per_task, seed + 1)])
            add("train", train, np.arange(len(train)))
            where = "validation"
        else:
            dev = _subset_index(len(train), min(dev_per_task, len(train) // 5), seed + 1)
            add("dev", train, dev)
            add("train", train, np.setdiff1d(np.arange(len(train)), dev))
            where = "train"
        sources[name] = (f"{len(held)} held-out rows of {val.source}; calibration rows from "
                         f"{where}")
    names = [n for n, _ in expert_tasks]
    return tuple(RoutingData(t, p, torch.tensor(lab, dtype=torch.long), names, sources)
                 for t, p, lab in sets.values())


def recipe_rows(train: RoutingData, expert_tasks: Sequence[tuple[str, str]], cap: int,
                sst2_sentences: bool = True, seed: int = 0) -> tuple[RoutingData, torch.Tensor]:
    """The final recipe's training rows: ``cap`` a task (``balanced``), SST-2 rows whole
    sentences only (``sentence_level``) when ``sst2_sentences``. Returns (the distinct rows,
    index [cap·E] into them: small tasks' rows repeat), so features are computed once a row."""
    keep = None
    if sst2_sentences:
        sst2 = {i for i, (_, task) in enumerate(expert_tasks) if task == "sst2"}
        keep = torch.tensor([lab not in sst2 or sentence_level(text)
                             for lab, text in zip(train.labels.tolist(), train.texts)])
    chosen = balanced(train.labels, len(train.names), cap, seed, keep)
    distinct, index = torch.unique(chosen, return_inverse=True)
    return take(train, distinct), index


def fit(config: RouterConfig, backbone, train: RoutingData, held_out: RoutingData,
        index: torch.Tensor | None = None, progress=None) -> dict:
    """One router at ``config.layer`` trained on rows ``index`` of ``train`` (repeats allowed;
    None: each row once), features computed once a row; {"layer", "router", "report", "cost",
    "feats"} like ``sweep_layers`` (``feats``: the training rows' features, for replay)."""
    num_layers = backbone.info.num_layers
    config = config.resolved(num_layers)

    def stage(name):
        return (lambda done, total: progress(name, done, total)) if progress else None

    feats = extract_features(backbone.model, backbone.tokenizer, train.texts, train.text_pairs,
                             config, progress=stage("features"))
    held = extract_features(backbone.model, backbone.tokenizer, held_out.texts,
                            held_out.text_pairs, config, progress=stage("held-out features"))
    index = torch.arange(len(train.texts)) if index is None else index
    model = build(config, len(train.names), backbone.info.hidden_size, num_layers)
    history = router.train_router(model, {k: v[index] for k, v in feats.items()}, train.labels[index],
                                  progress=(lambda epoch, epochs, _loss: progress(
                                      f"training layer {config.layer}", epoch, epochs))
                                  if progress else None)
    report = router.evaluate_router(model, held, held_out.labels, train.names)
    report.history = history
    return {"layer": config.layer, "router": model, "report": report,
            "cost": config.layer / num_layers, "feats": feats, "held_feats": held}
