"""Shared fixtures: tiny randomly initialised transformers built from configs in code (no download),
the embedded model for ``slow`` integration tests, and the shipped sample data.

Session-scoped backbones are shared by many tests: a test must never mutate one in place
(``experts.build_expert_model`` deep-copies; tests that inject adapters themselves use
``copy.deepcopy(backbone.model)``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ttmoe_core import adapters
from ttmoe_core.base import backbone

SAMPLES = Path(__file__).resolve().parents[1] / "assets" / "samples"


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """The shipped sample task data (hub Parquet layout)."""
    assert SAMPLES.is_dir(), f"missing {SAMPLES}"
    return SAMPLES


@pytest.fixture(scope="session")
def minilm_tokenizer():
    """The embedded MiniLM tokenizer (vocab 30,522), loaded offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(backbone.default_model_path()), local_files_only=True)


@pytest.fixture(scope="session")
def tiny_bert(minilm_tokenizer) -> backbone.Backbone:
    """BERT, hidden 48, 2 layers, 4 heads, intermediate 96, random weights (seed 0)."""
    from transformers import BertConfig, BertModel

    config = BertConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=96, vocab_size=minilm_tokenizer.vocab_size,
                        max_position_embeddings=128, hidden_dropout_prob=0.1,
                        attention_probs_dropout_prob=0.1)
    torch.manual_seed(0)
    model = BertModel(config)
    return backbone.wrap(model, minilm_tokenizer, "tiny-bert")


@pytest.fixture(scope="session")
def tiny_llama(minilm_tokenizer) -> backbone.Backbone:
    """LLaMA, hidden 48, 2 layers, 4 heads / 2 KV heads, intermediate 96, random weights (seed 0).

    Uses the BERT tokenizer (only ids matter); its pad token is [PAD] (id 0).
    """
    from transformers import LlamaConfig, LlamaModel

    assert minilm_tokenizer.pad_token_id is not None
    config = LlamaConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=96,
                         vocab_size=minilm_tokenizer.vocab_size, max_position_embeddings=128,
                         pad_token_id=minilm_tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaModel(config)
    return backbone.wrap(model, minilm_tokenizer, "tiny-llama")


@pytest.fixture(scope="session")
def embedded() -> backbone.Backbone:
    """The real embedded all-MiniLM-L6-v2 on CPU (only for ``@pytest.mark.slow`` tests)."""
    return backbone.load_backbone(device="cpu")


# ----------------------------------------------------------------------------- references


def _dense_tt_delta(cores: list[torch.Tensor], in_factors: list[int], out_factors: list[int]) -> torch.Tensor:
    """ΔW [d_out, d_in] from TT cores through tensorly (independent of ttmoe_core.tt)."""
    import math

    import numpy as np
    import tensorly as tl

    with tl.backend_context("numpy"):
        full = tl.tt_to_tensor([c.detach().double().cpu().numpy() for c in cores])
    d_in, d_out = math.prod(in_factors), math.prod(out_factors)
    return torch.from_numpy(np.ascontiguousarray(full.reshape(d_in, d_out).T))


def merged_reference_logits(bb: backbone.Backbone, expert, texts: list[str],
                            text_pairs: list[str] | None, max_length: int) -> torch.Tensor:
    """Logits of an expert computed without ttmoe_core's adapters: a copy of the base model with
    ``W + ΔW`` written into the target weights (TT via tensorly, LoRA as (α/r)·B·A), then the
    head on the attention-masked mean of the last hidden state, or on its last real token for an
    expert that pools so."""
    import copy

    merged = copy.deepcopy(bb.model).double()
    tensors, cfg = expert.tensors, expert.config
    with torch.no_grad():
        if cfg.method == "tt-lora":
            layers: dict[str, dict[int, torch.Tensor]] = {}
            for key, value in tensors.items():
                if ".cores." in key:
                    layer, k = key.rsplit(".cores.", 1)
                    layers.setdefault(layer, {})[int(k)] = value
            assert layers, "no TT cores in the expert"
            for layer, cores in layers.items():
                layout = adapters.layout_for(expert.tt_layout, layer)
                dw = _dense_tt_delta([cores[k] for k in sorted(cores)], layout["in_factors"],
                                     layout["out_factors"])
                merged.get_submodule(layer).weight += cfg.alpha * dw
        else:
            prefix, suffix = "base_model.model.", ".lora_A.weight"
            keys = [k for k in tensors if k.endswith(suffix)]
            assert keys, "no LoRA tensors in the expert"
            for key in keys:
                a = tensors[key].double()
                b = tensors[key.replace("lora_A", "lora_B")].double()
                name = key[len(prefix):-len(suffix)]
                merged.get_submodule(name).weight += (cfg.alpha / cfg.rank) * (b @ a)
        batch = bb.tokenizer(texts, text_pairs, padding=True, truncation=True,
                             max_length=max_length, return_tensors="pt")
        hidden = merged(**batch).last_hidden_state                         # [B, T, H]
        if expert.pooling == "last":       # right padding: the last real token is at length - 1
            assert bb.tokenizer.padding_side == "right"
            lengths = batch["attention_mask"].sum(1)
            pooled = torch.stack([hidden[b, int(n) - 1] for b, n in enumerate(lengths)])
        else:
            mask = batch["attention_mask"].unsqueeze(-1).double()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
        return (pooled @ tensors["head.weight"].double().T + tensors["head.bias"].double()).float()


@pytest.fixture(scope="session")
def reference_logits():
    """``merged_reference_logits`` as a fixture (test modules do not import conftest)."""
    return merged_reference_logits


@pytest.fixture
def one_thread():
    """Run the test with one intra-op thread (faster for small batches, and far steadier on a
    shared machine with few cores), restoring the previous setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _keep_the_main_module():
    """Put ``sys.modules["__main__"]`` back after each test: Streamlit's AppTest leaves the page
    script (app.py) there, and every later multiprocessing child (forkserver, spawn) would then
    import app.py as its main module, about a second each (the kill test's 92 children)."""
    import sys

    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


def pytest_runtest_setup(item):
    """``@pytest.mark.needs_data(folder)``: without ``folder`` the test is skipped locally and FAILS
    under ``CI=true`` (CI must never pass by skipping what it is meant to check)."""
    for mark in item.iter_markers("needs_data"):
        folder = Path(mark.args[0])
        if not folder.is_dir():
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                pytest.fail(f"no data at {folder}: this test must run in CI")
            pytest.skip(f"no data at {folder}")
