"""Decoder families (llama, qwen2, mistral) on tiny random configs with a decoder-style tokenizer
(no pad token): pad token, last-token pooling with either padding, layers 0..k alone, experts,
mixtures and routers on them, old expert files."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from tests.tinymodels import SAMPLES, decoder_tokenizer, tiny_decoder, tiny_expert
from ttmoe_core import experts, moe, routing, store
from ttmoe_core.base import backbone
from ttmoe_core.base import partial as layers

TEXTS = ["a short one", "the movie was far better than anybody expected it to be",
         "no", "two sentences here. and one more for length"]
PAIRS = [None, "it was not", None, "pairs too"]

DECODERS = {"llama": {}, "qwen2": {}, "mistral": {},
            # a sliding window shorter than the rows, on every layer / on the upper layers only
            "mistral-window": {"sliding_window": 4},
            "qwen2-window": {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1}}


def _decoder(name: str, seed: int = 0) -> backbone.Backbone:
    return tiny_decoder(name.split("-")[0], seed=seed, **DECODERS[name])


def _left_padded(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same rows with their padding moved to the left."""
    out = {k: torch.zeros_like(v) for k, v in batch.items()}
    lengths = batch["attention_mask"].sum(1).tolist()
    width = batch["attention_mask"].shape[1]
    for b, n in enumerate(lengths):
        for key, value in batch.items():
            out[key][b, width - n:] = value[b, :n]
            if key == "input_ids":
                out[key][b, : width - n] = value[b, -1] if n < width else 0
    return out


def test_pad_token_is_eos_without_new_embeddings():
    tok = decoder_tokenizer()
    bb = tiny_decoder("llama")
    assert tok.pad_token is None, "the caller's tokenizer must not be changed"
    assert bb.tokenizer.pad_token == tok.eos_token and bb.tokenizer.pad_token_id == tok.eos_token_id
    assert len(bb.tokenizer) == len(tok) == bb.model.config.vocab_size
    # the tokenizer's own padding now works (it raised "Asking to pad ..." before) ...
    batch = bb.tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert batch["input_ids"].max() < bb.model.config.vocab_size
    # ... and encode_rows pads with it, masking the padding out
    encoded = backbone.encode_rows(bb.tokenizer, TEXTS, PAIRS, 64)
    ours = encoded.batch()
    assert encoded.pad_id == tok.eos_token_id
    assert (ours["input_ids"][ours["attention_mask"] == 0] == tok.eos_token_id).all()
    # a tokenizer with a pad token is kept as it is; one with no special token at all is refused
    assert backbone.with_pad_token(bb.tokenizer) is bb.tokenizer
    bare = copy.deepcopy(tok)
    bare.eos_token = bare.unk_token = bare.bos_token = None
    with pytest.raises(ValueError, match="no pad, eos, unk or bos"):
        backbone.with_pad_token(bare)


def test_pooling_defaults_per_family():
    assert backbone.default_pooling("llama") == "last" == backbone.default_pooling("qwen2")
    assert backbone.default_pooling("mistral") == "last"
    assert backbone.default_pooling("bert") == "mean" == backbone.default_pooling("roberta")
    with pytest.raises(ValueError, match="unknown pooling"):
        backbone.pool(torch.zeros(1, 2, 3), torch.ones(1, 2), "max")


def test_last_token_with_left_and_right_padding():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert backbone.last_token(hidden, right).flatten().tolist() == [1.0, 7.0]
    assert backbone.last_token(hidden, left).flatten().tolist() == [3.0, 7.0]
    # mean pooling ignores padding even when it holds NaN (a fully masked decoder query row)
    poisoned = hidden.clone()
    poisoned[0, 0] = float("nan")
    assert backbone.mean_pool(poisoned, left).flatten().tolist() == [2.5, 5.5]


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
def test_expert_answers_the_same_with_left_or_right_padding(kind):
    """Last-token pooling reads the same token whichever side the padding is on, and the
    decoder's answer at that token does not depend on it (rotary positions are relative)."""
    bb = tiny_decoder(kind)
    cfg = experts.ExpertConfig(task="sst2", rank=3, init="kaiming", seed=0, device="cpu")
    model = experts.build_expert_model(cfg, bb, num_labels=2).eval()
    assert model.pooling == "last"
    right = backbone.encode_rows(bb.tokenizer, TEXTS, PAIRS, 64).batch()
    left = _left_padded(right)
    with torch.no_grad():
        a, b = model(right), model(left)
        alone = torch.cat([model(backbone.encode_rows(bb.tokenizer, [t], [p], 64).batch())
                           for t, p in zip(TEXTS, PAIRS)])
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(DECODERS))
def test_layers_0_to_k_equal_the_full_pass(name):
    """States 0..k computed alone equal ``output_hidden_states`` of the model's forward, and a
    pass continued from layer k equals its last hidden state (float64, padded batch)."""
    bb = _decoder(name)
    model = copy.deepcopy(bb.model).double()
    batch = backbone.encode_rows(bb.tokenizer, TEXTS, PAIRS, 64).batch()
    real = batch["attention_mask"].bool()
    num_layers = model.config.num_hidden_layers
    assert layers.is_layered_decoder(model) and layers.runs_in_parts(model)
    with torch.no_grad():
        full = model(**batch, output_hidden_states=True)
        for k in range(num_layers + 1):
            states = layers.hidden_states(model, batch, k)
            assert len(states) == k + 1
            for i, state in enumerate(states):
                torch.testing.assert_close(state[real], full.hidden_states[i][real],
                                           rtol=0, atol=1e-10)
            ended = layers.continue_layers(model, states[-1], batch["attention_mask"], k)
            torch.testing.assert_close(ended[real], full.last_hidden_state[real], rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="out of range"):
        layers.hidden_states(model, batch, num_layers + 1)


def test_layer_prefix_costs_only_k_layers():
    """Layers above k never run when the router reads layers 0..k (counted with hooks)."""
    bb = tiny_decoder("llama", num_layers=3)
    calls = []
    hooks = [layer.register_forward_hook(lambda m, i, o, n=n: calls.append(n))
             for n, layer in enumerate(bb.model.layers)]
    try:
        batch = backbone.encode_rows(bb.tokenizer, TEXTS, PAIRS, 64).batch()
        with torch.no_grad():
            routing.base_states(bb.model, batch, 1)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == [0]


@pytest.fixture(scope="module")
def llama():
    return tiny_decoder("llama", num_layers=3)


@pytest.fixture(scope="module")
def decoder_experts(llama):
    """Two tiny experts on the tiny llama: sst2 (default pooling: last) and rte (mean)."""
    last = tiny_expert(llama, "sst2", rank=3, steps=2, seed=0)
    mean = experts.train_expert(
        experts.ExpertConfig(task="rte", rank=4, init="kaiming", steps=2, batch_size=4,
                             max_length=32, seed=1, device="cpu", train_limit=16, eval_limit=8,
                             pooling="mean"), llama, data_dir=SAMPLES, name="rte")
    return last, mean


def test_decoder_expert_records_pooling_and_matches_reference(llama, decoder_experts,
                                                              reference_logits, tmp_path):
    last, mean = decoder_experts
    assert last.config.pooling == "last" and mean.config.pooling == "mean"
    store.save_expert(last, tmp_path / "e")
    loaded = store.load_expert(tmp_path / "e", expected_fingerprint=llama.info.fingerprint)
    assert loaded.config.pooling == "last"
    texts, pairs = TEXTS, None
    ours = experts.predict_logits(experts.build_expert_model(loaded, llama), llama, texts, pairs, 32)
    torch.testing.assert_close(ours, reference_logits(llama, loaded, texts, pairs, 32),
                               rtol=1e-4, atol=1e-5)


def test_old_expert_files_without_pooling_pool_by_mean(llama, decoder_experts, tmp_path):
    import json

    last, _ = decoder_experts
    data = last.config.to_dict()
    del data["pooling"]
    assert experts.ExpertConfig.from_dict(data).pooling == "mean"
    with pytest.raises(experts.ConfigError, match="pooling"):
        experts.ExpertConfig(task="sst2", pooling="max").resolved()
    # a file without the field loads as mean; one with a pooling we do not know is refused
    store.save_expert(last, tmp_path / "e")
    config_file = tmp_path / "e" / "adapter_config.json"
    saved = json.loads(config_file.read_text())
    del saved["training"]["pooling"]
    config_file.write_text(json.dumps(saved))
    assert store.load_expert(tmp_path / "e").pooling == "mean"
    saved["training"]["pooling"] = "max"
    config_file.write_text(json.dumps(saved))
    with pytest.raises(store.StoreError, match="pooling"):
        store.load_expert(tmp_path / "e")


def test_mixture_of_decoder_experts_answers_as_each_alone(llama, decoder_experts):
    """A mixture whose experts pool differently (last / mean) answers every row, routed or
    forced, exactly as the expert alone; the routed pass starts from the router's layer."""
    last, mean = decoder_experts
    trained = routing.build(routing.RouterConfig(variant="mlp", layer=1, hidden=8, seed=0),
                            2, llama.info.hidden_size, llama.info.num_layers)
    mix = moe.TTLoRAMoE(llama, [last, mean], trained, max_length=32)
    texts = TEXTS * 2
    pairs = [None] * len(texts)
    rows = mix.predict(texts, pairs)
    for name, expert in (("sst2", last), ("rte", mean)):
        alone = experts.predict_logits(experts.build_expert_model(expert, llama), llama, texts,
                                       pairs, 32)
        forced = mix.predict(texts, pairs, expert=name)
        for i, row in enumerate(forced):
            want = torch.softmax(alone[i], -1).tolist()
            assert row["label_probs"] == pytest.approx(dict(zip(expert.label_names, want)),
                                                       abs=1e-5)
        for i, row in enumerate(rows):
            if row["expert"] == name:
                assert row["label_probs"] == pytest.approx(forced[i]["label_probs"], abs=1e-5)
    encoded, forced_idx = mix.prepare(texts, pairs, expert=["sst2", "rte"] * len(TEXTS))
    shared = mix.score(encoded, forced_idx).logits
    plain = mix.score(encoded, forced_idx, share_prefix=False).logits
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-5)


def test_bfloat16_trains_float32_cores_and_heads(tmp_path):
    """--dtype bfloat16 on CPU: base weights bfloat16 (half the memory), fingerprint of the
    float32 weights, cores and head trained and saved as float32, finite loss, and a float32
    serving of the expert close to the bfloat16 one."""
    from ttmoe_core.runtime import precision

    model = tiny_decoder("llama").model
    folder = tmp_path / "m"
    model.save_pretrained(str(folder))
    decoder_tokenizer().save_pretrained(str(folder))
    full = backbone.load_backbone(str(folder), device="cpu")
    half = backbone.load_backbone(str(folder), device="cpu", dtype="bfloat16")
    assert half.dtype == torch.bfloat16 and full.dtype == torch.float32
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    assert half.info.fingerprint == full.info.fingerprint
    expert = tiny_expert(half, "sst2", rank=3, steps=3)
    assert expert.config.dtype == "bfloat16"
    assert all(t.dtype == torch.float32 for t in expert.tensors.values())
    assert all(h["loss"] == h["loss"] for h in expert.history)      # finite, not NaN
    store.save_expert(expert, tmp_path / "e")
    loaded = store.load_expert(tmp_path / "e", expected_fingerprint=full.info.fingerprint)
    a = experts.predict_logits(experts.build_expert_model(loaded, half), half, TEXTS, None, 32)
    b = experts.predict_logits(experts.build_expert_model(loaded, full), full, TEXTS, None, 32)
    torch.testing.assert_close(a, b, rtol=0.1, atol=0.1)
    assert precision.parse_dtype(None) == torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        precision.parse_dtype("float8")
    with pytest.raises(backbone.BackboneError, match="unknown dtype"):
        backbone.load_backbone(str(folder), dtype="int8")


def test_demo_pack_experts_still_pool_by_mean():
    """The shipped demo pack (saved before pooling was recorded) loads with mean pooling."""
    from pathlib import Path

    demo = Path(__file__).resolve().parents[1] / "assets" / "demo"
    folders = [p.parent for p in demo.rglob("adapter_config.json")]
    assert folders, "no expert in the demo pack"
    for folder in folders:
        expert = store.load_expert(folder)
        assert expert.pooling == "mean"
        assert dataclasses.asdict(expert.config)["pooling"] == "mean"
