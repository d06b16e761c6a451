"""Benchmarks, measured side by side in one run: ``python -m ttmoe_core.bench adapters|moe``.

``adapters``: on the base model (default: the embedded all-MiniLM-L6-v2)
  - inference: frozen model vs the same model with TT-LoRA (rank 5) on every query/value module;
  - training step (forward + backward + AdamW step): TT-LoRA vs PEFT LoRA r16, same head and loss;
  - the adapter alone, contraction (``tt.tt_contract``, and the paper's mode-by-mode order
    ``tt.tt_contract_sequential``) vs reconstruction (``ΔW`` from the cores, then ``x @ ΔW^T``) for
    a 384×384 layer and the paper's 2048×2048 LLaMA-3.2-1B q_proj shape, per number of tokens;
  - peak memory of each variant.
``moe``: a mixed batch (rows of every expert's task, interleaved) through
  (a) the mixture ``moe.TTLoRAMoE`` (routing included, and its expert part alone),
  (b) one TT-LoRA expert alone on the same rows,
  (c) the paper's scheme: a router pass over the whole base model, then a second full pass where
      every layer sums the gate-weighted outputs of ALL E experts (``GateWeightedMoE``, checked
      equal to the mixture before timing);
  then the mixture's expert part for E = 1, 6, 16, 64 experts (random cores beyond the pack).

Timing: the variants of a table run interleaved (the order rotates each round) and each figure
is the median over the rounds; ``torch.cuda.synchronize`` brackets every sample on CUDA.
``--json`` prints one JSON object with the same figures (seconds, bytes).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from . import adapters, tt
from .backbone import Backbone, load_backbone, pick_device, tokenize_mixed

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_PACK = REPO_ROOT / "assets" / "demo"

# target ratios (see DESIGN.md "Targets"): (bound, "<=" or ">=")
TARGETS = {
    "inference_tt_vs_frozen": (1.15, "<="),
    "train_step_tt_vs_lora": (1.10, "<="),
    "mixture_vs_single_throughput": (0.75, ">="),
    "expert_time_max_over_min": (1.10, "<="),
}
# the paper's reference layer: LLaMA-3.2-1B q_proj, TT shape 16,8,4,4 | 4,4,8,16, rank 5
PAPER_LAYER = {"name": "llama-3.2-1b q_proj", "d_in": 2048, "d_out": 2048,
               "shape": [16, 8, 4, 4, 4, 4, 8, 16]}

ADAPTER_DEFAULTS = {"batch": 32, "length": 64, "repeats": 10, "rank": 5, "lora_rank": 16,
                    "tokens": [1, 4, 16, 64, 256, 1024, 4096], "min_sample_s": 0.02}
ADAPTER_QUICK = {"batch": 4, "length": 16, "repeats": 2, "rank": 5, "lora_rank": 16,
                 "tokens": [1, 64], "min_sample_s": 0.0}
MOE_DEFAULTS = {"rows": 48, "repeats": 10, "experts_scan": [1, 6, 16, 64], "max_length": None}
MOE_QUICK = {"rows": 12, "repeats": 2, "experts_scan": [1, 6], "max_length": 32}

MEMORY_NOTE_CPU = ("CPU: peak of the bytes torch allocated minus those it freed during one call "
                   "(the profiler's allocation events, torch.profiler profile_memory=True, summed in "
                   "time order), i.e. the call's transient tensors and outputs; weights and "
                   "optimizer state that exist before the call are not counted")
MEMORY_NOTE_CUDA = ("CUDA: torch.cuda.max_memory_allocated during one call minus "
                    "torch.cuda.memory_allocated before it (weights and optimizer state that "
                    "exist before the call are not counted)")


# ----------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device,
                     warmup: int = 1, min_sample_s: float = 0.0) -> dict[str, dict]:
    """Median seconds per call of each function, the functions interleaved round by round.

    Each sample times ``calls`` back-to-back calls (calibrated so a sample lasts at least
    ``min_sample_s``; 1 for model forwards) and divides. The order rotates every round.
    """
    calls = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        once = time.perf_counter() - start
        calls[name] = max(1, min(1000, math.ceil(min_sample_s / max(once, 1e-7))))
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_idx in range(repeats):
        shift = round_idx % len(names)
        for name in names[shift:] + names[:shift]:
            fn, n = fns[name], calls[name]
            _sync(device)
            start = time.perf_counter()
            for _ in range(n):
                fn()
            _sync(device)
            samples[name].append((time.perf_counter() - start) / n)
    return {name: {"median_s": statistics.median(s), "min_s": min(s), "max_s": max(s),
                   "rounds": len(s), "calls_per_sample": calls[name]}
            for name, s in samples.items()}


def peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak bytes allocated by one call above what was allocated before it (see MEMORY_NOTE_*).

    None when the profiler gives no allocation events (other torch versions)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                  if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    except AttributeError:
        return None
    live = peak = 0
    for _, nbytes in sorted(events):
        live += nbytes
        peak = max(peak, live)
    return int(peak)


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    """CPU model, cores, torch version, threads, GPU name: what a result needs to be read."""
    info = {"cpu": cpu_name(), "cores": _all_cores(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": str(device), "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _all_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _ratio_check(name: str, value: float) -> dict:
    bound, direction = TARGETS[name]
    met = value <= bound if direction == "<=" else value >= bound
    return {"value": value, "target": f"{direction} {bound}", "met": bool(met)}


# ----------------------------------------------------------------------------- adapters


def synthetic_batch(tokenizer, batch: int, length: int, device: torch.device,
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """[batch, length] random non-special token ids, no padding (every row is full length)."""
    generator = torch.Generator().manual_seed(seed)
    low = 1000 if tokenizer.vocab_size > 2000 else 1
    ids = torch.randint(low, tokenizer.vocab_size, (batch, length), generator=generator)
    return {"input_ids": ids.to(device),
            "attention_mask": torch.ones(batch, length, dtype=torch.long, device=device),
            "token_type_ids": torch.zeros(batch, length, dtype=torch.long, device=device)}


def contraction_variants(cores: Sequence[torch.Tensor], in_factors: Sequence[int],
                         out_factors: Sequence[int]) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The three ways to apply one TT-LoRA adapter to x [N, d_in] -> [N, d_out]."""
    return {
        "contract": lambda x: tt.tt_contract(x, cores, in_factors, out_factors),
        "contract_sequential": lambda x: tt.tt_contract_sequential(x, cores, in_factors,
                                                                   out_factors),
        "reconstruct": lambda x: x @ tt.reconstruct(cores, in_factors, out_factors).T,
    }


def _bench_contraction(rank: int, tokens: Sequence[int], repeats: int, device: torch.device,
                       min_sample_s: float) -> list[dict]:
    minilm_m, minilm_n = tt.default_factors(384, 384)
    layers = [{"name": "minilm query (default shape)", "d_in": 384, "d_out": 384,
               "shape": minilm_m + minilm_n}, PAPER_LAYER]
    results = []
    generator = torch.Generator().manual_seed(0)
    for layer in layers:
        m, n = tt.split_shape(layer["shape"], layer["d_in"], layer["d_out"])
        cores = [c.to(device) for c in tt.init_cores(tt.core_shapes(m, n, rank), "kaiming",
                                                     generator=generator)]
        variants = contraction_variants(cores, m, n)
        rows = []
        for num_tokens in tokens:
            x = torch.randn(num_tokens, layer["d_in"], generator=generator).to(device)
            with torch.no_grad():
                outs = {name: fn(x) for name, fn in variants.items()}
                scale = outs["reconstruct"].abs().max().clamp(min=1e-30)
                err = max(float((outs[k] - outs["reconstruct"]).abs().max() / scale)
                          for k in ("contract", "contract_sequential"))
                times = time_interleaved({k: (lambda fn=fn: fn(x)) for k, fn in variants.items()},
                                         repeats, device, min_sample_s=min_sample_s)
                memory = {f"{k}_peak_bytes": peak_memory(lambda fn=fn: fn(x), device)
                          for k, fn in variants.items()}
            row = {"tokens": num_tokens, "max_rel_err_vs_reconstruct": err,
                   **{f"{k}_s": v["median_s"] for k, v in times.items()}, **memory}
            row["contract_speedup"] = row["reconstruct_s"] / row["contract_s"]
            row["sequential_speedup"] = row["reconstruct_s"] / row["contract_sequential_s"]
            rows.append(row)
        results.append({"layer": layer["name"], "d_in": layer["d_in"], "d_out": layer["d_out"],
                        "in_factors": m, "out_factors": n, "rank": rank,
                        "params": tt.param_count(tt.core_shapes(m, n, rank)), "rows": rows,
                        "crossover_tokens": _crossover(rows, "contract_speedup"),
                        "crossover_tokens_sequential": _crossover(rows, "sequential_speedup")})
    return results


def _crossover(rows: Sequence[dict], key: str) -> int | None:
    """First token count at which the faster path differs from the faster path at the smallest."""
    first = rows[0][key] > 1
    for row in rows[1:]:
        if (row[key] > 1) != first:
            return row["tokens"]
    return None


def _crossover_text(rows: Sequence[dict], key: str, label: str) -> str:
    cross = _crossover(rows, key)
    first = label if rows[0][key] > 1 else "reconstruct"
    if cross is None:
        return f"none, {first} faster at every token count"
    second = "reconstruct" if first == label else label
    return f"{first} faster below {cross} tokens, {second} from {cross}"


def _train_step(model: nn.Module, batch: dict[str, torch.Tensor], labels: torch.Tensor,
                optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(batch), labels)
        loss.backward()
        optimizer.step()
    return step


def bench_adapters(settings: dict, model_spec: str | None, device: torch.device) -> dict:
    from .experts import METHOD_DEFAULTS, ExpertConfig, build_expert_model

    load_before = _load_average()
    bb = load_backbone(model_spec, device=device)
    targets = _targets(bb)
    batch = synthetic_batch(bb.tokenizer, settings["batch"], settings["length"], device)
    rank, lora_rank = settings["rank"], settings["lora_rank"]
    tt_alpha, lora_alpha = METHOD_DEFAULTS["tt-lora"]["alpha"], METHOD_DEFAULTS["lora"]["alpha"]

    # inference: frozen vs TT-LoRA (kaiming init: ΔW ≠ 0, so nothing is skipped) vs PEFT LoRA
    generator = torch.Generator().manual_seed(0)
    tt_model = copy.deepcopy(bb.model)
    adapters.inject_tt_lora(tt_model, targets, rank=rank, alpha=tt_alpha, init="kaiming",
                            generator=generator)
    lora_model = adapters.inject_lora(copy.deepcopy(bb.model), targets, rank=lora_rank,
                                      alpha=lora_alpha).eval()
    infer = {"frozen": lambda: bb.model(**batch), "tt-lora": lambda: tt_model(**batch),
             "lora": lambda: lora_model(**batch)}
    with torch.no_grad():
        infer_times = time_interleaved(infer, settings["repeats"], device)
        infer_mem = {k: peak_memory(fn, device) for k, fn in infer.items()}

    # training step: experts.build_expert_model (mean-pool + linear head), cross-entropy, AdamW
    labels = torch.arange(settings["batch"], device=device) % 2
    steps, train_models = {}, {}
    for method in ("tt-lora", "lora"):
        torch.manual_seed(0)
        config = ExpertConfig(task="bench", method=method, rank=rank if method == "tt-lora" else lora_rank,
                              init="kaiming")
        model = build_expert_model(config, bb, num_labels=2, generator=torch.Generator().manual_seed(0))
        model.train()
        model.encoder.eval()   # as experts.train_expert: frozen base without dropout
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.resolved().lr)
        steps[method] = _train_step(model, batch, labels, optimizer)
        train_models[method] = {"trainable_params": sum(p.numel() for p in params)}
    train_times = time_interleaved(steps, settings["repeats"], device, warmup=2)
    train_mem = {k: peak_memory(fn, device) for k, fn in steps.items()}

    contraction = _bench_contraction(rank, settings["tokens"], settings["repeats"], device,
                                     settings["min_sample_s"])
    ratios = {
        "inference_tt_vs_frozen": infer_times["tt-lora"]["median_s"] / infer_times["frozen"]["median_s"],
        "inference_lora_vs_frozen": infer_times["lora"]["median_s"] / infer_times["frozen"]["median_s"],
        "train_step_tt_vs_lora": train_times["tt-lora"]["median_s"] / train_times["lora"]["median_s"],
    }
    return {
        "benchmark": "adapters",
        "date": _now(),
        "machine": machine_info(device),
        "load_average": {"before": load_before, "after": _load_average()},
        "settings": {"model": bb.info.name, "targets": targets,
                     "tt_modules": len(adapters.tt_layers(tt_model)),
                     "tt_shapes": {t: l["in_factors"] + l["out_factors"]
                                   for t, l in _layouts(tt_model, targets).items()},
                     "batch": settings["batch"], "length": settings["length"],
                     "repeats": settings["repeats"], "tt_rank": rank, "tt_alpha": tt_alpha,
                     "lora_rank": lora_rank, "lora_alpha": lora_alpha,
                     "tokens": list(settings["tokens"]), "statistic": "median over interleaved rounds"},
        "inference": {"times": infer_times, "peak_bytes": infer_mem},
        "train_step": {"times": train_times, "peak_bytes": train_mem, "models": train_models},
        "contraction": contraction,
        "memory_method": MEMORY_NOTE_CUDA if device.type == "cuda" else MEMORY_NOTE_CPU,
        "ratios": ratios,
        "targets": {k: _ratio_check(k, v) for k, v in ratios.items() if k in TARGETS},
    }


def _targets(bb: Backbone) -> list[str]:
    from .backbone import default_targets

    return default_targets(bb.info.model_type)


def _layouts(model: nn.Module, targets: Sequence[str]) -> dict[str, dict]:
    from .experts import tt_layout

    return tt_layout(model, list(targets))


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- the paper's MoE


class GateWeightedTTLoRA(nn.Module):
    """The paper's MoE layer: ``y = W x + b + Σ_e gate[b, e] · α·TT_e(x_b)`` over ALL E experts.

    Holds a copy of a ``TTLoRALinear``'s stacked cores [E, r, s, r']. The gate [B, E] is the
    one-hot of the per-row expert index given by ``adapters.use_experts`` (row -1: zero gate, the
    frozen base), so it is computed per call, not stored. Every expert's TT output is computed for
    the whole batch and weighted: the cost grows with E (what the mixture avoids).
    """

    def __init__(self, layer: adapters.TTLoRALinear):
        super().__init__()
        self.base = layer.base
        self.in_factors, self.out_factors = list(layer.in_factors), list(layer.out_factors)
        self.alpha = layer.alpha
        self.cores = nn.ParameterList(nn.Parameter(c.detach().clone(), requires_grad=False)
                                      for c in layer.cores)

    @property
    def num_experts(self) -> int:
        return self.cores[0].shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expert_idx = adapters.current_expert_index()
        if expert_idx is None:
            raise RuntimeError("GateWeightedTTLoRA needs the per-row experts: adapters.use_experts")
        out = self.base(x)                                               # [B, T, d_out]
        if bool((expert_idx < 0).all()):
            return out
        gate = nn.functional.one_hot(expert_idx.clamp(min=0), self.num_experts).to(x.dtype)
        gate = gate * (expert_idx >= 0).to(x.dtype)[:, None]             # [B, E]
        gate = gate.reshape(gate.shape[0], *([1] * (x.dim() - 1)), self.num_experts)
        for expert in range(self.num_experts):
            delta = tt.tt_contract(x, [c[expert] for c in self.cores], self.in_factors,
                                   self.out_factors)                     # [B, T, d_out]
            out = out + gate[..., expert] * (self.alpha * delta)
        return out


class GateWeightedMoE(nn.Module):
    """The paper's serving scheme built from a ``TTLoRAMoE``: a router pass over the WHOLE base
    model, then a second full pass whose TT layers are ``GateWeightedTTLoRA`` (all E experts).

    The encoder is a copy of the mixture's, with each ``TTLoRALinear`` replaced (its stacked cores
    copied); heads and router are the mixture's. The router reads the same features as in the
    mixture, but the base model runs through all its layers first, as the paper's router reads
    the last hidden state.
    """

    def __init__(self, mixture):
        super().__init__()
        self.encoder = copy.deepcopy(mixture.encoder)
        for name, layer in adapters.tt_layers(self.encoder).items():
            parent_name, _, child = name.rpartition(".")
            setattr(self.encoder.get_submodule(parent_name), child, GateWeightedTTLoRA(layer))
        self.register_buffer("head_weight", mixture.head_weight.clone())   # [E, C_max, H]
        self.register_buffer("head_bias", mixture.head_bias.clone())       # [E, C_max]
        self.router = mixture.router
        self.eval()

    @torch.no_grad()
    def route(self, batch: dict[str, torch.Tensor], texts: Sequence[str],
              text_pairs: Sequence[str | None]) -> torch.Tensor:
        """Expert index [B]: the router on a full pass of the frozen base model (adapters off)."""
        from .router import batch_features

        if self.router is None:
            raise ValueError("the mixture has no router")
        full = replace(self.router.config, layer=self.encoder.config.num_hidden_layers)
        feats = batch_features(self.encoder, batch, texts, text_pairs, full)
        dtype = next(self.router.parameters()).dtype
        return self.router({k: v.to(dtype) for k, v in feats.items()}).argmax(-1)

    @torch.no_grad()
    def expert_logits(self, batch: dict[str, torch.Tensor], expert_idx: torch.Tensor) -> torch.Tensor:
        """Logits [B, C_max] from the second pass, gate = one-hot(expert_idx)."""
        from .moe import per_row_logits

        return per_row_logits(self.encoder, self.head_weight, self.head_bias, batch, expert_idx)

    @torch.no_grad()
    def forward(self, batch: dict[str, torch.Tensor], texts: Sequence[str],
                text_pairs: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """(expert index [B], logits [B, C_max])."""
        expert_idx = self.route(batch, texts, text_pairs)
        return expert_idx, self.expert_logits(batch, expert_idx)


def max_logit_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b| over finite entries; inf when the -inf padding differs."""
    if not torch.equal(torch.isfinite(a), torch.isfinite(b)):
        return math.inf
    finite = torch.isfinite(a)
    return float((a[finite] - b[finite]).abs().max()) if bool(finite.any()) else 0.0


# ----------------------------------------------------------------------------- moe


def mixed_rows(expert_tasks: Sequence[str], rows: int, data_dir, seed: int = 0
               ) -> tuple[list[str], list[str | None], list[int]]:
    """``rows`` validation rows, round-robin over the tasks (row i from task i mod E)."""
    from . import tasks

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
    from .experts import build_expert_model
    from .moe import TTLoRAMoE

    load_before = _load_average()
    mixture = TTLoRAMoE.from_pack(pack, device=str(device))
    if mixture.router is None:
        raise ValueError(f"pack {pack} has no router: the moe benchmark needs one")
    bb = mixture.backbone
    max_length = settings["max_length"] or mixture.max_length
    texts, pairs, owner = mixed_rows([e.config.task for e in mixture.experts], settings["rows"],
                                     data_dir)
    batch, _ = tokenize_mixed(bb.tokenizer, texts, pairs, max_length, device)
    single = build_expert_model(mixture.experts[0], bb).eval()
    paper = GateWeightedMoE(mixture)

    # correctness first: same routing, same logits (to 1e-4) as the mixture
    with torch.no_grad():
        routed = mixture.route(batch, texts, pairs).argmax(-1)
        mixture_logits = mixture.expert_logits(batch, routed)
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
        "paper (full route pass + gate-weighted pass)": lambda: paper(batch, texts, pairs),
    }
    with torch.no_grad():
        times = time_interleaved(variants, settings["repeats"], device)
        memory = {k: peak_memory(fn, device) for k, fn in variants.items()}
    rows_n = batch["input_ids"].shape[0]
    for name, t in times.items():
        t["rows_per_s"] = rows_n / t["median_s"]
    single_t = times["single expert"]["median_s"]

    scan = _expert_scan(bb, mixture, batch, settings, device)
    scan_times = [row["median_s"] for row in scan]
    ratios = {
        "mixture_vs_single_throughput": single_t / times["mixture (route + experts)"]["median_s"],
        "expert_part_vs_single_throughput": single_t / times["mixture expert part"]["median_s"],
        "paper_vs_single_throughput":
            single_t / times["paper (full route pass + gate-weighted pass)"]["median_s"],
        "mixture_speedup_vs_paper": times["paper (full route pass + gate-weighted pass)"]["median_s"]
            / times["mixture (route + experts)"]["median_s"],
        "expert_time_max_over_min": max(scan_times) / min(scan_times),
    }
    return {
        "benchmark": "moe",
        "date": _now(),
        "machine": machine_info(device),
        "load_average": {"before": load_before, "after": _load_average()},
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
        "memory_method": MEMORY_NOTE_CUDA if device.type == "cuda" else MEMORY_NOTE_CPU,
        "expert_scan": scan,
        "ratios": ratios,
        "targets": {k: _ratio_check(k, v) for k, v in ratios.items() if k in TARGETS},
    }


def _expert_scan(bb: Backbone, mixture, batch: dict[str, torch.Tensor], settings: dict,
                 device: torch.device) -> list[dict]:
    """The expert part (one pass, cores gathered per row) with banks of E random experts."""
    layout = mixture.experts[0].tt_layout
    shapes = {t: l["in_factors"] + l["out_factors"] for t, l in layout.items()}
    rank = max(e.config.rank for e in mixture.experts)
    rows = batch["input_ids"].shape[0]
    models, indices = {}, {}
    for num_experts in settings["experts_scan"]:
        encoder = copy.deepcopy(bb.model)
        adapters.inject_tt_lora(encoder, list(layout), rank=rank, alpha=1.0, shapes=shapes,
                                num_experts=num_experts, init="kaiming",
                                generator=torch.Generator().manual_seed(num_experts))
        models[num_experts] = encoder.eval()
        indices[num_experts] = torch.arange(rows, device=device) % num_experts

    def forward(num_experts: int) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with adapters.use_experts(indices[num_experts]):
                return models[num_experts](**batch).last_hidden_state
        return run

    with torch.no_grad():
        times = time_interleaved({e: forward(e) for e in models}, settings["repeats"], device)
    return [{"experts": e, "distinct_experts_in_batch": int(indices[e].unique().numel()),
             **times[e]} for e in models]


# ----------------------------------------------------------------------------- output


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:10.2f}"


def _mib(nbytes: int | None) -> str:
    return "       n/a" if nbytes is None else f"{nbytes / 2**20:10.1f}"


def _kib(nbytes: int | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**10:.1f}"


def _header(result: dict) -> list[str]:
    m = result["machine"]
    return [f"{result['benchmark']} benchmark, {result['date']}",
            f"machine: {m['cpu']}, {m['cores']} cores, {m['threads']} threads, torch {m['torch']}, "
            f"device {m['device']}{', ' + m['gpu'] if 'gpu' in m else ''}",
            f"load average (1, 5, 15 min) before {result['load_average']['before']}, after "
            f"{result['load_average']['after']}",
            f"settings: {json.dumps(result['settings'])}", ""]


def _targets_lines(result: dict) -> list[str]:
    lines = ["", "ratios:"]
    for name, value in result["ratios"].items():
        check = result["targets"].get(name)
        tail = f"   target {check['target']}: {'met' if check['met'] else 'MISSED'}" if check else ""
        lines.append(f"  {name:36s} {value:8.3f}{tail}")
    return lines


def format_adapters(result: dict) -> str:
    lines = _header(result)
    lines.append(f"{'variant':28s} {'median ms':>10s} {'min ms':>10s} {'peak MiB':>10s}")
    for section, label in (("inference", "inference"), ("train_step", "train step")):
        for name, t in result[section]["times"].items():
            lines.append(f"{label + ' ' + name:28s} {_ms(t['median_s'])} {_ms(t['min_s'])} "
                         f"{_mib(result[section]['peak_bytes'][name])}")
    for layer in result["contraction"]:
        lines += ["", f"adapter alone, {layer['layer']} {layer['d_out']}x{layer['d_in']}, TT "
                  f"{layer['in_factors']}|{layer['out_factors']} rank {layer['rank']} "
                  f"({layer['params']} params); ms per call",
                  f"{'tokens':>7s} {'contract':>10s} {'sequential':>10s} {'reconstruct':>11s} "
                  f"{'speedup':>8s} {'seq spdup':>9s} {'rel err':>8s}   peak KiB contract / "
                  f"sequential / reconstruct"]
        for row in layer["rows"]:
            lines.append(f"{row['tokens']:7d} {_ms(row['contract_s'])} "
                         f"{_ms(row['contract_sequential_s'])} {_ms(row['reconstruct_s'])} "
                         f" {row['contract_speedup']:8.2f} {row['sequential_speedup']:9.2f} "
                         f"{row['max_rel_err_vs_reconstruct']:8.1e}   "
                         + " / ".join(_kib(row[f"{k}_peak_bytes"]) for k in
                                      ("contract", "contract_sequential", "reconstruct")))
        lines.append("crossover: contract vs reconstruct: "
                     + _crossover_text(layer["rows"], "contract_speedup", "contract")
                     + "; mode-by-mode vs reconstruct: "
                     + _crossover_text(layer["rows"], "sequential_speedup", "mode-by-mode"))
    lines += ["", "speedup = reconstruct time / contraction time (> 1: contraction faster)",
              f"memory: {result['memory_method']}"]
    return "\n".join(lines + _targets_lines(result))


def format_moe(result: dict) -> str:
    lines = _header(result)
    check = result["check"]
    lines.append(f"check: paper module == mixture (same routing {check['same_routing']}, max logit "
                 f"difference {check['max_logit_difference']:.2e}); routing accuracy on the batch "
                 f"{check['routing_accuracy_on_batch']:.3f}")
    lines.append("")
    lines.append(f"{'variant':46s} {'median ms':>10s} {'rows/s':>8s} {'peak MiB':>10s}")
    for name, t in result["times"].items():
        lines.append(f"{name:46s} {_ms(t['median_s'])} {t['rows_per_s']:8.1f} "
                     f"{_mib(result['peak_bytes'][name])}")
    lines += ["", "mixture expert part (one pass, cores gathered per row) vs number of experts E",
              f"{'E':>4s} {'distinct in batch':>18s} {'median ms':>10s} {'min ms':>10s}"]
    for row in result["expert_scan"]:
        lines.append(f"{row['experts']:4d} {row['distinct_experts_in_batch']:18d} "
                     f"{_ms(row['median_s'])} {_ms(row['min_s'])}")
    lines += ["", f"memory: {result['memory_method']}"]
    return "\n".join(lines + _targets_lines(result))


# ----------------------------------------------------------------------------- command line


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write integers separated by commas") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers")
    return values


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ttmoe_core.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object")
    common.add_argument("--threads", type=_positive, default=None,
                        help="torch intra-op threads (default: all cores)")
    common.add_argument("--repeats", type=_positive, default=None,
                        help="interleaved rounds per table (default 10; quick 2)")
    common.add_argument("--quick", action="store_true", help="tiny settings (tests, smoke runs)")
    common.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA if present)")
    sub = parser.add_subparsers(dest="command", required=True)

    a = sub.add_parser("adapters", parents=[common], help="TT-LoRA vs frozen / LoRA; contraction")
    a.add_argument("--model", default=None, help="base model (default: embedded all-MiniLM-L6-v2)")
    a.add_argument("--batch", type=_positive, default=None, help="rows (default 32)")
    a.add_argument("--length", type=_positive, default=None, help="tokens per row (default 64)")
    a.add_argument("--rank", type=_positive, default=None, help="TT rank (default 5)")
    a.add_argument("--lora-rank", type=_positive, default=None, help="LoRA rank (default 16)")
    a.add_argument("--tokens", type=_int_list, default=None,
                   help="token counts for contraction vs reconstruction "
                        "(default 1,4,16,64,256,1024,4096)")

    m = sub.add_parser("moe", parents=[common], help="mixture vs single expert vs paper scheme")
    m.add_argument("--pack", default=str(DEMO_PACK), help="pack folder (default: assets/demo)")
    m.add_argument("--data-dir", default=None, help="task data folder (default: the engine's)")
    m.add_argument("--rows", type=_positive, default=None, help="mixed batch rows (default 48)")
    m.add_argument("--max-length", type=_positive, default=None,
                   help="tokens per row at most (default: the pack's)")
    m.add_argument("--experts-scan", type=_int_list, default=None,
                   help="numbers of experts for the expert-part scan (default 1,6,16,64)")
    return parser


def _settings(args: argparse.Namespace, defaults: dict, quick: dict) -> dict:
    base = quick if args.quick else defaults
    return {key: (getattr(args, key) if getattr(args, key, None) is not None else value)
            for key, value in base.items()}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads or _all_cores())
    device = pick_device(args.device)
    if args.command == "adapters":
        result = bench_adapters(_settings(args, ADAPTER_DEFAULTS, ADAPTER_QUICK), args.model,
                                device)
        text = format_adapters(result)
    else:
        result = bench_moe(_settings(args, MOE_DEFAULTS, MOE_QUICK), args.pack, args.data_dir,
                           device)
        text = format_moe(result)
    print(json.dumps(result) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
