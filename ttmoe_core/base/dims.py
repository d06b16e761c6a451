"""What a model's config says: its dimensions, its parameter count, and the presets.

Base parameter counts follow the standard formula of each family (embeddings included):
LLaMA-like (llama, mistral, qwen2) as ``*ForCausalLM`` (the LM head counted only when
``tie_word_embeddings`` is false); BERT-like (bert, roberta, xlm-roberta) as ``*Model`` with pooler;
DistilBERT as ``DistilBertModel``. A config is validated by type and range (``schema.MODEL_CONFIG``)
before anything is computed from it. Presets hold the published configs of real models (their
totals are checked against the models' published parameter counts in tests/test_budget.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from ttmoe_core.files import schema
from ttmoe_core.files.safefs import StoreError, parse_json, read_bounded

LLAMA_LIKE = frozenset({"llama", "mistral", "qwen2"})
BERT_LIKE = frozenset({"bert", "roberta", "xlm-roberta"})
DISTILBERT = "distilbert"
CONFIG_LIMIT = 16 << 20               # bytes: the largest config.json read
SUPPORTED_MODEL_TYPES = tuple(sorted(LLAMA_LIKE | BERT_LIKE | {DISTILBERT}))


# ----------------------------------------------------------------------------- model dimensions


@dataclass(frozen=True)
class ModelDims:
    """What the budget needs from a model. All sizes are counts (features, layers, tokens)."""

    name: str
    model_type: str
    hidden_size: int
    num_layers: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    total_params: int

    def _module_shapes(self) -> dict[str, tuple[int, int]]:
        """``{target: (d_in, d_out)}`` of every adaptable linear layer of one block."""
        h, inter = self.hidden_size, self.intermediate_size
        if self.model_type in LLAMA_LIKE:
            q_dim, kv_dim = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
            return {"q_proj": (h, q_dim), "k_proj": (h, kv_dim), "v_proj": (h, kv_dim),
                    "o_proj": (q_dim, h), "gate_proj": (h, inter), "up_proj": (h, inter),
                    "down_proj": (inter, h)}
        if self.model_type == DISTILBERT:
            return {"q_lin": (h, h), "k_lin": (h, h), "v_lin": (h, h), "out_lin": (h, h),
                    "lin1": (h, inter), "lin2": (inter, h)}
        return {"query": (h, h), "key": (h, h), "value": (h, h), "attention_output": (h, h),
                "intermediate": (h, inter), "output": (inter, h)}

    @property
    def valid_targets(self) -> list[str]:
        """Target module names this model family accepts."""
        return list(self._module_shapes())

    def _aliases(self) -> dict[str, tuple[str, ...]]:
        """Module names as ``train-expert --targets`` takes them (the model's own attribute
        names) -> the budget's names. BERT's ``dense`` names three linear layers of each block
        and the pooler's (once per model)."""
        if self.model_type in LLAMA_LIKE or self.model_type == DISTILBERT:
            return {}
        return {"dense": ("attention_output", "intermediate", "output", "pooler")}

    def expand_targets(self, targets: Sequence[str]) -> list[str]:
        """The budget's module names for ``targets`` (aliases such as ``dense`` expanded, order
        kept, each once); ValueError for a name this family does not have."""
        out: list[str] = []
        for target in targets:
            for name in self._aliases().get(target, (target,)):
                self.module_shape(name)                      # raises with the valid names
                if name not in out:
                    out.append(name)
        return out

    def module_shape(self, target: str) -> tuple[int, int]:
        """``(d_in, d_out)`` of a target module, e.g. llama ``q_proj`` -> ``(h, heads·head_dim)``."""
        shapes = self._module_shapes()
        if target == "pooler" and self._aliases():
            return (self.hidden_size, self.hidden_size)
        if target not in shapes:
            raise ValueError(f"unknown target module {target!r} for {self.model_type} model "
                             f"{self.name!r}: valid targets are {', '.join(shapes)} (or "
                             f"{', '.join(self._aliases()) or 'no other names'})")
        return shapes[target]

    def layers_of(self, target: str) -> int:
        """How many copies of ``target`` the model has: one per block, the pooler once."""
        return 1 if target == "pooler" else self.num_layers

    def default_targets(self) -> list[str]:
        """The paper's choice: query and value projections."""
        if self.model_type in LLAMA_LIKE:
            return ["q_proj", "v_proj"]
        if self.model_type == DISTILBERT:
            return ["q_lin", "v_lin"]
        return ["query", "value"]


def _require(config: Mapping, keys: Sequence[str], model_type: str) -> list[int]:
    """Integer values of ``keys``; ValueError naming every missing or invalid one."""
    missing = [k for k in keys if config.get(k) is None]
    if missing:
        raise ValueError(f"{model_type} config is missing required key(s) {', '.join(missing)}")
    values = []
    for key in keys:
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"config key {key!r} must be a positive integer, got {value!r}")
        values.append(value)
    return values


def _check_heads(hidden: int, heads: int, model_type: str) -> None:
    if heads > hidden:
        raise ValueError(f"{model_type} config: {heads} attention heads for hidden size {hidden}")


def _llama_like_dims(config: Mapping, name: str, model_type: str) -> ModelDims:
    """LLaMA / Mistral / Qwen2 decoder: ``*ForCausalLM`` parameter count."""
    h, layers, inter, heads, vocab = _require(
        config, ["hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
                 "vocab_size"], model_type)
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or h // heads
    if heads % kv_heads or head_dim < 1:
        raise ValueError(f"{model_type} config: num_attention_heads ({heads}) must be a multiple of "
                         f"num_key_value_heads ({kv_heads}) and no larger than hidden_size ({h})")
    q_dim, kv_dim = heads * head_dim, kv_heads * head_dim
    attention = h * q_dim + 2 * h * kv_dim + q_dim * h
    if model_type == "qwen2":  # q, k, v carry a bias, o does not
        attention += q_dim + 2 * kv_dim
    elif config.get("attention_bias", False):  # llama: all four projections
        attention += q_dim + 2 * kv_dim + h
    mlp = 3 * h * inter + (2 * inter + h if config.get("mlp_bias", False) else 0)
    per_layer = attention + mlp + 2 * h  # + input and post-attention RMSNorm weights
    embeddings = vocab * h
    lm_head = 0 if config.get("tie_word_embeddings", False) else vocab * h
    total = embeddings + layers * per_layer + h + lm_head  # + final norm
    return ModelDims(name, model_type, h, layers, inter, heads, kv_heads, head_dim, vocab, total)


def _bert_like_dims(config: Mapping, name: str, model_type: str) -> ModelDims:
    """BERT / RoBERTa encoder: ``*Model`` parameter count (embeddings, encoder, pooler)."""
    h, layers, inter, heads, vocab, positions = _require(
        config, ["hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
                 "vocab_size", "max_position_embeddings"], model_type)
    token_types = config.get("type_vocab_size", 2)
    _check_heads(h, heads, model_type)
    embeddings = (vocab + positions + token_types) * h + 2 * h  # + LayerNorm
    per_layer = (4 * (h * h + h)          # query, key, value, attention output
                 + (h * inter + inter)    # intermediate
                 + (inter * h + h)        # output
                 + 2 * 2 * h)             # two LayerNorms
    pooler = h * h + h
    total = embeddings + layers * per_layer + pooler
    return ModelDims(name, model_type, h, layers, inter, heads, heads, h // heads, vocab, total)


def _distilbert_dims(config: Mapping, name: str) -> ModelDims:
    """DistilBERT: ``DistilBertModel`` parameter count (no token types, no pooler)."""
    h, layers, inter, heads, vocab, positions = _require(
        config, ["dim", "n_layers", "hidden_dim", "n_heads", "vocab_size",
                 "max_position_embeddings"], DISTILBERT)
    _check_heads(h, heads, DISTILBERT)
    embeddings = (vocab + positions) * h + 2 * h
    per_layer = 4 * (h * h + h) + (h * inter + inter) + (inter * h + h) + 2 * 2 * h
    total = embeddings + layers * per_layer
    return ModelDims(name, DISTILBERT, h, layers, inter, heads, heads, h // heads, vocab, total)


def _dims_from_dict(config: Mapping, name: str | None, file: str = "config") -> ModelDims:
    if not isinstance(config, Mapping) or config.get("model_type") is None:
        raise ValueError(f"{file} has no 'model_type': expected a Hugging Face config.json with "
                         f"one of {', '.join(SUPPORTED_MODEL_TYPES)}")
    schema.validate(dict(config), "model", file)   # types and ranges first (SchemaError is a ValueError)
    model_type = config["model_type"]
    given = config.get("_name_or_path") or config.get("name_or_path")
    name = name or (given if isinstance(given, str) else None) or model_type
    if model_type in LLAMA_LIKE:
        return _llama_like_dims(config, name, model_type)
    if model_type in BERT_LIKE:
        return _bert_like_dims(config, name, model_type)
    if model_type == DISTILBERT:
        return _distilbert_dims(config, name)
    raise ValueError(f"unsupported model_type {model_type!r}: supported are "
                     f"{', '.join(SUPPORTED_MODEL_TYPES)}")


def dims_from_config(config: Mapping | str | Path) -> ModelDims:
    """ModelDims from a Hugging Face config dict, a ``config.json`` path or a model folder."""
    if isinstance(config, Mapping):
        return _dims_from_dict(config, None)
    path = Path(config)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    try:
        data = parse_json(read_bounded(path, CONFIG_LIMIT, "model config"), f"{str(path)!r}")
    except StoreError as err:
        raise ValueError(str(err)) from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{str(path)!r} must hold a JSON object, got {type(data).__name__}")
    name = data.get("_name_or_path")
    return _dims_from_dict(data, name if isinstance(name, str) and name else str(path), str(path))


def _decoder(model_type: str, hidden: int, layers: int, intermediate: int, heads: int,
             kv_heads: int, vocab: int, tied: bool, head_dim: int | None = None) -> dict:
    """The config.json keys of a LLaMA-like decoder that the counts read."""
    config = {"model_type": model_type, "hidden_size": hidden, "num_hidden_layers": layers,
              "intermediate_size": intermediate, "num_attention_heads": heads,
              "num_key_value_heads": kv_heads, "vocab_size": vocab, "tie_word_embeddings": tied}
    return config | ({"head_dim": head_dim} if head_dim else {})


def _encoder(model_type: str, hidden: int, layers: int, intermediate: int, heads: int, vocab: int,
             positions: int, token_types: int) -> dict:
    """The config.json keys of a BERT-like encoder that the counts read."""
    return {"model_type": model_type, "hidden_size": hidden, "num_hidden_layers": layers,
            "intermediate_size": intermediate, "num_attention_heads": heads, "vocab_size": vocab,
            "max_position_embeddings": positions, "type_vocab_size": token_types}


# the published configs (config.json) of real models
_PRESET_CONFIGS: Mapping[str, Mapping] = MappingProxyType({
    "llama-3.2-1b": _decoder("llama", 2048, 16, 8192, 32, 8, 128256, True, head_dim=64),
    "llama-3.2-3b": _decoder("llama", 3072, 28, 8192, 24, 8, 128256, True, head_dim=128),
    "llama-3.1-8b": _decoder("llama", 4096, 32, 14336, 32, 8, 128256, False, head_dim=128),
    "smollm2-135m": _decoder("llama", 576, 30, 1536, 9, 3, 49152, True, head_dim=64),
    "qwen2.5-0.5b": _decoder("qwen2", 896, 24, 4864, 14, 2, 151936, True),
    "roberta-base": _encoder("roberta", 768, 12, 3072, 12, 50265, 514, 1),
    "bert-base-uncased": _encoder("bert", 768, 12, 3072, 12, 30522, 512, 2),
    "all-minilm-l6-v2": _encoder("bert", 384, 6, 1536, 12, 30522, 512, 2),
})

PRESETS: Mapping[str, ModelDims] = MappingProxyType(
    {name: _dims_from_dict(config, name) for name, config in _PRESET_CONFIGS.items()})


def resolve_model(model: str | Path | Mapping | ModelDims) -> ModelDims:
    """A preset name (case-insensitive), a config.json path / model folder, a config dict, or dims."""
    if isinstance(model, ModelDims):
        return model
    if isinstance(model, Mapping):
        return dims_from_config(model)
    if isinstance(model, str) and model.lower() in PRESETS:
        return PRESETS[model.lower()]
    if Path(model).exists():
        return dims_from_config(model)
    raise ValueError(f"unknown model {str(model)!r}: use a preset ({', '.join(PRESETS)}) or the "
                     "path of a Hugging Face config.json / model folder")
