"""Experts: config, model, training, the one training loop, checkpoints, quality verdicts,
ΔW spectra.

May import: files, runtime, tasks, tt, base, adapters.
"""

from .. import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
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

