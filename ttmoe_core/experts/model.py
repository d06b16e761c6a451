"""One expert: TT-LoRA cores (or a PEFT LoRA baseline) on a frozen base model + a task head.

``train_expert`` trains one expert on its task alone and reports progress through a callback;
its loop, :func:`fit`, is also the AdapterFusion baseline's (``baselines``);
``evaluate_expert`` gives the task's metrics and a confusion matrix. An ``Expert`` is plain data
(config, tensors, metrics) that ``store`` writes and reads; ``build_expert_model`` turns it back
into a runnable module on a copy of a base model.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from torch import nn

from .. import adapters, tasks, tt
from ..base import batching
from ..base.backbone import (
    POOLINGS,
    Backbone,
    BackboneInfo,
    default_pooling,
    encode_rows,
    load_backbone,
    pool,
)
from ..errors import ConfigError
from ..runtime import distributed, precision, rng
from . import loop as training
from .loop import LoopConfig, Progress, TrainingError, fit, task_loss  # noqa: F401 (API)

METHODS = ("tt-lora", "lora", "adapter")
# the paper's defaults: TT-LoRA rank 5, α 16, lr 5e-3; LoRA rank 16, α 8, lr 5e-4;
# bottleneck adapter (Pfeiffer seq_bn, `adapters` library): rank = reduction factor 16, lr 5e-4
# schedule: linear warm-up then linear decay to 0 at the step cap for every method (the paper's
# and HF Trainer's; one rule for all three keeps the comparison fair; see CONVERGENCE.md)
METHOD_DEFAULTS = {"tt-lora": {"rank": 5, "alpha": 16.0, "lr": 5e-3, "schedule": "linear"},
                   "lora": {"rank": 16, "alpha": 8.0, "lr": 5e-4, "schedule": "linear"},
                   "adapter": {"rank": 16, "alpha": 1.0, "lr": 5e-4, "schedule": "linear"}}
ADAPTER_NAME = "expert"   # name of the bottleneck adapter inside an `adapters` model


# settings added to ExpertConfig after checkpoints existed, with the value older runs used
CHECKPOINT_ADDED = {"pooling": "mean", "dtype": "float32"}


@dataclass
class ExpertConfig:
    """Everything that defines how one expert is trained (serialised next to its weights)."""
    task: str
    method: str = "tt-lora"            # "tt-lora" | "lora" | "adapter" (baselines)
    rank: int | None = None            # None: method default (5 / 16; adapter: reduction 16)
    alpha: float | None = None         # None: method default (16 / 8)
    shapes: dict[str, list[int]] | None = None   # target -> flat TT shape; None: balanced
    targets: list[str] | None = None   # None: q/v projections of the architecture
    init: str = "zero"                 # "zero" (ΔW=0 at step 0, measured better) | "kaiming" (paper)
    lr: float | None = None            # None: method default (5e-3 / 5e-4)
    steps: int = 300
    batch_size: int = 32
    max_length: int = 128
    seed: int = 0
    device: str | None = None          # None: CUDA when present, else CPU
    train_limit: int | None = None     # subsample the train split (seeded)
    eval_limit: int | None = 2000      # subsample the validation split (seeded)
    warmup_fraction: float = 0.06
    weight_decay: float = 0.0
    min_layer: int = 0                 # first layer adapted (tt-lora); ΔW = 0 below: a mixture
                                       # whose router reads layers < min_layer computes them once
    length_buckets: bool = True        # training batches of rows of similar length (same
                                       # expected gradient as random batches, less padding)
    # convergence (training.fit): `steps` is the cap; the hold-out is drawn from the TRAIN split
    # (seeded by `seed`, never the validation split), scored every `eval_every` steps with the
    # task's metric; `patience` evaluations without a better score stop the run, and the expert
    # keeps the weights of its best evaluation. holdout_fraction 0: train on every row, no stop.
    holdout_fraction: float = 0.1
    holdout_limit: int | None = 1000   # at most this many hold-out rows (evaluation costs time)
    eval_every: int = 100              # steps between hold-out evaluations (0: at the end only)
    patience: int = 5                  # evaluations without improvement before stopping (0: never)
    min_steps: int = 0                 # never stop early before this step (a task may sit at the
                                       # majority class for a while: CoLA, CONVERGENCE.md)
    schedule: str | None = None        # None: the method's ("linear": warm-up, decay to 0 at cap)
    checkpoint_every: int = 0          # steps between checkpoints (with a checkpoint folder)
    pooling: str | None = None         # "mean" | "last" (real token); None: the family's
                                       # (decoders last, encoders mean). Files without it: mean
    dtype: str = "float32"             # compute precision (``precision``); cores/head float32

    def resolved(self) -> "ExpertConfig":
        """A copy with method defaults filled in; raises ConfigError on bad values."""
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}: use one of {', '.join(METHODS)}")
        defaults = METHOD_DEFAULTS[self.method]
        cfg = copy.deepcopy(self)
        cfg.rank = defaults["rank"] if cfg.rank is None else int(cfg.rank)
        cfg.alpha = defaults["alpha"] if cfg.alpha is None else float(cfg.alpha)
        cfg.lr = defaults["lr"] if cfg.lr is None else float(cfg.lr)
        cfg.schedule = cfg.schedule or defaults["schedule"]
        checks = [(cfg.rank >= 1, f"rank must be >= 1, got {cfg.rank}"),
                  (cfg.init in ("kaiming", "zero"), f"init must be kaiming or zero, got {cfg.init!r}"),
                  (cfg.min_layer >= 0, f"min layer must be >= 0, got {cfg.min_layer}"),
                  (cfg.min_layer == 0 or cfg.method == "tt-lora",
                   "min layer > 0 needs a tt-lora expert"),
                  (cfg.pooling is None or cfg.pooling in POOLINGS,
                   f"pooling must be one of {', '.join(POOLINGS)}, got {cfg.pooling!r}"),
                  (cfg.dtype in precision.DTYPES,
                   f"dtype must be one of {', '.join(precision.DTYPES)}, got {cfg.dtype!r}")]
        problems = [message for ok, message in checks if not ok] + training.setting_problems(cfg)
        if problems:
            raise ConfigError(problems[0])
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "ExpertConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown expert config keys {sorted(unknown)}")
        if "task" not in data:
            raise ConfigError("expert config has no 'task'")
        # experts saved before pooling was configurable all pooled by mean
        return cls(**{"pooling": "mean", **dict(data)})


@dataclass
class Expert:
    """A trained expert as data: what the store writes and the mixture loads."""
    name: str
    config: ExpertConfig                 # resolved (explicit rank, α, shapes, targets)
    label_names: list[str]
    tensors: dict[str, torch.Tensor]     # "<layer>.cores.<k>" or PEFT lora keys, + "head.*"
    base: BackboneInfo
    tt_layout: dict[str, dict] = field(default_factory=dict)  # target -> in/out factors
    metrics: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)   # [{step, loss, examples_per_s}]
    data: dict = field(default_factory=dict)            # sources and sizes of train/eval data
    created: str = ""

    @property
    def num_labels(self) -> int:
        return max(1, len(self.label_names))

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    def trainable_params(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    def adapter_params(self) -> int:
        return sum(t.numel() for k, t in self.tensors.items() if not k.startswith("head."))

    @property
    def pooling(self) -> str:
        """How the head reads the base model: the config's, else its base model family's."""
        return self.config.pooling or default_pooling(self.base.model_type)


class ExpertModel(nn.Module):
    """Adapted base model + linear head on the pooled last hidden state (``pooling``: "mean"
    over real tokens or the "last" real token).

    ``generator`` draws the head's initial weights and, in training, its dropout masks.
    ``dtype``: the base model's forward runs under autocast to it; the head reads float32.
    """

    def __init__(self, encoder: nn.Module, hidden_size: int, num_labels: int, dropout: float = 0.1,
                 generator: torch.Generator | None = None, pooling: str = "mean",
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        generator = rng.given_or_seeded(generator)
        self.encoder = encoder
        self.pooling = pooling
        self.dtype = dtype
        self.dropout = rng.Dropout(dropout, generator)
        with rng.drawing_from(generator):
            self.head = nn.Linear(hidden_size, num_labels)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """batch of token ids -> logits [B, C]."""
        with precision.autocast(batch["input_ids"].device, self.dtype):
            hidden = self.encoder(**batch).last_hidden_state      # [B, T, H]
        pooled = pool(hidden, batch["attention_mask"], self.pooling)          # [B, H]
        return self.head(self.dropout(pooled.to(self.head.weight.dtype)))     # float32 head


def _resolve_targets_and_shapes(cfg: ExpertConfig, model: nn.Module) -> ExpertConfig:
    """Targets (the architecture's default when None) and, for TT-LoRA, a flat TT shape per
    layout key (``adapters.resolve_shapes``: per target, or per layer size where a target such
    as BERT's ``dense`` names layers of several sizes)."""
    from ..base.backbone import default_targets

    cfg.targets = list(cfg.targets or default_targets(model.config.model_type))
    cfg.pooling = cfg.pooling or default_pooling(model.config.model_type)
    if cfg.method == "tt-lora":
        try:
            cfg.shapes = adapters.resolve_shapes(model, cfg.targets, cfg.shapes)
        except ValueError as exc:
            raise ConfigError(f"shape for {exc}") from None
    return cfg


def build_expert_model(expert_or_config: Expert | ExpertConfig, backbone: Backbone,
                       num_labels: int | None = None,
                       generator: torch.Generator | None = None) -> ExpertModel:
    """A fresh copy of the base model with the expert's adapters (+ its weights if an Expert).

    ``generator`` (None: one seeded with the config's seed) draws every initial weight (adapters
    and head) and the head's dropout masks; the global RNG is never used.
    """
    expert = expert_or_config if isinstance(expert_or_config, Expert) else None
    cfg = (expert.config if expert else expert_or_config).resolved()
    generator = rng.given_or_seeded(generator, cfg.seed)
    encoder = copy.deepcopy(backbone.model)
    cfg = _resolve_targets_and_shapes(cfg, encoder)
    with rng.drawing_from(generator):       # PEFT's and the adapters library's own initialisers
        if cfg.method == "tt-lora":
            adapters.inject_tt_lora(encoder, cfg.targets, rank=cfg.rank, alpha=cfg.alpha,
                                    shapes=cfg.shapes, init=cfg.init, generator=generator)
            if not 0 <= cfg.min_layer < backbone.info.num_layers:
                raise ConfigError(f"min layer must be in 0..{backbone.info.num_layers - 1}, "
                                  f"got {cfg.min_layer}")
            adapters.freeze_below(encoder, cfg.min_layer)
        elif cfg.method == "lora":
            encoder = adapters.inject_lora(encoder, cfg.targets, rank=cfg.rank, alpha=cfg.alpha)
        else:
            adapters.inject_bottleneck(encoder, ADAPTER_NAME, reduction=cfg.rank)
    labels = expert.num_labels if expert else num_labels
    model = ExpertModel(encoder, backbone.info.hidden_size, labels, generator=generator,
                        pooling=cfg.pooling, dtype=backbone.dtype).to(backbone.device)
    if expert is not None:
        load_expert_tensors(model, expert)
    return model


def tt_layout(encoder: nn.Module, targets: list[str]) -> dict[str, dict]:
    """Input/output factors per layout key (a target, or a role in the layer where the target's
    modules differ in size: ``adapters.target_layout_keys``); the same in every layer."""
    keys = adapters.target_layout_keys(encoder, targets)
    layout = {}
    for name, layer in adapters.tt_layers(encoder).items():
        key = tt.layout_key(keys, name)
        if key is not None and key not in layout:
            layout[key] = {"in_factors": layer.in_factors, "out_factors": layer.out_factors}
    return {key: layout[key] for key in keys if key in layout}


def expert_tensors(model: ExpertModel, method: str) -> dict[str, torch.Tensor]:
    """The trainable tensors of an expert model, detached on CPU."""
    if method == "tt-lora":
        tensors = adapters.expert_cores(model.encoder)
    elif method == "adapter":
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.encoder.state_dict().items()
                   if f"adapters.{ADAPTER_NAME}." in k}
    else:
        from peft import get_peft_model_state_dict
        tensors = {k: v.detach().cpu().contiguous()
                   for k, v in get_peft_model_state_dict(model.encoder).items()}
    tensors.update({f"head.{k}": v.detach().cpu().contiguous()
                    for k, v in model.head.state_dict().items()})
    return tensors


@torch.no_grad()
def load_expert_tensors(model: ExpertModel, expert: Expert) -> None:
    if expert.config.method == "tt-lora":
        adapters.load_expert_cores(model.encoder, expert.tensors)
    elif expert.config.method == "adapter":
        missing = model.encoder.load_state_dict(
            {k: v for k, v in expert.tensors.items() if not k.startswith("head.")}, strict=False)
        if missing.unexpected_keys:
            raise ConfigError(f"unexpected adapter tensors {missing.unexpected_keys[:3]}")
    else:
        from peft import set_peft_model_state_dict
        set_peft_model_state_dict(model.encoder, {k: v for k, v in expert.tensors.items()
                                                  if not k.startswith("head.")})
    model.head.load_state_dict({k[5:]: v for k, v in expert.tensors.items()
                                if k.startswith("head.")})


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
    """
    from .checkpoint import Checkpointer

    cfg = config.resolved()
    backbone = backbone or load_backbone(device=cfg.device, dtype=cfg.dtype)
    cfg.dtype = precision.dtype_name(backbone.dtype)     # what this run computes in
    device = backbone.device
    train_data = train_data if train_data is not None else tasks.load_task(cfg.task, "train", data_dir=data_dir,
                                               limit=cfg.train_limit, seed=cfg.seed)
    if len(train_data) == 0:
        raise ConfigError(f"no training rows for task {cfg.task!r}")
    regression = not train_data.label_names
    # the hold-out comes out of the TRAIN rows (never the validation split), seeded by cfg.seed
    train_rows, holdout_rows = training.holdout_split(len(train_data), cfg.holdout_fraction,
                                                      cfg.holdout_limit, cfg.seed)
    fit_data = train_data.select(train_rows) if holdout_rows else train_data
    generator = torch.Generator().manual_seed(cfg.seed)   # init, batch order and dropout
    cfg = _resolve_targets_and_shapes(cfg, backbone.model)
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

    holdout = None
    if holdout_rows:
        held = train_data.select(holdout_rows)
        metric = tasks.primary_metric(tasks.TASKS[cfg.task] if cfg.task in tasks.TASKS else
                                      ("pearson_spearman" if regression else "accuracy"))
        holdout = training.HoldOut(lambda: evaluate_model(
            model, backbone, held, cfg.task, cfg.max_length, should_stop)["metrics"], metric)
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
    eval_data = eval_data if eval_data is not None else tasks.load_task(cfg.task, "validation", data_dir=data_dir,
                                             limit=cfg.eval_limit, seed=cfg.seed)
    result = evaluate_model(model, backbone, eval_data, cfg.task, max_length=cfg.max_length,
                            should_stop=should_stop)
    expert.metrics = {**result["metrics"], "confusion": result["confusion"],
                      "train_seconds": round(train_seconds, 2), "train_cpu_seconds": train_cpu,
                      "eval_rows": len(eval_data),
                      **training.summary(history)}
    expert.data = {"train": train_data.source, "train_rows": len(fit_data),
                   "holdout_rows": len(holdout_rows),
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
