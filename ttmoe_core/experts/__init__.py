"""Experts: config, model, training, the one training loop, checkpoints, quality verdicts,
ΔW spectra.

May import: files, runtime, tasks, tt, base, adapters.
"""

from .. import lazy_exports

__getattr__ = lazy_exports(__name__, {
    ".checkpoint": "FORMAT, JSON_LIMIT, Checkpointer, CheckpointError",
    ".config": "ADAPTER_NAME, CHECKPOINT_ADDED, METHOD_DEFAULTS, METHODS, ConfigError, "
               "ExpertConfig",
    ".loop": "HOLDOUT_STREAM, SCHEDULES, HoldOut, LoopConfig, Progress, TrainingError, fit, "
             "holdout_split, lr_factor, setting_problems, summary, task_loss",
    ".model": "Expert, ExpertModel, build_expert_model, expert_tensors, load_expert_tensors, "
              "tt_layout",
    ".quality": "MARGIN, MIN_MCC, MIN_PEARSON, ORDER, Quality, assess, label_rates, pack_entry, "
                "words",
    ".spectra": "delta_w_spectra",
    ".train": "evaluate_expert, evaluate_model, holdout_scorer, load_split, predict_logits, "
              "split_training_rows, task_metric, train_expert",
})

__all__ = ["ADAPTER_NAME", "CHECKPOINT_ADDED", "CheckpointError", "Checkpointer", "ConfigError",
           "Expert", "ExpertConfig", "ExpertModel", "FORMAT", "HOLDOUT_STREAM", "HoldOut",
           "JSON_LIMIT", "LoopConfig", "MARGIN", "METHODS", "METHOD_DEFAULTS", "MIN_MCC",
           "MIN_PEARSON", "ORDER", "Progress", "Quality", "SCHEDULES", "TrainingError", "assess",
           "build_expert_model", "delta_w_spectra", "evaluate_expert", "evaluate_model",
           "expert_tensors", "fit", "holdout_scorer", "holdout_scorer", "holdout_split",
           "label_rates", "load_expert_tensors", "load_split", "lr_factor", "pack_entry",
           "predict_logits", "setting_problems", "split_training_rows", "split_training_rows",
           "summary", "task_loss", "task_metric", "train_expert", "tt_layout", "words"]
