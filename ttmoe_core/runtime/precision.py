"""Compute precision: float32, or bfloat16 / float16 autocast with float32 adapters and heads.

``--dtype bfloat16`` (or float16) stores the frozen base model's weights in that type (half the
memory) and runs its forward under ``torch.autocast``; TT cores, LoRA factors and heads stay
float32 parameters (trained and saved as float32; autocast casts them per operation) and every
head reads a float32 pooled vector. bfloat16 works on CPU and CUDA; float16 is for CUDA (CPU
autocast supports it too, slowly). The base model's fingerprint is taken from the weights as
loaded, before any conversion, so experts trained in one precision serve in another.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """torch dtype of a name ("float32", "bfloat16", "float16"; None: float32); ValueError
    otherwise."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}: use one of {', '.join(DTYPES)}")
        return dtype
    try:
        return DTYPES[str(dtype)]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}") from None


STORAGE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "int8": torch.int8}


def parse_storage(name: str | torch.dtype | None) -> torch.dtype | None:
    """The dtype experts' cores are kept in at rest (``ExpertPool(storage=...)``): "float32",
    "float16", "bfloat16" or "int8" (a scale per TT core, ``moe.quant``); None stays None (the
    compute dtype)."""
    if name is None or isinstance(name, torch.dtype) and name in STORAGE.values():
        return name
    try:
        return STORAGE[str(name)]
    except KeyError:
        raise ValueError(f"unknown pool dtype {name!r}: use one of {', '.join(STORAGE)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, value in DTYPES.items() if value == dtype)


@contextlib.contextmanager
def autocast(device: torch.device | str, dtype: torch.dtype) -> Iterator[None]:
    """``torch.autocast`` to ``dtype`` on ``device``'s type; nothing for float32."""
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
        yield


def cast_frozen(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Convert the frozen floating-point parameters and buffers of ``model`` to ``dtype`` in
    place (trainable parameters stay as they are); returns ``model``."""
    if dtype == torch.float32:
        return model
    with torch.no_grad():
        for module in model.modules():
            for name, param in list(module.named_parameters(recurse=False)):
                if param.is_floating_point() and not param.requires_grad:
                    param.data = param.data.to(dtype)
            for name, buf in list(module.named_buffers(recurse=False)):
                if buf.is_floating_point() and "inv_freq" not in name:   # rotary: keep float32
                    module._buffers[name] = buf.to(dtype)
    return model
