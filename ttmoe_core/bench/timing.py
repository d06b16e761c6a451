"""Measuring: median seconds per call over interleaved rounds, and peak memory of one call.

The variants of a table run interleaved (the order rotates each round) so that a drift in the
machine's load hits them alike; ``torch.cuda.synchronize`` brackets every sample on CUDA.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch.profiler import ProfilerActivity, profile

MEMORY_NOTE_CPU = ("CPU: peak of the bytes torch allocated minus those it freed during one call "
                   "(the profiler's allocation events, torch.profiler profile_memory=True, summed in "
                   "time order), i.e. the call's transient tensors and outputs; weights and "
                   "optimizer state that exist before the call are not counted")
MEMORY_NOTE_CUDA = ("CUDA: torch.cuda.max_memory_allocated during one call minus "
                    "torch.cuda.memory_allocated before it (weights and optimizer state that "
                    "exist before the call are not counted)")


def memory_note(device: torch.device) -> str:
    """How ``peak_memory`` measures on ``device`` (printed with every memory column)."""
    return MEMORY_NOTE_CUDA if device.type == "cuda" else MEMORY_NOTE_CPU


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device,
                     warmup: int = 1, min_sample_s: float = 0.0) -> dict[str, dict]:
    """Median seconds per call of each function, the functions interleaved round by round.

    Each sample times ``calls`` back-to-back calls (calibrated so a sample lasts at least
    ``min_sample_s``, at most 1000 calls; 1 for model forwards) and divides. The order rotates
    every round. Returns {name: {median_s, min_s, max_s, rounds, calls_per_sample}}.
    """
    calls = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        once = time.perf_counter() - start
        calls[name] = max(1, min(1000, math.ceil(min_sample_s / max(once, 1e-7))))
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_idx in range(repeats):
        shift = round_idx % len(names)
        for name in names[shift:] + names[:shift]:
            fn, n = fns[name], calls[name]
            _sync(device)
            start = time.perf_counter()
            for _ in range(n):
                fn()
            _sync(device)
            samples[name].append((time.perf_counter() - start) / n)
    return {name: {"median_s": statistics.median(s), "min_s": min(s), "max_s": max(s),
                   "rounds": len(s), "calls_per_sample": calls[name]}
            for name, s in samples.items()}


def time_paired(parts: dict[str, Sequence[Callable[[], object]]], repeats: int,
                device: torch.device, warmup: int = 1) -> dict[str, dict]:
    """Seconds per round of each variant, whose work is a list of parts (e.g. one call per
    micro-batch): part j of every variant runs back to back (order rotating), so a change of the
    machine's load between parts hits the variants alike. Returns {name: {median_s, min_s,
    max_s, rounds, round_s}}, ``round_s``: each round's total, for paired ratios."""
    names = list(parts)
    for name in names:
        for _ in range(warmup):
            for fn in parts[name]:
                fn()
    totals: dict[str, list[float]] = {name: [] for name in names}
    for round_idx in range(repeats):
        spent = dict.fromkeys(names, 0.0)
        for j in range(len(parts[names[0]])):
            shift = (round_idx + j) % len(names)
            for name in names[shift:] + names[:shift]:
                _sync(device)
                start = time.perf_counter()
                parts[name][j]()
                _sync(device)
                spent[name] += time.perf_counter() - start
        for name in names:
            totals[name].append(spent[name])
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t),
                   "rounds": len(t), "round_s": t} for name, t in totals.items()}


def peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak bytes allocated by one call above what was allocated before it (see ``memory_note``).

    None when the profiler gives no allocation events (torch versions without kineto results)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                  if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    except AttributeError:
        return None
    live = peak = 0
    for _, nbytes in sorted(events):     # + allocation, - free, in time order
        live += nbytes
        peak = max(peak, live)
    return int(peak)
