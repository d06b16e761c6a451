"""The mixture: the expert pool, TTLoRAMoE (routed and ad hoc), calibrating and growing a pack.

May import: everything below services.
"""

from .. import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    ".fit": "CALIBRATION_FAMILIES, CALIBRATION_PER_TASK, FAMILY_ROWS, FIT_PER_TASK, "
            "REPLAY_PER_TASK, PoolFitError, add_expert, calibrate_pool, features, "
            "openworld_report, outside_families, replay_sets",
    ".lazy": "open_pack",
    ".mixture": "GROUP_MIN_ROWS, MAX_BATCH_ROWS, MAX_BATCH_TOKENS, MoEError, Scores, TTLoRAMoE, "
                "evaluate_mixture, mixture_from_folders",
    ".pool": "CHUNK_ROWS, HALVES_CACHE, NO_LAYER, ExpertCard, ExpertPool, Gathered, ModuleSlot, "
             "module_slots",
})

