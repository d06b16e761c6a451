"""The training recipe of the ``ngram`` router measured in ROUTING_STUDY.md, for any variant.

Every training row (``routing_splits``: held-out and calibration rows apart), SST-2 whole
sentences only (``sentence_level``), balanced to a cap per task (``balanced``, ``recipe_rows``),
features computed once a row (``fit``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .. import tasks
from ..errors import RouterError
from . import registry
from .config import RouterConfig
from .train import RoutingData, both_features, evaluate_router, train_router


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

    feats, held = both_features(backbone, train, held_out, config, progress)
    index = torch.arange(len(train.texts)) if index is None else index
    model = registry.build(config, len(train.names), backbone.info.hidden_size, num_layers)
    history = train_router(model, {k: v[index] for k, v in feats.items()}, train.labels[index],
                           progress=(lambda epoch, epochs, _loss: progress(
                               f"training layer {config.layer}", epoch, epochs))
                           if progress else None)
    report = evaluate_router(model, held, held_out.labels, train.names)
    report.history = history
    return {"layer": config.layer, "router": model, "report": report,
            "cost": config.layer / num_layers, "feats": feats, "held_feats": held}
