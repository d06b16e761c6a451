"""What every benchmark result shares: its envelope (date, machine, load), the target ratios it is
checked against, and the text rendering of both (header, ratio lines, units)."""

from __future__ import annotations

import json

import torch

from ..runtime.runinfo import load_average, machine_info, now

# target ratios (see DESIGN.md "Targets"): (bound, "<=" or ">=")
TARGETS = {
    "inference_tt_vs_frozen": (1.15, "<="),
    "train_step_tt_vs_lora": (1.10, "<="),
    "mixture_vs_single_throughput": (0.75, ">="),
    "expert_time_max_over_min": (1.10, "<="),
    # serve (issue 11)
    "mixture_vs_floor": (0.85, ">="),
    "upper_mixture_vs_floor": (0.85, ">="),
    "mixture_vs_peft_same_batching": (1.0, ">="),
    "upper_mixture_vs_peft_same_batching": (1.0, ">="),
    "gathered_vs_frozen_same_batches": (1.10, "<="),
    "gathered_vs_frozen_one_padded_batch": (1.10, "<="),
    "expert_time_per_row_e10000_vs_e6": (1.15, "<="),
    "rss_added_gb_e10000": (0.6, "<="),
    "rss_added_gb_e10000_float16": (0.6, "<="),
    "pool_1000_ready_s": (10.0, "<="),
    "pool_1000_ready_eager_s": (10.0, "<="),
    "single_row_latency_vs_frozen": (1.3, "<="),
    "upper_single_row_latency_vs_frozen": (1.3, "<="),
    # soak (issue 32): resident memory growth over 10,000 HTTP requests, MB
    "soak_rss_growth_mb": (50.0, "<="),
}


def envelope(benchmark: str, device: torch.device, load_before: list[float] | None) -> dict:
    """The first keys of a result: benchmark name, date (now, UTC), machine, load before/after."""
    return {"benchmark": benchmark, "date": now(), "machine": machine_info(device),
            "load_average": {"before": load_before, "after": load_average()}}


def ratio_check(name: str, value: float) -> dict:
    """{value, target ("<= 1.15"), met} for a ratio named in ``TARGETS``."""
    bound, direction = TARGETS[name]
    met = value <= bound if direction == "<=" else value >= bound
    return {"value": value, "target": f"{direction} {bound}", "met": bool(met)}


def ratios_and_targets(ratios: dict[str, float]) -> dict:
    """The last keys of a result: the ratios, and the check of those that have a target."""
    return {"ratios": ratios,
            "targets": {k: ratio_check(k, v) for k, v in ratios.items() if k in TARGETS}}


def ms(seconds: float) -> str:
    """Seconds as milliseconds, 10 characters wide."""
    return f"{seconds * 1e3:10.2f}"


def mib(nbytes: int | None) -> str:
    """Bytes as MiB, 10 characters wide ("n/a" when not measured)."""
    return "       n/a" if nbytes is None else f"{nbytes / 2**20:10.1f}"


def kib(nbytes: int | None) -> str:
    """Bytes as KiB ("n/a" when not measured)."""
    return "n/a" if nbytes is None else f"{nbytes / 2**10:.1f}"


def header_lines(result: dict) -> list[str]:
    """Benchmark and date, machine, load average and settings, then a blank line."""
    m = result["machine"]
    gpu = f", {m['gpu']}" if m.get("gpu") else ""
    return [f"{result['benchmark']} benchmark, {result['date']}",
            (f"machine: {m['cpu']}, {m['cores']} cores, {m['threads']} threads, "
             f"torch {m['torch']}, device {m['device']}{gpu}"),
            (f"load average (1, 5, 15 min) before {result['load_average']['before']}, "
             f"after {result['load_average']['after']}"),
            f"settings: {json.dumps(result['settings'])}", ""]


def ratio_lines(result: dict) -> list[str]:
    """A blank line, then one line per ratio with its target and whether it is met."""
    lines = ["", "ratios:"]
    for name, value in result["ratios"].items():
        check = result["targets"].get(name)
        tail = f"   target {check['target']}: {'met' if check['met'] else 'MISSED'}" if check else ""
        lines.append(f"  {name:36s} {value:8.3f}{tail}")
    return lines
