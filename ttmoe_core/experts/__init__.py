"""Experts: config, model, the one training loop, checkpoints, quality verdicts.

May import: files, runtime, tasks, tt, base, adapters.
"""

from .checkpoint import (FORMAT, JSON_LIMIT, CheckpointError, Checkpointer)
from .loop import (SCHEDULES, HOLDOUT_STREAM, TrainingError, Progress, LoopConfig, HoldOut, holdout_split,
    setting_problems, lr_factor, task_loss, fit, summary)
from .model import (METHODS, METHOD_DEFAULTS, ADAPTER_NAME, ConfigError, CHECKPOINT_ADDED, ExpertConfig, Expert,
    ExpertModel, build_expert_model, tt_layout, expert_tensors, load_expert_tensors, train_expert,
    predict_logits, evaluate_model, evaluate_expert)
from .quality import (MIN_MCC, MIN_PEARSON, MARGIN, ORDER, Quality, label_rates, assess, pack_entry, words)

__all__ = ["ADAPTER_NAME", "CHECKPOINT_ADDED", "CheckpointError", "Checkpointer", "ConfigError",
           "Expert", "ExpertConfig", "ExpertModel", "FORMAT", "HOLDOUT_STREAM", "HoldOut",
           "JSON_LIMIT", "LoopConfig", "MARGIN", "METHODS", "METHOD_DEFAULTS", "MIN_MCC",
           "MIN_PEARSON", "ORDER", "Progress", "Quality", "SCHEDULES", "TrainingError", "assess",
           "build_expert_model", "evaluate_expert", "evaluate_model", "expert_tensors", "fit",
           "holdout_split", "label_rates", "load_expert_tensors", "lr_factor", "pack_entry",
           "predict_logits", "setting_problems", "summary", "task_loss", "train_expert",
           "tt_layout", "words"]
