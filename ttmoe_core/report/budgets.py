"""How much of each experiment a report runs (``ReportBudget``, ``BUDGETS``) and the report's constants.

The names here are what the rest of the package and its users share: the output file names,
the experiments in order, the methods compared, the paper's headline numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from ..tasks import DEMO_TASKS

METHODS = ("tt-lora", "lora", "adapter")
METHOD_LABELS = {"tt-lora": "TT-LoRA", "lora": "LoRA", "adapter": "Adapter"}
MIXTURE_ROUTER = ("fusion", 2)     # variant and layer of the mixtures' router (RouterConfig default)
TOLERANCE = 1e-5                   # contraction and reconstruction must agree to this (max |Δ|)
MARKDOWN_FILE = "paper_tables.md"
RESULTS_FILE = "results.json"
FIGURES_DIR = "figures"
SECTIONS = ("contraction", "methods", "routers", "integration", "mixed")   # the experiments, in order
# the paper's headline numbers (abstract): fractions of the baselines' parameters, points gained
PAPER = {"tt_lora_fraction_of_lora": 0.02, "tt_lora_fraction_of_adapter": 0.003,
         "moe_fraction_of_adapterfusion": 0.0003, "mixed_gain_points": 4.0}

Progress = Callable[[str, int, int], None]   # (stage, done, total)


class ReportError(RuntimeError):
    """The report cannot run (missing data) or a check failed (outputs not equal)."""


@dataclass(frozen=True)
class ReportBudget:
    """How much of each experiment to run. Rows are per task; ``None`` tasks: every task folder."""
    name: str
    comparison_tasks: tuple[str, ...] | None   # experiment 2 (None: every task of the data dir)
    steps: int                                  # per expert, and per task for AdapterFusion
    batch_size: int
    max_length: int
    train_rows: int | None                      # training rows per task (None: all)
    eval_rows: int                              # validation rows per task
    router_train_rows: int
    router_eval_rows: int
    router_layers: tuple[int, ...]             # layers k swept by linear / mlp / fusion routers
    router_epochs: int
    fusion_tasks: tuple[str, ...]              # experiment 4: AdapterFusion trained for these
    timing_batch_sizes: tuple[int, ...]
    timing_length: int                          # tokens per input in experiment 1
    timing_repeats: int
    min_integration_experts: int
    measure_memory: bool                        # experiment 2: each training in a fresh process
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


BUDGETS: dict[str, ReportBudget] = {
    "small": ReportBudget(
        name="small", comparison_tasks=("sst2", "rte"), steps=8, batch_size=8, max_length=48,
        train_rows=400, eval_rows=48, router_train_rows=48, router_eval_rows=24,
        router_layers=(0, 2), router_epochs=30, fusion_tasks=("sst2", "rte"),
        timing_batch_sizes=(1, 8, 32), timing_length=32, timing_repeats=2,
        min_integration_experts=4, measure_memory=False),
    "full": ReportBudget(
        name="full", comparison_tasks=None, steps=60, batch_size=8, max_length=96,
        train_rows=None, eval_rows=250, router_train_rows=300, router_eval_rows=150,
        router_layers=(0, 2, 6), router_epochs=60, fusion_tasks=DEMO_TASKS,
        timing_batch_sizes=(1, 2, 4, 8, 16, 32, 64, 128), timing_length=64, timing_repeats=3,
        min_integration_experts=10, measure_memory=True),
}


def resolve_budget(budget: str | ReportBudget) -> ReportBudget:
    """``budget`` itself, or the named one of ``BUDGETS`` (ReportError for an unknown name)."""
    if isinstance(budget, ReportBudget):
        return budget
    try:
        return BUDGETS[budget]
    except KeyError:
        raise ReportError(f"unknown budget {budget!r}: use one of {', '.join(BUDGETS)}") from None
