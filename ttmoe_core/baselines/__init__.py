"""Baselines beside TT-LoRA: AdapterFusion (the `adapters` library) and full fine-tuning.

May import: files, runtime, tasks, tt, base, adapters, experts.
"""

from .. import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    ".fullft": "DEFAULT_LR, METHOD, FullConfig, full_model, train_full",
    ".fusion": "FusionConfig, FusionError, FusionModel, FusionResult, evaluate_fusion, experts, "
               "fused_encoder, train_fusion",
})

