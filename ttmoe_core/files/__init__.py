"""Safe file primitives, no ML: atomic swaps and bounded reads (safefs), safetensors files (tensorfile), JSON schemas (schema) and the one name rule (names).

May import: nothing else of ttmoe_core.
"""

from .names import (NAME_RULE, NAME_PATTERN, NameError_, is_valid_name, check_name, inside)
from .safefs import (LEGACY_AGE_S, StoreError, exchange, hidden_sibling, replace_dir, atomic_dir, link_tree, remove,
    write_json, fsync_tree, open_regular, read_bounded, is_leftover, recover)
from .schema import (MAX_DIM, MAX_LAYERS, MAX_VOCAB, MAX_RANK, MAX_FACTORS, MAX_EXPERTS, MAX_LABELS, MAX_TENSORS,
    MAX_ELEMENTS_PER_DIM, MAX_NAME, DTYPES, SchemaError, BASE_MODEL, TENSOR_MANIFEST,
    EXPERT_TRAINING, TT_LAYOUT, EXPERT_CONFIG, ROUTER_SETTINGS, ROUTER_CONFIG, PACK_MANIFEST,
    POOL_COMPONENTS, POOL_CONFIG, REPLAY_CONFIG, MODEL_CONFIG, SCHEMAS, validate)
from .tensorfile import (HEADER_LIMIT, ENTRY_KEYS, Header, dtype_name, manifest, read_header, check_manifest, load)

__all__ = ["BASE_MODEL", "DTYPES", "ENTRY_KEYS", "EXPERT_CONFIG", "EXPERT_TRAINING",
           "HEADER_LIMIT", "Header", "LEGACY_AGE_S", "MAX_DIM", "MAX_ELEMENTS_PER_DIM",
           "MAX_EXPERTS", "MAX_FACTORS", "MAX_LABELS", "MAX_LAYERS", "MAX_NAME", "MAX_RANK",
           "MAX_TENSORS", "MAX_VOCAB", "MODEL_CONFIG", "NAME_PATTERN", "NAME_RULE", "NameError_",
           "PACK_MANIFEST", "POOL_COMPONENTS", "POOL_CONFIG", "REPLAY_CONFIG", "ROUTER_CONFIG",
           "ROUTER_SETTINGS", "SCHEMAS", "SchemaError", "StoreError", "TENSOR_MANIFEST",
           "TT_LAYOUT", "atomic_dir", "check_manifest", "check_name", "dtype_name", "exchange",
           "fsync_tree", "hidden_sibling", "inside", "is_leftover", "is_valid_name", "link_tree",
           "load", "manifest", "open_regular", "read_bounded", "read_header", "recover", "remove",
           "replace_dir", "validate", "write_json"]
