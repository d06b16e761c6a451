"""Resident memory a mixture adds over its loaded base model (issue 13: one copy of the base model).

    python studies/moe_memory.py --model smollm2-135m EXPERT_DIR [EXPERT_DIR ...] [--router-layer K]

Loads the base model, writes a pack of the given TT-LoRA expert folders (and, with
``--router-layer``, an untrained MLP router reading layers 0..K) into a temporary folder, then
measures the process's RSS (after one forward of the base model, which pages its weights in)
before and after ``TTLoRAMoE.from_pack(pack, backbone=base)`` and
after one routed prediction. Prints one JSON object: the base model's weight bytes, each RSS
growth and its ratio to the base model's size (target: <= 0.10), and whether every parameter of
the mixture's encoder is a tensor of the base model.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss() -> int:
    import psutil

    gc.collect()
    return psutil.Process().memory_info().rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experts", nargs="+")
    parser.add_argument("--model", default=None)
    parser.add_argument("--router-layer", type=int, default=None)
    args = parser.parse_args()

    import torch

    from ttmoe_core import store
    from ttmoe_core.base import backbone
    from ttmoe_core.moe import TTLoRAMoE
    from ttmoe_core.routing import RouterConfig, build

    torch.set_num_threads(1)
    start = rss()
    base = backbone.load_backbone(args.model, device="cpu")
    base_bytes = sum(p.numel() * p.element_size() for p in base.model.parameters())
    # one forward of the base model first: weights loaded from a memory-mapped file count in
    # the RSS only once touched, and the mixture's first prediction must not be charged for them
    with torch.inference_mode():
        base.model(**backbone.tokenize(base.tokenizer, ["warm up"], None, 16, base.device))
    loaded = rss()
    with tempfile.TemporaryDirectory() as tmp:
        pack = Path(tmp) / "pack"
        experts = [store.load_expert(folder) for folder in args.experts]
        for i, expert in enumerate(experts):
            expert.name = f"{expert.name}-{i}"
            store.append_expert(pack, expert)
        if args.router_layer is not None:
            trained = build(
                RouterConfig(variant="mlp", layer=args.router_layer, hidden=64),
                len(experts), base.info.hidden_size, base.info.num_layers)
            store.save_router(pack, trained, [e.name for e in experts], {}, base.info)
        before = rss()
        t0 = time.perf_counter()
        mixture = TTLoRAMoE.from_pack(pack, backbone=base)
        build_s = time.perf_counter() - t0
        after = rss()
        with torch.inference_mode():
            mixture.predict(["a short test sentence", "another one, a little longer than that"],
                            expert=None if args.router_layer is not None else experts[0].name)
        served = rss()
    ptrs = {p.data_ptr() for p in base.model.parameters()}
    shared = all(p.data_ptr() in ptrs for p in mixture.encoder.parameters())
    print(json.dumps({
        "model": base.info.name, "experts": len(experts), "router_layer": args.router_layer,
        "base_weight_bytes": base_bytes, "rss_load_base_bytes": loaded - start,
        "rss_from_pack_bytes": after - before, "from_pack_ratio": (after - before) / base_bytes,
        "rss_after_first_predict_bytes": served - before,
        "after_predict_ratio": (served - before) / base_bytes,
        "from_pack_s": round(build_s, 3), "encoder_shares_base_weights": shared}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
