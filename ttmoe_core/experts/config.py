"""How one expert is trained: the methods, their defaults, ``ExpertConfig`` (serialised as the
``training`` entry of ``adapter_config.json``) and the settings checkpoints learnt late."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

from ..base.backbone import POOLINGS
from ..errors import ConfigError
from ..runtime import precision
from . import loop as training

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
CHECKPOINT_ADDED = {"pooling": "mean", "dtype": "float32", "head_lr": None}


@dataclass
class ExpertConfig:
    """Everything that defines how one expert is trained (serialised next to its weights)."""
    # adapter (and the head): which layers, how, initialised how
    task: str
    method: str = "tt-lora"            # "tt-lora" | "lora" | "adapter" (baselines)
    rank: int | None = None            # None: method default (5 / 16; adapter: reduction 16)
    alpha: float | None = None         # None: method default (16 / 8)
    shapes: dict[str, list[int]] | None = None   # target -> flat TT shape; None: balanced
    targets: list[str] | None = None   # None: q/v projections of the architecture
    init: str = "zero"                 # "zero" (ΔW=0 at step 0, measured better) | "kaiming" (paper)
    # optimiser (fields keep their order: the JSON next to the weights lists them so)
    lr: float | None = None            # None: method default (5e-3 / 5e-4)
    steps: int = 300
    batch_size: int = 32
    # data
    max_length: int = 128
    # runtime
    seed: int = 0
    device: str | None = None          # None: CUDA when present, else CPU
    # data
    train_limit: int | None = None     # subsample the train split (seeded)
    eval_limit: int | None = 2000      # subsample the validation split (seeded)
    # optimiser
    warmup_fraction: float = 0.06
    weight_decay: float = 0.0
    # adapter
    min_layer: int = 0                 # first layer adapted (tt-lora); ΔW = 0 below: a mixture
                                       # whose router reads layers < min_layer computes them once
    # data
    length_buckets: bool = True        # training batches of rows of similar length (same
                                       # expected gradient as random batches, less padding)
    # optimiser: convergence (training.fit): `steps` is the cap; the hold-out is drawn from the
    # TRAIN split (seeded by `seed`, never the validation split), scored every `eval_every` steps
    # with the task's metric; `patience` evaluations without a better score stop the run, and the
    # expert keeps the weights of its best evaluation. holdout_fraction 0: every row, no stop.
    holdout_fraction: float = 0.1
    holdout_limit: int | None = 1000   # at most this many hold-out rows (evaluation costs time)
    eval_every: int = 100              # steps between hold-out evaluations (0: at the end only)
    patience: int = 5                  # evaluations without improvement before stopping (0: never)
    min_steps: int = 0                 # never stop early before this step (a task may sit at the
                                       # majority class for a while: CoLA, CONVERGENCE.md)
    schedule: str | None = None        # None: the method's ("linear": warm-up, decay to 0 at cap)
    # runtime
    checkpoint_every: int = 0          # steps between checkpoints (with a checkpoint folder)
    # adapter (the head's input)
    pooling: str | None = None         # "mean" | "last" (real token); None: the family's
                                       # (decoders last, encoders mean). Files without it: mean
    # runtime
    dtype: str = "float32"             # compute precision (``precision``); cores/head float32
    # optimiser
    head_lr: float | None = None       # the head's learning rate (None: ``lr``; 0: a random head
                                       # that stays frozen, as the authors' code trains none)

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
                   f"dtype must be one of {', '.join(precision.DTYPES)}, got {cfg.dtype!r}"),
                  (cfg.head_lr is None or (cfg.head_lr >= 0 and math.isfinite(cfg.head_lr)),
                   f"head lr must be >= 0, got {cfg.head_lr}")]
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
