"""Experiment 1 (paper Table 3): inference time of contracting the TT cores vs rebuilding ΔW.

The same trained expert runs twice: with ``TTLoRALinear`` (the input contracted with the cores)
and through a copy whose TT layers are ``ReconstructedTTLoRALinear`` (ΔW rebuilt every call);
outputs must agree to ``TOLERANCE``, then each is timed per batch size.
"""

from __future__ import annotations

import copy

import torch

from .. import adapters, experts
from ..base.backbone import pool
from .experiment import Run, median_ms, setup_differences, verdict
from .plan import TOLERANCE, ReportError


def forward(model: experts.ExpertModel, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(last hidden state [B, T, H], logits [B, C]) of an expert model on a tokenized batch."""
    hidden = model.encoder(**batch).last_hidden_state                    # [B, T, H]
    return hidden, model.head(pool(hidden, batch["attention_mask"], model.pooling))


def reconstructing_copy(model: experts.ExpertModel) -> experts.ExpertModel:
    """A copy whose every TTLoRALinear is wrapped in ReconstructedTTLoRALinear (module replacement)."""
    clone = copy.deepcopy(model)
    for name, layer in adapters.tt_layers(clone.encoder).items():
        adapters.replace_submodule(clone.encoder, name, adapters.ReconstructedTTLoRALinear(layer))
    return clone


def exp_contraction(run: Run) -> dict:
    """Inference time, contraction vs reconstruction, on the first comparison task's TT-LoRA expert."""
    b = run.budget
    task = run.comparison_tasks[0]
    expert = run.expert(task, "tt-lora", measure_memory=True)
    contract = experts.build_expert_model(expert, run.backbone).eval()
    rebuild = reconstructing_copy(contract).eval()
    data = run.data(task, "validation")
    need = max(b.timing_batch_sizes)
    idx = [i % len(data) for i in range(need)]
    encoded = run.backbone.tokenizer(
        [data.texts[i] for i in idx], [data.text_pairs[i] for i in idx] if data.text_pairs else None,
        padding="max_length", truncation=True, max_length=b.timing_length, return_tensors="pt")
    inputs = {k: v.to(run.backbone.device) for k, v in encoded.items()}   # [need, timing_length]
    sync = torch.cuda.synchronize if run.backbone.device.type == "cuda" else (lambda: None)
    rows = []
    with torch.inference_mode():
        for done, size in enumerate(b.timing_batch_sizes):
            run.tell("contraction vs reconstruction", done, len(b.timing_batch_sizes))
            batch = {k: v[:size] for k, v in inputs.items()}
            hidden_c, logits_c = forward(contract, batch)
            hidden_r, logits_r = forward(rebuild, batch)
            diff = float((logits_c - logits_r).abs().max())
            hidden_diff = float((hidden_c - hidden_r).abs().max())
            if not diff <= TOLERANCE:
                raise ReportError(f"contraction and reconstruction outputs differ by {diff:.2e} "
                                  f"(> {TOLERANCE:g}) at batch size {size}")

            def timed(model):
                return lambda: (forward(model, batch), sync())
            contract_ms = median_ms(timed(contract), b.timing_repeats)
            rebuild_ms = median_ms(timed(rebuild), b.timing_repeats)
            rows.append({"batch_size": size, "contract_ms": round(contract_ms, 3),
                         "reconstruct_ms": round(rebuild_ms, 3),
                         "contract_ms_per_input": round(contract_ms / size, 3),
                         "reconstruct_ms_per_input": round(rebuild_ms / size, 3),
                         "ratio": round(rebuild_ms / contract_ms, 3), "max_abs_diff": diff,
                         "hidden_max_abs_diff": hidden_diff,
                         "hidden_max_abs": float(hidden_c.abs().max())})
    faster = [r["ratio"] > 1 for r in rows]
    max_diff = max(r["max_abs_diff"] for r in rows)
    return {
        "task": task, "tokens_per_input": b.timing_length, "repeats": b.timing_repeats,
        "tolerance": TOLERANCE, "max_abs_diff": max_diff, "rows": rows,
        "claim": {"paper": "contracting the TT cores with the input is faster at inference than "
                           "reconstructing ΔW from the cores on every call",
                  "verdict": verdict(all(faster), any(faster)),
                  "evidence": (f"reconstruction / contraction time ratio {min(r['ratio'] for r in rows):.2f}"
                               f"–{max(r['ratio'] for r in rows):.2f} over batch sizes "
                               f"{b.timing_batch_sizes[0]}–{b.timing_batch_sizes[-1]}; outputs (logits) "
                               f"equal to {max_diff:.1e} (tolerance {TOLERANCE:g})")},
        "differences": setup_differences(run)[:1] + [
            f"Each input is {b.timing_length} tokens (padded/truncated); median of {b.timing_repeats} "
            f"timed forward passes after one untimed pass; both models hold the same trained cores "
            f"(the {task} expert), ΔW of the q and v projections of every layer. Float32: the last "
            "hidden states differ by rounding (ΔW added to W before the product instead of after), "
            "about 1e-5 of their largest value; the outputs (logits) are checked against the "
            "tolerance."],
    }
