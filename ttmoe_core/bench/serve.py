"""The ``serve`` benchmark: the same mixed rows (validation rows of the pack's tasks, interleaved)
served side by side in one run, each variant from raw texts to answers (tokenization included):

- the frozen floor: the base model alone on length-sorted micro-batches (``batching.plan``);
- the mixture as before (one padded batch) and now (micro-batches), with the pack's experts;
- the mixture with upper-layer experts (no update below the router's layer: the router's prefix is
  the experts' too, computed once); the pack's experts with those cores zeroed unless
  ``--upper-pack`` gives trained ones (same cost either way);
- the mixture with each row's expert given (no router);
- PEFT LoRA r16 experts (one per task, random init, not trained: the cost does not depend on the
  values) through PEFT's ``adapter_names=`` on one padded batch and on the same micro-batches;
- the paper's scheme (full router pass + gate-weighted pass over all E experts), micro-batches.
Then: the gathered per-row expert pass vs the frozen model on the same batches; the expert part per
row for E random experts (E up to 10,000) and the memory they add (fresh process each; the largest
E again with the cores kept in float16), with the pack's answers under float16 cores against
float32; a pack of ``disk_experts`` experts loaded from disk, eagerly and lazily; single-row latency.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..base import batching
from ..base.backbone import Backbone, default_pooling, encode_rows, pool
from ..moe import TTLoRAMoE
from ..runtime import rng
from ..runtime.runinfo import load_average
from .expert_pools import (
    random_experts,
    random_pool,
    random_router,
    rss_in_fresh_process,
    upper_layer_experts,
    write_pack,
)
from .moe import mixed_rows
from .paper import GateWeightedMoE
from .results import envelope, header_lines, ms, ratio_lines, ratios_and_targets
from .timing import time_interleaved, time_paired

SERVE_DEFAULTS = {"rows": 96, "repeats": 5, "experts_scan": [6, 64, 1000, 10000],
                  "disk_experts": 1000, "latency_rows": 8, "latency_repeats": 15,
                  "max_length": None, "rss": True}
SERVE_QUICK = {"rows": 12, "repeats": 1, "experts_scan": [6, 64], "disk_experts": 4,
               "latency_rows": 2, "latency_repeats": 2, "max_length": 32, "rss": False}

FLOOR = "frozen floor (micro-batches)"
MIXTURE = "mixture (micro-batches)"
UPPER = "mixture, upper-layer experts (prefix shared)"
PEFT_PLAN = "PEFT LoRA r16 adapter_names (micro-batches)"
GIVEN = "mixture, experts given (route=False: no router)"
GIVEN_ROUTED = "mixture, experts given (router + detector run)"


class PeftMixture:
    """One PEFT LoRA r16 α8 adapter per expert (random init, ``init_lora_weights=False``) on a copy
    of the base model, on the very modules the mixture's experts adapt; mixed batches through
    PEFT's ``adapter_names=``; heads as the mixture's."""

    def __init__(self, bb: Backbone, mixture: TTLoRAMoE, rank: int = 16, alpha: float = 8.0):
        # optional: PEFT (the baselines extra), loaded on first use
        from peft import LoraConfig, get_peft_model

        self.modules = [slot.name for slot in mixture.pool.slots]
        config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=False,
                            target_modules=self.modules)
        with rng.drawing_from(torch.Generator().manual_seed(0)):
            model = get_peft_model(copy.deepcopy(bb.model), config, adapter_name=mixture.names[0])
            for name in mixture.names[1:]:
                model.add_adapter(name, config)
        self.model, self.bb, self.names = model.eval(), bb, mixture.names
        self.head_weight, self.head_bias = mixture.pool.dense_heads()    # [E, C, H], [E, C]
        self.last_token = torch.tensor([c.pooling == "last" for c in mixture.pool.cards])  # [E]

    @torch.inference_mode()
    def serve(self, texts: Sequence[str], pairs: Sequence[str | None], expert_idx: Sequence[int],
              max_length: int, micro_batches: bool) -> torch.Tensor:
        """Logits [N, C_max] in input order; one padded batch or length-sorted micro-batches."""
        encoded = encode_rows(self.bb.tokenizer, texts, pairs, max_length)
        plan = (batching.plan(encoded.lengths, batching.MAX_TOKENS, batching.MAX_ROWS)
                if micro_batches else [list(range(len(encoded)))])
        out = []
        for rows in plan:
            batch = encoded.batch(rows, self.bb.device)
            idx = torch.tensor([expert_idx[r] for r in rows])
            hidden = self.model(**batch, adapter_names=[self.names[i] for i in idx]).last_hidden_state
            pooled = pool(hidden, batch["attention_mask"], self.last_token[idx])     # [B, H]
            out.append(torch.einsum("bch,bh->bc", self.head_weight[idx], pooled) + self.head_bias[idx])
        return batching.restore_order(plan, out)


@torch.inference_mode()
def floor_pass(bb: Backbone, texts: Sequence[str], pairs: Sequence[str | None],
               max_length: int) -> torch.Tensor:
    """The frozen base model alone on length-sorted micro-batches: pooled states [N, H]."""
    encoded = encode_rows(bb.tokenizer, texts, pairs, max_length)
    plan = batching.plan(encoded.lengths, batching.MAX_TOKENS, batching.MAX_ROWS)
    out = []
    for rows in plan:
        batch = encoded.batch(rows, bb.device)
        out.append(pool(bb.model(**batch).last_hidden_state, batch["attention_mask"],
                        default_pooling(bb.info.model_type)))
    return batching.restore_order(plan, out)


@torch.inference_mode()
def paper_pass(paper: GateWeightedMoE, bb: Backbone, texts: Sequence[str],
               pairs: Sequence[str | None], max_length: int) -> torch.Tensor:
    """The paper's scheme on length-sorted micro-batches: logits [N, C_max]."""
    encoded = encode_rows(bb.tokenizer, texts, pairs, max_length)
    plan = batching.plan(encoded.lengths, batching.MAX_TOKENS, batching.MAX_ROWS)
    out = []
    for rows in plan:
        part = encoded.take(rows)
        out.append(paper(part.batch(device=bb.device), part.texts, part.text_pairs)[1])
    return batching.restore_order(plan, out)


def one_padded_batch(mixture: TTLoRAMoE, texts, pairs) -> list[dict]:
    """The mixture's path before length-aware batching: all rows in one padded batch, the expert
    pass from the embeddings."""
    encoded, forced = mixture.prepare(texts, pairs)
    scores = mixture.score(encoded, forced, batch_size=len(encoded), max_tokens=None,
                           share_prefix=False)
    return mixture.answers(encoded, scores)


def given_experts(mixture: TTLoRAMoE, texts, pairs, names: Sequence[str],
                  route: bool = False) -> list[dict]:
    """The mixture with each row's expert given: no router or detector pass at all
    (``route=False``), or both still run for the router's probabilities (``predict``'s default)."""
    return mixture.predict(texts, pairs, expert=list(names), route=route)


def bench_serve(settings: dict, pack: str | Path, data_dir, device: torch.device,
                upper_pack: str | Path | None = None) -> dict:
    """Run the benchmark with ``settings`` (keys of ``SERVE_DEFAULTS``) on a pack with a router;
    the result is JSON-ready (seconds, MiB)."""
    load_before = load_average()
    mixture = TTLoRAMoE.from_pack(pack, device=str(device))
    bb, router = mixture.backbone, mixture.router
    if router is None:
        raise ValueError(f"pack {pack} has no router: the serve benchmark needs one")
    max_length = settings["max_length"] or mixture.max_length
    mixture.max_length = max_length
    k = router.config.layer
    if upper_pack:
        upper = TTLoRAMoE.from_pack(upper_pack, backbone=bb)
        upper.router, upper.max_length = router, max_length
    else:
        upper = TTLoRAMoE(bb, upper_layer_experts(mixture.experts, k), router, max_length)
    texts, pairs, owner = mixed_rows([c.task for c in mixture.cards], settings["rows"], data_dir)
    owner_names = [mixture.names[i] for i in owner]
    peft = PeftMixture(bb, mixture)
    paper = GateWeightedMoE(mixture)

    answers = mixture.predict(texts, pairs)
    same = [a["expert"] == b["expert"] and a["label"] == b["label"]
            for a, b in zip(answers, one_padded_batch(mixture, texts, pairs))]
    routed = [mixture.pool.index[a["expert"]] for a in answers]
    variants: dict[str, Callable[[], object]] = {
        FLOOR: lambda: floor_pass(bb, texts, pairs, max_length),
        "mixture, one padded batch (before)": lambda: one_padded_batch(mixture, texts, pairs),
        MIXTURE: lambda: mixture.predict(texts, pairs),
        UPPER: lambda: upper.predict(texts, pairs),
        GIVEN: lambda: given_experts(mixture, texts, pairs, owner_names),
        GIVEN_ROUTED: lambda: given_experts(mixture, texts, pairs, owner_names, route=True),
        "PEFT LoRA r16 adapter_names (one padded batch)": lambda: peft.serve(
            texts, pairs, routed, max_length, micro_batches=False),
        PEFT_PLAN: lambda: peft.serve(texts, pairs, routed, max_length, micro_batches=True),
        "paper scheme (micro-batches)": lambda: paper_pass(paper, bb, texts, pairs, max_length),
    }
    times = time_interleaved(variants, settings["repeats"], device)
    for t in times.values():
        t["rows_per_s"] = len(texts) / t["median_s"]
    same_batch = _same_batch(mixture, texts, pairs, owner, max_length, settings, device)
    scan = _expert_scan(mixture, texts, pairs, owner, max_length, settings, device)
    memory = ([rss_in_fresh_process(e, pack) for e in settings["experts_scan"]]
              + [rss_in_fresh_process(max(settings["experts_scan"]), pack, storage=s)
                 for s in ("float16", "int8")]
              if settings["rss"] else [])
    half = {s: _storage_agreement(mixture, pack, texts, pairs, s) for s in ("float16", "int8")}
    disk = _disk_pool(mixture, settings["disk_experts"], texts[0], pairs[0])
    latency = _latency(mixture, upper, texts, pairs, max_length, settings, device)

    def rate(name: str) -> float:
        return times[name]["rows_per_s"]

    per_row = {row["experts"]: row["per_row_s"] for row in scan}
    ratios = {
        "mixture_vs_floor": rate(MIXTURE) / rate(FLOOR),
        "upper_mixture_vs_floor": rate(UPPER) / rate(FLOOR),
        "mixture_vs_peft_same_batching": rate(MIXTURE) / rate(PEFT_PLAN),
        "peft_same_batching_vs_floor": rate(PEFT_PLAN) / rate(FLOOR),
        "given_experts_no_router_vs_floor": rate(GIVEN) / rate(FLOOR),
        "given_experts_router_run_vs_floor": rate(GIVEN_ROUTED) / rate(FLOOR),
        "upper_mixture_vs_peft_same_batching": rate(UPPER) / rate(PEFT_PLAN),
        "gathered_vs_frozen_same_batches": same_batch["ratio_micro_batches"],
        "gathered_vs_frozen_one_padded_batch": same_batch["ratio_one_batch"],
        "single_row_latency_vs_frozen": latency["ratio"],
        "upper_single_row_latency_vs_frozen": latency["ratio_upper"],
        f"pool_{disk['experts']}_ready_s": disk["lazy_ready_s"],
        f"pool_{disk['experts']}_ready_eager_s": disk["eager_ready_s"],
    }
    if max(per_row) > min(per_row):
        ratios[f"expert_time_per_row_e{max(per_row)}_vs_e{min(per_row)}"] = (
            per_row[max(per_row)] / per_row[min(per_row)])
    for row in memory[-3:]:
        suffix = "" if row["storage"] == "float32" else f"_{row['storage']}"
        ratios[f"rss_added_gb_e{row['experts']}{suffix}"] = row["added_mib"] * 2**20 / 1e9
    return {
        **envelope("serve", device, load_before),
        "settings": {"pack": str(pack), "upper_pack": str(upper_pack) if upper_pack else None,
                     "model": bb.info.name, "experts": mixture.names, "rows": len(texts),
                     "max_length": max_length, "repeats": settings["repeats"],
                     "micro_batch": {"max_rows": batching.MAX_ROWS,
                                     "max_tokens": batching.MAX_TOKENS},
                     "router": router.config.to_dict(), "upper_min_layer": k,
                     "detector": mixture.openworld is not None, "modules": peft.modules,
                     "peft": f"LoRA r16 alpha 8 on the experts' {len(peft.modules)} modules, "
                             "random init, not trained",
                     "statistic": "median over interleaved rounds; tokenization included"},
        "check": {"same_answers_as_one_padded_batch": sum(same) / len(same),
                  "routing_accuracy": sum(r == o for r, o in zip(routed, owner)) / len(owner)},
        "times": times, "same_batch": same_batch, "expert_scan": scan, "memory": memory,
        "disk": disk, "latency": latency, "stored_cores": half,
        **ratios_and_targets(ratios),
    }


def _same_batch(mixture: TTLoRAMoE, texts, pairs, owner, max_length: int, settings: dict,
                device: torch.device) -> dict:
    """The gathered per-row expert pass (each row's own expert) vs the frozen model on the very
    same pre-tokenized batches, the micro-batches and one padded batch, each batch of the two
    run back to back (``time_paired``); ratio: median over rounds of the paired round totals."""
    encoded = encode_rows(mixture.backbone.tokenizer, texts, pairs, max_length)
    plans = {"micro_batches": batching.plan(encoded.lengths, batching.MAX_TOKENS,
                                            batching.MAX_ROWS),
             "one_batch": [list(range(len(encoded)))]}
    result = {}
    for name, plan in plans.items():
        batches = [(encoded.batch(rows, device), torch.tensor([owner[r] for r in rows]))
                   for rows in plan]
        with torch.inference_mode():
            times = time_paired({
                "frozen": [lambda x=x: mixture.backbone.model(**x) for x, _ in batches],
                "experts": [lambda x=x, i=i: mixture.expert_logits(x, i) for x, i in batches]},
                settings["repeats"], device)
        result[name] = {k: {key: v for key, v in t.items() if key != "round_s"}
                        for k, t in times.items()}
        result[f"ratio_{name}"] = statistics.median(
            e / f for e, f in zip(times["experts"]["round_s"], times["frozen"]["round_s"]))
    return result


def _expert_scan(mixture: TTLoRAMoE, texts, pairs, owner, max_length: int, settings: dict,
                 device: torch.device) -> list[dict]:
    """The expert part (no router) per row for pools of E random experts, rows spread over them
    (E = 6: each row its task's index), interleaved."""
    encoded = encode_rows(mixture.backbone.tokenizer, texts, pairs, max_length)
    generator = torch.Generator().manual_seed(0)
    fns, meta = {}, {}
    for num in settings["experts_scan"]:
        pool = random_pool(mixture.pool, num, seed=num)
        mix = TTLoRAMoE(mixture.backbone, pool, None, max_length)
        forced = (owner if num == len(set(owner)) else
                  torch.randint(0, num, (len(texts),), generator=generator).tolist())
        plan = batching.plan(encoded.lengths, batching.MAX_TOKENS, batching.MAX_ROWS)
        distinct = [len({forced[r] for r in rows}) for rows in plan]
        fns[num] = lambda m=mix, f=forced: m.score(encoded, f, route=False)
        meta[num] = {"distinct_experts_per_micro_batch": statistics.mean(distinct)}
    times = time_interleaved(fns, settings["repeats"], device)
    return [{"experts": num, **meta[num], **times[num],
             "per_row_s": times[num]["median_s"] / len(texts)} for num in fns]


def _storage_agreement(mixture: TTLoRAMoE, pack: str | Path, texts, pairs, storage: str) -> dict:
    """The pack's mixture with its cores kept in ``storage`` (float16, int8) against float32 on the
    same rows: the share of rows with the same expert and label, the largest label-probability
    change."""
    half = TTLoRAMoE.from_pack(pack, backbone=mixture.backbone, pool_dtype=storage)
    a, b = mixture.predict(texts, pairs), half.predict(texts, pairs)
    same = [x["expert"] == y["expert"] and x["label"] == y["label"] for x, y in zip(a, b)]
    change = max((abs(p - y["label_probs"].get(k, p)) for x, y in zip(a, b)
                  for k, p in x["label_probs"].items()), default=0.0)
    return {"rows": len(same), "same_answers": sum(same) / len(same), "max_prob_change": change}


def _disk_pool(mixture: TTLoRAMoE, count: int, text: str, pair: str | None) -> dict:
    """A pack of ``count`` random experts and a router with as many outputs written to a temporary
    folder, then loaded eagerly (``store.load_pack``: every tensor read and checked) and lazily
    (configs checked, weights read on first use); seconds until ready, and until one row's answer."""
    bb = mixture.backbone
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_pack(Path(tmp) / "pack", random_experts(mixture.experts[0], count),
                   random_router(mixture.router, count, bb.info.hidden_size, bb.info.num_layers))
        result = {"experts": count, "write_s": time.perf_counter() - start,
                  "note": "page cache warm (files just written)"}
        for mode, lazy in (("eager", False), ("lazy", True)):
            start = time.perf_counter()
            loaded = TTLoRAMoE.from_pack(Path(tmp) / "pack", backbone=bb, lazy=lazy)
            result[f"{mode}_ready_s"] = time.perf_counter() - start
            loaded.predict([text], [pair], router_top=3)
            result[f"{mode}_first_answer_s"] = time.perf_counter() - start
            del loaded
    return result


def _latency(mixture: TTLoRAMoE, upper: TTLoRAMoE, texts, pairs, max_length: int,
             settings: dict, device: torch.device) -> dict:
    """One typed input at a time (as in the Playground): predict vs the frozen model (tokenize +
    forward + pool), per row the median of interleaved rounds; ratios: median over the rows."""
    rows = []
    for text, pair in list(zip(texts, pairs))[: settings["latency_rows"]]:
        fns = {"frozen": lambda t=text, p=pair: floor_pass(mixture.backbone, [t], [p], max_length),
               "mixture": lambda t=text, p=pair: mixture.predict([t], [p]),
               "upper": lambda t=text, p=pair: upper.predict([t], [p])}
        times = time_interleaved(fns, settings["latency_repeats"], device)
        rows.append({k: v["median_s"] for k, v in times.items()})
    return {"rows": rows, **{f"median_{k}_s": statistics.median(r[k] for r in rows)
                             for k in ("frozen", "mixture", "upper")},
            "ratio": statistics.median(r["mixture"] / r["frozen"] for r in rows),
            "ratio_upper": statistics.median(r["upper"] / r["frozen"] for r in rows)}


def format_serve(result: dict) -> str:
    """The result of ``bench_serve`` as the text tables the command prints."""
    check, floor = result["check"], result["times"][FLOOR]["rows_per_s"]
    lines = header_lines(result) + [
        f"check: micro-batches give the one padded batch's answers on "
        f"{check['same_answers_as_one_padded_batch']:.0%} of rows; routing accuracy "
        f"{check['routing_accuracy']:.3f}", "",
        f"{'variant (same rows, tokenization included)':50s} {'median ms':>10s} "
        f"{'rows/s':>8s} {'x floor':>8s}"]
    for name, t in result["times"].items():
        lines.append(f"{name:50s} {ms(t['median_s'])} {t['rows_per_s']:8.1f} "
                     f"{t['rows_per_s'] / floor:8.2f}")
    lines += ["", "same pre-tokenized batches, each run back to back: gathered per-row expert "
                  "pass vs frozen model"]
    for name in ("micro_batches", "one_batch"):
        same = result["same_batch"]
        lines.append(f"  {name:14s} frozen {ms(same[name]['frozen']['median_s'])} ms   experts "
                     f"{ms(same[name]['experts']['median_s'])} ms   paired ratio "
                     f"{same['ratio_' + name]:.3f}")
    lines += ["", "expert part (no router) vs number of experts E, random cores",
              f"{'E':>6s} {'distinct/micro-batch':>21s} {'ms per row':>11s} {'median ms':>10s}"
              ] + [f"{row['experts']:6d} {row['distinct_experts_per_micro_batch']:21.1f} "
                   f"{row['per_row_s'] * 1e3:11.3f} {ms(row['median_s'])}"
                   for row in result["expert_scan"]]
    if result["memory"]:
        lines += ["", "resident memory, fresh process: base model alone, then + mixture of E "
                      "random experts and a router with E outputs (MiB)"]
        for row in result["memory"]:
            lines.append(f"{row['experts']:6d} base {row['base_rss_mib']:8.1f}  with mixture "
                         f"{row['rss_mib']:8.1f}  added {row['added_mib']:8.1f}  (pool tensors "
                         f"{row['pool_bytes'] / 2**20:.1f}; cores in {row.get('storage', 'float32')})")
    for storage, half in (result.get("stored_cores") or {}).items():
        lines.append(f"cores kept in {storage} (--pool-dtype {storage}), the pack's experts on the "
                     f"same rows: same expert and label on {half['same_answers']:.1%} of rows, "
                     f"largest label-probability change {half['max_prob_change']:.2e}")
    disk = result["disk"]
    lines += ["", f"pack of {disk['experts']} experts on disk ({disk['note']}; written in "
                  f"{disk['write_s']:.1f} s): ready eager {disk['eager_ready_s']:.2f} s, lazy "
                  f"{disk['lazy_ready_s']:.2f} s; first answer eager "
                  f"{disk['eager_first_answer_s']:.2f} s, lazy {disk['lazy_first_answer_s']:.2f} s"]
    lat = result["latency"]
    lines.append(f"single-row latency, median over {len(lat['rows'])} rows: frozen "
                 f"{lat['median_frozen_s'] * 1e3:.1f} ms, mixture {lat['median_mixture_s'] * 1e3:.1f}"
                 f" ms, upper-layer experts {lat['median_upper_s'] * 1e3:.1f} ms")
    return "\n".join(lines + ratio_lines(result))
