"""Where does training plateau on the train hold-out? One expert per call, early stopping on.

    python studies/convergence_probe.py --task sst2 --method tt-lora --steps 800 \
        --batch-size 16 --eval-every 50 --patience 4 [--targets query,key,value,dense]

Prints one JSON line: validation metrics, steps run, best step, CPU seconds, the hold-out curve.
Validation is scored once, at the end, on the best hold-out weights (never used for choosing).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from ttmoe_core import experts

p = argparse.ArgumentParser()
p.add_argument("--task", required=True)
p.add_argument("--method", default="tt-lora")
p.add_argument("--steps", type=int, default=800)
p.add_argument("--batch-size", type=int, default=16)
p.add_argument("--eval-every", type=int, default=50)
p.add_argument("--patience", type=int, default=4)
p.add_argument("--holdout-limit", type=int, default=500)
p.add_argument("--eval-limit", type=int, default=1000)
p.add_argument("--train-limit", type=int, default=None)
p.add_argument("--lr", type=float, default=None)
p.add_argument("--schedule", default=None)
p.add_argument("--targets", default=None)
p.add_argument("--max-length", type=int, default=128)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--threads", type=int, default=1)
args = p.parse_args()
torch.set_num_threads(args.threads)
cfg = experts.ExpertConfig(task=args.task, method=args.method, steps=args.steps,
                           batch_size=args.batch_size, eval_every=args.eval_every,
                           patience=args.patience, holdout_limit=args.holdout_limit,
                           eval_limit=args.eval_limit, train_limit=args.train_limit, lr=args.lr,
                           schedule=args.schedule, max_length=args.max_length, seed=args.seed,
                           targets=args.targets.split(",") if args.targets else None)
t0 = time.process_time()
w0 = time.perf_counter()
expert = experts.train_expert(cfg, log_every=50)
curve = [(h["step"], round(h["loss"], 4), h.get("holdout")) for h in expert.history if "holdout" in h]
print(json.dumps({"task": args.task, "method": args.method, "targets": expert.config.targets,
                  "lr": expert.config.lr, "schedule": expert.config.schedule,
                  "cap": args.steps, "batch": args.batch_size,
                  "adapter_params": expert.adapter_params(),
                  "metrics": {k: v for k, v in expert.metrics.items() if k != "confusion"},
                  "cpu_s": round(time.process_time() - t0, 1),
                  "wall_s": round(time.perf_counter() - w0, 1), "curve": curve}), flush=True)
