"""The ``moe`` benchmark: one mixed batch (rows of every expert's task, interleaved) through the
frozen base, one expert alone, the mixture (routed, and its expert part alone) and the paper's
scheme (``paper.GateWeightedMoE``, checked equal to the mixture before timing); then the expert
part against the number of experts E (random cores beyond the pack).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .. import tasks
from ..base.backbone import Backbone, tokenize_mixed
from ..experts import build_expert_model
from ..moe import TTLoRAMoE
from ..runtime.runinfo import load_average
from .expert_pools import random_pool
from .paper import GateWeightedMoE, max_logit_difference
from .results import envelope, header_lines, mib, ms, ratio_lines, ratios_and_targets
from .timing import memory_note, peak_memory, time_interleaved

DEMO_PACK = Path(__file__).resolve().parents[2] / "assets" / "demo"

MOE_DEFAULTS = {"rows": 48, "repeats": 10, "experts_scan": [1, 6, 16, 64], "max_length": None}
MOE_QUICK = {"rows": 12, "repeats": 2, "experts_scan": [1, 6], "max_length": 32}

PAPER_VARIANT = "paper (full route pass + gate-weighted pass)"


def mixed_rows(expert_tasks: Sequence[str], rows: int, data_dir, seed: int = 0
               ) -> tuple[list[str], list[str | None], list[int]]:
    """``rows`` validation rows, round-robin over the tasks (row i from task i mod E).

    Returns (texts, text pairs (None for single-text tasks), owner: the task index of each row)."""
    per_task = math.ceil(rows / len(expert_tasks))
    data = [tasks.load_task(task, "validation", data_dir=data_dir, limit=per_task, seed=seed)
            for task in expert_tasks]
    texts, pairs, owner = [], [], []
    for i in range(rows):
        task_idx, j = i % len(data), i // len(data)
        d = data[task_idx]
        texts.append(d.texts[j % len(d)])
        pairs.append(d.text_pairs[j % len(d)] if d.text_pairs is not None else None)
        owner.append(task_idx)
    return texts, pairs, owner


def bench_moe(settings: dict, pack: str | Path, data_dir, device: torch.device) -> dict:
    """Run the benchmark with ``settings`` (keys of ``MOE_DEFAULTS``) on a pack with a router and
    the validation rows of its experts' tasks; the result is JSON-ready (seconds, bytes)."""
    load_before = load_average()
    mixture = TTLoRAMoE.from_pack(pack, device=str(device))
    if mixture.router is None:
        raise ValueError(f"pack {pack} has no router: the moe benchmark needs one")
    bb = mixture.backbone
    max_length = settings["max_length"] or mixture.max_length
    texts, pairs, owner = mixed_rows([e.config.task for e in mixture.experts], settings["rows"],
                                     data_dir)
    batch, _ = tokenize_mixed(bb.tokenizer, texts, pairs, max_length, device)   # [B, T] each
    single = build_expert_model(mixture.experts[0], bb).eval()
    paper = GateWeightedMoE(mixture)

    # correctness first: same routing, same logits (to 1e-4) as the mixture
    with torch.no_grad():
        routed = mixture.route(batch, texts, pairs).argmax(-1)                   # [B]
        mixture_logits = mixture.expert_logits(batch, routed)                    # [B, C_max]
        paper_idx, paper_logits = paper(batch, texts, pairs)
    same_routing = bool(torch.equal(routed, paper_idx))
    diff = max_logit_difference(mixture_logits, paper_logits)
    if not same_routing or not diff <= 1e-4:
        raise RuntimeError(f"the gate-weighted (paper) module disagrees with the mixture: same "
                           f"routing {same_routing}, max logit difference {diff:.3g}")
    routing_acc = float((routed.cpu() == torch.tensor(owner)).float().mean())

    def mixture_full() -> torch.Tensor:
        idx = mixture.route(batch, texts, pairs).argmax(-1)
        return mixture.expert_logits(batch, idx)

    variants = {
        "frozen base": lambda: bb.model(**batch),
        "single expert": lambda: single(batch),
        "mixture (route + experts)": mixture_full,
        "mixture expert part": lambda: mixture.expert_logits(batch, routed),
        PAPER_VARIANT: lambda: paper(batch, texts, pairs),
    }
    with torch.no_grad():
        times = time_interleaved(variants, settings["repeats"], device)
        memory = {k: peak_memory(fn, device) for k, fn in variants.items()}
    rows_n = batch["input_ids"].shape[0]
    for t in times.values():
        t["rows_per_s"] = rows_n / t["median_s"]
    single_t = times["single expert"]["median_s"]
    mixture_t = times["mixture (route + experts)"]["median_s"]

    scan = _expert_scan(bb, mixture, batch, settings, device)
    scan_times = [row["median_s"] for row in scan]
    ratios = {
        "mixture_vs_single_throughput": single_t / mixture_t,
        "expert_part_vs_single_throughput": single_t / times["mixture expert part"]["median_s"],
        "paper_vs_single_throughput": single_t / times[PAPER_VARIANT]["median_s"],
        "mixture_speedup_vs_paper": times[PAPER_VARIANT]["median_s"] / mixture_t,
        "expert_time_max_over_min": max(scan_times) / min(scan_times),
    }
    return {
        **envelope("moe", device, load_before),
        "settings": {"pack": str(pack), "model": bb.info.name, "experts": mixture.names,
                     "rows": rows_n, "tokens_per_row_padded": batch["input_ids"].shape[1],
                     "max_length": max_length, "repeats": settings["repeats"],
                     "router": mixture.router.config.to_dict(),
                     "single_expert": mixture.names[0],
                     "experts_scan": list(settings["experts_scan"]),
                     "statistic": "median over interleaved rounds; inputs pre-tokenized"},
        "check": {"same_routing": same_routing, "max_logit_difference": diff,
                  "routing_accuracy_on_batch": routing_acc},
        "times": times,
        "peak_bytes": memory,
        "memory_method": memory_note(device),
        "expert_scan": scan,
        **ratios_and_targets(ratios),
    }


def _expert_scan(bb: Backbone, mixture: TTLoRAMoE, batch: dict[str, torch.Tensor], settings: dict,
                 device: torch.device) -> list[dict]:
    """The expert part (one pass, cores gathered per row) with pools of E random experts."""
    rows = batch["input_ids"].shape[0]
    mixtures, indices = {}, {}
    for num_experts in settings["experts_scan"]:
        pool = random_pool(mixture.pool, num_experts, seed=num_experts)
        mixtures[num_experts] = TTLoRAMoE(bb, pool, None, mixture.max_length)
        indices[num_experts] = torch.arange(rows, device=device) % num_experts    # [B]

    def forward(num_experts: int) -> Callable[[], torch.Tensor]:
        return lambda: mixtures[num_experts].expert_logits(batch, indices[num_experts])

    with torch.no_grad():
        times = time_interleaved({e: forward(e) for e in mixtures}, settings["repeats"], device)
    return [{"experts": e, "distinct_experts_in_batch": int(indices[e].unique().numel()),
             **times[e]} for e in mixtures]


def format_moe(result: dict) -> str:
    """The result of ``bench_moe`` as the text tables the command prints."""
    lines = header_lines(result)
    check = result["check"]
    lines.append(f"check: paper module == mixture (same routing {check['same_routing']}, max logit "
                 f"difference {check['max_logit_difference']:.2e}); routing accuracy on the batch "
                 f"{check['routing_accuracy_on_batch']:.3f}")
    lines.append("")
    lines.append(f"{'variant':46s} {'median ms':>10s} {'rows/s':>8s} {'peak MiB':>10s}")
    for name, t in result["times"].items():
        lines.append(f"{name:46s} {ms(t['median_s'])} {t['rows_per_s']:8.1f} "
                     f"{mib(result['peak_bytes'][name])}")
    lines += ["", "mixture expert part (one pass, cores gathered per row) vs number of experts E",
              f"{'E':>4s} {'distinct in batch':>18s} {'median ms':>10s} {'min ms':>10s}"]
    for row in result["expert_scan"]:
        lines.append(f"{row['experts']:4d} {row['distinct_experts_in_batch']:18d} "
                     f"{ms(row['median_s'])} {ms(row['min_s'])}")
    lines += ["", f"memory: {result['memory_method']}"]
    return "\n".join(lines + ratio_lines(result))
