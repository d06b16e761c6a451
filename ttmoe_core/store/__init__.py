"""Experts, packs, routers and detector files on disk (layout, versions, checks).

May import: files, runtime, tasks, tt, base, adapters, experts, routing.
"""

from .core import (CONFIG_FILE, WEIGHTS_FILE, FORMAT, FORMAT_VERSION, JSON_LIMIT, read_json, recover,
    check_replaceable, expert_config_dict, save_tensors, save_expert, OpenedExpert, open_expert,
    load_expert, PACK_FILE, ROUTER_CONFIG_FILE, ROUTER_WEIGHTS_FILE, PACK_FORMAT, ROUTER_FORMAT,
    ROUTER_COMPANIONS, Pack, read_pack_manifest, expert_folder, add_expert_to_pack, build_pack,
    update_pack, write_expert_into, save_router, write_router_into, read_router, load_pack)
from .detector import (POOL_FORMAT, REPLAY_FORMAT, HALF, MAX_ROWS, write_pool, read_pool, write_replay, read_replay)
from .shapes import (ADAPTER_TENSORS, FLOAT_DTYPES, check_expert, router_shapes, check_router)
from .core import BackboneInfo, StoreError, atomic_dir, tensorfile, write_json
from .detector import POOL_CONFIG_FILE, POOL_WEIGHTS_FILE, REPLAY_CONFIG_FILE, REPLAY_WEIGHTS_FILE

__all__ = ["ADAPTER_TENSORS", "BackboneInfo", "CONFIG_FILE", "FLOAT_DTYPES", "FORMAT",
           "FORMAT_VERSION", "HALF", "JSON_LIMIT", "MAX_ROWS", "OpenedExpert", "PACK_FILE",
           "PACK_FORMAT", "POOL_CONFIG_FILE", "POOL_FORMAT", "POOL_WEIGHTS_FILE", "Pack",
           "REPLAY_CONFIG_FILE", "REPLAY_FORMAT", "REPLAY_WEIGHTS_FILE", "ROUTER_COMPANIONS",
           "ROUTER_CONFIG_FILE", "ROUTER_FORMAT", "ROUTER_WEIGHTS_FILE", "StoreError",
           "WEIGHTS_FILE", "add_expert_to_pack", "atomic_dir", "build_pack", "check_expert",
           "check_replaceable", "check_router", "expert_config_dict", "expert_folder",
           "load_expert", "load_pack", "open_expert", "read_json", "read_pack_manifest",
           "read_pool", "read_replay", "read_router", "recover", "router_shapes", "save_expert",
           "save_router", "save_tensors", "tensorfile", "update_pack", "write_expert_into",
           "write_json", "write_pool", "write_replay", "write_router_into"]
