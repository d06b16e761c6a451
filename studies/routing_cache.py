"""Row sets of the routing study and their frozen-MiniLM representations, computed once.

    python studies/routing_cache.py [--only NAME ...] [--cache /tmp/route_cache]

Each row set is written to ``<cache>/<name>.pt`` as a dict:
  texts, pairs: list[str], list[str | None]; labels: [N] long (row set's class index);
  tasks: list[str] (task of each row); names: class names (index order);
  pooled: [N, K+1, H] fp16, mean over real tokens of the states of layers 0..K;
  seg: [N, K+1, 2, H] fp16, the same mean over the first / second segment (token type 0 / 1;
       zeros for a missing second segment); cls: [N, K+1, H] fp16 (position 0);
  tokens (token sets only): [sum T_i, 3, H] fp16, layers 0..2 of every real token, rows
       concatenated in row order; lengths: [N] long (T_i); types: [sum T_i] int8 (token type).
Protocol (as NOTES.md "Routing"): the shipped router's training rows are ``routing_data(train,
2000, seed 0)``, held-out rows ``routing_data(validation, 500, seed 0)``; nothing else here
overlaps the held-out rows (``dev`` takes validation rows outside them, RTE's from train).
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
import torch

from ttmoe_core import tasks
from ttmoe_core.base import backbone, batching
from ttmoe_core.base import partial as layers
from ttmoe_core.routing import routing_data

POOL = tuple(tasks.DEMO_TASKS)                      # mnli cola rte sst2 qnli qqp
OUTSIDE = ("mrpc", "stsb", "cb", "boolq", "sick", "scitail", "winogrande_l", "csqa",
           "socialiqa", "cosmosqa")
CACHE = Path("/tmp/route_cache")
MAX_LENGTH = 128


def _subset_index(n: int, k: int, seed: int) -> np.ndarray:
    """The rows ``TaskData.subset(k, seed)`` keeps (all when k >= n)."""
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def _rows(parts: list[tuple[str, tasks.TaskData]], names: list[str]) -> dict:
    texts, pairs, labels, row_tasks = [], [], [], []
    for name, data in parts:
        texts += data.texts
        pairs += data.text_pairs if data.text_pairs is not None else [None] * len(data)
        labels += [names.index(name) if name in names else -1] * len(data)
        row_tasks += [data.task] * len(data)
    return {"texts": texts, "pairs": pairs, "labels": torch.tensor(labels), "tasks": row_tasks,
            "names": names}


def natural(text: str) -> str:
    """Undo GLUE's SST-2 preprocessing the way a user would type the sentence: no space before
    punctuation or clitics, first letter upper-case (e.g. "it 's a charming journey ." ->
    "It's a charming journey.")."""
    text = re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", text)
    text = re.sub(r" ([.,!?;:)])", r"\1", text)
    text = re.sub(r"\( ", "(", text).replace("-lrb- ", "(").replace(" -rrb-", ")")
    return text[:1].upper() + text[1:]


def row_sets() -> dict[str, callable]:
    """name -> builder of the row set's texts and labels (lazy: data is read when built)."""
    names = list(POOL)
    pairs = [(t, t) for t in POOL]

    def from_routing(split, per_task):
        data = routing_data(pairs, split, per_task, seed=0)
        return {"texts": data.texts, "pairs": data.text_pairs, "labels": data.labels,
                "tasks": [names[i] for i in data.labels.tolist()], "names": names}

    def dev():
        """Validation rows outside the held-out 500 (RTE: its train rows outside the 2,000)."""
        parts = []
        for task in POOL:
            if task == "rte":
                full = tasks.load_task(task, "train")
                keep = np.setdiff1d(np.arange(len(full)), _subset_index(len(full), 2000, 0))
            else:
                full = tasks.load_task(task, "validation")
                keep = np.setdiff1d(np.arange(len(full)), _subset_index(len(full), 500, 0))
                keep = keep[_subset_index(len(keep), 500, 1)]
            parts.append((task, full.select(keep)))
        return _rows(parts, names)

    def all_train():
        return _rows([(t, tasks.load_task(t, "train")) for t in POOL], names)

    def outside():
        return _rows([(t, tasks.load_task(t, "validation", limit=600, seed=0)) for t in OUTSIDE],
                     list(OUTSIDE))

    def held_natural():
        held = from_routing("validation", 500)
        keep = [i for i, t in enumerate(held["tasks"]) if t == "sst2"]
        return {"texts": [natural(held["texts"][i]) for i in keep], "pairs": [None] * len(keep),
                "labels": held["labels"][keep], "tasks": ["sst2"] * len(keep), "names": names}

    def new_task(task, split, limit):
        def build():
            data = tasks.load_task(task, split, limit=limit, seed=0)
            return _rows([(task, data)], [task])
        return build

    return {"held": lambda: from_routing("validation", 500),
            "train2k": lambda: from_routing("train", 2000),
            "dev": dev, "outside": outside, "held_natural": held_natural,
            "mrpc_train": new_task("mrpc", "train", None), "mrpc_val": new_task("mrpc", "validation", None),
            "boolq_train": new_task("boolq", "train", 3000), "boolq_val": new_task("boolq", "validation", 500),
            "all_train": all_train}


# (deepest layer, keep token states) per row set: the big one is read to layer 2 without tokens
PLAN = {"all_train": (2, False)}
DEFAULT_PLAN = (6, True)


@torch.no_grad()
def encode(bb: backbone.Backbone, texts: list[str], pairs: list[str | None], upto: int,
           keep_tokens: bool, max_tokens: int = 4096) -> dict[str, torch.Tensor]:
    """Representations of N rows (see the module docstring), length-sorted micro-batches."""
    enc = backbone.encode_rows(bb.tokenizer, texts, pairs, MAX_LENGTH)
    batches = batching.plan(enc.lengths, max_tokens, 128)
    pooled, seg, cls, toks = [], [], [], {}
    for rows in batches:
        batch = enc.batch(rows, "cpu")
        states = layers.hidden_states(bb.model, batch, upto)             # (K+1) x [B, T, H]
        mask = batch["attention_mask"].float()                              # [B, T]
        types = batch.get("token_type_ids", torch.zeros_like(batch["input_ids"])).float()
        stack = torch.stack(states, 1)                                      # [B, K+1, T, H]
        pooled.append((stack * mask[:, None, :, None]).sum(2) / mask.sum(1)[:, None, None])
        parts = []
        for m in (mask * (1 - types), mask * types):
            parts.append((stack * m[:, None, :, None]).sum(2) / m.sum(1).clamp(min=1)[:, None, None])
        seg.append(torch.stack(parts, 2))                                   # [B, K+1, 2, H]
        cls.append(stack[:, :, 0])
        if keep_tokens:
            for b, r in enumerate(rows):
                n = len(enc.input_ids[r])
                toks[r] = (stack[b, :3, :n].transpose(0, 1).half(), types[b, :n].to(torch.int8))
    out = {k: batching.restore_order(batches, v).half() for k, v in
           (("pooled", pooled), ("seg", seg), ("cls", cls))}
    out["lengths"] = torch.tensor(enc.lengths)
    if keep_tokens:
        out["tokens"] = torch.cat([toks[r][0] for r in range(len(texts))])
        out["types"] = torch.cat([toks[r][1] for r in range(len(texts))])
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--cache", type=Path, default=CACHE)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.cache.mkdir(parents=True, exist_ok=True)
    bb = backbone.load_backbone(None, device="cpu")
    for name, build in row_sets().items():
        path = args.cache / f"{name}.pt"
        if (args.only and name not in args.only) or (not args.only and path.exists()):
            continue
        start = time.time()
        rows = build()
        upto, keep = PLAN.get(name, DEFAULT_PLAN)
        rows.update(encode(bb, rows["texts"], rows["pairs"], upto, keep))
        rows["seconds"] = time.time() - start
        torch.save(rows, path)
        print(f"{name}: {len(rows['texts'])} rows, layers 0..{upto}, {rows['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
