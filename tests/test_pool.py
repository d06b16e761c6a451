"""ttmoe_core.pool: a pool of E experts gathers each row's cores and head exactly as a dense bank
would (float64, ranks padded, α folded), grows without copying, finds upper-layer experts, and
loads experts lazily from their folders (same answers as eager loading, errors when read)."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from tests.threads import run_together
from tests.tinymodels import random_expert, tiny_bert, tiny_expert, tiny_pack
from ttmoe_core import adapters, store, tt
from ttmoe_core.adapters import layer_index
from ttmoe_core.bench.expert_pools import random_pool, upper_layer_experts
from ttmoe_core.moe import TTLoRAMoE
from ttmoe_core.moe.lazy import open_pack
from ttmoe_core.moe.pool import CHUNK_ROWS, NO_LAYER, ExpertCard, ExpertPool, MoEError


@pytest.fixture(scope="module")
def bb():
    return tiny_bert(seed=0)


@pytest.fixture(scope="module")
def experts(bb):
    """Five experts of ranks 2..6 and 2..4 labels (one trained, four random)."""
    trained = tiny_expert(bb, "sst2", rank=3, seed=0)
    return [trained] + [random_expert(trained, f"r{i}", rank=2 + i, num_labels=2 + i % 3, seed=i)
                        for i in range(1, 5)]


def dense_reference(expert, module: str, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The expert's halves of ``module`` from its own cores (α folded, padded to ``rank``),
    float64: A [d_in, R], B [R, d_out]."""
    layout = adapters.layout_for(expert.tt_layout, module)
    cores = []
    for k, shape in enumerate(tt.core_shapes(layout["in_factors"], layout["out_factors"], rank)):
        core = expert.tensors[f"{module}.cores.{k}"].double()
        padded = torch.zeros(shape, dtype=torch.float64)
        padded[: core.shape[0], :, : core.shape[2]] = core * (expert.config.alpha if k == 0 else 1)
        cores.append(padded)
    return tt.tt_halves(cores, layout["in_factors"], layout["out_factors"])


def test_gather_equals_a_dense_bank_row_by_row(experts):
    pool = ExpertPool.from_experts(experts).double()
    assert len(pool) == 5 and pool.rank == 6 and pool.max_labels == 4
    idx = torch.tensor([3, 0, 3, 4, 1, 1, 2, 0])                  # duplicates, every expert
    got = pool.gather(idx)
    modules = [s.name for s in pool.slots]
    assert sorted(got.halves) == sorted(modules) and got.first_layer == 0
    for b, e in enumerate(idx.tolist()):
        for module in modules:
            left, right = dense_reference(experts[e], module, pool.rank)
            torch.testing.assert_close(got.halves[module][0][b], left, rtol=0, atol=1e-12)
            torch.testing.assert_close(got.halves[module][1][b], right, rtol=0, atol=1e-12)
            # rank padding is exact: the same ΔW as the expert's own (unpadded) chain
            layout = adapters.layout_for(experts[e].tt_layout, module)
            own = [experts[e].tensors[f"{module}.cores.{k}"].double() for k in
                   range(len(layout["in_factors"]) + len(layout["out_factors"]))]
            dw = experts[e].config.alpha * tt.reconstruct(own, layout["in_factors"],
                                                          layout["out_factors"])
            torch.testing.assert_close((left @ right).T, dw, rtol=0, atol=1e-12)
        n = experts[e].num_labels
        torch.testing.assert_close(got.head_weight[b, :n], experts[e].tensors["head.weight"].double())
        torch.testing.assert_close(got.head_bias[b, :n], experts[e].tensors["head.bias"].double())
        assert torch.isinf(got.head_bias[b, n:]).all() and not got.head_weight[b, n:].any()


def test_pool_grows_without_copying_and_dense_views_agree(experts):
    pool = ExpertPool.from_experts(experts[:1], rank=6, max_labels=4)
    first_chunk = pool.rows_0.data_ptr()
    for i in range(2 * CHUNK_ROWS + 3):
        pool.add(dataclasses.replace(experts[1 + i % 4], name=f"copy{i}"))
    assert len(pool) == 2 * CHUNK_ROWS + 4 and pool.rows_0.data_ptr() == first_chunk
    assert pool.rows_2.shape[0] == CHUNK_ROWS                     # a third chunk opened
    last = len(pool) - 1
    got = pool.gather(torch.tensor([last, 0]))
    module = pool.slots[0].name
    want = dense_reference(experts[1 + (last - 1) % 4], module, pool.rank)
    torch.testing.assert_close(got.halves[module][0][0].double(), want[0], atol=1e-6, rtol=1e-5)
    cores = pool.dense_cores(module)                              # [E, R, s, R'] per core
    assert cores[0].shape[0] == len(pool)
    dense_left, _ = tt.tt_halves(cores, pool.slots[0].in_factors, pool.slots[0].out_factors)
    torch.testing.assert_close(dense_left[last], got.halves[module][0][0])
    weights, biases = pool.dense_heads()
    assert weights.shape == (len(pool), pool.max_labels, pool.hidden_size)
    with pytest.raises(MoEError, match="unique"):
        pool.add(experts[0])


def test_upper_layer_experts_are_found_and_lower_modules_left_out(experts):
    upper = upper_layer_experts(experts, 1)
    pool = ExpertPool.from_experts(upper[:2] + experts[2:3])
    assert [pool.gather(torch.tensor([i])).first_layer for i in range(3)] == [1, 1, 0]
    got = pool.gather(torch.tensor([0, 1, 1]))
    assert got.first_layer == 1
    assert sorted(got.halves) == sorted(s.name for s in pool.slots if layer_index(s.name) >= 1)
    assert pool.gather(torch.tensor([1, 2])).first_layer == 0     # one full expert: all modules
    nothing = ExpertPool.from_experts(upper_layer_experts(experts[:1], 99))
    assert nothing.gather(torch.tensor([0])).first_layer == NO_LAYER


def test_random_pool_keeps_the_layout_and_zeros_lower_layers(experts):
    like = ExpertPool.from_experts(experts)
    pool = random_pool(like, 3 * CHUNK_ROWS + 1, min_layer=1)
    assert len(pool) == 3 * CHUNK_ROWS + 1 and pool.width == like.width
    layers = pool.row_layers()
    assert not pool.rows_1[:, layers < 1].any() and pool.rows_1[:, layers >= 1].all()
    assert pool.gather(torch.arange(0, len(pool), 37)).first_layer == 1


@pytest.mark.parametrize("change, match", [
    (lambda e: dataclasses.replace(e, config=dataclasses.replace(e.config, method="lora")), "TT-LoRA"),
    (lambda e: dataclasses.replace(e, tt_layout={}), "TT shapes"),
])
def test_experts_that_do_not_fit_are_refused(experts, change, match):
    with pytest.raises(MoEError, match=match):
        ExpertPool.from_experts([experts[0], dataclasses.replace(change(experts[1]), name="bad")])


def test_gather_refuses_indices_out_of_range(experts):
    pool = ExpertPool.from_experts(experts)
    for bad in ([5], [-1, 0]):
        with pytest.raises(MoEError, match="0..4"):
            pool.gather(torch.tensor(bad))


# ----------------------------------------------------------------------------- lazy loading


@pytest.fixture(scope="module")
def pack(bb, experts, tmp_path_factory):
    """A pack of the five experts and a router (on disk)."""
    folder = tmp_path_factory.mktemp("pool") / "pack"
    tiny_pack(folder, bb, expert_list=experts)
    return folder


def test_lazy_pack_reads_weights_on_first_use_and_answers_as_eager(bb, pack):
    eager = TTLoRAMoE.from_pack(pack, backbone=bb)
    lazy = TTLoRAMoE.from_pack(pack, backbone=bb, lazy=True)
    assert lazy.pool.pending == 5 and lazy.names == eager.names
    assert lazy.router.config == eager.router.config
    texts = ["a fine film", "the cat sat on the mat", "it rains", "a fine film"]
    forced = lazy.predict(texts, expert=["r2", "r2", "sst2", "r2"])
    assert lazy.pool.pending == 3                        # only the two experts the rows needed
    assert forced == eager.predict(texts, expert=["r2", "r2", "sst2", "r2"])
    assert lazy.predict(texts) == eager.predict(texts)
    assert lazy.experts[0].tensors == {} and lazy.experts[0].config.task == "sst2"


def test_lazy_loading_is_safe_under_threads(bb, pack):
    lazy = TTLoRAMoE.from_pack(pack, backbone=bb, lazy=True)
    eager = TTLoRAMoE.from_pack(pack, backbone=bb)
    jobs = [(["text number %d" % i, "another"], [lazy.names[i % 5], lazy.names[(i + 2) % 5]])
            for i in range(10)]
    got = run_together([functools.partial(lazy.predict, t, expert=f) for t, f in jobs])
    assert got == [eager.predict(t, expert=f) for t, f in jobs] and lazy.pool.pending == 0


def test_lazy_errors_name_the_expert(bb, pack, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(pack, broken)
    weights = broken / "experts" / "r3" / store.WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[:-4] + b"\xff\xff\xff\xff")             # a NaN in the last tensor
    lazy = TTLoRAMoE.from_pack(broken, backbone=bb, lazy=True)   # configs and headers are fine
    assert lazy.predict(["ok"], expert="r1")[0]["expert"] == "r1"
    with pytest.raises(store.StoreError, match="expert 'r3'.*NaN"):
        lazy.predict(["ok"], expert="r3")                        # the data is read on first use
    weights.write_bytes(data[:50])                               # truncated: refused at open
    with pytest.raises(store.StoreError, match="expert 'r3'"):
        TTLoRAMoE.from_pack(broken, backbone=bb, lazy=True)
    weights.write_bytes(data)
    config = broken / "experts" / "r4" / store.CONFIG_FILE
    config.write_text(config.read_text().replace('"head.bias"', '"head.bias2"'))
    with pytest.raises(store.StoreError, match="expert 'r4'"):
        open_pack(broken)


def test_lazy_pool_refuses_another_base_model(pack):
    other = tiny_bert(seed=1)
    with pytest.raises(store.StoreError, match="another base model"):
        TTLoRAMoE.from_pack(pack, backbone=other, lazy=True)


def test_one_expert_batches_get_its_halves_once_and_the_cache_follows_the_pool(experts):
    """A batch of one expert gets [1, ...] halves (``shared_update``); halves come from the cache
    when hot and equal a fresh merge; converting the pool drops them."""
    pool = ExpertPool.from_experts(experts)
    one = pool.gather(torch.tensor([2, 2, 2]))
    mixed = pool.gather(torch.tensor([2, 0]))
    for module, (left, right) in one.halves.items():
        assert left.shape[0] == 1 and right.shape[0] == 1
        torch.testing.assert_close(left[0], mixed.halves[module][0][0], rtol=0, atol=0)
        torch.testing.assert_close(right[0], mixed.halves[module][1][0], rtol=0, atol=0)
    assert one.head_weight.shape[0] == 3
    pool64 = pool.double()
    assert not pool64._halves_cache
    fresh = pool64.gather(torch.tensor([2]))
    module = pool.slots[0].name
    reference = dense_reference(experts[2], module, pool.rank)
    torch.testing.assert_close(fresh.halves[module][0][0], reference[0], rtol=0, atol=1e-12)
    assert fresh.halves[module][0].dtype == torch.float64


def test_lazy_pool_skips_the_training_curve_the_full_load_checks_it(bb, pack, tmp_path):
    """Serving never reads an expert's history, so a lazy pool neither checks nor keeps it (most
    of the cost of opening an expert); loading the expert itself still refuses a bad one."""
    import json
    import shutil

    copy = tmp_path / "curve"
    shutil.copytree(pack, copy)
    config = copy / "experts" / "r2" / store.CONFIG_FILE
    data = json.loads(config.read_text())
    data["history"] = [{"step": "not a number"}]
    config.write_text(json.dumps(data))
    lazy = TTLoRAMoE.from_pack(copy, backbone=bb, lazy=True)
    assert lazy.experts[lazy.names.index("r2")].history == []
    assert lazy.predict(["ok"], expert="r2")[0]["expert"] == "r2"
    with pytest.raises(store.StoreError, match="expert 'r2'.*history"):
        store.load_expert(copy / "experts" / "r2")


@pytest.mark.parametrize("storage", [torch.float16, torch.int8])
def test_smaller_storage_shrinks_the_cores_and_keeps_the_answers(bb, experts, pack, storage):
    """Cores kept in float16 take half the bytes, in int8 (+ one float32 scale per TT core)
    ~1.03 bytes a number; each batch's halves are widened to float32 (compute dtype) and equal
    the float32 pool's to that rounding; the answers stay."""
    full = ExpertPool.from_experts(experts)
    half = ExpertPool.from_experts(experts, storage=storage)
    assert half.storage_dtype == storage and half.dtype == torch.float32
    stored = half.rows_0.numel() * half.rows_0.element_size() + sum(
        b.numel() * b.element_size() for n, b in half.named_buffers() if n.startswith("scale_"))
    per_number = stored / (CHUNK_ROWS * full.width)
    assert per_number <= (2.0 if storage == torch.float16 else 1.1)
    assert full.rows_0.element_size() == 4
    assert half.head_w_0.dtype == torch.float32
    name = "float16" if storage == torch.float16 else "int8"
    idx = torch.tensor([0, 3, 1, 4, 2])
    got, ref = half.gather(idx), full.gather(idx)
    for module, (left, right) in ref.halves.items():
        assert got.halves[module][0].dtype == torch.float32
        scale = float((left @ right).abs().max())
        # float16: 2^-11 relative a number; int8: up to 0.4 % of a core's largest, ~6 cores a chain
        torch.testing.assert_close(got.halves[module][0] @ got.halves[module][1], left @ right,
                                   rtol=0, atol=(5e-3 if storage == torch.float16 else 2e-2) * scale)
    eager = TTLoRAMoE.from_pack(pack, backbone=bb)
    for lazy in (False, True):
        small = TTLoRAMoE.from_pack(pack, backbone=bb, lazy=lazy, pool_dtype=name)
        assert small.pool.storage_dtype == storage
        texts = ["a fine film", "the cat sat on the mat", "it rains", "no way, not at all"]
        a, b = eager.predict(texts), small.predict(texts)
        assert [r["label"] for r in a] == [r["label"] for r in b]
        assert [r["expert"] for r in a] == [r["expert"] for r in b]
        for x, y in zip(a, b):
            for label, p in x["label_probs"].items():
                assert abs(p - y["label_probs"][label]) < 1e-2
    with pytest.raises(ValueError, match="unknown pool dtype"):
        TTLoRAMoE.from_pack(pack, backbone=bb, pool_dtype="int3")


def test_a_pool_of_upper_layer_experts_stores_no_lower_cores(bb, experts, tmp_path):
    """Experts trained with min_layer k leave layers < k alone: the pool keeps no slot there
    (less memory, frozen layers there), answers as before, and refuses what would break that."""
    upper = upper_layer_experts(experts, 1)
    full = ExpertPool.from_experts(upper)
    assert full.min_layer == 1 and all(layer_index(s.name) >= 1 for s in full.slots)
    assert full.width < ExpertPool.from_experts(experts).width
    with pytest.raises(MoEError, match="adapts layers from 0"):
        full.add(dataclasses.replace(experts[0], name="full-one"))
    lying = dataclasses.replace(experts[1], name="lying",
                                config=dataclasses.replace(experts[1].config, min_layer=1))
    with pytest.raises(MoEError, match="below layer 1"):
        full.add(lying)                                   # its layer-0 cores are not zero
    texts = ["a fine film", "the cat sat on the mat", "it rains"]
    pruned = TTLoRAMoE(bb, full, None, max_length=32)
    kept = TTLoRAMoE(bb, upper, None, max_length=32)      # from_experts too: same pruned pool
    reference = TTLoRAMoE(bb, ExpertPool(ExpertPool.from_experts(experts).slots, full.rank,
                                         full.hidden_size, full.max_labels, full.base), None,
                          max_length=32)
    reference.pool.add_rows([ExpertCard(e.name, e.config.task, list(e.label_names), e)
                             for e in upper],
                            torch.stack([reference.pool._row_of(e.tensors, e.config.rank,
                                                                e.config.alpha, e.name)
                                         for e in upper]),
                            *[torch.stack(part) for part in zip(*[reference.pool._head_of(
                                e.tensors["head.weight"], e.tensors["head.bias"]) for e in upper])])
    forced = [e.name for e in upper][:3]
    assert pruned.predict(texts, expert=forced) == kept.predict(texts, expert=forced)
    for a, b in zip(pruned.predict(texts, expert=forced), reference.predict(texts, expert=forced)):
        assert a["label"] == b["label"]
        for k, p in a["label_probs"].items():
            assert abs(p - b["label_probs"][k]) < 1e-5
    folder = tmp_path / "upper"
    tiny_pack(folder, bb, expert_list=upper)
    lazy = TTLoRAMoE.from_pack(folder, backbone=bb, lazy=True)
    assert lazy.pool.min_layer == 1
    assert lazy.predict(texts, expert=forced, route=False) == kept.predict(texts, expert=forced)
