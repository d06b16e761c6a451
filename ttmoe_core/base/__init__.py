"""The frozen base model: sources (embedded, pulled, folder, .gguf, hub), dimensions, tokenizing and pooling, running layers 0..k, length-aware batches.

May import: files, runtime, tasks, tt.
"""

from .backbone import (DEFAULT_MODEL, TARGETS_BY_TYPE, BackboneError, BackboneInfo, Backbone, pick_device,
    default_model_path, default_targets, fingerprint, with_pad_token, wrap, load_backbone,
    check_fingerprint, Encoded, encode_rows, tokenize, tokenize_mixed, POOLINGS, DECODER_TYPES,
    is_decoder_type, default_pooling, mean_pool, last_positions, last_token, pool,
    weight_sharing_copy)
from .batching import (MAX_ROWS, MAX_TOKENS, BUCKET_BATCHES, plan, restore_order, distinct, bucketed_batches,
    bucketed_epoch, shuffled_epoch, BatchStream)
from .dims import (LLAMA_LIKE, BERT_LIKE, DISTILBERT, SUPPORTED_MODEL_TYPES, ModelDims, dims_from_config, PRESETS,
    resolve_model)
from .partial import (is_layered_encoder, is_layered_decoder, runs_in_parts, layer_mask, hidden_states,
    continue_layers)
from .sources import (MODELS_ENV, EMBEDDED, MARKER, Progress, ModelError, RegisteredModel, REGISTRY, cache_dir,
    embedded_path, is_pulled, Resolved, resolve, hub_unreachable, cached_snapshot, hub_offline,
    convert_gguf, pull, list_models)

__all__ = ["BERT_LIKE", "BUCKET_BATCHES", "Backbone", "BackboneError", "BackboneInfo",
           "BatchStream", "DECODER_TYPES", "DEFAULT_MODEL", "DISTILBERT", "EMBEDDED", "Encoded",
           "LLAMA_LIKE", "MARKER", "MAX_ROWS", "MAX_TOKENS", "MODELS_ENV", "ModelDims",
           "ModelError", "POOLINGS", "PRESETS", "Progress", "REGISTRY", "RegisteredModel",
           "Resolved", "SUPPORTED_MODEL_TYPES", "TARGETS_BY_TYPE", "bucketed_batches",
           "bucketed_epoch", "cache_dir", "cached_snapshot", "check_fingerprint",
           "continue_layers", "convert_gguf", "default_model_path", "default_pooling",
           "default_targets", "dims_from_config", "distinct", "embedded_path", "encode_rows",
           "fingerprint", "hidden_states", "hub_offline", "hub_unreachable", "is_decoder_type",
           "is_layered_decoder", "is_layered_encoder", "is_pulled", "last_positions", "last_token",
           "layer_mask", "list_models", "load_backbone", "mean_pool", "pick_device", "plan",
           "pool", "pull", "resolve", "resolve_model", "restore_order", "runs_in_parts",
           "shuffled_epoch", "tokenize", "tokenize_mixed", "weight_sharing_copy", "with_pad_token",
           "wrap"]
