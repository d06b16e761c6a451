"""The ``adapters`` benchmark: what one TT-LoRA expert costs on the base model.

Inference (frozen vs TT-LoRA vs PEFT LoRA), one training step (TT-LoRA vs LoRA), and the adapter
alone per number of tokens, contraction vs reconstruction, on a MiniLM layer and the paper's
LLaMA-3.2-1B q_proj; peak memory of each. The full list: ``python -m ttmoe_core.bench --help``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .. import tt
from ..adapters import inject_lora, inject_tt_lora, tt_layers
from ..base.backbone import default_targets, load_backbone
from ..experts import METHOD_DEFAULTS, ExpertConfig, build_expert_model, tt_layout
from ..runtime.runinfo import load_average
from .results import envelope, header_lines, kib, mib, ms, ratio_lines, ratios_and_targets
from .timing import memory_note, peak_memory, time_interleaved

# the paper's reference layer: LLaMA-3.2-1B q_proj, TT shape 16,8,4,4 | 4,4,8,16, rank 5
PAPER_LAYER = {"name": "llama-3.2-1b q_proj", "d_in": 2048, "d_out": 2048,
               "shape": [16, 8, 4, 4, 4, 4, 8, 16]}

ADAPTER_DEFAULTS = {"batch": 32, "length": 64, "repeats": 10, "rank": 5, "lora_rank": 16,
                    "tokens": [1, 4, 16, 64, 256, 1024, 4096], "min_sample_s": 0.02}
ADAPTER_QUICK = {"batch": 4, "length": 16, "repeats": 2, "rank": 5, "lora_rank": 16,
                 "tokens": [1, 64], "min_sample_s": 0.0}

CONTRACTION_PATHS = ("contract", "contract_sequential", "reconstruct")


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


def crossover(rows: Sequence[dict], key: str) -> int | None:
    """First token count at which the faster path differs from the faster path at the smallest
    (``row[key]`` > 1: the contraction is faster); None when it never changes."""
    first = rows[0][key] > 1
    for row in rows[1:]:
        if (row[key] > 1) != first:
            return row["tokens"]
    return None


def _crossover_text(rows: Sequence[dict], key: str, label: str) -> str:
    cross = crossover(rows, key)
    first = label if rows[0][key] > 1 else "reconstruct"
    if cross is None:
        return f"none, {first} faster at every token count"
    second = "reconstruct" if first == label else label
    return f"{first} faster below {cross} tokens, {second} from {cross}"


def _bench_contraction(rank: int, tokens: Sequence[int], repeats: int, device: torch.device,
                       min_sample_s: float) -> list[dict]:
    """The adapter alone on a MiniLM query layer and the paper's layer, one row per token count."""
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
            x = torch.randn(num_tokens, layer["d_in"], generator=generator).to(device)  # [N, d_in]
            with torch.no_grad():
                outs = {name: fn(x) for name, fn in variants.items()}           # [N, d_out] each
                scale = outs["reconstruct"].abs().max().clamp(min=1e-30)
                err = max(float((outs[k] - outs["reconstruct"]).abs().max() / scale)
                          for k in ("contract", "contract_sequential"))
                times = time_interleaved({k: (lambda fn=fn, x=x: fn(x)) for k, fn in variants.items()},
                                         repeats, device, min_sample_s=min_sample_s)
                memory = {f"{k}_peak_bytes": peak_memory(lambda fn=fn, x=x: fn(x), device)
                          for k, fn in variants.items()}
            row = {"tokens": num_tokens, "max_rel_err_vs_reconstruct": err,
                   **{f"{k}_s": v["median_s"] for k, v in times.items()}, **memory}
            row["contract_speedup"] = row["reconstruct_s"] / row["contract_s"]
            row["sequential_speedup"] = row["reconstruct_s"] / row["contract_sequential_s"]
            rows.append(row)
        results.append({"layer": layer["name"], "d_in": layer["d_in"], "d_out": layer["d_out"],
                        "in_factors": m, "out_factors": n, "rank": rank,
                        "params": tt.param_count(tt.core_shapes(m, n, rank)), "rows": rows,
                        "crossover_tokens": crossover(rows, "contract_speedup"),
                        "crossover_tokens_sequential": crossover(rows, "sequential_speedup")})
    return results


def _train_step(model: nn.Module, batch: dict[str, torch.Tensor], labels: torch.Tensor,
                optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(batch), labels)
        loss.backward()
        optimizer.step()
    return step


def bench_adapters(settings: dict, model_spec: str | None, device: torch.device) -> dict:
    """Run the benchmark with ``settings`` (keys of ``ADAPTER_DEFAULTS``) on the base model
    ``model_spec`` (None: the embedded default); the result is JSON-ready (seconds, bytes)."""
    load_before = load_average()
    bb = load_backbone(model_spec, device=device)
    targets = default_targets(bb.info.model_type)
    batch = synthetic_batch(bb.tokenizer, settings["batch"], settings["length"], device)
    rank, lora_rank = settings["rank"], settings["lora_rank"]
    tt_alpha, lora_alpha = METHOD_DEFAULTS["tt-lora"]["alpha"], METHOD_DEFAULTS["lora"]["alpha"]

    # inference: frozen vs TT-LoRA (kaiming init: ΔW ≠ 0, so nothing is skipped) vs PEFT LoRA
    generator = torch.Generator().manual_seed(0)
    tt_model = copy.deepcopy(bb.model)
    inject_tt_lora(tt_model, targets, rank=rank, alpha=tt_alpha, init="kaiming",
                   generator=generator)
    lora_model = inject_lora(copy.deepcopy(bb.model), targets, rank=lora_rank,
                             alpha=lora_alpha).eval()
    infer = {"frozen": lambda: bb.model(**batch), "tt-lora": lambda: tt_model(**batch),
             "lora": lambda: lora_model(**batch)}
    with torch.no_grad():
        infer_times = time_interleaved(infer, settings["repeats"], device)
        infer_mem = {k: peak_memory(fn, device) for k, fn in infer.items()}

    # training step: experts.build_expert_model (mean-pool + linear head), cross-entropy, AdamW
    labels = torch.arange(settings["batch"], device=device) % 2                  # [batch]
    steps, train_models = {}, {}
    for method in ("tt-lora", "lora"):
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
        **envelope("adapters", device, load_before),
        "settings": {"model": bb.info.name, "targets": targets,
                     "tt_modules": len(tt_layers(tt_model)),
                     "tt_shapes": {t: l["in_factors"] + l["out_factors"]
                                   for t, l in tt_layout(tt_model, list(targets)).items()},
                     "batch": settings["batch"], "length": settings["length"],
                     "repeats": settings["repeats"], "tt_rank": rank, "tt_alpha": tt_alpha,
                     "lora_rank": lora_rank, "lora_alpha": lora_alpha,
                     "tokens": list(settings["tokens"]), "statistic": "median over interleaved rounds"},
        "inference": {"times": infer_times, "peak_bytes": infer_mem},
        "train_step": {"times": train_times, "peak_bytes": train_mem, "models": train_models},
        "contraction": contraction,
        "memory_method": memory_note(device),
        **ratios_and_targets(ratios),
    }


def format_adapters(result: dict) -> str:
    """The result of ``bench_adapters`` as the text tables the command prints."""
    lines = header_lines(result)
    lines.append(f"{'variant':28s} {'median ms':>10s} {'min ms':>10s} {'peak MiB':>10s}")
    for section, label in (("inference", "inference"), ("train_step", "train step")):
        for name, t in result[section]["times"].items():
            lines.append(f"{label + ' ' + name:28s} {ms(t['median_s'])} {ms(t['min_s'])} "
                         f"{mib(result[section]['peak_bytes'][name])}")
    for layer in result["contraction"]:
        lines += ["", (f"adapter alone, {layer['layer']} {layer['d_out']}x{layer['d_in']}, TT "
                       f"{layer['in_factors']}|{layer['out_factors']} rank {layer['rank']} "
                       f"({layer['params']} params); ms per call"),
                  (f"{'tokens':>7s} {'contract':>10s} {'sequential':>10s} {'reconstruct':>11s} "
                   f"{'speedup':>8s} {'seq spdup':>9s} {'rel err':>8s}   peak KiB contract / "
                   f"sequential / reconstruct")]
        for row in layer["rows"]:
            lines.append(f"{row['tokens']:7d} {ms(row['contract_s'])} "
                         f"{ms(row['contract_sequential_s'])} {ms(row['reconstruct_s'])} "
                         f" {row['contract_speedup']:8.2f} {row['sequential_speedup']:9.2f} "
                         f"{row['max_rel_err_vs_reconstruct']:8.1e}   "
                         + " / ".join(kib(row[f"{k}_peak_bytes"]) for k in CONTRACTION_PATHS))
        lines.append("crossover: contract vs reconstruct: "
                     + _crossover_text(layer["rows"], "contract_speedup", "contract")
                     + "; mode-by-mode vs reconstruct: "
                     + _crossover_text(layer["rows"], "sequential_speedup", "mode-by-mode"))
    lines += ["", "speedup = reconstruct time / contraction time (> 1: contraction faster)",
              f"memory: {result['memory_method']}"]
    return "\n".join(lines + ratio_lines(result))
