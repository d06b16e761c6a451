"""Safe file primitives, no ML: atomic swaps and bounded reads (safefs), one writer at a time (locks), safetensors files (tensorfile), JSON schemas (schema) and the one name rule (names).

May import: nothing else of ttmoe_core.
"""

from .. import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    ".locks": "WAIT_S, lock_file, locked",
    ".names": "NAME_PATTERN, NAME_RULE, NameRuleError, check_name, inside, is_valid_name",
    ".safefs": "LEGACY_AGE_S, StoreError, atomic_dir, exchange, fsync_tree, hidden_sibling, "
               "is_leftover, json_depth, link_tree, nan_to_null, open_regular, parse_json, "
               "read_bounded, recover, remove, replace_dir, write_json",
    ".schema": "BASE_MODEL, CHECKPOINT_STATE, DTYPES, EXPERT_CONFIG, EXPERT_TRAINING, MAX_DIM, "
               "MAX_ELEMENTS_PER_DIM, MAX_EXPERTS, MAX_FACTORS, MAX_LABELS, MAX_LAYERS, MAX_NAME, "
               "MAX_RANK, MAX_TENSORS, MAX_VOCAB, MODEL_CONFIG, PACK_MANIFEST, POOL_COMPONENTS, "
               "POOL_CONFIG, REPLAY_CONFIG, ROUTER_CONFIG, ROUTER_SETTINGS, SCHEMAS, "
               "TENSOR_MANIFEST, TT_LAYOUT, SchemaError, validate",
    ".tensorfile": "ENTRY_KEYS, HEADER_LIMIT, MAX_ABS, Header, check_manifest, dtype_name, load, manifest, "
                   "read_header",
})

