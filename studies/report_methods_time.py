"""Wall and CPU time of the report's experiment 2 (methods) alone, on one budget (default small).

Used to size the small budget's seeds (reports/CONVERGENCE_BUDGET.md): one torch thread, the
embedded MiniLM, ``exp_methods`` on a fresh ``Run``; prints one JSON line.

    TTMOE_DATA_DIR=/work/shared/datasets nice -n 10 python studies/report_methods_time.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # the repo's ttmoe_core


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="small")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from ttmoe_core import report
    from ttmoe_core.base.backbone import load_backbone
    from ttmoe_core.report.experiment import Run
    from ttmoe_core.report.methods import exp_methods

    budget = report.resolve_budget(args.budget)
    run = Run(budget=budget, backbone=load_backbone(), data_dir=args.data_dir,
              comparison_tasks=list(budget.comparison_tasks or ()))
    wall, cpu = time.perf_counter(), time.process_time()
    exp_methods(run)
    print(json.dumps({"budget": budget.name, "wall_s": round(time.perf_counter() - wall, 1),
                      "cpu_s": round(time.process_time() - cpu, 1), "trainings": len(run.trainings),
                      "seeds": list(budget.seeds)}))


if __name__ == "__main__":
    main()
