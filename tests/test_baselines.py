"""Plan checks of ttmoe_core.baselines (its behaviour is tested with the report's experiments in
test_report.py): it trains through the public loop of ``experts``."""

from __future__ import annotations

import ast
import inspect

from ttmoe_core import baselines


def test_baselines_uses_only_public_names_of_experts():
    tree = ast.parse(inspect.getsource(baselines))
    private = sorted({node.attr for node in ast.walk(tree)
                      if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                      and node.value.id == "experts" and node.attr.startswith("_")})
    assert private == []
    calls = {node.func.attr for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
    assert "fit" in calls                      # the fusion stage runs experts.fit
    assert "AdamW" not in calls                # ... and has no loop of its own
