"""Parameter and memory budget of parameter-efficient fine-tuning methods on any model config.

Counts are exact, computed from the model's dimensions alone (no weights are loaded):

- ``tt-lora``: per target module and layer ``Σ_k r_{k-1} s_k r_k`` over the TT cores
  (shapes from ``tt.split_shape`` / ``tt.default_factors``, counts from ``tt.param_count``).
- ``lora``: ``r · (d_in + d_out)`` per target module and layer (``lora_A`` + ``lora_B``, no bias).
- ``adapter``: bottleneck adapters as the ``adapters`` library builds them, ``b = h // reduction``:
  down ``h·b + b`` and up ``b·h + h``; Pfeiffer (``seq_bn``) puts one after the FFN of every layer,
  Houlsby (``double_seq_bn``) one after attention and one after the FFN.
- ``adapterfusion``: ``num_tasks`` Pfeiffer adapters plus one fusion block per layer as the
  ``adapters`` library's default ("dynamic") fusion config allocates it: query and key
  ``Linear(h, h)`` with bias, value ``Linear(h, h)`` without bias: ``3·h² + 2·h``.
- ``full``: every base parameter.

Base parameter counts and presets come from ``model_dims``. Memory is weight storage of the trainable parameters only
(no gradients or optimizer state), in bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType

from ttmoe_core import tt

# the base model's dimensions, re-exported: the calculator's callers (pages, tests) read them here
from ttmoe_core.base.dims import (  # noqa: F401
    _PRESET_CONFIGS,
    BERT_LIKE,
    DISTILBERT,
    LLAMA_LIKE,
    PRESETS,
    SUPPORTED_MODEL_TYPES,
    ModelDims,
    dims_from_config,
    resolve_model,
)

METHODS = ("tt-lora", "lora", "adapter", "adapterfusion", "full")
ADAPTER_KINDS = ("pfeiffer", "houlsby")
DEFAULT_TT_RANK = 5
DEFAULT_LORA_RANK = 16
# The paper's scaling factors: TT-LoRA α = 16, LoRA baseline α = 8. They do not change counts.
DEFAULT_ALPHA = MappingProxyType({"tt-lora": 16.0, "lora": 8.0})


# ----------------------------------------------------------------------------- budget


@dataclass
class ModuleBudget:
    """Trainable parameters added at one place of every layer (``total = params_per_layer · layers``).

    For adapters ``target`` names the placement and ``(d_in, d_out)`` is ``(h, bottleneck)``.
    """

    target: str
    d_in: int
    d_out: int
    params_per_layer: int
    num_layers: int
    total: int
    tt_shape: list[int] | None = None
    core_shapes: list[tuple[int, int, int]] | None = None


@dataclass
class BudgetReport:
    """Trainable parameters of one method on one model, with its LoRA reference.

    ``bytes_*``: storage of the trainable weights only. ``lora_params``: LoRA at the reference
    rank on the same targets; ``ratio_to_lora = trainable_params / lora_params``.
    """

    model: str
    method: str
    rank: int | None
    alpha: float | None
    targets: list[str]
    modules: list[ModuleBudget]
    trainable_params: int
    base_params: int
    percent_of_base: float
    bytes_fp32: int
    bytes_bf16: int
    lora_params: int
    ratio_to_lora: float
    lora_rank: int = DEFAULT_LORA_RANK
    adapter_kind: str | None = None
    num_tasks: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """Short human name, e.g. ``TT-LoRA r5`` or ``Adapter (Houlsby)``: for chart axes."""
        if self.method == "tt-lora":
            return f"TT-LoRA r{self.rank}"
        if self.method == "lora":
            return f"LoRA r{self.rank}"
        if self.method == "adapter":
            return f"Adapter ({self.adapter_kind.capitalize()})"
        if self.method == "adapterfusion":
            return f"AdapterFusion ({self.num_tasks} task{'s' if self.num_tasks != 1 else ''})"
        return "Full fine-tuning"

    def to_dict(self) -> dict:
        """JSON-serialisable dict of every field plus ``label``."""
        data = asdict(self)
        for module in data["modules"]:
            if module["core_shapes"] is not None:
                module["core_shapes"] = [list(shape) for shape in module["core_shapes"]]
        data["label"] = self.label
        return data

    def format_table(self) -> str:
        """Plain-text table for the CLI."""
        header = (f"model {self.model} ({self.base_params:,} base params) | method {self.label}"
                  + (f" | alpha {self.alpha:g}" if self.alpha is not None else ""))
        lines = [header]
        if self.modules:
            rows = [("module", "d_in x d_out", "TT shape", "per layer", "layers", "total")]
            for mod in self.modules:
                shape = "-"
                if mod.tt_shape:
                    in_factors, out_factors = tt.split_shape(mod.tt_shape, mod.d_in, mod.d_out)
                    shape = f"{','.join(map(str, in_factors))} | {','.join(map(str, out_factors))}"
                rows.append((mod.target, f"{mod.d_in} x {mod.d_out}", shape,
                             f"{mod.params_per_layer:,}", str(mod.num_layers), f"{mod.total:,}"))
            widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
            for i, row in enumerate(rows):
                lines.append("  ".join(cell.ljust(w) if col < 3 else cell.rjust(w)
                                       for col, (cell, w) in enumerate(zip(row, widths))))
                if i == 0:
                    lines.append("  ".join("-" * w for w in widths))
        lines.append(f"trainable {self.trainable_params:,} ({self.percent_of_base:.4g}% of base)"
                     f" | fp32 {format_bytes(self.bytes_fp32)} | bf16 {format_bytes(self.bytes_bf16)}")
        lines.append(f"LoRA r{self.lora_rank} on {','.join(self.targets)}: {self.lora_params:,}"
                     f" | ratio to LoRA {self.ratio_to_lora:.4g}")
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


def format_bytes(num_bytes: int) -> str:
    """``135680`` -> ``"132.5 KiB"`` (binary units)."""
    if num_bytes < 1024:
        return f"{num_bytes} B"
    exponent = min(3, (num_bytes.bit_length() - 1) // 10)
    return f"{num_bytes / 1024 ** exponent:.1f} {('KiB', 'MiB', 'GiB')[exponent - 1]}"


def _as_int_list(value: str | Sequence[int]) -> list[int]:
    """``"16,8,4"`` or ``[16, 8, 4]`` -> ``[16, 8, 4]``."""
    if isinstance(value, str):
        return tt.parse_shape(value)
    return [int(v) for v in value]


def _resolve_targets(dims: ModelDims, targets: Sequence[str] | str | None) -> list[str]:
    if targets is None:
        return dims.default_targets()
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    targets = list(targets)
    if not targets:
        raise ValueError(f"no target modules given: choose from {', '.join(dims.valid_targets)}")
    duplicates = sorted({t for t in targets if targets.count(t) > 1})
    if duplicates:
        raise ValueError(f"target module(s) listed twice: {', '.join(duplicates)}")
    return dims.expand_targets(targets)  # "dense" -> BERT's three per-block layers + the pooler


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _tt_modules(dims: ModelDims, targets: list[str], rank: int,
                shapes: Mapping[str, str | Sequence[int]]) -> list[ModuleBudget]:
    unknown = [t for t in shapes if t not in targets]
    if unknown:
        raise ValueError(f"TT shapes given for {', '.join(unknown)}, which are not among the "
                         f"targets {', '.join(targets)}: add them to targets or drop the shapes")
    modules = []
    for target in targets:
        d_in, d_out = dims.module_shape(target)
        if target in shapes:
            try:
                in_factors, out_factors = tt.split_shape(_as_int_list(shapes[target]), d_in, d_out)
            except ValueError as err:
                raise ValueError(f"{target}: {err}") from err
        else:
            in_factors, out_factors = tt.default_factors(d_in, d_out)
        cores = tt.core_shapes(in_factors, out_factors, rank)
        per_layer, layers = tt.param_count(cores), dims.layers_of(target)
        modules.append(ModuleBudget(target, d_in, d_out, per_layer, layers,
                                    per_layer * layers, in_factors + out_factors,
                                    [tuple(c) for c in cores]))
    return modules


def _lora_modules(dims: ModelDims, targets: list[str], rank: int) -> list[ModuleBudget]:
    modules = []
    for target in targets:
        d_in, d_out = dims.module_shape(target)
        per_layer, layers = rank * (d_in + d_out), dims.layers_of(target)
        modules.append(ModuleBudget(target, d_in, d_out, per_layer, layers, per_layer * layers))
    return modules


def _adapter_module(dims: ModelDims, placement: str, reduction: int, copies: int = 1) -> ModuleBudget:
    """``copies`` bottleneck adapters (``h -> b -> h``, with biases) at one place of each layer."""
    h = dims.hidden_size
    bottleneck = max(1, h // reduction)  # as the adapters library: int(h // reduction), at least 1
    per_layer = copies * ((h * bottleneck + bottleneck) + (bottleneck * h + h))
    return ModuleBudget(placement, h, bottleneck, per_layer, dims.num_layers,
                        per_layer * dims.num_layers)


def _fusion_module(dims: ModelDims) -> ModuleBudget:
    """Dynamic AdapterFusion block: query, key ``Linear(h, h)`` + bias, value without bias."""
    h = dims.hidden_size
    per_layer = 2 * (h * h + h) + h * h
    return ModuleBudget("fusion", h, h, per_layer, dims.num_layers, per_layer * dims.num_layers)


def compute_budget(model: str | Path | Mapping | ModelDims, method: str = "tt-lora", *,
                   rank: int | None = None, targets: Sequence[str] | str | None = None,
                   shapes: Mapping[str, str | Sequence[int]] | None = None,
                   lora_rank: int = DEFAULT_LORA_RANK, adapter_reduction: int = 16,
                   adapter_kind: str = "pfeiffer", num_tasks: int = 1,
                   alpha: float | None = None) -> BudgetReport:
    """Trainable parameters and weight memory of ``method`` on ``model``.

    ``rank``: TT rank (default 5) or LoRA rank (default 16). ``shapes``: flat TT shape per target
    (input factors then output factors); missing targets use ``tt.default_factors``.
    ``alpha`` is only recorded (paper defaults: 16 for TT-LoRA, 8 for LoRA).
    """
    dims = resolve_model(model)
    method_key = method.lower().replace("_", "-")
    if method_key not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose from {', '.join(METHODS)}")
    _check_positive("lora_rank", lora_rank)
    resolved_targets = _resolve_targets(dims, targets)
    notes: list[str] = []
    used_rank: int | None = None
    kind: str | None = None
    tasks: int | None = None

    if method_key in ("tt-lora", "lora"):
        used_rank = rank if rank is not None else (
            DEFAULT_TT_RANK if method_key == "tt-lora" else DEFAULT_LORA_RANK)
        _check_positive("rank", used_rank)
    elif rank is not None:
        notes.append(f"rank is not used by {method_key}")
    if shapes and method_key != "tt-lora":
        notes.append(f"TT shapes are not used by {method_key}")

    if method_key == "tt-lora":
        modules = _tt_modules(dims, resolved_targets, used_rank, shapes or {})
    elif method_key == "lora":
        modules = _lora_modules(dims, resolved_targets, used_rank)
    elif method_key in ("adapter", "adapterfusion"):
        _check_positive("adapter_reduction", adapter_reduction)
        kind = adapter_kind.lower() if method_key == "adapter" else "pfeiffer"
        if kind not in ADAPTER_KINDS:
            raise ValueError(f"unknown adapter_kind {adapter_kind!r}: choose from "
                             f"{', '.join(ADAPTER_KINDS)}")
        notes.append("adapters sit in every layer regardless of targets; targets only set the "
                     "LoRA reference")
        if method_key == "adapter":
            modules = [_adapter_module(dims, "adapter_ffn", adapter_reduction)]
            if kind == "houlsby":
                modules.insert(0, _adapter_module(dims, "adapter_attention", adapter_reduction))
        else:
            _check_positive("num_tasks", num_tasks)
            tasks = num_tasks
            modules = [_adapter_module(dims, "adapter_ffn", adapter_reduction, copies=num_tasks),
                       _fusion_module(dims)]
            notes.append(f"{num_tasks} Pfeiffer adapter(s) plus the fusion layers; the fusion "
                         "stage itself trains only the fusion layers")
    else:
        modules = []
        notes.append("all base parameters are trainable; targets only set the LoRA reference")

    trainable = dims.total_params if method_key == "full" else sum(m.total for m in modules)
    lora_params = sum(m.total for m in _lora_modules(dims, resolved_targets, lora_rank))
    if alpha is None and method_key in DEFAULT_ALPHA:
        alpha = DEFAULT_ALPHA[method_key]
    return BudgetReport(
        model=dims.name, method=method_key, rank=used_rank,
        alpha=float(alpha) if alpha is not None else None, targets=resolved_targets,
        modules=modules, trainable_params=trainable, base_params=dims.total_params,
        percent_of_base=100.0 * trainable / dims.total_params,
        bytes_fp32=4 * trainable, bytes_bf16=2 * trainable, lora_params=lora_params,
        ratio_to_lora=trainable / lora_params, lora_rank=lora_rank, adapter_kind=kind,
        num_tasks=tasks, notes=notes)


def compare_methods(model: str | Path | Mapping | ModelDims, *, tt_rank: int = DEFAULT_TT_RANK,
                    lora_rank: int = DEFAULT_LORA_RANK, targets: Sequence[str] | str | None = None,
                    shapes: Mapping[str, str | Sequence[int]] | None = None,
                    adapter_reduction: int = 16, num_tasks: int = 1) -> list[BudgetReport]:
    """TT-LoRA, LoRA, Pfeiffer and Houlsby adapters, AdapterFusion and full fine-tuning, in order."""
    common = dict(targets=targets, lora_rank=lora_rank, adapter_reduction=adapter_reduction)
    return [
        compute_budget(model, "tt-lora", rank=tt_rank, shapes=shapes, **common),
        compute_budget(model, "lora", rank=lora_rank, **common),
        compute_budget(model, "adapter", adapter_kind="pfeiffer", **common),
        compute_budget(model, "adapter", adapter_kind="houlsby", **common),
        compute_budget(model, "adapterfusion", num_tasks=num_tasks, **common),
        compute_budget(model, "full", **common),
    ]


PAPER_PRESET: dict = {
    "model": "llama-3.2-1b",
    "method": "tt-lora",
    "rank": 5,
    "targets": ["q_proj", "v_proj"],
    "shapes": {"q_proj": [16, 8, 4, 4, 4, 4, 8, 16], "v_proj": [16, 16, 4, 2, 2, 16, 16]},
}
"""The paper's reference call (LLaMA-3.2-1B, rank 5, q/v): ``compute_budget(**PAPER_PRESET)``."""
