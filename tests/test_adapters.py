"""Tests of ttmoe_core.adapters: the TT-LoRA layer against a dense reference, the per-row expert
bank (PEFT's mixed-batch pattern, threads), injection into tiny BERT / LLaMA, the PEFT baseline."""

from __future__ import annotations

import copy
import math
import threading

import numpy as np
import pytest
import torch
from torch import nn

from ttmoe_core import adapters, tt
from ttmoe_core.adapters import ReconstructedTTLoRALinear, TTLoRALinear, use_experts

DT = torch.float64
M, N, RANK, ALPHA = [4, 3], [2, 5], 3, 2.5       # d_in 12, d_out 10


def _dense_delta(cores, m, n):
    """ΔW [d_out, d_in] through tensorly (independent of ttmoe_core.tt)."""
    import tensorly as tl

    with tl.backend_context("numpy"):
        full = tl.tt_to_tensor([c.detach().double().numpy() for c in cores])
    return torch.from_numpy(np.ascontiguousarray(full.reshape(math.prod(m), math.prod(n)).T))


def _layer(num_experts=1, init="kaiming", seed=0, dtype=DT):
    torch.manual_seed(seed)
    base = nn.Linear(math.prod(M), math.prod(N))
    layer = TTLoRALinear(base, M, N, RANK, ALPHA, num_experts=num_experts, init=init,
                         generator=torch.Generator().manual_seed(seed))
    return layer.to(dtype)


def _reference(layer, x, expert):
    """base(x) + α x ΔW_e^T with ΔW from tensorly, in float64."""
    cores = [c[expert] for c in layer.cores]
    dw = _dense_delta(cores, layer.in_factors, layer.out_factors).to(x.dtype)
    return layer.base(x) + layer.alpha * x @ dw.T


# ----------------------------------------------------------------------------- single layer


@pytest.mark.parametrize("shape", [(6, 12), (2, 5, 12)])
def test_ttlora_linear_equals_dense_reference(shape):
    layer = _layer()
    x = torch.randn(*shape, dtype=DT, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = layer(x)
        ref = _reference(layer, x, 0)
        assert out.shape == (*shape[:-1], 10)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
        # the adapter contributes: not the base output alone
        assert (out - layer.base(x)).abs().max() > 1e-3
        torch.testing.assert_close(layer.delta_weight(0),
                                   ALPHA * _dense_delta([c[0] for c in layer.cores], M, N),
                                   rtol=0, atol=1e-12)


def test_gradients_reach_only_cores():
    layer = _layer()
    assert not layer.base.weight.requires_grad and not layer.base.bias.requires_grad
    assert all(c.requires_grad for c in layer.cores)
    x = torch.randn(5, 12, dtype=DT, generator=torch.Generator().manual_seed(2))
    layer(x).square().sum().backward()
    assert layer.base.weight.grad is None and layer.base.bias.grad is None
    for core in layer.cores:
        assert core.grad is not None and float(core.grad.abs().sum()) > 0
    trainable = {name for name, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {f"cores.{k}" for k in range(len(layer.cores))}


def test_zero_init_gradient_reaches_last_core_first():
    layer = _layer(init="zero")
    x = torch.randn(5, 12, dtype=DT, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.base(x), rtol=0, atol=0)
    layer(x).square().sum().backward()
    assert float(layer.cores[-1].grad.abs().sum()) > 0


@pytest.mark.parametrize("num_experts", [1, 3])
def test_core_param_count(num_experts):
    layer = _layer(num_experts=num_experts)
    assert sum(c.numel() for c in layer.cores) == num_experts * tt.param_count(layer.core_shapes)
    assert [tuple(c.shape[1:]) for c in layer.cores] == [tuple(s) for s in layer.core_shapes]
    assert layer.num_experts == num_experts


def test_layer_rejects_shape_that_does_not_fit():
    with pytest.raises(ValueError):
        TTLoRALinear(nn.Linear(12, 10), [4, 4], [2, 5], RANK, ALPHA)
    with pytest.raises(ValueError):
        TTLoRALinear(nn.Linear(12, 10), [4, 3], [3, 5], RANK, ALPHA)


def test_layer_rejects_factors_split_at_wrong_place():
    with pytest.raises(ValueError):
        TTLoRALinear(nn.Linear(12, 5), [4], [3, 5], RANK, ALPHA)


def test_reconstructed_path_equals_contraction_float32():
    layer = _layer(dtype=torch.float32)
    x = torch.randn(3, 4, 12, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(ReconstructedTTLoRALinear(layer)(x), layer(x),
                                   rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- expert bank


def _bank():
    layer = _layer(num_experts=3, seed=5)
    # make the three experts clearly different
    with torch.no_grad():
        for k, core in enumerate(layer.cores):
            core.copy_(torch.randn(core.shape, dtype=DT, generator=torch.Generator().manual_seed(100 + k)))
    return layer


def test_mixed_batch_equals_per_expert_runs_row_by_row():
    layer = _bank()
    x = torch.randn(8, 4, 12, dtype=DT, generator=torch.Generator().manual_seed(6))
    idx = torch.tensor([0, 2, 1, -1, 2, 0, -1, 1])
    with torch.no_grad(), use_experts(idx):
        mixed = layer(x)
    with torch.no_grad():
        per_expert = {}
        for expert in range(3):
            with use_experts(torch.full((8,), expert)):
                per_expert[expert] = layer(x)
            torch.testing.assert_close(per_expert[expert], _reference(layer, x, expert),
                                       rtol=0, atol=1e-10)
        base = layer.base(x)
        for row, expert in enumerate(idx.tolist()):
            expected = base[row] if expert < 0 else per_expert[expert][row]
            torch.testing.assert_close(mixed[row], expected, rtol=0, atol=1e-12)
        # the experts really differ from each other and from the base model
        assert (per_expert[0] - per_expert[1]).abs().max() > 1e-3
        assert (per_expert[0] - base).abs().max() > 1e-3


def test_mixed_batch_2d_input_and_all_base_rows():
    layer = _bank()
    x = torch.randn(4, 12, dtype=DT, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        with use_experts(torch.tensor([1, -1, 0, 2])):
            out = layer(x)
        for row, expert in enumerate([1, -1, 0, 2]):
            ref = layer.base(x[row:row + 1]) if expert < 0 else _reference(layer, x[row:row + 1], expert)
            torch.testing.assert_close(out[row:row + 1], ref, rtol=0, atol=1e-12)
        with use_experts(torch.full((4,), -1)):
            torch.testing.assert_close(layer(x), layer.base(x), rtol=0, atol=0)


def test_multi_expert_layer_needs_selection_and_row_count_must_match():
    layer = _bank()
    x = torch.randn(2, 12, dtype=DT)
    with pytest.raises(RuntimeError, match="use_experts"):
        layer(x)
    with pytest.raises(ValueError):
        with use_experts(torch.tensor([0, 1, 2])):
            layer(x)


def test_use_experts_resets_context_even_on_error():
    assert adapters.current_expert_index() is None
    outer, inner = torch.tensor([0, 1]), torch.tensor([2, 2])
    with use_experts(outer):
        assert adapters.current_expert_index() is outer
        with use_experts(inner):
            assert adapters.current_expert_index() is inner
        assert adapters.current_expert_index() is outer
    assert adapters.current_expert_index() is None
    with pytest.raises(KeyError):
        with use_experts(outer):
            raise KeyError("boom")
    assert adapters.current_expert_index() is None


def test_threads_sharing_one_layer_get_their_own_experts():
    layer = _bank()
    x = torch.randn(6, 3, 12, dtype=DT, generator=torch.Generator().manual_seed(8))
    selections = [torch.tensor([(t + r) % 4 - 1 for r in range(6)]) for t in range(8)]
    with torch.no_grad():
        expected = []
        for idx in selections:
            with use_experts(idx):
                expected.append(layer(x))
    barrier = threading.Barrier(8)
    results: list = [None] * 8
    errors: list = []

    def work(t: int) -> None:
        try:
            barrier.wait(timeout=30)
            outs = []
            with torch.no_grad(), use_experts(selections[t]):
                for _ in range(20):            # many forwards while other threads switch experts
                    outs.append(layer(x))
            results[t] = outs
        except BaseException as exc:           # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    for t in range(8):
        for out in results[t]:
            assert torch.equal(out, expected[t])
    assert adapters.current_expert_index() is None


# ----------------------------------------------------------------------------- gathered halves


def _halves(layer: TTLoRALinear, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row merged halves of a bank's experts, α folded into A: [B, d_in, r], [B, r, d_out]."""
    left, right = tt.tt_halves([c[idx] for c in layer.cores], layer.in_factors, layer.out_factors)
    return layer.alpha * left, right


def test_gathered_layer_equals_the_bank_row_by_row():
    bank = _bank()
    gathered = adapters.GatheredTTLinear(bank.base, "layer")
    x = torch.randn(6, 4, 12, dtype=DT, generator=torch.Generator().manual_seed(9))
    idx = torch.tensor([2, 0, 0, 1, 2, 1])
    with torch.no_grad():
        with use_experts(idx):
            want = bank(x)
        with adapters.use_row_halves({"layer": _halves(bank, idx)}):
            got = gathered(x)
            other = adapters.GatheredTTLinear(bank.base, "another")(x)   # not named: frozen
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        torch.testing.assert_close(other, bank.base(x), rtol=0, atol=0)
        torch.testing.assert_close(gathered(x), bank.base(x), rtol=0, atol=0)  # no halves
        with adapters.use_row_halves({"layer": _halves(bank, idx[:2])}):
            with pytest.raises(ValueError, match="2 rows"):
                gathered(x)


def test_adapters_off_silences_both_kinds_and_contexts_reset():
    bank = _bank()
    gathered = adapters.GatheredTTLinear(bank.base, "layer")
    x = torch.randn(3, 12, dtype=DT)
    halves = {"layer": _halves(bank, torch.tensor([0, 1, 2]))}
    with torch.no_grad(), use_experts(torch.tensor([0, 1, 2])), adapters.use_row_halves(halves):
        with adapters.adapters_off(3):
            torch.testing.assert_close(bank(x), bank.base(x), rtol=0, atol=0)
            torch.testing.assert_close(gathered(x.unsqueeze(1)), bank.base(x.unsqueeze(1)))
        assert not torch.equal(gathered(x.unsqueeze(1)), bank.base(x.unsqueeze(1)))
    with pytest.raises(KeyError):
        with adapters.use_row_halves(halves):
            raise KeyError("boom")
    torch.testing.assert_close(gathered(x), bank.base(x))


def test_inject_gathered_checks_names_and_shapes(tiny_bert):
    model = copy.deepcopy(tiny_bert.model)
    name = "encoder.layer.1.attention.self.query"
    adapters.inject_gathered(model, [name], {name: (48, 48)})
    assert isinstance(model.get_submodule(name), adapters.GatheredTTLinear)
    assert isinstance(tiny_bert.model.get_submodule(name), nn.Linear)
    with pytest.raises(ValueError, match="no module"):
        adapters.inject_gathered(model, ["encoder.nope"], {"encoder.nope": (48, 48)})
    other = "encoder.layer.0.attention.self.value"
    with pytest.raises(ValueError, match="48x96"):
        adapters.inject_gathered(model, [other], {other: (48, 96)})
    assert adapters.layer_index(name) == 1 and adapters.layer_index("pooler.dense") is None


def test_freeze_below_zeroes_and_freezes_lower_layers(tiny_bert):
    model = copy.deepcopy(tiny_bert.model)
    adapters.inject_tt_lora(model, ["query", "value"], rank=2, alpha=1.0,
                            generator=torch.Generator().manual_seed(0))
    frozen = adapters.freeze_below(model, 1)
    assert sorted(frozen) == ["encoder.layer.0.attention.self.query",
                              "encoder.layer.0.attention.self.value"]
    for name, layer in adapters.tt_layers(model).items():
        lower = name in frozen
        assert all((not c.any()) == lower and c.requires_grad != lower for c in layer.cores)


# ----------------------------------------------------------------------------- injection


def _bert_batch(backbone, texts=("a tiny test sentence", "another one, a bit longer than the first")):
    return backbone.tokenizer(list(texts), padding=True, return_tensors="pt")


def _merged_copy(original: nn.Module, injected: nn.Module) -> nn.Module:
    """Independent reference: the original model with W + α ΔW (tensorly) written into the weights."""
    merged = copy.deepcopy(original)
    with torch.no_grad():
        for name, layer in adapters.tt_layers(injected).items():
            dw = _dense_delta([c[0] for c in layer.cores], layer.in_factors, layer.out_factors)
            merged.get_submodule(name).weight += layer.alpha * dw.to(torch.float32)
    return merged


def test_inject_tt_lora_bert(tiny_bert):
    original = tiny_bert.model
    model = copy.deepcopy(original)
    names = adapters.inject_tt_lora(model, ["query", "value"], rank=3, alpha=4.0, init="zero",
                                    generator=torch.Generator().manual_seed(0))
    layers = adapters.tt_layers(model)
    num_layers = original.config.num_hidden_layers
    assert len(names) == len(layers) == 2 * num_layers
    assert sorted(names) == sorted(layers)
    assert {n.rpartition(".")[2] for n in names} == {"query", "value"}
    for name, layer in layers.items():
        assert isinstance(layer, TTLoRALinear)
        assert layer.base is not original.get_submodule(name)         # a copy was adapted
        assert "forward" not in layer.__dict__
        assert "forward" not in model.get_submodule(name.rpartition(".")[0]).__dict__
        assert math.prod(layer.in_factors) == 48 and math.prod(layer.out_factors) == 48
    assert not any(isinstance(m, TTLoRALinear) for m in original.modules())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".cores." in n for n in trainable)

    batch = _bert_batch(tiny_bert)
    with torch.no_grad():
        ref = original(**batch).last_hidden_state
        torch.testing.assert_close(model(**batch).last_hidden_state, ref, rtol=0, atol=1e-6)
        # nonzero cores: output changes, and equals the dense merged-weight model
        for layer in layers.values():
            layer.cores[-1].copy_(torch.randn(layer.cores[-1].shape,
                                              generator=torch.Generator().manual_seed(1)))
        out = model(**batch).last_hidden_state
        assert (out - ref).abs().max() > 1e-3
        torch.testing.assert_close(out, _merged_copy(original, model)(**batch).last_hidden_state,
                                   rtol=1e-4, atol=1e-5)


def test_inject_tt_lora_kaiming_changes_output(tiny_bert):
    model = copy.deepcopy(tiny_bert.model)
    adapters.inject_tt_lora(model, ["query", "value"], rank=2, alpha=8.0, init="kaiming",
                            shapes={"query": [4, 12, 6, 8]})
    assert adapters.tt_layers(model)["encoder.layer.0.attention.self.query"].in_factors == [4, 12]
    batch = _bert_batch(tiny_bert)
    with torch.no_grad():
        ref = tiny_bert.model(**batch).last_hidden_state
        out = model(**batch).last_hidden_state
        assert (out - ref).abs().max() > 1e-4
        torch.testing.assert_close(out, _merged_copy(tiny_bert.model, model)(**batch).last_hidden_state,
                                   rtol=1e-4, atol=1e-5)


def test_inject_tt_lora_llama(tiny_llama):
    model = copy.deepcopy(tiny_llama.model)
    names = adapters.inject_tt_lora(model, ["q_proj", "v_proj"], rank=3, alpha=4.0, init="kaiming",
                                    generator=torch.Generator().manual_seed(0))
    cfg = tiny_llama.model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    assert len(names) == 2 * cfg.num_hidden_layers
    for name, layer in adapters.tt_layers(model).items():
        d_out = cfg.num_key_value_heads * head_dim if name.endswith("v_proj") else cfg.hidden_size
        assert math.prod(layer.out_factors) == d_out == layer.base.out_features
        assert math.prod(layer.in_factors) == cfg.hidden_size
    batch = tiny_llama.tokenizer(["hello there", "a longer llama input sentence"], padding=True,
                                 return_tensors="pt")
    with torch.no_grad():
        out = model(**batch).last_hidden_state
        ref = tiny_llama.model(**batch).last_hidden_state
        assert torch.isfinite(out).all() and (out - ref).abs().max() > 1e-4
        torch.testing.assert_close(out, _merged_copy(tiny_llama.model, model)(**batch).last_hidden_state,
                                   rtol=1e-4, atol=1e-5)


def test_find_targets_wrong_name_lists_linear_names(tiny_bert):
    with pytest.raises(ValueError) as info:
        adapters.find_targets(tiny_bert.model, ["q_proj"])
    message = str(info.value)
    for name in ("query", "key", "value", "dense"):
        assert name in message


def test_expert_cores_round_trip(tiny_bert):
    source = copy.deepcopy(tiny_bert.model)
    adapters.inject_tt_lora(source, ["query", "value"], rank=2, alpha=1.0, init="kaiming",
                            generator=torch.Generator().manual_seed(1))
    target = copy.deepcopy(tiny_bert.model)
    adapters.inject_tt_lora(target, ["query", "value"], rank=2, alpha=1.0, init="zero",
                            num_experts=3)
    tensors = adapters.expert_cores(source)
    layers = adapters.tt_layers(source)
    assert set(tensors) == {f"{n}.cores.{k}" for n, layer in layers.items()
                            for k in range(len(layer.cores))}
    assert all(not t.requires_grad and t.device.type == "cpu" for t in tensors.values())
    before = {k: v.clone() for k, v in adapters.expert_cores(target, 0).items()}
    adapters.load_expert_cores(target, tensors, expert=2)
    back = adapters.expert_cores(target, 2)
    assert set(back) == set(tensors)
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)
    after = adapters.expert_cores(target, 0)
    assert all(torch.equal(after[k], before[k]) for k in before)      # other slots untouched


def test_tt_layer_shapes_record_factors(tiny_bert):
    model = copy.deepcopy(tiny_bert.model)
    adapters.inject_tt_lora(model, ["value"], rank=2, alpha=1.0, shapes={"value": [6, 8, 8, 6]})
    shapes = adapters.tt_layer_shapes(model)
    assert len(shapes) == tiny_bert.info.num_layers
    for info in shapes.values():
        assert info["in_factors"] == [6, 8] and info["out_factors"] == [8, 6]
        assert info["core_shapes"] == [list(s) for s in tt.core_shapes([6, 8], [8, 6], 2)]


def test_inject_lora_peft_param_count(tiny_bert):
    rank = 4
    model = adapters.inject_lora(copy.deepcopy(tiny_bert.model), ["query", "value"], rank=rank,
                                 alpha=8.0)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    d_in = d_out = tiny_bert.info.hidden_size
    assert trainable == rank * (d_in + d_out) * 2 * tiny_bert.info.num_layers
    assert not any(p.requires_grad for p in tiny_bert.model.parameters())
    with pytest.raises(ValueError, match="query"):
        adapters.inject_lora(copy.deepcopy(tiny_bert.model), ["q_proj"], rank=rank, alpha=8.0)


def test_bottleneck_injection_is_silent_and_leaves_the_library_log_open(tiny_bert, caplog):
    """The `adapters` library warns "none are activated" while ``train_adapter`` resets layers it
    is about to activate; ``inject_bottleneck`` drops that one line, and only while it runs."""
    import logging

    encoder = copy.deepcopy(tiny_bert.model)
    with caplog.at_level(logging.WARNING, logger="adapters"):
        adapters.inject_bottleneck(encoder, "expert", reduction=4)
        assert not [r for r in caplog.records if "none are activated" in r.getMessage()]
        assert list(encoder.active_adapters.flatten()) == ["expert"]
        logging.getLogger("adapters.model_mixin").warning("There are adapters available but none are activated")
    assert [r.getMessage() for r in caplog.records] == ["There are adapters available but none are activated"]


@pytest.mark.parametrize("rows, tokens", [(1, 2), (3, 40)])      # below / above the merge point
def test_shared_update_equals_the_float64_update_on_either_path(rows, tokens):
    """One expert's halves for every row: the skinny products (few tokens) and the merged weight
    (many) both give W x + b + (x A) B; a GatheredTTLinear with [1, ...] halves takes that path."""
    gen = torch.Generator().manual_seed(0)
    base = nn.Linear(24, 40)
    left, right = torch.randn(24, 3, generator=gen), torch.randn(3, 40, generator=gen)
    x = torch.randn(rows, tokens, 24, generator=gen)
    expected = (x.double() @ base.weight.double().T + base.bias.double()
                + (x.double() @ left.double()) @ right.double())
    got = adapters.shared_update(base, x, left, right)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-4)
    layer = adapters.GatheredTTLinear(base, "m")
    with adapters.use_row_halves({"m": (left[None], right[None])}):
        torch.testing.assert_close(layer(x), got, rtol=0, atol=0)
    with adapters.use_row_halves({"m": (left.expand(rows, -1, -1), right.expand(rows, -1, -1))}):
        torch.testing.assert_close(layer(x).double(), expected, rtol=0, atol=1e-4)
