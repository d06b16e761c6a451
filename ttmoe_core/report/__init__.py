"""The paper's tables re-run on the embedded model: ``python -m ttmoe_core report --budget small|full``.

``run_report(budget, out)`` runs the five experiments of Kunwar et al. (2025) with the project's own
code and writes, under ``out``:

- ``results.json``: every number of the run (raw results, settings, date, machine, timings);
- ``paper_tables.md``: the tables, each with its run's date, settings, seed and time taken, how
  our setup differs from the paper's, and whether the paper's claim holds here;
- ``figures/<name>.html`` (plotly) and ``figures/<name>.png`` (matplotlib, when installed).

One module per experiment (each an ``exp_*`` function of the shared ``experiment.Run``,
returning plain data):

1. ``contraction``: inference time of TT layers that contract the cores (``TTLoRALinear``) vs the
   same model whose TT layers rebuild ΔW every call (``ReconstructedTTLoRALinear``), per batch size.
2. ``methods``: TT-LoRA vs LoRA (PEFT) vs bottleneck adapter, one expert per task and seed, same
   training loop (``experts.train_expert``) and stopping rule; mean ± std over seeds of the
   metric, steps and time (``seeds``), parameters, peak memory.
3. ``router_variants``: router variants on six tasks (``routing.sweep_layers``): held-out accuracy,
   parameters, measured cost per input, confusion.
4. ``integration``: each task through the mixture (router over every expert) vs the expert alone;
   AdapterFusion over the same tasks' adapters, trained for one task, vs that adapter alone.
5. ``mixed``: one test set mixing six tasks: TT-LoRA MoE vs one AdapterFusion trained on the mix.

Besides them ``frontier`` (every method at several sizes) and, run last, ``decoder``: experiment
2's methods on a decoder (SmolLM2-135M in the full budgets), whose TT-LoRA experts make the
decoder pack (``scripts/build_decoder_pack.py``); ``decoder_section`` renders it, ``cells`` formats
every table's cells.

The rest: ``plan`` (how much to run, constants), ``experiment`` (run state, shared helpers),
``seeds`` (mean ± std over seeds, the rule for a difference beyond the seed spread),
``status`` (what a long run's work folder holds so far: ``report --status``),
``worker`` (a training in a fresh process, for peak memory), ``run`` (the run and its files),
``markdown`` and ``plots`` (rendering). ``render_markdown(results)`` formats only numbers present
in ``results`` (no arithmetic), through ``FORMATS``, so every number of a table can be traced to
``results.json``.

May import: every engine package below it (services, moe, store, experts, routing, base, files, runtime, tasks); never cli.
"""

from .. import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    ".cells": "FORMATS, fmt",
    ".contraction": "exp_contraction",
    ".decoder": "exp_decoder, lora_rank_at",
    ".frontier": "exp_frontier, measured, suggested_rank",
    ".integration": "exp_integration",
    ".markdown": "RENDER_ORDER, SECTION_TITLES, machine_summary, render_markdown, render_section",
    ".methods": "exp_methods",
    ".mixed": "exp_mixed",
    ".plan": "BUDGETS, FIGURES_DIR, MARKDOWN_FILE, METHOD_LABELS, METHODS, MIXTURE_ROUTER, PAPER, "
             "RESULTS_FILE, SECTIONS, TOLERANCE, Progress, ReportBudget, ReportError, Setting, "
             "budget_changes, resolve_budget",
    ".plots": "SECTION_FIGURES, build_figures, png_available, write_figures",
    ".router_variants": "exp_routers, router_cost_ms",
    ".run": "EXPERIMENTS, read_results, report_job, run_report",
    ".sessions": "duration, run_time, rule as sessions_rule",
    ".status": "render_status, work_status",
    ".verdicts": "factor",
})

