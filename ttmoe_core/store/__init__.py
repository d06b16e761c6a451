"""Experts, packs, routers and detector files on disk (layout, versions, checks): ``layout``
(file names, formats, JSON, the base-model check), ``experts``, ``packs``, ``routers``,
``detector`` (out-of-pool detector and replay rows), ``shapes`` (tensor shapes a config implies).

May import: files, runtime, tasks, tt, base, adapters, experts, routing.
"""

from ..base.backbone import BackboneInfo
from ..files import tensorfile
from ..files.locks import locked
from ..files.safefs import StoreError, atomic_dir, write_json
from .detector import (HALF, MAX_ROWS, POOL_CONFIG_FILE, POOL_FORMAT, POOL_WEIGHTS_FILE,
    REPLAY_CONFIG_FILE, REPLAY_FORMAT, REPLAY_WEIGHTS_FILE, read_pool, read_replay, write_pool,
    write_replay)
from .experts import (OpenedExpert, check_expert_name, expert_config_dict, load_expert, open_expert,
    save_expert, write_expert)
from .layout import (CONFIG_FILE, FORMAT, FORMAT_VERSION, JSON_LIMIT, PACK_FILE, PACK_FORMAT,
    ROUTER_COMPANIONS, ROUTER_CONFIG_FILE, ROUTER_FORMAT, ROUTER_WEIGHTS_FILE, WEIGHTS_FILE,
    check_base, check_replaceable, expert_folder, pack_manifest, read_json, read_pack_part, recover,
    save_tensors)
from .packs import (Pack, append_expert, build_pack, load_pack, read_pack_manifest, save_router,
    update_pack, write_expert_into)
from .routers import read_router, write_router_files, write_router_into
from .shapes import ADAPTER_TENSORS, FLOAT_DTYPES, check_expert, check_router, router_shapes

__all__ = ["ADAPTER_TENSORS", "BackboneInfo", "CONFIG_FILE", "FLOAT_DTYPES", "FORMAT",
           "FORMAT_VERSION", "HALF", "JSON_LIMIT", "MAX_ROWS", "OpenedExpert", "PACK_FILE",
           "PACK_FORMAT", "POOL_CONFIG_FILE", "POOL_FORMAT", "POOL_WEIGHTS_FILE", "Pack",
           "REPLAY_CONFIG_FILE", "REPLAY_FORMAT", "REPLAY_WEIGHTS_FILE", "ROUTER_COMPANIONS",
           "ROUTER_CONFIG_FILE", "ROUTER_FORMAT", "ROUTER_WEIGHTS_FILE", "StoreError",
           "WEIGHTS_FILE", "append_expert", "atomic_dir", "build_pack", "check_base",
           "check_expert", "check_expert_name", "check_replaceable", "check_router",
           "expert_config_dict", "expert_folder", "load_expert", "load_pack", "locked", "open_expert",
           "pack_manifest", "read_json", "read_pack_manifest", "read_pack_part", "read_pool",
           "read_replay", "read_router", "recover", "router_shapes", "save_expert", "save_router",
           "save_tensors", "tensorfile", "update_pack", "write_expert", "write_expert_into",
           "write_json", "write_pool", "write_replay", "write_router_files", "write_router_into"]
