"""Benchmarks, measured side by side in one run: ``python -m ttmoe_core.bench adapters|moe|serve|jobs``.

Modules: ``timing`` (interleaved rounds, medians, peak memory), ``results`` (a result's envelope,
targets and text rendering), ``paper`` (the paper's gate-weighted scheme, the baseline),
``pools`` (random expert pools in memory and on disk, memory in a fresh process),
``adapters``, ``moe``, ``serve`` and ``jobs`` (one benchmark each), ``__main__`` (the command line).

May import: every engine package (benchmarks sit beside the CLI, above the library).
"""

from .adapters import (ADAPTER_DEFAULTS, ADAPTER_QUICK, PAPER_LAYER, bench_adapters,
    contraction_variants, crossover, format_adapters, synthetic_batch)
from .expert_pools import random_pool, rss_in_fresh_process, upper_layer_experts
from .jobs import JOBS_DEFAULTS, JOBS_QUICK, bench_jobs, format_jobs
from .moe import DEMO_PACK, MOE_DEFAULTS, MOE_QUICK, bench_moe, format_moe, mixed_rows
from .paper import GateWeightedMoE, GateWeightedTTLoRA, max_logit_difference
from .results import TARGETS, ratio_check
from .serve import SERVE_DEFAULTS, SERVE_QUICK, bench_serve, format_serve
from .timing import (MEMORY_NOTE_CPU, MEMORY_NOTE_CUDA, memory_note, peak_memory, time_interleaved,
    time_paired)

__all__ = ["ADAPTER_DEFAULTS", "ADAPTER_QUICK", "DEMO_PACK", "GateWeightedMoE",
           "GateWeightedTTLoRA", "JOBS_DEFAULTS", "JOBS_QUICK", "MEMORY_NOTE_CPU",
           "MEMORY_NOTE_CUDA", "MOE_DEFAULTS", "MOE_QUICK", "PAPER_LAYER", "SERVE_DEFAULTS",
           "SERVE_QUICK", "TARGETS", "bench_adapters", "bench_jobs", "bench_moe", "bench_serve",
           "contraction_variants", "crossover", "format_adapters", "format_jobs", "format_moe",
           "format_serve", "max_logit_difference", "memory_note", "mixed_rows", "peak_memory",
           "random_pool", "ratio_check", "rss_in_fresh_process", "synthetic_batch",
           "time_interleaved", "time_paired", "upper_layer_experts"]
