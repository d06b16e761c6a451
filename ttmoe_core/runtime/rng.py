"""Randomness from local ``torch.Generator``s only, never the process-wide RNG.

Jobs train in threads: two trainings that drew from ``torch``'s global generator would disturb
each other (and whatever else runs). The engine draws every random number from a generator it
owns and passes down:

- :func:`drawing_from`: while a module is built, every random draw of *this thread* that names
  no generator (``nn.Linear``'s own init, PEFT's and the ``adapters`` library's initialisers)
  is made from the given one. A ``TorchFunctionMode``, so thread-local.
- :class:`Dropout`: ``nn.Dropout`` with its mask drawn from a generator it holds; within
  :func:`batch_rows` it draws the whole batch's mask and keeps its own rows (data-parallel
  processes then draw what one process would, and their generators stay in step).
- :func:`gaussian`: N(0, 1) noise of a tensor's shape from a generator.

A generator lives on the CPU; draws for tensors elsewhere are made there and copied over, so
the same seed gives the same numbers on every device.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

# torch functions that draw random numbers and take a ``generator=`` keyword
_RANDOM = frozenset({
    torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.bernoulli_, torch.Tensor.random_,
    torch.Tensor.exponential_, torch.Tensor.geometric_, torch.Tensor.log_normal_,
    torch.Tensor.cauchy_, torch.rand, torch.randn, torch.randint, torch.randperm, torch.normal,
    torch.bernoulli, torch.multinomial, torch.poisson,
})


class _DrawFrom(TorchFunctionMode):
    """Adds ``generator=`` to every random draw that has none (see :func:`drawing_from`)."""

    def __init__(self, generator: torch.Generator):
        super().__init__()
        self.generator = generator

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        draws = func in _RANDOM or "generator" in kwargs   # e.g. nn.init.*_(..., generator=None)
        if not draws or kwargs.get("generator") is not None:
            return func(*args, **kwargs)
        kwargs["generator"] = self.generator
        home = self.generator.device
        target = args[0] if args else None
        if getattr(func, "__name__", "").endswith("_") and isinstance(target, torch.Tensor) \
                and target.device != home:              # in place on another device
            staged = target.detach().to(home)
            func(staged, *args[1:], **kwargs)
            with torch.no_grad():
                target.copy_(staged)
            return target
        if kwargs.get("device") is not None and torch.device(kwargs["device"]) != home:
            device = kwargs.pop("device")
            return func(*args, device=home, **kwargs).to(device)
        return func(*args, **kwargs)


def given_or_seeded(generator: torch.Generator | None, seed: int = 0) -> torch.Generator:
    """``generator``, or a new CPU generator seeded with ``seed`` when it is None."""
    return generator if generator is not None else torch.Generator().manual_seed(seed)


@contextmanager
def drawing_from(generator: torch.Generator) -> Iterator[torch.Generator]:
    """In this thread, random draws that name no generator use ``generator`` (module init)."""
    with _DrawFrom(generator):
        yield generator


def gaussian(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """N(0, 1) samples of ``like``'s shape, dtype and device, drawn from ``generator``."""
    noise = torch.randn(like.shape, generator=generator, device=generator.device)
    return noise.to(device=like.device, dtype=like.dtype)


# (start, stop, total): the rows start..stop-1 of a batch of ``total`` rows are being computed
_BATCH_ROWS: contextvars.ContextVar[tuple[int, int, int] | None] = contextvars.ContextVar(
    "ttmoe_batch_rows", default=None)


@contextmanager
def batch_rows(start: int, stop: int, total: int) -> Iterator[None]:
    """Within the block, a forward computes rows start..stop-1 of a batch of ``total`` rows (one
    process's share of a data-parallel batch): ``Dropout`` draws masks for all ``total`` rows."""
    if not 0 <= start <= stop <= total:
        raise ValueError(f"rows {start}..{stop} are not within a batch of {total}")
    token = _BATCH_ROWS.set((start, stop, total))
    try:
        yield
    finally:
        _BATCH_ROWS.reset(token)


class Dropout(nn.Module):
    """``nn.Dropout`` whose mask comes from ``generator`` (a fixed-seed one of its own if None)."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.generator = given_or_seeded(generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [...] -> x with each element zeroed with probability p, the rest scaled by 1/(1-p)."""
        if not self.training or self.p == 0.0:
            return x
        rows = _BATCH_ROWS.get()
        shape = x.shape if rows is None else (rows[2], *x.shape[1:])
        keep = torch.empty(shape, device=self.generator.device).bernoulli_(
            1.0 - self.p, generator=self.generator)                  # [...] 1 with prob. 1-p
        if rows is not None:
            keep = keep[rows[0]:rows[1]]
            if keep.shape[0] != x.shape[0]:
                raise ValueError(f"dropout input has {x.shape[0]} rows, the share is {len(keep)}")
        return x * keep.div_(1.0 - self.p).to(device=x.device, dtype=x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}"
