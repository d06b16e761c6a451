"""The frozen base model: sources (embedded, pulled, folder, .gguf, hub), dimensions, tokenizing and pooling, running layers 0..k, length-aware batches.

May import: files, runtime, tasks, tt.
"""

from .. import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    ".backbone": "DECODER_TYPES, DEFAULT_MODEL, POOLINGS, TARGETS_BY_TYPE, Backbone, "
                 "BackboneError, BackboneInfo, Encoded, check_fingerprint, default_model_path, "
                 "default_pooling, default_targets, encode_rows, fingerprint, is_decoder_type, "
                 "last_positions, last_token, load_backbone, mean_pool, pick_device, pool, "
                 "tokenize, tokenize_mixed, weight_sharing_copy, with_pad_token, wrap",
    ".batching": "BUCKET_BATCHES, MAX_ROWS, MAX_TOKENS, BatchStream, bucketed_batches, "
                 "bucketed_epoch, distinct, plan, restore_order, shuffled_epoch",
    ".dims": "BERT_LIKE, DISTILBERT, LLAMA_LIKE, PRESETS, SUPPORTED_MODEL_TYPES, ModelDims, "
             "dims_from_config, resolve_model",
    ".partial": "continue_layers, hidden_states, is_layered_decoder, is_layered_encoder, "
                "layer_mask, runs_in_parts",
    ".sources": "EMBEDDED, MARKER, MODELS_ENV, REGISTRY, ModelError, Progress, RegisteredModel, "
                "Resolved, cache_dir, cached_snapshot, convert_gguf, embedded_path, hub_id, "
                "hub_offline, hub_unreachable, is_pulled, list_models, pull, resolve",
})

