"""The singular values of an expert's weight updates ``α·ΔW``, layer by layer, from its stored
tensors (TT cores or LoRA A/B): what the Experts page plots. ΔW is never formed."""

from __future__ import annotations

import torch

from .. import tt
from ..adapters.inject import layout_for


def delta_w_spectra(tensors: dict[str, torch.Tensor], method: str, alpha: float, rank: int,
                    tt_layout: dict[str, dict] | None = None) -> dict[str, torch.Tensor]:
    """Singular values of ``α·ΔW`` per adapted layer of one expert (``tt.delta_w_singular_values``),
    by layer name in layer order.

    ``method`` "tt-lora": the cores ``"<layer>.cores.<k>"`` with the factors of the layer's target
    in ``tt_layout``. "lora" (PEFT keys ``….lora_A.weight`` [r, d_in], ``….lora_B.weight``
    [d_out, r]): ``(α / r) · B @ A``, a chain of two cores. ValueError for other methods.
    """
    def layer_order(name: str) -> tuple:
        return next((int(part) for part in name.split(".") if part.isdigit()), -1), name

    out = {}
    if method == "tt-lora":
        for layer in sorted({key.rsplit(".cores.", 1)[0] for key in tensors if ".cores." in key},
                            key=layer_order):
            layout = layout_for(tt_layout, layer)
            if layout is not None:
                count = sum(1 for key in tensors if key.startswith(layer + ".cores."))
                out[layer] = tt.delta_w_singular_values(
                    [tensors[f"{layer}.cores.{k}"] for k in range(count)],
                    layout["in_factors"], layout["out_factors"], alpha)
    elif method == "lora":
        for key in sorted((k for k in tensors if k.endswith(".lora_A.weight")), key=layer_order):
            layer = key.removesuffix(".lora_A.weight")
            b_key = layer + ".lora_B.weight"
            if b_key in tensors:
                a, b = tensors[key], tensors[b_key]                     # [r, d_in], [d_out, r]
                cores = [a.T.reshape(1, a.shape[1], a.shape[0]),        # [1, d_in, r]
                         b.T.reshape(b.shape[1], b.shape[0], 1)]        # [r, d_out, 1]
                out[layer.removeprefix("base_model.model.")] = tt.delta_w_singular_values(
                    cores, [a.shape[1]], [b.shape[0]], alpha / rank)
    else:
        raise ValueError(f"no ΔW for {method!r} experts (TT-LoRA and LoRA only)")
    return out
