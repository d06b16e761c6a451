"""One expert: TT-LoRA cores (or a PEFT LoRA / bottleneck baseline) on a frozen base model + a
task head.

An ``Expert`` is plain data (config, tensors, metrics) that ``store`` writes and reads;
``build_expert_model`` turns it (or a config) into a runnable ``ExpertModel`` on a copy of a base
model; ``expert_tensors`` / ``load_expert_tensors`` move its trainable tensors out and back in.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import adapters
from ..base.backbone import POOLINGS, Backbone, BackboneInfo, default_pooling, default_targets, pool
from ..errors import ConfigError
from ..runtime import precision, rng
from .config import ADAPTER_NAME, ExpertConfig


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


def resolve_targets_and_shapes(cfg: ExpertConfig, model: nn.Module) -> ExpertConfig:
    """Targets (the architecture's default when None) and, for TT-LoRA, a flat TT shape per
    layout key (``adapters.resolve_shapes``: per target, or per layer size where a target such
    as BERT's ``dense`` names layers of several sizes)."""
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
    cfg = resolve_targets_and_shapes(cfg, encoder)
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
        key = adapters.layout_key(keys, name)
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
        # optional: PEFT (the LoRA baseline), loaded on first use
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
        # optional: PEFT (the LoRA baseline), loaded on first use
        from peft import set_peft_model_state_dict
        set_peft_model_state_dict(model.encoder, {k: v for k, v in expert.tensors.items()
                                                  if not k.startswith("head.")})
    model.head.load_state_dict({k[5:]: v for k, v in expert.tensors.items()
                                if k.startswith("head.")})
