"""The tensors an expert or a router must hold, derived from its (schema-valid) JSON config and
checked against a weights file's header (``tensorfile.Header``) before any tensor data is read:
a config that asks for a huge rank, hidden size or MLP is refused without allocating.

Expert tensors are named ``"<module><separator><suffix>"``: TT cores ``….cores.<k>``
``[r_{k-1}, s_k, r_k]``, PEFT LoRA ``….lora_A.weight`` ``[r, d_in]`` and ``….lora_B.weight``
``[d_out, r]``; the task head ``head.weight`` ``[labels, hidden]`` and ``head.bias`` ``[labels]``.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping

import torch

from .. import tt
from ..adapters.inject import layout_key
from ..files.safefs import StoreError
from ..files.tensorfile import Header
from ..routing import RouterError
from ..routing.registry import build

ADAPTER_TENSORS = {"tt-lora": ".cores.", "lora": ".lora_"}
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


def check_expert(header: Header, method: str, rank: int, targets: list[str] | None, layout: object,
                 label_names: list[str], hidden_size: int, num_layers: int, what: str) -> None:
    """The head fits the labels and the base model; the adapter tensors fit the method, rank,
    targets and TT layout, in every layer of the base model. StoreError names the first misfit."""
    shapes = {key: shape for key, (_, shape) in header.items()}
    not_float = sorted(key for key, (dtype, _) in header.items() if dtype not in FLOAT_DTYPES)
    if not_float:
        raise StoreError(f"{what}: tensor {not_float[0]} is not floating point")
    num_labels = max(1, len(label_names))
    head = {"head.weight": [num_labels, hidden_size], "head.bias": [num_labels]}
    got = {key: shape for key, shape in shapes.items() if key.startswith("head.")}
    if got != head:
        raise StoreError(f"{what}: head.weight must have shape [{num_labels}, {hidden_size}] and "
                         f"head.bias [{num_labels}] for labels {label_names}, the file has {got}")
    if method not in ADAPTER_TENSORS:
        return
    expected = _expected_suffixes(method, rank, targets, layout, what)
    modules = _check_modules(shapes, method, expected, num_layers, what)
    for module, target in modules.items():
        want = {suffix: shape for suffix, shape in expected[target].items()}
        have = {suffix: shapes[f"{module}{ADAPTER_TENSORS[method]}{suffix}"] for suffix in want}
        if method == "lora":
            a, b = have["A.weight"], have["B.weight"]
            fits = len(a) == 2 and len(b) == 2 and a[0] == rank and b[1] == rank
            if not fits:
                raise StoreError(f"{what}: LoRA matrices of {module} have shapes A {a}, B {b}; "
                                 f"rank {rank} needs A [{rank}, d_in] and B [d_out, {rank}]")
        elif have != want:
            raise StoreError(f"{what}: cores of {module} have shapes {list(have.values())}, "
                             f"expected {list(want.values())}")


def _expected_suffixes(method: str, rank: int, targets: list[str] | None, layout: object,
                       what: str) -> dict[str, dict]:
    """{target: {tensor suffix: expected shape (TT cores) or None}} from the config and TT layout."""
    targets = list(targets or [])
    if method == "lora":
        return {target: {"A.weight": None, "B.weight": None} for target in targets}
    layout = layout if isinstance(layout, dict) else {}
    # keys: a target ("query"), or a role in the layer ("intermediate.dense") where a target's
    # modules differ in size (``adapters.layout_key``); either way its last component is the target
    if {key.rpartition(".")[2] for key in layout} != set(targets):
        raise StoreError(f"{what}: TT layout covers {sorted(layout)}, targets are {targets}")
    expected = {}
    for target, info in layout.items():
        shapes = [list(s) for s in tt.core_shapes(info["in_factors"], info["out_factors"], rank)]
        if shapes != [list(s) for s in info.get("core_shapes", shapes)]:
            raise StoreError(f"{what}: recorded core shapes of {target} disagree with its factors")
        expected[target] = {str(k): shape for k, shape in enumerate(shapes)}
    return expected


def _layer_index(module: str) -> int | None:
    """The layer number in a module path (``encoder.layer.3.attention.self.query`` -> 3)."""
    match = re.search(r"(?:^|\.)(\d+)\.", module)
    return int(match.group(1)) if match else None


def _check_modules(shapes: Mapping[str, list[int]], method: str, expected: Mapping[str, Mapping],
                   num_layers: int, what: str) -> dict[str, str]:
    """Every adapter tensor belongs to a target module and every target module of every layer has
    all its tensors; returns {module: target}. StoreError names what is missing or extra."""
    separator = ADAPTER_TENSORS[method]
    found: dict[str, set[str]] = {}
    for key in shapes:
        if key.startswith("head."):
            continue
        module, sep, suffix = key.rpartition(separator)
        if not sep or layout_key(expected, module) is None:
            raise StoreError(f"{what}: tensor {key} is not an adapter tensor of the targets "
                             f"{sorted(expected)}")
        found.setdefault(module, set()).add(suffix)
    modules = {module: layout_key(expected, module) for module in found}
    for target, suffixes in expected.items():
        mine = [module for module, t in modules.items() if t == target]
        if not mine:
            raise StoreError(f"{what}: no adapter tensors for target {target!r}")
        for module in mine:
            missing, extra = set(suffixes) - found[module], found[module] - set(suffixes)
            if missing or extra:
                raise StoreError(f"{what}: {module} has tensors {sorted(found[module])}, "
                                 f"expected {sorted(suffixes)}")
        layers = Counter(_layer_index(module) for module in mine)
        if None in layers:      # module paths without a layer number: nothing more to check
            continue
        absent = sorted(set(range(num_layers)) - set(layers))
        if absent:
            raise StoreError(f"{what}: no adapter tensors for target {target!r} in layer(s) "
                             f"{absent[:20]} of the base model's {num_layers}")
        beyond = sorted(i for i in layers if i >= num_layers)
        if beyond:
            raise StoreError(f"{what}: adapter tensors for target {target!r} in layer(s) "
                             f"{beyond[:20]}, the base model has {num_layers}")
        if len(set(layers.values())) > 1:
            raise StoreError(f"{what}: the layers hold different numbers of {target!r} modules")
    return modules


def router_shapes(config, num_experts: int, hidden_size: int, num_layers: int) -> dict[str, list[int]]:
    """{tensor name: shape} of the state of the router ``config`` (a ``RouterConfig``)
    would build, from a copy built on the meta device: no memory is allocated."""

    try:
        with torch.device("meta"):
            module = build(config, num_experts, hidden_size, num_layers, torch.Generator())
    except (RouterError, TypeError, ValueError) as exc:
        raise StoreError(str(exc)) from None
    return {key: list(value.shape) for key, value in module.state_dict().items()}


def check_router(header: Header, expected: Mapping[str, list[int]], what: str) -> None:
    """The router file holds exactly the tensors, of the shapes, that its config builds, all
    floating point."""
    shapes = {key: shape for key, (_, shape) in header.items()}
    not_float = sorted(key for key, (dtype, _) in header.items() if dtype not in FLOAT_DTYPES)
    if not_float:
        raise StoreError(f"{what}: tensor {not_float[0]} is not floating point")
    if shapes != dict(expected):
        wrong = sorted(set(shapes) ^ set(expected)) or sorted(
            k for k in shapes if shapes[k] != expected[k])
        raise StoreError(f"{what}: its tensors do not fit its config (first misfit: {wrong[0]}: "
                         f"file {shapes.get(wrong[0])}, config {expected.get(wrong[0])})")
