"""TT-LoRA and LoRA layers (which expert each row uses comes from the call) and their injection into a model.

May import: files, runtime, tasks, tt, base.
"""

from .layer import (use_experts, current_expert_index, RowHalves, use_row_halves, adapters_off, layer_index,
    TTLoRALinear, GatheredTTLinear, inject_gathered, ReconstructedTTLoRALinear, replace_submodule,
    find_targets, resolve_factors, target_layout_keys, resolve_shapes, inject_tt_lora, freeze_below,
    tt_layers, tt_layer_shapes, expert_cores, load_expert_cores, inject_lora, inject_bottleneck,
    without_log_line)

__all__ = ["GatheredTTLinear", "ReconstructedTTLoRALinear", "RowHalves", "TTLoRALinear",
           "adapters_off", "current_expert_index", "expert_cores", "find_targets", "freeze_below",
           "inject_bottleneck", "inject_gathered", "inject_lora", "inject_tt_lora", "layer_index",
           "load_expert_cores", "replace_submodule", "resolve_factors", "resolve_shapes",
           "target_layout_keys", "tt_layer_shapes", "tt_layers", "use_experts", "use_row_halves",
           "without_log_line"]
