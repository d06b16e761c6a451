"""TT-LoRA MoE: tensor-train LoRA experts on a frozen transformer behind a sparse router.

Layers, lowest first (README "Layout"): ``errors``, ``tt``, ``files``, ``runtime``, ``tasks``;
``base``, ``adapters``; ``experts``, ``routing``, ``budget``; ``store``, ``baselines``; ``moe``;
``services``; ``report``; ``cli``, ``bench``.

Every engine package re-exports its names lazily (:func:`lazy_exports`): importing one module
of a package imports that module only, so ``python -m ttmoe_core --help`` never loads torch.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__version__ = "0.1.0"


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """(a module ``__getattr__`` (PEP 562) for ``package`` that imports each name from its module
    on first use and keeps it on the package, the sorted names: the package's ``__all__``).
    ``exports``: relative module (``".names"``, ``"..errors"``) -> its names as in an import list
    (``"check_name, rule as sessions_rule"``)."""
    where: dict[str, tuple[str, str]] = {}
    for module, names in exports.items():
        for entry in names.split(","):
            name, _, alias = entry.strip().partition(" as ")
            where[alias or name] = (module, name)

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attr = where[name]
        value = getattr(importlib.import_module(module, package), attr)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__, sorted(where)
