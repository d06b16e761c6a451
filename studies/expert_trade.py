"""Two training measurements behind bench/RESULTS.md (one thread):

    python -m studies.expert_trade speed [--task mnli] [--steps 30] [--rounds 2] [--json]
    python -m studies.expert_trade accuracy [--steps 150] [--min-layer 2] [--out DIR] [--json]

``speed``: training examples/s of one task with length-bucketed batches vs uniformly shuffled ones
(``ExpertConfig.length_buckets``), the two alternating ``--rounds`` times, same seed and budget;
also the padding of each (padded positions / real tokens over the batches actually drawn).
``accuracy``: each demo task trained twice at the same small budget, full experts (every layer)
and upper-layer experts (``min_layer``: layers below untouched, so a mixture whose router reads
layers < min_layer shares that prefix); the validation metric of each and the training time.
With ``--out``, the experts are saved there (``<out>/full/<task>``, ``<out>/upper/<task>``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ttmoe_core import experts, store, tasks
from ttmoe_core.base import backbone, batching
from ttmoe_core.runtime.runinfo import load_average

DEMO_TASKS = ["mnli", "cola", "rte", "sst2", "qnli", "qqp"]


def config(task: str, steps: int, **overrides) -> experts.ExpertConfig:
    """The demo's settings (r5, α16, lr 5e-3, zero init, batch 32, 128 tokens) at ``steps``."""
    return experts.ExpertConfig(task=task, steps=steps, device="cpu", train_limit=5000,
                                eval_limit=1000, seed=0, **overrides)


def padding_ratio(lengths: list[int], batches: list[list[int]]) -> float:
    """Padded positions (rows × longest row) over real tokens, for the given batches."""
    padded = sum(len(b) * max(lengths[r] for r in b) for b in batches)
    return padded / sum(lengths[r] for b in batches for r in b)


def speed(args: argparse.Namespace, bb: backbone.Backbone) -> dict:
    train = tasks.load_task(args.task, "train", limit=5000, seed=0)
    valid = tasks.load_task(args.task, "validation", limit=32, seed=0)
    lengths = backbone.encode_rows(bb.tokenizer, train.texts, train.text_pairs, 128).lengths
    draws = {}
    for bucketed in (True, False):
        generator = torch.Generator().manual_seed(0)
        if bucketed:
            stream = batching.bucketed_batches(lengths, 32, generator)
        else:
            stream = experts._batches(len(lengths), 32, generator)
        draws[bucketed] = [next(stream) for _ in range(args.steps)]
    runs = {"bucketed": [], "random": []}
    for _ in range(args.rounds):
        for name, bucketed in (("bucketed", True), ("random", False)):
            cfg = config(args.task, args.steps, length_buckets=bucketed)
            expert = experts.train_expert(cfg, bb, train_data=train, eval_data=valid,
                                          log_every=args.steps)
            runs[name].append({"examples_per_s": expert.history[-1]["examples_per_s"],
                               "final_loss": expert.history[-1]["loss"]})
    best = {k: max(r["examples_per_s"] for r in v) for k, v in runs.items()}
    return {"task": args.task, "steps": args.steps, "batch_size": 32, "train_rows": len(train),
            "runs": runs, "best_examples_per_s": best,
            "speedup": best["bucketed"] / best["random"],
            "padding_ratio": {"bucketed": padding_ratio(lengths, draws[True]),
                              "random": padding_ratio(lengths, draws[False])}}


def accuracy(args: argparse.Namespace, bb: backbone.Backbone) -> dict:
    results = {}
    for task in DEMO_TASKS:
        for kind, min_layer in (("full", 0), ("upper", args.min_layer)):
            start = time.perf_counter()
            expert = experts.train_expert(config(task, args.steps, min_layer=min_layer), bb,
                                          log_every=args.steps)
            metric = tasks.primary_metric(tasks.TASKS[task])
            results.setdefault(task, {})[kind] = {
                "metric": metric, "value": expert.metrics[metric],
                "train_seconds": expert.metrics["train_seconds"],
                "examples_per_s": expert.history[-1]["examples_per_s"],
                "eval_rows": expert.metrics["eval_rows"], "eval": expert.data["eval"],
                "wall_seconds": time.perf_counter() - start}
            if args.out:
                store.save_expert(expert, Path(args.out) / kind / task)
            print(task, kind, results[task][kind], flush=True)
    return {"steps": args.steps, "min_layer": args.min_layer, "per_task": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--task", default="mnli")
    s.add_argument("--steps", type=int, default=30)
    s.add_argument("--rounds", type=int, default=2)
    a = sub.add_parser("accuracy")
    a.add_argument("--steps", type=int, default=150)
    a.add_argument("--min-layer", type=int, default=2)
    a.add_argument("--out", default=None)
    for p in (s, a):
        p.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bb = backbone.load_backbone(device="cpu")
    before = load_average()
    result = speed(args, bb) if args.command == "speed" else accuracy(args, bb)
    result["load_average"] = {"before": before, "after": load_average()}
    result["settings"] = ("ExpertConfig defaults (tt-lora r5 α16 lr 5e-3, init zero, batch 32, "
                          "max_length 128), train_limit 5000, eval_limit 1000 (validation), "
                          "seed 0, 1 thread, CPU")
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
