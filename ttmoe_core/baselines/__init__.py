"""Baselines beside TT-LoRA: AdapterFusion (the `adapters` library) and full fine-tuning.

May import: files, runtime, tasks, tt, base, adapters, experts.
"""

from .fullft import (METHOD, DEFAULT_LR, FullConfig, full_model, train_full)
from .fusion import (FusionError, FusionConfig, fused_encoder, FusionModel, FusionResult, train_fusion,
    evaluate_fusion)
from .fusion import experts

__all__ = ["DEFAULT_LR", "FullConfig", "FusionConfig", "FusionError", "FusionModel",
           "FusionResult", "METHOD", "evaluate_fusion", "experts", "full_model", "fused_encoder",
           "train_full", "train_fusion"]
