"""TT shapes per layer size: BERT's ``dense`` names three linear layers of different sizes in
every layer (attention output H->H, intermediate H->I, output I->H); each gets its own TT shape.
An expert adapting query,key,value,dense trains, its ΔW matches a tensorly float64 reference,
it round-trips through the store and serves in a mixture; shapes that do not fit are refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.tinymodels import sample_rows
from ttmoe_core import adapters, experts, moe, store, tasks
from ttmoe_core.base import backbone
from ttmoe_core.cli.args import UsageError
from ttmoe_core.cli.checks import check_targets

ALL = ["query", "key", "value", "dense"]
ROLES = {"attention.output.dense": (48, 48), "intermediate.dense": (48, 96),
         "output.dense": (96, 48), "pooler.dense": (48, 48)}    # BERT's pooler too, as PEFT does


@pytest.fixture(scope="module")
def sst2(samples_dir):
    return sample_rows(samples_dir, "sst2", 12, 6)


@pytest.fixture(scope="module")
def dense_expert(tiny_bert, sst2):
    cfg = experts.ExpertConfig(task="sst2", targets=ALL, steps=3, batch_size=4, max_length=32,
                               init="kaiming", holdout_fraction=0.0, lr=1e-2)
    return experts.train_expert(cfg, tiny_bert, train_data=sst2[0], eval_data=sst2[1])


def test_layout_keys_per_size(tiny_bert):
    keys = adapters.target_layout_keys(tiny_bert.model, ALL)
    assert keys == {"query": (48, 48), "key": (48, 48), "value": (48, 48), **ROLES}
    assert adapters.module_role("encoder.layer.1.intermediate.dense") == "intermediate.dense"
    assert adapters.layout_key(keys, "encoder.layer.0.output.dense") == "output.dense"
    assert adapters.layout_key({"query": {}}, "encoder.layer.0.attention.self.query") == "query"
    assert adapters.layout_key({"query": {}}, "encoder.layer.0.attention.self.value") is None


def test_dense_of_three_sizes_trains_with_a_shape_per_size(dense_expert):
    layout = dense_expert.tt_layout
    assert set(layout) == {"query", "key", "value", *ROLES}
    for role, (d_in, d_out) in ROLES.items():
        assert math.prod(layout[role]["in_factors"]) == d_in
        assert math.prod(layout[role]["out_factors"]) == d_out
        assert dense_expert.config.shapes[role] == layout[role]["in_factors"] + layout[role]["out_factors"]
    modules = {k.rsplit(".cores.", 1)[0] for k in dense_expert.tensors if ".cores." in k}
    assert len(modules) == 2 * 6 + 1                  # 2 layers × (q, k, v, 3 dense) + pooler
    assert dense_expert.metrics["eval_rows"] == 6


def test_delta_w_matches_tensorly_float64(tiny_bert, dense_expert):
    import tensorly as tl

    model = experts.build_expert_model(dense_expert, tiny_bert)
    layers = adapters.tt_layers(model.encoder)
    assert len(layers) == 13
    for name, layer in layers.items():
        cores = [c[0].detach().double().numpy() for c in layer.cores]
        with tl.backend_context("numpy"):
            full = tl.tt_to_tensor(cores)
        d_in, d_out = layer.base.in_features, layer.base.out_features
        want = dense_expert.config.alpha * torch.from_numpy(
            np.ascontiguousarray(full.reshape(d_in, d_out).T))
        got = layer.delta_weight().double()
        assert got.shape == (d_out, d_in), name
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_store_round_trip_and_merged_reference(tiny_bert, dense_expert, tmp_path, sst2,
                                               reference_logits):
    path = store.save_expert(dense_expert, tmp_path / "dense")
    loaded = store.load_expert(path)
    assert loaded.tt_layout == dense_expert.tt_layout
    assert loaded.config.shapes == dense_expert.config.shapes
    for key, value in dense_expert.tensors.items():
        assert torch.equal(loaded.tensors[key], value), key
    texts = sst2[1].texts[:4]
    model = experts.build_expert_model(loaded, tiny_bert).double().eval()
    batch = backbone.tokenize(tiny_bert.tokenizer, texts, None, 32, tiny_bert.device)
    with torch.no_grad():
        got = model(batch).float()
    want = reference_logits(tiny_bert, loaded, texts, None, 32)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_store_refuses_a_layout_that_does_not_fit_the_cores(dense_expert, tmp_path):
    import dataclasses

    swapped = dict(dense_expert.tt_layout)
    swapped["intermediate.dense"], swapped["output.dense"] = (swapped["output.dense"],
                                                              swapped["intermediate.dense"])
    with pytest.raises(store.StoreError):
        path = store.save_expert(dataclasses.replace(dense_expert, tt_layout=swapped),
                                 tmp_path / "bad")
        store.load_expert(path)


def test_mixture_of_dense_experts_answers_like_each_expert(tiny_bert, dense_expert, sst2):
    from tinymodels import random_expert

    other = random_expert(dense_expert, "other", rank=3, seed=4)
    mixture = moe.TTLoRAMoE(tiny_bert, [dense_expert, other], None, max_length=32).double()
    texts = sst2[1].texts[:3]
    for expert in (dense_expert, other):
        out = mixture.predict(texts, None, expert=[expert.name] * len(texts))
        model = experts.build_expert_model(expert, tiny_bert).double().eval()
        batch = backbone.tokenize(tiny_bert.tokenizer, texts, None, 32, tiny_bert.device)
        with torch.no_grad():
            want = torch.softmax(model(batch), -1).numpy()
        got = np.array([list(row["label_probs"].values()) for row in out])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def test_shapes_per_role_and_refusals(tiny_bert):
    check_targets(tiny_bert.model, ALL, {"intermediate.dense": [4, 12, 12, 8]})
    with pytest.raises(UsageError, match=r"--shape attention.output.dense \(48x48\)"):
        check_targets(tiny_bert.model, ALL, {"dense": [4, 12, 12, 8]})   # fits only 48->96
    with pytest.raises(UsageError, match="is not a target"):
        check_targets(tiny_bert.model, ALL, {"foo.dense": [6, 8, 8, 6]})
    shapes = adapters.resolve_shapes(tiny_bert.model, ALL, {"intermediate.dense": [4, 12, 12, 8]})
    assert shapes["intermediate.dense"] == [4, 12, 12, 8]
    with pytest.raises(experts.ConfigError, match=r"shape for intermediate.dense \(48x96\)"):
        experts.build_expert_model(experts.ExpertConfig(task="sst2", targets=ALL,
                                                        shapes={"dense": [6, 8, 8, 6]}),
                                   tiny_bert, num_labels=2)
