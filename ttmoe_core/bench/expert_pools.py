"""Pools of random experts for the serving benchmark: in memory (E up to 10,000), written to disk as
a pack (load time), and the resident memory they add, measured in a fresh process.

Random cores cost the same to serve as trained ones (the timing does not read their values);
rows below ``min_layer`` are zero, as an upper-layer expert's are.

    python -m ttmoe_core.bench.expert_pools --rss E --pack PACK      # one JSON line: RSS in MiB
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .. import store
from ..adapters import layer_index
from ..base.backbone import Backbone, encode_rows, load_backbone
from ..experts import Expert
from ..moe import TTLoRAMoE
from ..moe.lazy import open_pack
from ..moe.pool import CHUNK_ROWS, ExpertCard, ExpertPool
from ..routing import Router, build, variant_spec
from ..runtime import precision
from ..runtime.runinfo import rss_mib

REPO = Path(__file__).resolve().parents[2]
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}      # the RSS probes' allocator setting


def random_pool(like: ExpertPool, num_experts: int, seed: int = 0, min_layer: int = 0,
                scale: float = 0.3, storage: torch.dtype | None = None) -> ExpertPool:
    """``num_experts`` experts of random cores (N(0, scale²), zero below ``min_layer``) and heads
    in ``like``'s layout, rank and label width, cores kept in ``storage`` (None: ``like``'s
    compute dtype); written chunk by chunk (no [E, P] temporary)."""
    pool = ExpertPool(like.slots, like.rank, like.hidden_size, like.max_labels, like.base,
                      dtype=like.dtype, storage=storage)
    generator = torch.Generator().manual_seed(seed)
    keep = (pool.row_layers() >= min_layer).to(pool.dtype)                     # [P]
    labels = [f"label{j}" for j in range(like.max_labels)]
    for start in range(0, num_experts, CHUNK_ROWS):
        count = min(CHUNK_ROWS, num_experts - start)
        rows = torch.randn(count, pool.width, generator=generator) * scale * keep
        heads = torch.randn(count, like.max_labels, like.hidden_size, generator=generator)
        bias = torch.randn(count, like.max_labels, generator=generator)
        cards = [ExpertCard(f"random-{start + i:05d}", "random", labels) for i in range(count)]
        pool.add_rows(cards, rows, heads, bias)
    return pool.to(like.device)


def random_router(like: Router, num_experts: int, hidden_size: int, num_layers: int,
                  seed: int = 0) -> Router:
    """A router of ``like``'s configuration with ``num_experts`` outputs, random weights. An
    ``ngram`` router's n-gram table holds 262,144 × E weights (2.6 G for E = 10,000): large pools
    are routed by a ``fusion`` router reading the same layers instead (same base-model cost)."""
    config = dataclasses.replace(like.config, seed=seed, added_experts=0)
    stand_in = variant_spec(config.variant).stand_in
    if stand_in is not None:
        config = dataclasses.replace(config, variant=stand_in)
    return build(config, num_experts, hidden_size, num_layers).eval()


def upper_layer_experts(experts: Sequence[Expert], min_layer: int) -> list[Expert]:
    """The experts with every core of the layers below ``min_layer`` zeroed (ΔW = 0 there), as
    experts trained with ``ExpertConfig.min_layer`` are: same cost to serve, other answers."""
    out = []
    for expert in experts:
        tensors = {k: (torch.zeros_like(v) if ".cores." in k and (layer_index(k) or 0) < min_layer
                       else v) for k, v in expert.tensors.items()}
        out.append(dataclasses.replace(
            expert, tensors=tensors, config=dataclasses.replace(expert.config, min_layer=min_layer)))
    return out


def random_experts(template: Expert, count: int, seed: int = 0) -> list[Expert]:
    """``count`` experts shaped like ``template`` (cores and head N(0, 0.3²)), named x00000…"""
    generator = torch.Generator().manual_seed(seed)
    return [dataclasses.replace(template, name=f"x{i:05d}", tensors={
        k: 0.3 * torch.randn(v.shape, generator=generator) for k, v in template.tensors.items()})
        for i in range(count)]


def write_pack(folder: Path, experts: Sequence[Expert], router: Router) -> Path:
    """A pack of ``experts`` and ``router`` at ``folder`` (through ``store``, validated formats)."""
    store.build_pack(folder, experts, router=router, router_metrics={})
    return folder


def rss_in_fresh_process(num_experts: int, pack: str | Path, timeout_s: float = 600,
                         storage: str = "float32") -> dict:
    """Resident memory of a fresh process: the base model alone, then with a mixture of
    ``num_experts`` random experts in the pack's layout (cores kept in ``storage``) and a router
    with as many outputs (``rss_main``); MiB."""
    cmd = [sys.executable, "-m", "ttmoe_core.bench.expert_pools", "--rss", str(num_experts),
           "--pack", str(pack), "--storage", storage]
    # glibc's dynamic mmap threshold keeps the freed float32 temporaries of the pool's
    # construction in the heap (+230 MiB for 10,000 float16 experts); a fixed threshold, as the
    # soak recommends for the server (bench/RESULTS.md), measures what the pool holds
    env = {**os.environ, **MALLOC_ENV}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=timeout_s,
                          check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"RSS probe for {num_experts} experts failed: {done.stderr[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]) | {"malloc": MALLOC_ENV}


def rss_main(num_experts: int, pack: str | Path, storage: str = "float32") -> dict:
    """Run in the fresh process: RSS after the base model (and one forward), then after the
    mixture is built and has answered four rows."""
    torch.set_num_threads(1)
    template, router, max_length = open_pack(pack)
    bb: Backbone = load_backbone(template.base.name, device="cpu")
    texts = ["a gorgeous, witty, seductive movie.", "The cat sat on the mat.",
             "Is this the right way?", "They left early."]
    batch = encode_rows(bb.tokenizer, texts, None, max_length).batch()
    with torch.inference_mode():
        bb.model(**batch)
    gc.collect()
    base = rss_mib()
    pool = random_pool(template, num_experts, storage=precision.parse_storage(storage))
    mixture = TTLoRAMoE(bb, pool, random_router(router, num_experts, bb.info.hidden_size,
                                                bb.info.num_layers), max_length=max_length)
    mixture.predict(texts, router_top=3)
    gc.collect()
    total = rss_mib()
    return {"experts": num_experts, "storage": storage, "base_rss_mib": base, "rss_mib": total,
            "added_mib": total - base, "pool_bytes": sum(b.numel() * b.element_size()
                                                         for b in pool.buffers())}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="RSS of a mixture of E random experts")
    parser.add_argument("--rss", type=int, required=True)
    parser.add_argument("--pack", required=True)
    parser.add_argument("--storage", default="float32", choices=["float32", "float16", "int8"])
    args = parser.parse_args()
    print(json.dumps(rss_main(args.rss, args.pack, args.storage)))
