"""AdapterFusion (Pfeiffer et al., 2021) as a baseline, through the ``adapters`` library.

Trained bottleneck adapters (``experts.train_expert(method="adapter")``, one per task) are loaded
side by side into one copy of the base model, a ``Fuse`` block over all of them is added, and only
the fusion layers and one linear head per task are trained (base and adapters frozen). One task
(Table 6, "expert integration": fuse everything, train for one task) and several tasks at once
(the paper's multi-task setting: one shared fusion, a head per task, mixed batches where each
row's loss comes from its own task's head) are the same code.

Training is ``experts.fit``, the experts' own loop: the base model runs in eval mode (no
dropout), each head has dropout 0.1 on the mean-pooled last hidden state, AdamW with 6% linear
warm-up then linear decay. With ``holdout_fraction`` > 0 it also follows the experts' stopping
rule: a seeded hold-out of each task's TRAIN rows (``experts.holdout_split``, the split an expert
of the same seed holds out) is scored every ``eval_every`` steps (the mean over tasks of each
task's primary metric through its head), ``patience`` evaluations without a better score stop the
run (never before ``min_steps``; ``steps`` is the cap) and the weights of the best evaluation are
kept.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .. import experts, tasks
from ..base.backbone import Backbone, default_pooling, pool, tokenize_mixed
from ..errors import FusionError
from ..experts.checkpoint import Checkpointer
from ..runtime import rng
from ..runtime.logs import without_log_line


@dataclass(frozen=True)
class FusionConfig:
    """How the fusion stage is trained (the adapters themselves are already trained)."""
    steps: int = 300
    batch_size: int = 32
    max_length: int = 128
    lr: float = 5e-4                # the adapter baseline's learning rate (experts.METHOD_DEFAULTS)
    seed: int = 0
    warmup_fraction: float = 0.06
    weight_decay: float = 0.0
    head_dropout: float = 0.1
    schedule: str = "linear"
    # the experts' stopping rule (experts.ExpertConfig, loop.fit); holdout_fraction 0: every row
    # trains and the run takes all ``steps`` (the rule needs a hold-out)
    holdout_fraction: float = 0.0
    holdout_limit: int | None = 1000   # hold-out rows a task, at most
    eval_every: int = 0                # steps between hold-out evaluations (0: at the end only)
    patience: int = 0                  # evaluations without a better score that stop the run
    min_steps: int = 0                 # never stop early before this step

    def to_dict(self) -> dict:
        return asdict(self)


def _adapter_tensors(expert: experts.Expert, name: str) -> dict[str, torch.Tensor]:
    """An adapter expert's encoder tensors, renamed from ``experts.ADAPTER_NAME`` to ``name``."""
    old, new = f".adapters.{experts.ADAPTER_NAME}.", f".adapters.{name}."
    return {k.replace(old, new): v for k, v in expert.tensors.items() if not k.startswith("head.")}


def fused_encoder(backbone: Backbone, adapter_experts: Mapping[str, experts.Expert],
                  generator: torch.Generator | None = None) -> nn.Module:
    """A copy of the base model holding every adapter (named by its key) under one active ``Fuse``.

    Only the fusion layers are trainable; ``generator`` (None: seed 0) draws their initial weights.
    """
    # optional: the adapters library (bottleneck and fusion baselines), loaded on first use
    import adapters as adapters_lib
    from adapters.composition import Fuse

    if len(adapter_experts) < 2:
        raise FusionError(f"fusion needs at least two adapters, got {len(adapter_experts)}")
    for name, expert in adapter_experts.items():
        if expert.config.method != "adapter":
            raise FusionError(f"{name!r} is a {expert.config.method} expert, not a bottleneck adapter")
        if expert.base.fingerprint != backbone.info.fingerprint:
            raise FusionError(f"adapter {name!r} was trained on another base model ({expert.base.name!r})")
    encoder = copy.deepcopy(backbone.model)
    with rng.drawing_from(rng.given_or_seeded(generator)):
        adapters_lib.init(encoder)          # the library's initialisers draw from ``generator``
        for name, expert in adapter_experts.items():
            bottleneck = adapters_lib.SeqBnConfig(reduction_factor=expert.config.rank)
            encoder.add_adapter(name, config=bottleneck)
            tensors = _adapter_tensors(expert, name)
            result = encoder.load_state_dict(tensors, strict=False)
            missing = sorted({k for k in encoder.state_dict() if f".adapters.{name}." in k} - set(tensors))
            if result.unexpected_keys or missing:
                raise FusionError(f"adapter {name!r}: tensors do not fit the model (unexpected "
                                  f"{result.unexpected_keys[:2]}, missing {missing[:2]})")
        fuse = Fuse(*adapter_experts)
        encoder.add_adapter_fusion(fuse)
    # freezes base and adapters, fusion layers trainable; like train_adapter, it resets the layers
    # before it activates the Fuse block, and the library warns, wrongly here, that none is active
    with without_log_line("adapters.model_mixin", "none are activated"):
        encoder.train_adapter_fusion(fuse)
    encoder.set_active_adapters(fuse)
    return encoder.to(backbone.device)


class FusionModel(nn.Module):
    """Fused encoder + one linear head per task on the pooled last hidden state."""

    def __init__(self, encoder: nn.Module, hidden_size: int, num_labels: Mapping[str, int],
                 dropout: float = 0.1, generator: torch.Generator | None = None):
        super().__init__()
        generator = rng.given_or_seeded(generator)
        self.encoder = encoder
        self.tasks = list(num_labels)
        self.dropout = rng.Dropout(dropout, generator)       # masks drawn from ``generator``
        with rng.drawing_from(generator):
            self.heads = nn.ModuleDict({t: nn.Linear(hidden_size, n) for t, n in num_labels.items()})

    def pooled(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """[B, H] the last hidden state pooled as the model family pools (mean over real tokens
        for encoders, the last real token for decoders; dropout in training)."""
        hidden = self.encoder(**batch).last_hidden_state                  # [B, T, H]
        how = default_pooling(getattr(self.encoder.config, "model_type", ""))
        return self.dropout(pool(hidden, batch["attention_mask"], how))

    def for_task(self, task: str) -> nn.Module:
        """A module ``batch -> logits [B, C]`` of one task's head (what ``experts.evaluate_model`` takes)."""
        if task not in self.heads:
            raise FusionError(f"no head for task {task!r}; heads: {self.tasks}")
        return _TaskView(self, task)

    def fusion_params(self) -> int:
        """Trainable parameters of the fusion layers (heads not included)."""
        return sum(p.numel() for p in self.encoder.parameters() if p.requires_grad)

    def head_params(self) -> int:
        return sum(p.numel() for p in self.heads.parameters())


class _TaskView(nn.Module):
    def __init__(self, model: FusionModel, task: str):
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.model.heads[self.task](self.model.pooled(batch))


@dataclass
class FusionResult:
    model: FusionModel
    config: FusionConfig
    adapters: list[str]           # fused adapters, in Fuse order
    tasks: list[str]              # tasks with a head
    history: list[dict]           # [{step, loss, examples_per_s[, holdout, best]}]
    train_seconds: float
    train_rows: dict[str, int]    # rows trained on, a task (the hold-out left out)
    holdout_rows: dict[str, int] = field(default_factory=dict)   # hold-out rows, a task

    @property
    def summary(self) -> dict[str, float]:
        """``experts.summary`` of the history: steps run; with a hold-out, the best step, the
        number of evaluations and the best evaluation's ``holdout_<key>`` numbers."""
        return experts.summary(self.history)

    def params(self, adapter_experts: Mapping[str, experts.Expert]) -> dict[str, int]:
        """Parameter counts: fused adapters (frozen), fusion layers and heads (trained)."""
        adapter = sum(adapter_experts[name].adapter_params() for name in self.adapters)
        fusion, heads = self.model.fusion_params(), self.model.head_params()
        return {"adapters": adapter, "fusion": fusion, "heads": heads,
                "trained": fusion + heads, "total": adapter + fusion + heads}


def train_fusion(backbone: Backbone, adapter_experts: Mapping[str, experts.Expert],
                 train_sets: Mapping[str, tasks.TaskData], config: FusionConfig, *,
                 progress: Callable[[experts.Progress], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, log_every: int = 5,
                 checkpoint: Checkpointer | None = None) -> FusionResult:
    """Train the fusion layers + one head per task of ``train_sets`` on the mixture of their rows.

    Every epoch shuffles all tasks' rows together, so a batch mixes tasks in proportion to their
    sizes; each row's loss comes from its own task's head (batch loss = mean over rows). With
    ``config.holdout_fraction`` > 0 the stopping rule of the module docstring applies (hold-out
    metrics ``<task>_<metric>`` and their ``mean``). With ``checkpoint`` the run saves itself as
    ``training.fit`` does and, resumed, ends where an uninterrupted run ends (``train_seconds``
    then counts every start's loop).
    """
    if not train_sets:
        raise FusionError("no training data given")
    generator = torch.Generator().manual_seed(config.seed)  # init, batch order and dropout
    device = backbone.device
    encoder = fused_encoder(backbone, adapter_experts, generator)
    num_labels = {t: max(1, len(d.label_names)) for t, d in train_sets.items()}
    model = FusionModel(encoder, backbone.info.hidden_size, num_labels, config.head_dropout,
                        generator).to(device)
    fit_sets, held_sets = {}, {}
    for task, data in train_sets.items():      # the experts' split of each task's training rows
        rows, held = experts.holdout_split(len(data), config.holdout_fraction, config.holdout_limit,
                                           config.seed)
        fit_sets[task] = data.select(rows) if held else data
        if held:
            held_sets[task] = data.select(held)
    pool = [(t, i) for t, data in fit_sets.items() for i in range(len(data))]   # (task, row)

    def batch_loss(indices: list[int]) -> torch.Tensor:
        """Mean over the rows of each row's loss under its own task's head."""
        rows = [pool[i] for i in indices]
        texts = [fit_sets[t].texts[i] for t, i in rows]
        pairs = [fit_sets[t].text_pairs[i] if fit_sets[t].text_pairs else None for t, i in rows]
        batch, _ = tokenize_mixed(backbone.tokenizer, texts, pairs, config.max_length, device)
        pooled = model.pooled(batch)                                          # [B, H]
        loss = pooled.new_zeros(())
        for task in dict.fromkeys(t for t, _ in rows):
            idx = [k for k, (t, _) in enumerate(rows) if t == task]
            data = fit_sets[task]
            labels = torch.tensor([data.labels[rows[k][1]] for k in idx], device=device)
            loss = loss + experts.task_loss(model.heads[task](pooled[idx]), labels,
                                            not data.label_names) * len(idx)
        return loss / len(rows)

    def holdout_metrics() -> dict[str, float]:
        """Each task's primary metric on its hold-out rows through its head, and their mean."""
        out = {}
        for task, held in held_sets.items():
            key = experts.task_metric(task, not held.label_names)
            out[f"{task}_{key}"] = experts.evaluate_model(
                model.for_task(task), backbone, held, task, config.max_length,
                should_stop)["metrics"][key]
        out["mean"] = statistics.fmean(out.values())       # NaN in: NaN out (counts as worst)
        return out

    holdout = experts.HoldOut(holdout_metrics, "mean") if held_sets else None
    start = time.perf_counter()
    history = experts.fit(model, batch_loss, len(pool), config, generator, progress=progress,
                          should_stop=should_stop, log_every=log_every, prefix="fusion ",
                          holdout=holdout, checkpoint=checkpoint)
    elapsed = history[-1].get("elapsed_s") if history else None     # over every start
    return FusionResult(model=model, config=config, adapters=list(adapter_experts),
                        tasks=list(train_sets), history=history,
                        train_seconds=elapsed if elapsed is not None else time.perf_counter() - start,
                        train_rows={t: len(d) for t, d in fit_sets.items()},
                        holdout_rows={t: len(d) for t, d in held_sets.items()})


def evaluate_fusion(result: FusionResult, backbone: Backbone, data: tasks.TaskData,
                    task: str | None = None) -> dict:
    """Metrics of one task's head on labelled data (``experts.evaluate_model``'s dict)."""
    task = task or data.task
    return experts.evaluate_model(result.model.for_task(task), backbone, data, task,
                                  max_length=result.config.max_length)

