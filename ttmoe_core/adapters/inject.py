"""Putting adapters into a model: target modules, TT shapes per layout key, injection (TT-LoRA,
gathered, PEFT LoRA, bottleneck), freezing lower layers, reading and loading the cores.

Injection replaces target submodules with wrappers (as PEFT does); no ``forward`` is rebound.
The LoRA baseline is PEFT's own ``LoraConfig`` / ``get_peft_model``. Module names map to the
keys of an expert's TT layout here (``module_role``, ``layout_key``, ``layout_for``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .. import tt
from ..errors import ConfigError
from ..runtime.logs import without_log_line
from .layer import GatheredTTLinear, TTLoRALinear


def layer_index(name: str) -> int | None:
    """The layer number in a qualified module name (``encoder.layer.3.attention.self.query`` -> 3;
    None when the name holds no number)."""
    return next((int(part) for part in name.split(".") if part.isdigit()), None)


def module_role(name: str) -> str:
    """A module's place within its layer: the qualified name after the layer number
    (``encoder.layer.3.intermediate.dense`` -> ``intermediate.dense``; the whole name when it
    holds no number)."""
    parts = name.split(".")
    first = next((i for i, part in enumerate(parts) if part.isdigit()), None)
    return name if first is None or first == len(parts) - 1 else ".".join(parts[first + 1:])


def layout_key(layout: Mapping[str, object] | None, name: str) -> str | None:
    """The key of module ``name`` in an expert's TT layout (or its config's shapes): its role in
    the layer (``intermediate.dense``) where a target's modules differ in size, else the target
    (``query``, the last name component; every expert before per-size shapes). None: absent."""
    layout = layout or {}
    role, target = module_role(name), name.rpartition(".")[2]
    return role if role in layout else target if target in layout else None


def layout_for(layout: Mapping[str, dict] | None, name: str) -> dict | None:
    """The in/out factors of module ``name`` in an expert's TT layout (see ``layout_key``)."""
    key = layout_key(layout, name)
    return None if key is None else layout[key]


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
            role, size = module_role(name), (module.in_features, module.out_features)
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
        m, n = tt.split_shape(shapes[layout_key(shapes, name)], base.in_features,
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
    try:
        # optional: PEFT (the baselines extra), loaded on first use
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("the LoRA method needs PEFT: pip install -e '.[baselines]'") from None

    find_targets(model, targets)  # same clear error as TT-LoRA when nothing matches
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=list(targets), bias="none")
    return get_peft_model(model, config)


def inject_bottleneck(model: nn.Module, name: str, *, reduction: int = 16) -> nn.Module:
    """The bottleneck-adapter baseline (Pfeiffer ``seq_bn``) through the ``adapters`` library.

    Adds and activates adapter ``name``; only its weights are trainable. (The library wires its
    layers into the model itself; we do not patch anything.)
    """
    try:
        # optional: the adapters library (the baselines extra), loaded on first use
        import adapters as adapters_lib
    except ImportError:
        raise ConfigError("bottleneck adapters need the adapters library: pip install -e "
                          "'.[baselines]'") from None

    adapters_lib.init(model)
    model.add_adapter(name, config=adapters_lib.SeqBnConfig(reduction_factor=reduction))
    with without_log_line("adapters.model_mixin", "none are activated"):
        model.train_adapter(name)           # resets its layers before it activates the adapter:
    model.set_active_adapters(name)         # the library warns, wrongly here, that none is active
    return model
