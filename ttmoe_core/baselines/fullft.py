"""Full fine-tuning, the reference point an expert is measured against on the same data.

Every weight of the base model is trained (plus the task head), through the experts' own loop
(``training.fit``): the same length-bucketed batches, seeded hold-out of the TRAIN rows, stopping
rule, best-step weights and validation scoring as ``experts.train_expert``. What differs is the
model (a copy of the base whose parameters all require grad) and what comes back: a record of
the run (metrics, hold-out curve, steps, CPU time), not an expert: its weights are a whole model
(about 90 MB for MiniLM), which no pack serves, so they are not written.

As in every run of ``training.fit``, the encoder runs in eval mode (no dropout inside the base
model; the head has dropout 0.1): the loop is the experts' own, kept identical so the comparison
is about what is trained, not how. BERT's recipe keeps the encoder's dropout on; the record says
``encoder_dropout: false``. The trained weights are float32 master weights whatever ``--dtype``
the base model was loaded in (a bfloat16 weight would swallow most steps of size 3e-5); the
forward runs under autocast to that dtype, as an expert's does.

The setup of ``experts.train_expert`` is repeated here (the hold-out, the encoded rows, the
checkpoint) rather than shared, because that function's every line is about adapter experts
(targets, TT shapes, saving cores) and a flag for "no adapter" would thread through all of it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from .. import tasks
from ..base.backbone import Backbone, default_pooling, encode_rows, load_backbone
from ..experts import (
    ConfigError,
    ExpertModel,
    evaluate_model,
    holdout_scorer,
    split_training_rows,
    task_metric,
)
from ..experts import loop as training
from ..experts.checkpoint import Checkpointer
from ..runtime import precision

METHOD = "full"
DEFAULT_LR = 3e-5        # BERT-style fine-tuning (Devlin et al., 2019 searched 2e-5 .. 5e-5)


@dataclass
class FullConfig:
    """One full fine-tuning run; the fields mean what ``experts.ExpertConfig``'s do."""
    task: str
    lr: float = DEFAULT_LR
    steps: int = 4000                  # the cap; the hold-out may stop the run sooner
    batch_size: int = 16
    max_length: int = 128
    seed: int = 0
    train_limit: int | None = None
    eval_limit: int | None = 2000
    warmup_fraction: float = 0.06
    weight_decay: float = 0.0
    schedule: str = "linear"
    length_buckets: bool = True
    holdout_fraction: float = 0.1
    holdout_limit: int | None = 1000
    eval_every: int = 200
    patience: int = 5
    min_steps: int = 0
    checkpoint_every: int = 0          # a checkpoint holds the whole model and its AdamW moments
    device: str | None = None
    dtype: str = "float32"             # the forward's autocast dtype (weights stay float32)

    def checked(self) -> "FullConfig":
        """Itself; ConfigError for a bad value."""
        problems = training.setting_problems(self)
        if self.dtype not in precision.DTYPES:
            problems.append(f"dtype must be one of {', '.join(precision.DTYPES)}, got {self.dtype!r}")
        if problems:
            raise ConfigError(problems[0])
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def full_model(backbone: Backbone, num_labels: int, generator: torch.Generator) -> ExpertModel:
    """A copy of the base model, every parameter trainable, with a head drawn from ``generator``."""
    encoder = copy.deepcopy(backbone.model).float()      # float32 master weights
    for p in encoder.parameters():
        p.requires_grad_(True)
    pooling = default_pooling(getattr(encoder.config, "model_type", ""))
    return ExpertModel(encoder, backbone.info.hidden_size, num_labels, generator=generator,
                       pooling=pooling, dtype=backbone.dtype).to(backbone.device)


def train_full(config: FullConfig, backbone: Backbone | None = None, *,
               train_data: tasks.TaskData | None = None, eval_data: tasks.TaskData | None = None,
               progress: Callable[[training.Progress], None] | None = None,
               should_stop: Callable[[], bool] | None = None, log_every: int = 5,
               data_dir=None, checkpoint_dir=None, resume: bool = False,
               return_model: bool = False) -> dict | tuple[dict, ExpertModel]:
    """Fine-tune every weight on ``config.task``; returns the run's record (``METHOD``, metrics of
    the best hold-out step's weights on the validation rows, hold-out curve, steps, times), and
    with ``return_model`` the trained model too (those weights)."""

    cfg = config.checked()
    backbone = backbone or load_backbone(device=cfg.device, dtype=cfg.dtype)
    cfg.dtype = precision.dtype_name(backbone.dtype)       # what the forward computes in
    device = backbone.device
    if train_data is None:
        train_data = tasks.load_task(cfg.task, "train", data_dir=data_dir, limit=cfg.train_limit,
                                     seed=cfg.seed)
    fit_data, held, regression = split_training_rows(cfg, train_data)
    generator = torch.Generator().manual_seed(cfg.seed)     # head, batch order and dropout
    model = full_model(backbone, max(1, len(train_data.label_names)), generator)
    labels_all = torch.tensor(fit_data.labels)
    encoded = encode_rows(backbone.tokenizer, fit_data.texts, fit_data.text_pairs, cfg.max_length)

    def batch_loss(rows: list[int]) -> torch.Tensor:
        return training.task_loss(model(encoded.batch(rows, device)), labels_all[rows].to(device),
                                  regression)

    metric = task_metric(cfg.task, regression)
    holdout = holdout_scorer(model, backbone, held, cfg, regression, should_stop)
    checkpoint = None
    if checkpoint_dir is not None:
        fingerprint = {"method": METHOD, **cfg.to_dict(), "base_model": backbone.info.fingerprint,
                       "train_data": {"source": train_data.source, "rows": len(train_data)}}
        fingerprint.pop("device")
        fingerprint.pop("checkpoint_every")
        checkpoint = Checkpointer(checkpoint_dir, cfg.checkpoint_every, resume, fingerprint)
    started = time.perf_counter()
    history = training.fit(model, batch_loss, len(fit_data), cfg, generator, progress=progress,
                           should_stop=should_stop, log_every=log_every,
                           nan_hint=f": lower the learning rate (now {cfg.lr:g})",
                           lengths=encoded.lengths if cfg.length_buckets else None,
                           holdout=holdout, checkpoint=checkpoint)
    if eval_data is None:
        eval_data = tasks.load_task(cfg.task, "validation", data_dir=data_dir, limit=cfg.eval_limit,
                                    seed=cfg.seed)
    result = evaluate_model(model, backbone, eval_data, cfg.task, max_length=cfg.max_length,
                            should_stop=should_stop)
    last = history[-1] if history else {}
    record = {"task": cfg.task, "method": METHOD, "config": cfg.to_dict(), "encoder_dropout": False,
              "metric": metric,
            "value": result["metrics"][metric], "metrics": result["metrics"],
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "train_seconds": round(last.get("elapsed_s", time.perf_counter() - started), 2),
            "train_cpu_seconds": last.get("cpu_s"),
            **training.summary(history),
            "curve": [{"step": h["step"], "holdout": h["holdout"]} for h in history if "holdout" in h],
            "data": {"train": train_data.source, "train_rows": len(fit_data),
                     "holdout_rows": 0 if held is None else len(held), "eval": eval_data.source,
                     "eval_rows": len(eval_data)},
            "base_model": backbone.info.to_dict()}
    return (record, model) if return_model else record
