"""Plan checks of ttmoe_core.baselines (its behaviour is tested with the report's experiments in
test_report.py): it trains through the public loop of ``experts``."""

from __future__ import annotations

import ast
import inspect

from ttmoe_core.baselines import fusion as baselines


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


def test_fused_encoder_is_silent_and_fuses_every_adapter(caplog):
    """``train_adapter_fusion`` resets layers before it activates the Fuse block, and the library
    warns "none are activated" meanwhile; ``fused_encoder`` drops that one line: the Fuse block
    is active, only fusion layers train, and the library's log stays open afterwards."""
    import logging

    from tinymodels import tiny_bert, tiny_expert

    bb = tiny_bert()
    made = {task: tiny_expert(bb, task, rank=4, method="adapter") for task in ("sst2", "cola")}
    with caplog.at_level(logging.WARNING, logger="adapters"):
        encoder = baselines.fused_encoder(bb, made)
        assert not [r for r in caplog.records if "none are activated" in r.getMessage()]
        assert str(encoder.active_adapters) == "Fuse[sst2, cola]"
        trainable = [n for n, p in encoder.named_parameters() if p.requires_grad]
        assert trainable and all(".adapter_fusion_layer." in n for n in trainable)
        logging.getLogger("adapters.model_mixin").warning("none are activated, said elsewhere")
    said = [r.getMessage() for r in caplog.records if "none are activated" in r.getMessage()]
    assert said == ["none are activated, said elsewhere"]
