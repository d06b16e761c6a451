"""Training a router on cached features, scoring it on held-out rows, and the data it learns from.

Every router is trained with cross-entropy against the task id on features computed once
(``features.extract_features``), while the base model and the experts stay frozen; inference is
argmax (top-1), no noise. ``sweep_layers`` fits one router per layer k of any registered variant.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .. import tasks
from ..errors import RouterError
from . import registry
from .config import RouterConfig
from .features import extract_features
from .variants import Router


@dataclass
class RouterReport:
    accuracy: float
    confusion: list[list[int]]            # [E, E], rows: true task
    per_task: dict[str, float]            # recall per task
    rows: int
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _take(feats: dict[str, torch.Tensor], idx) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in feats.items()}


def train_router(router: Router, feats: dict[str, torch.Tensor], labels: torch.Tensor,
                 progress: Callable[[int, int, float], None] | None = None) -> list[dict]:
    """Cross-entropy on the task id, Adam, minibatches; returns the loss history per epoch.

    Batch order, dropout and noise come from ``router.generator`` (never the global RNG).
    ``progress(epoch, epochs, loss)`` after each epoch may raise to stop (a cancel); RouterError
    when the loss stops being finite (e.g. too high a learning rate).
    """
    cfg = router.config
    generator = router.generator
    optimizer = torch.optim.AdamW(router.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    history = []
    num = labels.shape[0]
    router.train()
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(num, generator=generator)
        total = 0.0
        for start in range(0, num, cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            loss = nn.functional.cross_entropy(router(_take(feats, idx)), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        schedule.step()
        if not math.isfinite(total):
            raise RouterError(f"router loss became {total / num} in epoch {epoch}: lower the "
                              f"learning rate (now {cfg.lr:g})")
        history.append({"epoch": epoch, "loss": total / num})
        if progress is not None:
            progress(epoch, cfg.epochs, total / num)
    router.eval()
    return history


@torch.no_grad()
def evaluate_router(router: Router, feats: dict[str, torch.Tensor], labels: torch.Tensor,
                    names: Sequence[str]) -> RouterReport:
    router.eval()
    pred = router(feats).argmax(-1)
    num = len(names)
    confusion = torch.zeros(num, num, dtype=torch.long)
    for true, guess in zip(labels.tolist(), pred.tolist()):
        confusion[true, guess] += 1
    per_task = {name: float(confusion[i, i] / max(1, confusion[i].sum())) for i, name in enumerate(names)}
    return RouterReport(accuracy=float((pred == labels).float().mean()), confusion=confusion.tolist(),
                        per_task=per_task, rows=int(labels.shape[0]))


@dataclass
class RoutingData:
    texts: list[str]
    text_pairs: list[str | None]
    labels: torch.Tensor          # [N] expert index
    names: list[str]              # expert names, index order
    sources: dict[str, str]


def routing_data(expert_tasks: Sequence[tuple[str, str]], split: str, per_task: int,
                 data_dir=None, seed: int = 0) -> RoutingData:
    """Inputs of each expert's task labelled with the expert's index.

    ``expert_tasks``: (expert name, task) pairs. ``split`` "train" for fitting and "validation"
    for held-out scoring (inputs the router never saw).
    """
    texts, pairs, labels, sources = [], [], [], {}
    for idx, (name, task) in enumerate(expert_tasks):
        data = tasks.load_task(task, split, data_dir=data_dir, limit=per_task, seed=seed)
        texts += data.texts
        pairs += data.text_pairs if data.text_pairs is not None else [None] * len(data)
        labels += [idx] * len(data)
        sources[name] = f"{len(data)} rows of {data.source}"
    return RoutingData(texts, pairs, torch.tensor(labels), [n for n, _ in expert_tasks], sources)


def both_features(backbone, train: RoutingData, held_out: RoutingData, config: RouterConfig,
                  progress: Callable[[str, int, int], None] | None = None
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(training rows' features, held-out rows' features) under ``config``, each row once;
    ``progress(stage, done, total)`` with stages "features" and "held-out features"."""
    def stage(name):
        return (lambda done, total: progress(name, done, total)) if progress else None

    feats = extract_features(backbone.model, backbone.tokenizer, train.texts, train.text_pairs,
                             config, progress=stage("features"))
    held = extract_features(backbone.model, backbone.tokenizer, held_out.texts,
                            held_out.text_pairs, config, progress=stage("held-out features"))
    return feats, held


def sweep_layers(config: RouterConfig, layers: Sequence[int], backbone, train: RoutingData,
                 held_out: RoutingData,
                 progress: Callable[[str, int, int], None] | None = None) -> list[dict]:
    """One router of ``config``'s variant per layer k (one only, the last, for a variant that
    reads the last layer only), features cached once at the deepest layer; held-out reports.

    Returns [{"layer", "router", "report", "cost"}], cost = fraction of a full base pass.
    ``progress(stage, done, total)``: stages "features", "held-out features" (rows) and
    "training layer k" (epochs); it may raise to stop (a cancel).
    """
    num_layers = backbone.info.num_layers
    last_only = registry.variant_spec(config.variant).last_layer_only
    deepest = config.resolved(num_layers).layer if last_only else max(layers)
    cache_cfg = RouterConfig(**{**config.to_dict(), "layer": deepest}).resolved(num_layers)

    feats, held = both_features(backbone, train, held_out, cache_cfg, progress)
    results = []
    for layer in ([deepest] if last_only else layers):
        cfg = RouterConfig(**{**config.to_dict(), "layer": layer})
        router = registry.build(cfg, len(train.names), backbone.info.hidden_size, num_layers)
        history = train_router(router, feats, train.labels, progress=(
            lambda epoch, epochs, _loss, k=router.config.layer:
            progress(f"training layer {k}", epoch, epochs)) if progress else None)
        report = evaluate_router(router, held, held_out.labels, train.names)
        report.history = history
        results.append({"layer": router.config.layer, "router": router, "report": report,
                        "cost": router.config.layer / num_layers})
    return results


def router_metrics(result: dict, train_rows: int, held_out_rows: int, sources: dict[str, str],
                   sweep: Sequence[dict] | None = None) -> dict:
    """The metrics stored with a router: ``result`` (one entry of ``sweep_layers``) as its held-out
    report without the loss history, the data sizes and sources, and, given the whole ``sweep``,
    the accuracy per layer and the chosen layer's cost (fraction of a full base pass)."""
    metrics = {k: v for k, v in result["report"].to_dict().items() if k != "history"}
    metrics.update(train_rows=train_rows, held_out_rows=held_out_rows, sources=dict(sources))
    if sweep is not None:
        metrics["per_layer"] = {str(r["layer"]): r["report"].accuracy for r in sweep}
        metrics["cost_fraction_of_pass"] = result["cost"]
    return metrics
