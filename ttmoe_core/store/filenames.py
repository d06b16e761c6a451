"""The names of the files in an expert, a pack and a router folder, and their format tags: plain
constants, so the CLI's parser and the workspace read them without importing torch."""

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
FORMAT = "ttmoe-expert"
FORMAT_VERSION = 1
JSON_LIMIT = 64 << 20                  # bytes: the largest JSON file read
CARD_FILE = "README.md"                # the model card of an expert or a pack (``publish``)

PACK_FILE = "pack.json"
ROUTER_CONFIG_FILE = "router_config.json"
ROUTER_WEIGHTS_FILE = "router.safetensors"
PACK_FORMAT = "ttmoe-pack"
ROUTER_FORMAT = "ttmoe-router"
# the router's companions (``detector``): valid only with the router they were made for
POOL_CONFIG_FILE, POOL_WEIGHTS_FILE = "pool_config.json", "pool.safetensors"
REPLAY_CONFIG_FILE, REPLAY_WEIGHTS_FILE = "router_replay.json", "router_replay.safetensors"
ROUTER_COMPANIONS = (POOL_CONFIG_FILE, POOL_WEIGHTS_FILE, REPLAY_CONFIG_FILE, REPLAY_WEIGHTS_FILE)
