"""Rows/s of the mixture's predict vs the frozen base model on the same mixed rows (one thread).

    python -m studies.serve_speed [--pack assets/demo] [--data-dir D] [--per-task 16]
                                 [--repeats 3] [--floor-batch 16] [--json]

Rows: ``--per-task`` validation rows of each of the pack's experts' tasks, interleaved (a mixed
batch). Timed side by side, interleaved, best of ``--repeats``:
- ``predict``: ``TTLoRAMoE.predict`` (tokenize + route + experts), at its defaults;
- ``floor``: the frozen base model alone on the rows sorted by length, micro-batches of
  ``--floor-batch`` rows (tokenization included).
Also the padding: real tokens vs padded positions of one padded batch, of the floor's sorted
micro-batches and of the mixture's own plan (where the checkout has ``batching``). Works on older
checkouts too (uses only from_pack, predict, tokenize_mixed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ttmoe_core import tasks
from ttmoe_core.base import backbone
from ttmoe_core.moe import TTLoRAMoE

ROOT = Path(__file__).resolve().parents[1]


def mixed_rows(task_names: list[str], per_task: int, data_dir) -> tuple[list[str], list]:
    """``per_task`` validation rows of each task, interleaved task by task."""
    data = [tasks.load_task(t, "validation", data_dir=data_dir, limit=per_task, seed=0)
            for t in task_names]
    texts, pairs = [], []
    for j in range(per_task):
        for d in data:
            texts.append(d.texts[j])
            pairs.append(d.text_pairs[j] if d.text_pairs is not None else None)
    return texts, pairs


def floor_pass(bb: backbone.Backbone, texts, pairs, max_length: int, batch: int) -> None:
    """The frozen base model on length-sorted micro-batches of ``batch`` rows."""
    lengths = [len(bb.tokenizer(t, p)["input_ids"]) for t, p in zip(texts, pairs)]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    with torch.inference_mode():
        for start in range(0, len(order), batch):
            rows = order[start:start + batch]
            encoded, _ = backbone.tokenize_mixed(bb.tokenizer, [texts[i] for i in rows],
                                                 [pairs[i] for i in rows], max_length, bb.device)
            bb.model(**encoded)


def padding(bb: backbone.Backbone, texts, pairs, max_length: int, batch: int) -> dict:
    lengths = [min(max_length, len(bb.tokenizer(t, p)["input_ids"])) for t, p in zip(texts, pairs)]
    ordered = sorted(lengths, reverse=True)
    sorted_cost = sum(len(ordered[s:s + batch]) * ordered[s] for s in range(0, len(ordered), batch))
    out = {"real_tokens": sum(lengths), "one_batch_positions": len(lengths) * max(lengths),
           "sorted_micro_batch_positions": sorted_cost}
    try:   # the mixture's own plan, where this checkout has length-aware batching
        from ttmoe_core import moe
        from ttmoe_core.base import batching
    except ImportError:
        return out
    plan = batching.plan(lengths, moe.MAX_BATCH_TOKENS, moe.MAX_BATCH_ROWS)
    out["predict_plan_positions"] = sum(len(rows) * lengths[rows[0]] for rows in plan)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", default=str(ROOT / "assets" / "demo"))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--per-task", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--floor-batch", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    mixture = TTLoRAMoE.from_pack(args.pack, device="cpu")
    bb = mixture.backbone
    texts, pairs = mixed_rows([e.config.task for e in mixture.experts], args.per_task, args.data_dir)
    runs = {"predict": lambda: mixture.predict(texts, pairs),
            "floor": lambda: floor_pass(bb, texts, pairs, mixture.max_length, args.floor_batch)}
    for run in runs.values():   # warm up
        run()
    best = {name: float("inf") for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    result = {"rows": len(texts), "threads": torch.get_num_threads(),
              "rows_per_s": {name: round(len(texts) / sec, 1) for name, sec in best.items()},
              "padding": padding(bb, texts, pairs, mixture.max_length, args.floor_batch)}
    result["predict_vs_floor"] = round(result["rows_per_s"]["predict"] / result["rows_per_s"]["floor"], 3)
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
