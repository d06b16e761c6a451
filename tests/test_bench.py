"""ttmoe_core.bench: both subcommands on small settings (--quick --json), the paper-scheme module
against the mixture, and the three adapter paths against each other. No timing thresholds."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from tests.tinymodels import SAMPLES, random_expert, saved_tiny_bert, tiny_expert
from ttmoe_core import adapters, bench, tt
from ttmoe_core.backbone import tokenize_mixed
from ttmoe_core.bench.__main__ import main
from ttmoe_core.moe import TTLoRAMoE


def _positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _run_json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def test_adapters_quick_json(tmp_path, capsys, restore_threads):
    model_dir = tmp_path / "tiny-bert"
    saved_tiny_bert(model_dir)
    result = _run_json(capsys, ["adapters", "--quick", "--json", "--threads", "1",
                                "--model", str(model_dir), "--tokens", "1,8"])
    assert result["benchmark"] == "adapters"
    for key in ("inference_tt_vs_frozen", "inference_lora_vs_frozen", "train_step_tt_vs_lora"):
        assert _positive_finite(result["ratios"][key]), key
    assert set(result["targets"]) == {"inference_tt_vs_frozen", "train_step_tt_vs_lora"}
    for section, names in (("inference", {"frozen", "tt-lora", "lora"}),
                           ("train_step", {"tt-lora", "lora"})):
        assert set(result[section]["times"]) == names
        for times in result[section]["times"].values():
            assert _positive_finite(times["median_s"]) and times["rounds"] == 2
        for nbytes in result[section]["peak_bytes"].values():
            assert nbytes is None or nbytes >= 0
    assert result["settings"]["tt_modules"] == 4          # 2 layers x (query, value)
    layers = result["contraction"]
    assert [layer["d_in"] for layer in layers] == [384, 2048]
    assert layers[1]["in_factors"] == [16, 8, 4, 4] and layers[1]["out_factors"] == [4, 4, 8, 16]
    for layer in layers:
        assert [row["tokens"] for row in layer["rows"]] == [1, 8]
        for row in layer["rows"]:
            assert row["max_rel_err_vs_reconstruct"] < 1e-4
            for key in ("contract_s", "contract_sequential_s", "reconstruct_s",
                        "contract_speedup", "sequential_speedup"):
                assert _positive_finite(row[key]), key
    assert result["machine"]["threads"] == 1


def test_adapters_table_output(tmp_path, capsys, restore_threads):
    model_dir = tmp_path / "tiny-bert"
    saved_tiny_bert(model_dir)
    assert main(["adapters", "--quick", "--threads", "1", "--model", str(model_dir),
                 "--tokens", "2", "--repeats", "1"]) == 0
    text = capsys.readouterr().out
    assert "inference_tt_vs_frozen" in text and "crossover" in text and "load average" in text


def test_moe_quick_json_on_demo_pack(capsys, restore_threads):
    result = _run_json(capsys, ["moe", "--quick", "--json", "--threads", "1",
                                "--data-dir", str(SAMPLES), "--rows", "6", "--max-length", "24"])
    assert result["benchmark"] == "moe"
    assert result["check"]["same_routing"] is True
    assert result["check"]["max_logit_difference"] <= 1e-4
    for key in ("mixture_vs_single_throughput", "expert_part_vs_single_throughput",
                "paper_vs_single_throughput", "mixture_speedup_vs_paper",
                "expert_time_max_over_min"):
        assert _positive_finite(result["ratios"][key]), key
    for times in result["times"].values():
        assert _positive_finite(times["median_s"]) and _positive_finite(times["rows_per_s"])
    assert [row["experts"] for row in result["expert_scan"]] == [1, 6]
    assert [row["distinct_experts_in_batch"] for row in result["expert_scan"]] == [1, 6]
    assert result["settings"]["rows"] == 6


@pytest.fixture(scope="module")
def tiny_mixture_parts(tiny_bert):
    trained = tiny_expert(tiny_bert, "sst2", rank=3, steps=1)
    experts = [trained, random_expert(trained, "b", rank=4, num_labels=3, seed=1),
               random_expert(trained, "c", rank=2, num_labels=2, seed=2)]
    return tiny_bert, experts


def test_gate_weighted_module_equals_mixture_float64(tiny_mixture_parts):
    bb, experts = tiny_mixture_parts
    mixture = TTLoRAMoE(bb, experts, router=None, max_length=32).double()
    paper = bench.GateWeightedMoE(mixture)
    layers = [m for m in paper.encoder.modules() if isinstance(m, bench.GateWeightedTTLoRA)]
    assert len(layers) == 4 and not adapters.tt_layers(paper.encoder)
    assert all(layer.num_experts == 3 for layer in layers)
    texts = ["a fine film", "the cat sat on the mat", "bad", "it rains", "so good", "no"]
    batch, _ = tokenize_mixed(bb.tokenizer, texts, None, 32, torch.device("cpu"))
    expert_idx = torch.tensor([0, 1, 2, 1, 0, 2])
    expected = mixture.expert_logits(batch, expert_idx)
    got = paper.expert_logits(batch, expert_idx)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert bench.max_logit_difference(got, expected) < 1e-10
    # the gate really selects: another expert for row 0 gives other logits there only
    other = paper.expert_logits(batch, torch.tensor([1, 1, 2, 1, 0, 2]))
    assert not torch.allclose(other[0, :2], got[0, :2])
    torch.testing.assert_close(other[1:], got[1:])
    with pytest.raises(RuntimeError, match="use_experts"):
        layers[0](torch.zeros(1, 2, 48, dtype=torch.float64))


def test_gate_weighted_rows_without_expert_are_the_frozen_base(tiny_mixture_parts):
    bb, experts = tiny_mixture_parts
    mixture = TTLoRAMoE(bb, experts, router=None, max_length=32).double()
    paper = bench.GateWeightedMoE(mixture)
    batch, _ = tokenize_mixed(bb.tokenizer, ["one text", "another one"], None, 16,
                              torch.device("cpu"))
    frozen = copy.deepcopy(bb.model).double()
    with torch.no_grad():
        reference = frozen(**batch).last_hidden_state
        with adapters.use_experts(torch.tensor([-1, -1])):
            hidden = paper.encoder(**batch).last_hidden_state
        with adapters.use_experts(torch.tensor([-1, 0])):
            mixed = paper.encoder(**batch).last_hidden_state
    torch.testing.assert_close(hidden, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mixed[0], reference[0], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(mixed[1], reference[1])


@pytest.mark.parametrize("d_in,d_out,shape", [
    (384, 384, None),
    (2048, 2048, [16, 8, 4, 4, 4, 4, 8, 16]),
    (48, 96, [8, 6, 4, 4, 6]),
])
def test_contraction_equals_reconstruction_float64(d_in, d_out, shape):
    m, n = tt.default_factors(d_in, d_out) if shape is None else tt.split_shape(shape, d_in, d_out)
    generator = torch.Generator().manual_seed(0)
    cores = tt.init_cores(tt.core_shapes(m, n, 5), "kaiming", generator=generator,
                          dtype=torch.float64)
    x = torch.randn(7, d_in, generator=generator, dtype=torch.float64)
    outs = {name: fn(x) for name, fn in bench.contraction_variants(cores, m, n).items()}
    assert outs["reconstruct"].shape == (7, d_out)
    assert outs["reconstruct"].abs().max() > 0
    for name in ("contract", "contract_sequential"):
        torch.testing.assert_close(outs[name], outs["reconstruct"], rtol=1e-10, atol=1e-12)


def test_time_interleaved_and_peak_memory():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = bench.time_interleaved(fns, repeats=3, device=torch.device("cpu"), warmup=1)
    assert set(times) == {"a", "b"}
    assert all(t["rounds"] == 3 and t["median_s"] >= 0 for t in times.values())
    # warm-up + calibration, then rounds in rotating order: a b | b a | a b
    assert calls[4:] == ["a", "b", "b", "a", "a", "b"]
    nbytes = bench.peak_memory(lambda: torch.ones(1000, 1000) * 2, torch.device("cpu"))
    assert nbytes is None or nbytes >= 4_000_000


def test_crossover_detection():
    rows = [{"tokens": 1, "s": 0.5}, {"tokens": 4, "s": 0.9}, {"tokens": 16, "s": 1.5}]
    assert bench.crossover(rows, "s") == 16
    assert bench.crossover([{"tokens": 1, "s": 2.0}, {"tokens": 4, "s": 3.0}], "s") is None
