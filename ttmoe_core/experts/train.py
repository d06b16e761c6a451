"""Training and evaluating one expert: ``train_expert`` trains it on its task alone (the loop,
``loop.fit``, is also the AdapterFusion baseline's) and reports progress through a callback;
``evaluate_model`` / ``evaluate_expert`` give the task's metrics and a confusion matrix.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import numpy as np
import torch

from .. import tasks
from ..base import batching
from ..base.backbone import Backbone, encode_rows, load_backbone
from ..errors import ConfigError, TrainingError
from ..runtime import distributed, precision
from . import loop as training
from .checkpoint import Checkpointer
from .config import CHECKPOINT_ADDED, ExpertConfig
from .loop import Progress, fit, task_loss
from .model import (
    Expert,
    ExpertModel,
    build_expert_model,
    expert_tensors,
    resolve_targets_and_shapes,
    tt_layout,
)


def load_split(config: ExpertConfig, split: str, data_dir=None) -> "tasks.TaskData":
    """The rows of ``config``'s task that ``train_expert`` reads when not given them: the
    ``split`` ("train" or "validation"), subsampled to the config's limit (seeded by its seed)."""
    limit = config.train_limit if split == "train" else config.eval_limit
    return tasks.load_task(config.task, split, data_dir=data_dir, limit=limit, seed=config.seed)


def split_training_rows(cfg, train_data: "tasks.TaskData"
                        ) -> tuple["tasks.TaskData", "tasks.TaskData | None", bool]:
    """(rows to fit, hold-out rows or None, regression?) of a run's training rows: the hold-out
    comes out of the TRAIN rows (never the validation split), ``cfg.holdout_fraction`` of them
    (at most ``cfg.holdout_limit``), seeded by ``cfg.seed``. ConfigError when there are none."""
    if len(train_data) == 0:
        raise ConfigError(f"no training rows for task {cfg.task!r}")
    train_rows, holdout_rows = training.holdout_split(len(train_data), cfg.holdout_fraction,
                                                      cfg.holdout_limit, cfg.seed)
    fit_data = train_data.select(train_rows) if holdout_rows else train_data
    held = train_data.select(holdout_rows) if holdout_rows else None
    return fit_data, held, not train_data.label_names


def holdout_scorer(model, backbone: Backbone, held: "tasks.TaskData | None", cfg, regression: bool,
                   should_stop: Callable[[], bool] | None) -> "training.HoldOut | None":
    """Early stopping's judge: ``model`` scored on the hold-out rows with the task's metric."""
    if held is None:
        return None
    return training.HoldOut(lambda: evaluate_model(
        model, backbone, held, cfg.task, cfg.max_length, should_stop)["metrics"],
        task_metric(cfg.task, regression))


def task_metric(task: str, regression: bool) -> str:
    """The metric a run is judged by: the task's primary one (an unregistered task: accuracy, or
    Pearson/Spearman for a regression)."""
    return tasks.primary_metric(tasks.TASKS[task] if task in tasks.TASKS else
                                ("pearson_spearman" if regression else "accuracy"))


def train_expert(config: ExpertConfig, backbone: Backbone | None = None, *,
                 train_data: "tasks.TaskData | None" = None,
                 eval_data: "tasks.TaskData | None" = None,
                 progress: Callable[[Progress], None] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 log_every: int = 5, data_dir=None, name: str | None = None,
                 checkpoint_dir=None, resume: bool = False) -> Expert:
    """Train one expert on its task alone (base frozen), evaluate it, return it as data.

    All randomness (initial weights, batch order, dropout) comes from one generator seeded with
    ``config.seed``, so a run is repeatable and independent of other threads. ``should_stop`` is
    asked before every step and every evaluation batch: TrainingError when it says so.
    A seeded hold-out of the training rows (``config.holdout_fraction``) drives early stopping
    (``training.fit``). With ``checkpoint_dir`` the run saves itself there every
    ``config.checkpoint_every`` steps and when cancelled; ``resume`` continues from it (the same
    result as an uninterrupted run; ``checkpoint.CheckpointError`` when it is another run's).
    Rows not given (``train_data``, ``eval_data``) are read with ``load_split``.
    """
    cfg = config.resolved()
    backbone = backbone or load_backbone(device=cfg.device, dtype=cfg.dtype)
    cfg.dtype = precision.dtype_name(backbone.dtype)     # what this run computes in
    device = backbone.device
    train_data = train_data if train_data is not None else load_split(cfg, "train", data_dir)
    fit_data, held, regression = split_training_rows(cfg, train_data)
    generator = torch.Generator().manual_seed(cfg.seed)   # init, batch order and dropout
    cfg = resolve_targets_and_shapes(cfg, backbone.model)
    model = build_expert_model(cfg, backbone, num_labels=max(1, len(train_data.label_names)),
                               generator=generator)
    labels_all = torch.tensor(fit_data.labels)
    encoded = encode_rows(backbone.tokenizer, fit_data.texts, fit_data.text_pairs,
                          cfg.max_length)                        # every row tokenized once
    group = distributed.current()     # launched with accelerate: DDP, a share of each batch
    forward = model if group is None else group.wrap(model)

    def batch_loss(rows: list[int]) -> torch.Tensor:
        return task_loss(forward(encoded.batch(rows, device)), labels_all[rows].to(device),
                         regression)

    if group is not None:
        batch_loss = group.sharded(batch_loss)

    holdout = holdout_scorer(model, backbone, held, cfg, regression, should_stop)
    checkpoint = None
    if checkpoint_dir is not None and group is None:  # (under accelerate: no checkpoints, each
                                                      # process would write the same folder)
        fingerprint = {k: v for k, v in cfg.to_dict().items() if k not in ("device", "checkpoint_every")}
        fingerprint["train_data"] = {"source": train_data.source, "rows": len(train_data)}
        checkpoint = Checkpointer(checkpoint_dir, cfg.checkpoint_every, resume, fingerprint,
                                  added=CHECKPOINT_ADDED)
    history = fit(model, batch_loss, len(fit_data), cfg, generator, progress=progress,
                  should_stop=should_stop, log_every=log_every,
                  nan_hint=f": lower the learning rate (now {cfg.lr:g}) or use init='zero'",
                  lengths=encoded.lengths if cfg.length_buckets else None,
                  holdout=holdout, checkpoint=checkpoint)
    train_seconds = history[-1].get("elapsed_s", 0.0) if history else 0.0
    train_cpu = history[-1].get("cpu_s") if history else None    # the loop's CPU, across resumes
    expert = Expert(name=name or cfg.task, config=cfg, label_names=list(train_data.label_names),
                    tensors=expert_tensors(model, cfg.method), base=backbone.info,
                    tt_layout=tt_layout(model.encoder, cfg.targets) if cfg.method == "tt-lora" else {},
                    history=history, created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    eval_data = eval_data if eval_data is not None else load_split(cfg, "validation", data_dir)
    result = evaluate_model(model, backbone, eval_data, cfg.task, max_length=cfg.max_length,
                            should_stop=should_stop)
    expert.metrics = {**result["metrics"], "confusion": result["confusion"],
                      "train_seconds": round(train_seconds, 2), "train_cpu_seconds": train_cpu,
                      "eval_rows": len(eval_data),
                      **training.summary(history)}
    expert.data = {"train": train_data.source, "train_rows": len(fit_data),
                   "holdout_rows": 0 if held is None else len(held),
                   "eval": eval_data.source, "eval_rows": len(eval_data),
                   "processes": 1 if group is None else group.world_size}
    return expert


@torch.no_grad()
def predict_logits(model: ExpertModel, backbone: Backbone, texts: list[str],
                   text_pairs: list[str] | None, max_length: int = 128,
                   batch_size: int = batching.MAX_ROWS,
                   max_tokens: int | None = batching.MAX_TOKENS,
                   should_stop: Callable[[], bool] | None = None) -> torch.Tensor:
    """Logits [N, C] of an expert model for a list of inputs, in input order (rows tokenized once,
    run in length-sorted micro-batches of at most ``batch_size`` rows and ``max_tokens`` tokens);
    TrainingError when ``should_stop()`` says so before a micro-batch (a cancel during evaluation)."""
    model.eval()
    encoded = encode_rows(backbone.tokenizer, texts, text_pairs, max_length)
    batches = batching.plan(encoded.lengths, max_tokens, batch_size)
    out = []
    for done, rows in enumerate(batches):
        if should_stop is not None and should_stop():
            raise TrainingError(f"cancelled during evaluation, at micro-batch {done} of {len(batches)}")
        out.append(model(encoded.batch(rows, backbone.device)).float().cpu())   # [rows, C]
    return batching.restore_order(batches, out) if out else torch.empty(0)


def evaluate_model(model: ExpertModel, backbone: Backbone, data: "tasks.TaskData",
                   task: str | None, max_length: int = 128,
                   should_stop: Callable[[], bool] | None = None) -> dict:
    """Metrics, confusion matrix [C, C] (rows: true), predictions for labelled data
    (``should_stop``: see ``predict_logits``)."""
    logits = predict_logits(model, backbone, data.texts, data.text_pairs, max_length,
                            should_stop=should_stop)
    regression = not data.label_names
    preds = logits.squeeze(-1).tolist() if regression else logits.argmax(-1).tolist()
    spec_or_metric = tasks.TASKS[task] if task in tasks.TASKS else (
        "pearson_spearman" if regression else "accuracy")
    metrics = tasks.compute_metrics(spec_or_metric, data.labels, preds)
    confusion = []
    if not regression:
        num = len(data.label_names)
        matrix = np.zeros((num, num), dtype=int)
        for true, pred in zip(data.labels, preds):
            matrix[int(true), int(pred)] += 1
        confusion = matrix.tolist()
    return {"metrics": {k: float(v) for k, v in metrics.items()}, "confusion": confusion,
            "predictions": preds, "rows": len(data)}


def evaluate_expert(expert: Expert, backbone: Backbone, data: "tasks.TaskData") -> dict:
    """Evaluate a stored expert on labelled data (see ``evaluate_model``)."""
    if data.label_names and list(data.label_names) != list(expert.label_names):
        if len(data.label_names) != len(expert.label_names):
            raise ConfigError(f"data has labels {list(data.label_names)}, expert "
                              f"{expert.name!r} predicts {expert.label_names}")
    model = build_expert_model(expert, backbone)
    return evaluate_model(model, backbone, data, expert.config.task,
                          max_length=expert.config.max_length)
