"""Adapter modules: a frozen ``nn.Linear`` with a bank of E experts' TT-LoRA cores, and injection.

``TTLoRALinear`` computes ``y = W x + b + α · TT_e(x)`` where ``e`` is the expert of x's row.
Which expert each row uses is never module state: it comes from the caller through the
context variable set by ``use_experts`` (each thread/async task has its own context, so one
shared model serves concurrent requests correctly). With a single expert and no selection the
module behaves like a plain TT-LoRA layer (training). Rows with expert index -1 get no update
(the frozen base model, used by routers that read base representations).

``GatheredTTLinear`` is the mixture's layer: it holds no expert weights; each row's update comes
with the call as the merged halves of its expert's chain (``use_row_halves``), gathered from an
``pool.ExpertPool``, so the number of experts never shows in the layer.

Injection replaces target submodules with wrappers (as PEFT does); no ``forward`` is rebound.
The LoRA baseline is PEFT's own ``LoraConfig`` / ``get_peft_model``.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from .. import tt

# Per-row expert index [B] (long) for the forward running in this context; None = "the only one".
_EXPERT_INDEX: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar(
    "ttmoe_expert_index", default=None)


@contextlib.contextmanager
def use_experts(expert_idx: torch.Tensor | None) -> Iterator[None]:
    """Within the block, row b of every TT-LoRA layer uses expert ``expert_idx[b]`` (-1: none)."""
    token = _EXPERT_INDEX.set(expert_idx)
    try:
        yield
    finally:
        _EXPERT_INDEX.reset(token)


def current_expert_index() -> torch.Tensor | None:
    """The per-row expert index of the running forward, or None."""
    return _EXPERT_INDEX.get()


# Per-row merged halves of the running forward, by qualified module name: A [B, d_in, R] and
# B [B, R, d_out] (row b: its expert's update is x_b @ A[b] @ B[b]); None: no update anywhere.
RowHalves = Mapping[str, tuple[torch.Tensor, torch.Tensor]]
_ROW_HALVES: contextvars.ContextVar[RowHalves | None] = contextvars.ContextVar(
    "ttmoe_row_halves", default=None)


@contextlib.contextmanager
def use_row_halves(halves: RowHalves | None) -> Iterator[None]:
    """Within the block, each ``GatheredTTLinear`` named in ``halves`` adds its rows' updates;
    the others (and all of them with None) are the frozen layers."""
    token = _ROW_HALVES.set(halves)
    try:
        yield
    finally:
        _ROW_HALVES.reset(token)


@contextlib.contextmanager
def adapters_off(rows: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Within the block every adapter layer of either kind is its frozen base (``rows``: batch size)."""
    with use_experts(torch.full((rows,), -1, dtype=torch.long, device=device)), use_row_halves(None):
        yield


def layer_index(name: str) -> int | None:
    """The layer number in a qualified module name (``encoder.layer.3.attention.self.query`` -> 3;
    None when the name holds no number)."""
    return next((int(part) for part in name.split(".") if part.isdigit()), None)


class TTLoRALinear(nn.Module):
    """Frozen linear layer + E experts' TT cores stacked along a leading axis.

    cores[k]: [E, r_{k-1}, s_k, r_k]. Input x: [..., d_in] (for per-row experts: [B, T, d_in]).
    """

    def __init__(self, base: nn.Linear, in_factors: Sequence[int], out_factors: Sequence[int],
                 rank: int | Sequence[int], alpha: float, num_experts: int = 1,
                 init: str = "kaiming", generator: torch.Generator | None = None):
        super().__init__()
        if math.prod(in_factors) != base.in_features or math.prod(out_factors) != base.out_features:
            raise ValueError(
                f"TT factors {list(in_factors)} | {list(out_factors)} multiply to "
                f"{math.prod(in_factors)} x {math.prod(out_factors)}, the layer is "
                f"{base.in_features} x {base.out_features}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.in_factors = [int(m) for m in in_factors]
        self.out_factors = [int(n) for n in out_factors]
        self.alpha = float(alpha)
        self.core_shapes = tt.core_shapes(self.in_factors, self.out_factors, rank)
        weight = base.weight
        chains = [tt.init_cores(self.core_shapes, init, generator=generator)
                  for _ in range(num_experts)]
        banks = [torch.stack([chain[k] for chain in chains]) for k in range(len(self.core_shapes))]
        # cores follow a float32/float64 base; a half-precision base keeps float32 cores (the
        # forward then runs under autocast: ``precision``)
        dtype = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
        self.cores = nn.ParameterList(
            nn.Parameter(bank.to(device=weight.device, dtype=dtype)) for bank in banks)

    @property
    def num_experts(self) -> int:
        return self.cores[0].shape[0]

    def delta(self, x: torch.Tensor, expert_idx: torch.Tensor | None) -> torch.Tensor:
        """``α · TT(x)`` for every row: [..., d_in] -> [..., d_out]."""
        if expert_idx is None:
            if self.num_experts != 1:
                raise RuntimeError(
                    f"this layer holds {self.num_experts} experts: select them per row with "
                    "adapters.use_experts(expert_idx)")
            return self.alpha * tt.tt_contract(x, [c[0] for c in self.cores],
                                               self.in_factors, self.out_factors)
        if expert_idx.shape[0] != x.shape[0]:
            raise ValueError(f"expert_idx has {expert_idx.shape[0]} rows, input has {x.shape[0]}")
        active = expert_idx >= 0
        gathered = [c[expert_idx.clamp(min=0)] for c in self.cores]  # [B, r, s, r'] each
        x3 = x.reshape(x.shape[0], -1, x.shape[-1])
        out = tt.tt_contract_per_row(x3, gathered, self.in_factors, self.out_factors)
        if not bool(active.all()):
            out = out * active.to(out.dtype)[:, None, None]
        return self.alpha * out.reshape(*x.shape[:-1], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expert_idx = current_expert_index()
        if expert_idx is not None and bool((expert_idx < 0).all()):
            return self.base(x)
        return self.base(x) + self.delta(x, expert_idx)

    def delta_weight(self, expert: int = 0) -> torch.Tensor:
        """Dense ``α · ΔW`` [d_out, d_in] of one expert (for checks and plots)."""
        return self.alpha * tt.reconstruct([c[expert] for c in self.cores],
                                           self.in_factors, self.out_factors)


class GatheredTTLinear(nn.Module):
    """Frozen linear layer + the per-row TT-LoRA updates given with the call (``use_row_halves``
    under ``self.name``): ``y_b = W x_b + b + (x_b @ A[b]) @ B[b]`` for x [B, T, d_in]. Holds no
    expert weights; without halves for its name it is the frozen layer."""

    def __init__(self, base: nn.Linear, name: str):
        super().__init__()
        self.base = base
        self.name = name
        for p in self.base.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        halves = _ROW_HALVES.get()
        pair = None if halves is None else halves.get(self.name)
        if pair is None:
            return out
        left, right = pair                                       # [B, d_in, R], [B, R, d_out]
        if left.shape[0] != x.shape[0]:
            raise ValueError(f"{self.name}: halves for {left.shape[0]} rows, input has {x.shape[0]}")
        x3 = x.reshape(x.shape[0], -1, x.shape[-1])              # [B, T, d_in]
        out3 = out.reshape(x.shape[0], -1, out.shape[-1])        # [B, T, d_out]
        # out3 + (x3 @ A) @ B in one call: no [B, T, d_out] temporary for the update
        return torch.baddbmm(out3, torch.bmm(x3, left), right).reshape(out.shape)


def inject_gathered(model: nn.Module, names: Sequence[str],
                    shapes: Mapping[str, tuple[int, int]]) -> None:
    """Replace the linear layers ``names`` of ``model`` by ``GatheredTTLinear`` wrappers;
    ``shapes[name]`` = (d_in, d_out) each must have (ValueError otherwise)."""
    for name in names:
        try:
            base = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"the model has no module {name!r}") from None
        if not isinstance(base, nn.Linear) or (base.in_features, base.out_features) != tuple(shapes[name]):
            raise ValueError(f"module {name!r} is not a {shapes[name][0]}x{shapes[name][1]} "
                             f"linear layer of the model")
        replace_submodule(model, name, GatheredTTLinear(base, name))


class ReconstructedTTLoRALinear(nn.Module):
    """The paper's slower path: rebuild ``W + α ΔW`` every call, then one dense GEMM.

    Exists only for the contraction-vs-reconstruction comparison; shares the cores of ``layer``.
    """

    def __init__(self, layer: TTLoRALinear):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.layer.base.weight + self.layer.delta_weight(0)
        return nn.functional.linear(x, weight, self.layer.base.bias)


def replace_submodule(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Put ``module`` at the qualified ``name`` of ``model`` (module replacement, never a patched
    forward); returns the module that was there."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, module)
    return old


def find_targets(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Qualified names of ``nn.Linear`` submodules whose last name component is in ``targets``."""
    wanted = set(targets)
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and name.rpartition(".")[2] in wanted]
    if not names:
        linear = sorted({n.rpartition(".")[2] for n, m in model.named_modules()
                         if isinstance(m, nn.Linear)})
        raise ValueError(f"no linear module named {sorted(wanted)} in the model; "
                         f"its linear modules are named {linear}")
    return names


def resolve_factors(d_in: int, d_out: int,
                    shape: Sequence[int] | None) -> tuple[list[int], list[int]]:
    """(input factors, output factors) from a flat shape or, when None, the balanced default."""
    if shape is None:
        return tt.default_factors(d_in, d_out)
    return tt.split_shape(shape, d_in, d_out)


def target_layout_keys(model: nn.Module, targets: Sequence[str]) -> dict[str, tuple[int, int]]:
    """{layout key: (d_in, d_out)} of the target linear layers: the target name (``query``) when
    all its modules have one size, else one key per role in the layer (``dense`` of BERT:
    ``attention.output.dense`` 384->384, ``intermediate.dense`` 384->1536, ``output.dense``
    1536->384), so each size gets its own TT shape. ValueError when one role has two sizes."""
    keys: dict[str, tuple[int, int]] = {}
    for target in targets:
        # plain linear layers, or ones already wrapped by TTLoRALinear (sizes of their base)
        modules = {name: (m.base if isinstance(m, TTLoRALinear) else m)
                   for name, m in model.named_modules()
                   if isinstance(m, (nn.Linear, TTLoRALinear)) and name.rpartition(".")[2] == target}
        if not modules:
            find_targets(model, [target])                      # its ValueError names the choices
        sizes = {(m.in_features, m.out_features) for m in modules.values()}
        if len(sizes) == 1:
            keys[target] = sizes.pop()
            continue
        for name, module in modules.items():
            role, size = tt.module_role(name), (module.in_features, module.out_features)
            if keys.setdefault(role, size) != size:
                raise ValueError(f"modules {role!r} of target {target!r} differ in size across "
                                 "layers: one TT shape cannot fit them")
    return keys


def resolve_shapes(model: nn.Module, targets: Sequence[str],
                   shapes: Mapping[str, Sequence[int]] | None) -> dict[str, list[int]]:
    """A flat TT shape for every layout key of the targets (``target_layout_keys``): the one
    given for that key, else the one given for its target (it must fit), else the balanced
    default of its size. ValueError names a shape that does not fit or names nothing."""
    shapes = dict(shapes or {})
    keys = target_layout_keys(model, targets)
    stray = sorted(set(shapes) - set(keys) - set(targets))
    if stray:
        raise ValueError(f"{', '.join(stray)} is not a target nor a role of one (shapes can be "
                         f"given for: {', '.join(dict.fromkeys([*targets, *keys]))})")
    resolved = {}
    for key, (d_in, d_out) in keys.items():
        given = shapes.get(key, shapes.get(key.rpartition(".")[2]))
        try:
            m, n = resolve_factors(d_in, d_out, given)
        except ValueError as exc:
            raise ValueError(f"{key} ({d_in}x{d_out}): {exc}") from None
        resolved[key] = m + n
    return resolved


def inject_tt_lora(model: nn.Module, targets: Sequence[str], *, rank: int, alpha: float,
                   shapes: Mapping[str, Sequence[int]] | None = None, num_experts: int = 1,
                   init: str = "kaiming", generator: torch.Generator | None = None) -> list[str]:
    """Freeze ``model`` and replace each target linear with a ``TTLoRALinear``; returns their names.

    ``shapes`` maps a layout key (a target name such as "query", or a role such as
    "intermediate.dense" where a target's modules differ in size: ``target_layout_keys``) to its
    flat TT shape; missing ones get the balanced default of their layer's size.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    names = find_targets(model, targets)
    shapes = resolve_shapes(model, targets, shapes)
    for name in names:
        base = model.get_submodule(name)
        m, n = tt.split_shape(shapes[tt.layout_key(shapes, name)], base.in_features,
                              base.out_features)
        replace_submodule(model, name, TTLoRALinear(base, m, n, rank, alpha, num_experts, init, generator))
    return names


@torch.no_grad()
def freeze_below(model: nn.Module, min_layer: int) -> list[str]:
    """Zero and freeze the cores of every TT-LoRA layer in a layer below ``min_layer`` (ΔW = 0
    there for good); returns their names. Backward then stops at layer ``min_layer``."""
    frozen = []
    for name, layer in tt_layers(model).items():
        index = layer_index(name)
        if index is not None and index < min_layer:
            for core in layer.cores:
                core.zero_()
                core.requires_grad_(False)
            frozen.append(name)
    return frozen


def tt_layers(model: nn.Module) -> dict[str, TTLoRALinear]:
    """All TT-LoRA layers of a model by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, TTLoRALinear)}


def tt_layer_shapes(model: nn.Module) -> dict[str, dict]:
    """Per layer: input/output factors and core shapes (what a config records)."""
    return {name: {"in_factors": layer.in_factors, "out_factors": layer.out_factors,
                   "core_shapes": [list(s) for s in layer.core_shapes]}
            for name, layer in tt_layers(model).items()}


def expert_cores(model: nn.Module, expert: int = 0) -> dict[str, torch.Tensor]:
    """Flat tensor dict ``{"<layer>.cores.<k>": [r, s, r']}`` of one expert (detached, CPU)."""
    return {f"{name}.cores.{k}": core[expert].detach().cpu().contiguous()
            for name, layer in tt_layers(model).items() for k, core in enumerate(layer.cores)}


@torch.no_grad()
def load_expert_cores(model: nn.Module, tensors: Mapping[str, torch.Tensor],
                      expert: int = 0) -> None:
    """Copy one expert's cores (as produced by ``expert_cores``) into slot ``expert`` of the bank."""
    layers = tt_layers(model)
    expected = {f"{name}.cores.{k}" for name, layer in layers.items()
                for k in range(len(layer.cores))}
    given = {key for key in tensors if ".cores." in key}
    if expected != given:
        missing, extra = sorted(expected - given), sorted(given - expected)
        raise ValueError(f"TT cores do not match the model's TT-LoRA layers: missing {missing[:4]}"
                         f"{'…' if len(missing) > 4 else ''}, unexpected {extra[:4]}"
                         f"{'…' if len(extra) > 4 else ''}")
    for name, layer in layers.items():
        for k, core in enumerate(layer.cores):
            core[expert].copy_(tensors[f"{name}.cores.{k}"])


def inject_lora(model: nn.Module, targets: Sequence[str], *, rank: int, alpha: float,
                dropout: float = 0.0) -> nn.Module:
    """The LoRA baseline through PEFT; returns the PEFT-wrapped model (base frozen)."""
    from peft import LoraConfig, get_peft_model

    find_targets(model, targets)  # same clear error as TT-LoRA when nothing matches
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=list(targets), bias="none")
    return get_peft_model(model, config)


def inject_bottleneck(model: nn.Module, name: str, *, reduction: int = 16) -> nn.Module:
    """The bottleneck-adapter baseline (Pfeiffer ``seq_bn``) through the ``adapters`` library.

    Adds and activates adapter ``name``; only its weights are trainable. (The library wires its
    layers into the model itself; we do not patch anything.)
    """
    import adapters as adapters_lib

    adapters_lib.init(model)
    model.add_adapter(name, config=adapters_lib.SeqBnConfig(reduction_factor=reduction))
    with without_log_line("adapters.model_mixin", "none are activated"):
        model.train_adapter(name)           # resets its layers before it activates the adapter:
    model.set_active_adapters(name)         # the library warns, wrongly here, that none is active
    return model


@contextlib.contextmanager
def without_log_line(logger: str, text: str) -> Iterator[None]:
    """Drop the records of ``logger`` that contain ``text`` while the block runs (others pass)."""
    def keep(record: logging.LogRecord) -> bool:
        return text not in record.getMessage()

    target = logging.getLogger(logger)
    target.addFilter(keep)
    try:
        yield
    finally:
        target.removeFilter(keep)
