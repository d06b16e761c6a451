"""TT-LoRA and LoRA layers (which expert each row uses comes from the call) and their injection into a model.

May import: files, runtime, tasks, tt, base.
"""

from .. import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    ".inject": "expert_cores, find_targets, freeze_below, inject_bottleneck, inject_gathered, "
               "inject_lora, inject_tt_lora, layer_index, layout_for, layout_key, "
               "load_expert_cores, module_role, replace_submodule, resolve_factors, "
               "resolve_shapes, target_layout_keys, tt_layer_shapes, tt_layers",
    ".layer": "GatheredTTLinear, ReconstructedTTLoRALinear, RowHalves, TTLoRALinear, "
              "adapters_off, current_expert_index, shared_update, use_experts, use_row_halves",
})

