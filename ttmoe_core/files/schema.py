"""JSON schemas of every JSON file the engine reads, checked before any tensor is built.

Files come from users and from the internet (packs are shared), so each one is validated by type
and range with ``jsonschema`` (declarative schemas as data; already installed with Streamlit)
before a single byte of tensor memory is allocated from its values. Every failure is one
``SchemaError`` whose message names the file and the field, e.g.
``adapter_config.json: field $.rank: 'abc' is not of type 'integer'``. ``SchemaError`` is a
``StoreError`` (the store's one error type for callers).

Bounds are generous for real models (a 405B LLaMA has hidden size 16,384 and 126 layers) and
small enough that no allowed value can make an allocation or a loop explode.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import jsonschema

from ..errors import SchemaError
from .safefs import StoreError

MAX_DIM = 1 << 20            # hidden / intermediate / head sizes
MAX_LAYERS = 4096
MAX_VOCAB = 1 << 24
MAX_RANK = 4096
MAX_FACTORS = 32             # TT modes per side
MAX_EXPERTS = 100_000
MAX_LABELS = 10_000
MAX_TENSORS = 1_000_000
MAX_ELEMENTS_PER_DIM = 1 << 31
MAX_NAME = 256               # free-text names (task, target, label); expert names have their own rule

DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "bool")


def _int(lo: int, hi: int) -> dict:
    return {"type": "integer", "minimum": lo, "maximum": hi}


def _num(lo: float, hi: float, exclusive_lo: bool = False) -> dict:
    bound = {"exclusiveMinimum": lo} if exclusive_lo else {"minimum": lo}
    return {"type": "number", **bound, "maximum": hi}


def _text(max_length: int = MAX_NAME) -> dict:
    return {"type": "string", "minLength": 1, "maxLength": max_length}


def _nullable(schema: dict) -> dict:
    """``schema`` or null (a type list, so an error names the expected type, not "any of")."""
    return {**schema, "type": [schema["type"], "null"]}


def _int_list(lo: int, hi: int, max_items: int, min_items: int = 1) -> dict:
    return {"type": "array", "items": _int(lo, hi), "minItems": min_items, "maxItems": max_items}


BASE_MODEL = {
    "type": "object",
    "required": ["name", "model_type", "hidden_size", "num_layers", "fingerprint"],
    "properties": {
        "name": _text(4096), "model_type": _text(),
        "hidden_size": _int(1, MAX_DIM), "num_layers": _int(1, MAX_LAYERS),
        "fingerprint": {"type": "string", "pattern": "^[0-9a-f]{8,128}$"},
    },
}

TENSOR_MANIFEST = {
    "type": "object", "maxProperties": MAX_TENSORS,
    "additionalProperties": {
        "type": "object", "required": ["shape", "dtype"],
        "properties": {"shape": _int_list(0, MAX_ELEMENTS_PER_DIM, 8, min_items=0),
                       "dtype": {"enum": list(DTYPES)}},
    },
}

EXPERT_TRAINING = {
    "type": "object", "required": ["task"],
    "properties": {
        "task": _text(), "method": {"enum": ["tt-lora", "lora", "adapter"]},
        "rank": _nullable(_int(1, MAX_RANK)), "alpha": _nullable(_num(0, 1e6, exclusive_lo=True)),
        "shapes": _nullable({"type": "object", "maxProperties": 256,
                             "additionalProperties": _int_list(1, MAX_DIM, 2 * MAX_FACTORS, 2)}),
        "targets": _nullable({"type": "array", "items": _text(), "minItems": 1, "maxItems": 256}),
        "init": {"enum": ["kaiming", "zero"]}, "lr": _nullable(_num(0, 10, exclusive_lo=True)),
        "head_lr": _nullable(_num(0, 10)),
        "steps": _int(1, 10**9), "batch_size": _int(1, 1 << 20), "max_length": _int(8, 1 << 20),
        "seed": _int(-(1 << 63), (1 << 64) - 1), "device": _nullable({"type": "string"}),
        "train_limit": _nullable(_int(1, 10**12)), "eval_limit": _nullable(_int(1, 10**12)),
        "warmup_fraction": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
        "weight_decay": _num(0, 10),
        "pooling": {"enum": ["mean", "last", None]},
        "dtype": {"enum": ["float32", "bfloat16", "float16"]},
    },
}

TT_LAYOUT = _nullable({
    "type": "object", "maxProperties": 256,
    "additionalProperties": {
        "type": "object", "required": ["in_factors", "out_factors"],
        "properties": {
            "in_factors": _int_list(1, MAX_DIM, MAX_FACTORS), "out_factors": _int_list(1, MAX_DIM, MAX_FACTORS),
            "core_shapes": {"type": "array", "maxItems": 2 * MAX_FACTORS,
                            "items": _int_list(1, max(MAX_DIM, MAX_RANK), 3, 3)},
        },
    },
})

# metrics and histories are shown by the app's pages: their content is typed, not only "an object"
_SCORE = _nullable(_num(-1e12, 1e12))          # a metric; null: undefined (e.g. a constant's correlation)
_SCORES = {"type": "object", "maxProperties": MAX_EXPERTS, "additionalProperties": _SCORE}
_COUNT = _int(0, 1 << 62)
CONFUSION = {"type": "array", "maxItems": MAX_EXPERTS,
             "items": {"type": "array", "items": _COUNT, "maxItems": MAX_EXPERTS}}
METRICS = {
    "type": "object",
    "properties": {
        "confusion": CONFUSION, "per_task": _SCORES, "per_layer": _SCORES,
        **{key: _SCORE for key in ("accuracy", "f1", "mcc", "pearson", "spearman", "loss",
                                   "train_seconds", "train_cpu_seconds",
                                   "cost_fraction_of_pass")},
        **{key: _COUNT for key in ("rows", "eval_rows", "train_rows", "held_out_rows")},
        "sources": {"type": "object", "additionalProperties": {"type": "string"}},
        "added": {"type": "array", "maxItems": MAX_EXPERTS, "items": {
            "type": "object", "required": ["expert", "task", "seconds", "rows_new"],
            "properties": {"expert": {"type": "string"}, "task": {"type": "string"},
                           "seconds": _num(0, 1e12), "rows_new": _COUNT}}},
    },
}
HISTORY = {
    "type": "array", "maxItems": 10_000_000,
    "items": {"type": "object", "required": ["step", "loss"],
              "properties": {"step": _int(0, 10**9), "loss": _num(-1e30, 1e30),
                             "examples_per_s": _nullable(_num(0, 1e30)),
                             "elapsed_s": _num(0, 1e12), "cpu_s": _num(0, 1e12),
                             "holdout": {"type": "object", "additionalProperties": _SCORE},
                             "best": {"type": "boolean"}}},
}

EXPERT_CONFIG = {
    "type": "object",
    "required": ["format", "name", "method", "task", "label_names", "base_model", "training", "tensors"],
    "properties": {
        "format": {"const": "ttmoe-expert"}, "format_version": _int(1, 1),
        "name": {"type": "string"}, "method": {"enum": ["tt-lora", "lora", "adapter"]}, "task": _text(),
        "label_names": {"type": "array", "items": {"type": "string", "maxLength": MAX_NAME},
                        "maxItems": MAX_LABELS, "uniqueItems": True},
        "rank": _nullable(_int(1, MAX_RANK)), "alpha": _nullable({"type": "number"}),
        "targets": _nullable({"type": "array", "items": _text(), "maxItems": 256}),
        "tt": TT_LAYOUT, "base_model": BASE_MODEL, "training": EXPERT_TRAINING,
        "metrics": METRICS, "history": HISTORY, "data": {"type": "object"},
        "created": {"type": "string"}, "trainable_params": _int(0, 1 << 62),
        "tensors": TENSOR_MANIFEST,
    },
}

ROUTER_SETTINGS = {
    "type": "object", "required": ["variant"],
    "properties": {
        "variant": {"enum": ["paper", "linear", "mlp", "fusion", "ngram"]},
        "added_experts": _int(0, MAX_EXPERTS), "grow_source": {"enum": ["hidden", "input", "both"]},
        "layer": _nullable(_int(0, MAX_LAYERS)), "hidden": _int(1, 1 << 16),
        "epochs": _int(1, 10**6), "batch_size": _int(1, 1 << 20), "lr": _num(0, 10, exclusive_lo=True),
        "weight_decay": _num(0, 10), "dropout": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
        "seed": _int(-(1 << 63), (1 << 64) - 1), "max_length": _int(8, 1 << 20),
        # the ngram router's hash buckets per block: a power of two 2^8..2^20 (routing.config)
        "buckets": {"type": "integer", "enum": [1 << n for n in range(8, 21)]},
    },
}

ROUTER_CONFIG = {
    "type": "object", "required": ["format", "config", "experts", "base_model", "tensors"],
    "properties": {
        "format": {"const": "ttmoe-router"}, "format_version": _int(1, 1),
        "config": ROUTER_SETTINGS,
        "experts": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": MAX_EXPERTS},
        "base_model": BASE_MODEL, "metrics": METRICS, "params": _int(0, 1 << 62),
        "tensors": TENSOR_MANIFEST,
    },
}

PACK_MANIFEST = {
    "type": "object", "required": ["format", "experts", "base_model"],
    "properties": {
        "format": {"const": "ttmoe-pack"}, "format_version": _int(1, 1),
        "experts": {"type": "array", "items": {"type": "string"}, "maxItems": MAX_EXPERTS},
        "base_model": BASE_MODEL, "router": _nullable({"type": "object"}),
        "metrics": {"type": "object"}, "build": {"type": "object"}, "pool": _nullable({"type": "object"}),
    },
}

POOL_COMPONENTS = ["energy", "knn", "lm", "maha", "msp"]
POOL_CONFIG = {
    "type": "object",
    "required": ["format", "experts", "base_model", "layer", "components", "weights", "z",
                 "threshold", "temperature", "k", "lm_alpha", "tensors"],
    "properties": {
        "format": {"const": "ttmoe-pool"}, "format_version": _int(1, 1),
        "experts": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": MAX_EXPERTS},
        "base_model": BASE_MODEL, "layer": _int(0, MAX_LAYERS),
        "components": {"type": "array", "items": {"enum": POOL_COMPONENTS}, "uniqueItems": True,
                       "minItems": 1, "maxItems": len(POOL_COMPONENTS)},
        "weights": {"type": "object", "propertyNames": {"enum": POOL_COMPONENTS},
                    "additionalProperties": _num(-1e6, 1e6), "minProperties": 1},
        "z": {"type": "object", "propertyNames": {"enum": POOL_COMPONENTS},
              "additionalProperties": {"type": "array", "prefixItems": [_num(-1e12, 1e12), _num(1e-12, 1e12)],
                                       "minItems": 2, "maxItems": 2}},
        "threshold": _num(-1e12, 1e12), "temperature": _num(1e-6, 1e6), "k": _int(1, 100_000),
        "lm_alpha": _num(0, 1e6, exclusive_lo=True), "metrics": {"type": "object"},
        "tensors": TENSOR_MANIFEST,
    },
}

REPLAY_CONFIG = {
    "type": "object", "required": ["format", "experts", "base_model", "source", "tensors"],
    "properties": {
        "format": {"const": "ttmoe-replay"}, "format_version": _int(1, 1),
        "experts": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": MAX_EXPERTS},
        "base_model": BASE_MODEL, "source": {"enum": ["hidden", "input", "both"]},
        "tensors": TENSOR_MANIFEST,
    },
}

_POSITIVE = _int(1, MAX_DIM)
_FLAG = {"type": "boolean"}
MODEL_CONFIG = {
    "type": "object", "required": ["model_type"],
    "properties": {
        "model_type": {"type": "string", "maxLength": MAX_NAME},
        "hidden_size": _POSITIVE, "intermediate_size": _POSITIVE, "num_attention_heads": _POSITIVE,
        "num_key_value_heads": _nullable(_POSITIVE), "head_dim": _nullable(_POSITIVE),
        "num_hidden_layers": _int(1, MAX_LAYERS), "vocab_size": _int(1, MAX_VOCAB),
        "max_position_embeddings": _int(1, MAX_VOCAB), "type_vocab_size": _int(0, MAX_VOCAB),
        "tie_word_embeddings": _FLAG, "attention_bias": _FLAG, "mlp_bias": _FLAG,
        # DistilBERT's names
        "dim": _POSITIVE, "hidden_dim": _POSITIVE, "n_heads": _POSITIVE, "n_layers": _int(1, MAX_LAYERS),
    },
}

# a training checkpoint's state.json (``experts.checkpoint``): every value the loop resumes from
_STEP = _int(0, 10**9)
CHECKPOINT_STATE = {
    "type": "object",
    "required": ["format", "fingerprint", "loop", "batches", "schedule", "optimizer", "has_best"],
    "properties": {
        "format": {"const": "ttmoe-checkpoint"}, "fingerprint": {"type": "object"},
        "loop": {"type": "object",
                 "required": ["step", "history", "running", "seen", "elapsed", "best_score",
                              "best_step", "bad_evals", "stopped_early"],
                 "properties": {"step": _STEP, "history": HISTORY,
                                "running": {"type": "array", "items": _num(-1e30, 1e30),
                                            "maxItems": 10**6},
                                "seen": _COUNT, "elapsed": _num(0, 1e12), "cpu": _num(0, 1e12),
                                "best_score": _nullable(_num(-1e30, 1e30)),
                                "best_step": _nullable(_STEP), "bad_evals": _STEP,
                                "stopped_early": {"type": "boolean"}}},
        "batches": {"type": "object", "required": ["epoch", "used"],
                    "properties": {"epoch": {"type": "array", "items": {
                                       "type": "array", "items": _int(0, 1 << 40), "minItems": 1}},
                                   "used": _STEP, "epochs": _STEP}},
        "schedule": {"type": "object", "required": ["base_lrs", "last_epoch"],
                     "properties": {"base_lrs": {"type": "array", "items": _num(0, 10)},
                                    "last_epoch": _int(-1, 10**9)}},
        "optimizer": {"type": "object", "required": ["param_groups", "state"],
                      "properties": {"param_groups": {"type": "array", "minItems": 1, "items": {
                          "type": "object", "required": ["lr", "params"],
                          "properties": {"lr": _num(0, 10), "initial_lr": _num(0, 10),
                                         "weight_decay": _num(0, 10),
                                         "params": {"type": "array", "items": _int(0, 1 << 30)}}}},
                          "state": {"type": "object"}}},
        "has_best": {"type": "boolean"},
    },
}

SCHEMAS: Mapping[str, dict] = MappingProxyType({
    "expert": EXPERT_CONFIG, "router": ROUTER_CONFIG, "pack": PACK_MANIFEST, "model": MODEL_CONFIG,
    "pool": POOL_CONFIG, "replay": REPLAY_CONFIG, "checkpoint": CHECKPOINT_STATE,
    "training": EXPERT_TRAINING, "router_settings": ROUTER_SETTINGS,
})

# "integer" means a JSON integer literal: 5.0 is refused (a float where code needs an int);
# "number" a finite one: NaN passes every range check, so it is refused by type
_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine_many({
    "integer": lambda _checker, value: isinstance(value, int) and not isinstance(value, bool),
    "number": lambda _checker, value: (isinstance(value, (int, float)) and not isinstance(value, bool)
                                       and math.isfinite(value)),
})
_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_TYPES)
_VALIDATORS = MappingProxyType({kind: _Validator(schema) for kind, schema in SCHEMAS.items()})


def _field(error: jsonschema.ValidationError) -> str:
    return error.json_path if error.absolute_path else "$"


def validate(data: Any, kind: str, file: str) -> Any:
    """``data`` itself when it follows the ``kind`` schema; else ``SchemaError`` naming ``file``
    and the first offending field (the most specific error jsonschema finds)."""
    validator = _VALIDATORS[kind]
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        message = error.message if len(error.message) <= 200 else error.message[:200] + "…"
        raise SchemaError(f"{file}: field {_field(error)}: {message}")
    return data
