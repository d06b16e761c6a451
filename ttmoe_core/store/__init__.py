"""Experts, packs, routers and detector files on disk (layout, versions, checks): ``layout``
(file names, formats, JSON, the base-model check), ``experts``, ``packs``, ``routers``,
``detector`` (out-of-pool detector and replay rows), ``shapes`` (tensor shapes a config implies),
``filenames`` (the file names and format tags, plain constants), ``publish`` (what a folder
says when shared: no absolute paths, PEFT keys, model cards, hub repo ids).

May import: files, runtime, tasks, tt, base, adapters, experts, routing.
"""

from .. import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "..base.backbone": "BackboneInfo",
    "..files": "tensorfile",
    "..files.locks": "locked",
    "..files.safefs": "StoreError, atomic_dir, write_json",
    ".detector": "HALF, MAX_ROWS, POOL_FORMAT, REPLAY_FORMAT, read_pool, read_replay, write_pool, "
                 "write_replay",
    ".experts": "OpenedExpert, check_expert_name, expert_config_dict, load_expert, open_expert, "
                "save_expert, write_expert",
    ".filenames": "CARD_FILE, CONFIG_FILE, FORMAT, FORMAT_VERSION, JSON_LIMIT, PACK_FILE, "
                  "PACK_FORMAT, "
                  "POOL_CONFIG_FILE, POOL_WEIGHTS_FILE, REPLAY_CONFIG_FILE, REPLAY_WEIGHTS_FILE, "
                  "ROUTER_COMPANIONS, ROUTER_CONFIG_FILE, ROUTER_FORMAT, ROUTER_WEIGHTS_FILE, "
                  "WEIGHTS_FILE",
    ".layout": "check_base, check_replaceable, expert_folder, pack_manifest, read_json, "
               "read_pack_part, recover, save_tensors",
    ".publish": "expert_card, pack_card, peft_keys, publishable, resolve_folder, train_command, "
                "write_pack_card",
    ".packs": "Pack, append_expert, build_pack, load_pack, read_pack_manifest, save_router, "
              "update_pack, write_expert_into",
    ".routers": "read_router, write_router_files, write_router_into",
    ".shapes": "ADAPTER_TENSORS, FLOAT_DTYPES, check_expert, check_router, router_shapes",
})

