"""ttmoe_core.bench: both subcommands on small settings (--quick --json), the command line's errors,
the paper-scheme module against the mixture, the three adapter paths against each other, the
timing and memory measurements, and the text rendering. No timing thresholds."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from tests.tinymodels import SAMPLES, random_expert, saved_tiny_bert, tiny_expert
from ttmoe_core import adapters, bench, tt
from ttmoe_core.base.backbone import tokenize_mixed
from ttmoe_core.bench.__main__ import main
from ttmoe_core.cli.args import EXIT_USAGE
from ttmoe_core.moe import TTLoRAMoE


def _positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _positive_bytes(value) -> bool:
    """A measured peak memory: on CPU torch's profiler gives allocation events, so never None."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


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
        assert set(result[section]["peak_bytes"]) == names
        for name, nbytes in result[section]["peak_bytes"].items():
            assert _positive_bytes(nbytes), (section, name, nbytes)
    # a training step keeps activations for backward: it needs more than inference
    assert result["train_step"]["peak_bytes"]["tt-lora"] > result["inference"]["peak_bytes"]["tt-lora"]
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
            for path in ("contract", "contract_sequential", "reconstruct"):
                # at least the [tokens, d_out] float32 output
                assert row[f"{path}_peak_bytes"] >= row["tokens"] * layer["d_out"] * 4, path
            # reconstruction materialises ΔW [d_out, d_in] float32; contraction never does
            assert row["reconstruct_peak_bytes"] >= layer["d_in"] * layer["d_out"] * 4
            assert row["contract_peak_bytes"] < layer["d_in"] * layer["d_out"] * 4
    assert result["machine"]["threads"] == 1
    assert result["memory_method"] == bench.MEMORY_NOTE_CPU


def test_adapters_table_output(tmp_path, capsys, restore_threads):
    model_dir = tmp_path / "tiny-bert"
    saved_tiny_bert(model_dir)
    assert main(["adapters", "--quick", "--threads", "1", "--model", str(model_dir),
                 "--tokens", "2", "--repeats", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("adapters benchmark, ")
    for needle in ("load average", "inference frozen", "inference tt-lora", "inference lora",
                   "train step tt-lora", "train step lora", "crossover", "inference_tt_vs_frozen"):
        assert needle in text, needle
    assert "llama-3.2-1b q_proj 2048x2048" in text and ", None" not in text


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
    accuracy = result["check"]["routing_accuracy_on_batch"]     # a fraction of the 6 rows
    assert accuracy * 6 == pytest.approx(round(accuracy * 6))
    assert accuracy >= 0.5                    # the demo router sends most rows to their expert
    assert set(result["times"]) == set(result["peak_bytes"]) == {
        "frozen base", "single expert", "mixture (route + experts)", "mixture expert part",
        "paper (full route pass + gate-weighted pass)"}
    for name, times in result["times"].items():
        assert _positive_finite(times["median_s"]) and _positive_finite(times["rows_per_s"])
        assert times["rows_per_s"] == pytest.approx(6 / times["median_s"])
        assert _positive_bytes(result["peak_bytes"][name]), name
    assert [row["experts"] for row in result["expert_scan"]] == [1, 6]
    assert [row["distinct_experts_in_batch"] for row in result["expert_scan"]] == [1, 6]
    assert result["settings"]["rows"] == 6 and result["settings"]["tokens_per_row_padded"] <= 24
    text = bench.format_moe(result)
    assert text.startswith("moe benchmark, ") and "routing accuracy on the batch" in text
    assert all(name in text for name in result["times"]) and ", None" not in text


@pytest.mark.parametrize("argv,message", [
    (["moe", "--rows", "0"], "--rows: must be >= 1, got 0"),
    (["moe", "--experts-scan", "a,b"], "'a,b': give integers separated by commas"),
    (["adapters", "--tokens", "4,0"], "each >= 1"),
    (["adapters", "--threads", "x"], "'x' is not an integer"),
    (["jobs", "--jobs", "1"], "--jobs: must be >= 2, got 1"),
    ([], "the following arguments are required: command"),
])
def test_bad_flags_are_one_line_usage_errors(capsys, argv, message):
    assert main(argv) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: python -m ttmoe_core.bench") and message in captured.err
    assert captured.err.count("\n") == 1


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
    for t in times.values():
        assert t["rounds"] == 3 and t["calls_per_sample"] == 1
        assert 0 < t["min_s"] <= t["median_s"] <= t["max_s"]
    # warm-up + calibration per function, then rounds in rotating order: a b | b a | a b
    assert calls == ["a", "a", "b", "b", "a", "b", "b", "a", "a", "b"]


def test_time_interleaved_calibrates_calls_per_sample():
    calls = []
    times = bench.time_interleaved({"fast": lambda: calls.append(1)}, repeats=2,
                                   device=torch.device("cpu"), warmup=0, min_sample_s=0.01)
    n = times["fast"]["calls_per_sample"]
    assert 1 < n <= 1000                     # a ~µs call needs many calls per 10 ms sample
    assert len(calls) == 1 + 2 * n           # calibration, then n calls per round


def test_peak_memory_counts_the_call_allocations_on_cpu():
    cpu = torch.device("cpu")
    small = bench.peak_memory(lambda: torch.ones(1000, 1000) * 2, cpu)
    large = bench.peak_memory(lambda: torch.ones(2000, 2000) * 2, cpu)
    assert _positive_bytes(small) and _positive_bytes(large)
    assert small >= 1000 * 1000 * 4          # at least the float32 result
    assert large >= 2000 * 2000 * 4 and large > 3 * small
    assert bench.memory_note(cpu) == bench.MEMORY_NOTE_CPU


def test_crossover_detection():
    rows = [{"tokens": 1, "s": 0.5}, {"tokens": 4, "s": 0.9}, {"tokens": 16, "s": 1.5}]
    assert bench.crossover(rows, "s") == 16
    assert bench.crossover([{"tokens": 1, "s": 2.0}, {"tokens": 4, "s": 3.0}], "s") is None
    assert bench.crossover([{"tokens": 1, "s": 2.0}, {"tokens": 4, "s": 0.5}], "s") == 4


def test_ratio_targets_are_checked_in_their_direction():
    assert bench.ratio_check("inference_tt_vs_frozen", 1.0) == {
        "value": 1.0, "target": "<= 1.15", "met": True}
    assert bench.ratio_check("inference_tt_vs_frozen", 1.2)["met"] is False
    assert bench.ratio_check("mixture_vs_single_throughput", 0.8)["met"] is True
    assert bench.ratio_check("mixture_vs_single_throughput", 0.5)["met"] is False


def test_header_names_the_gpu_only_when_there_is_one():
    from ttmoe_core.bench.results import header_lines

    result = {"benchmark": "moe", "date": "2026-01-01T00:00:00+00:00", "settings": {"rows": 2},
              "load_average": {"before": [0.5, 0.4, 0.3], "after": None},
              "machine": {"cpu": "cpu x", "cores": 2, "threads": 1, "torch": "2", "device": "cpu"}}
    expected = "machine: cpu x, 2 cores, 1 threads, torch 2, device cpu"
    assert header_lines(result)[1] == expected                        # results before runinfo
    result["machine"]["gpu"] = None
    assert header_lines(result)[1] == expected
    result["machine"].update(device="cuda:0", gpu="H200")
    assert header_lines(result)[1] == "machine: cpu x, 2 cores, 1 threads, torch 2, device cuda:0, H200"


# ----------------------------------------------------------------------------- serve


@pytest.fixture(scope="module")
def tiny_serve_pack(tmp_path_factory):
    """A pack of three tiny experts and a layer-1 router on a tiny BERT saved to disk."""
    from tests.tinymodels import tiny_pack

    folder = tmp_path_factory.mktemp("serve")
    base = saved_tiny_bert(folder / "base")
    return tiny_pack(folder / "pack", base, ["sst2", "rte", "mnli"])[0]


def test_serve_quick_json_on_a_tiny_pack(capsys, restore_threads, tiny_serve_pack):
    result = _run_json(capsys, ["serve", "--quick", "--json", "--threads", "1", "--no-rss",
                                "--pack", str(tiny_serve_pack), "--data-dir", str(SAMPLES),
                                "--rows", "6", "--experts-scan", "3,70", "--disk-experts", "3"])
    assert result["benchmark"] == "serve" and result["settings"]["rows"] == 6
    assert result["check"]["same_answers_as_one_padded_batch"] == 1.0
    assert result["settings"]["upper_min_layer"] == 1
    from ttmoe_core.bench import serve

    assert serve.FLOOR in result["times"] and serve.PEFT_PLAN in result["times"]
    assert serve.GIVEN in result["times"] and serve.GIVEN_ROUTED in result["times"]
    assert len(result["times"]) == 9
    assert result["settings"]["peft"].startswith(f"LoRA r16 alpha 8 on the experts' "
                                                 f"{len(result['settings']['modules'])} modules")
    for times in result["times"].values():
        assert _positive_finite(times["median_s"])
        assert times["rows_per_s"] == pytest.approx(6 / times["median_s"])
    assert [row["experts"] for row in result["expert_scan"]] == [3, 70]
    assert result["expert_scan"][0]["distinct_experts_per_micro_batch"] <= 3
    assert result["disk"]["experts"] == 3 and result["memory"] == []
    for key in ("mixture_vs_floor", "upper_mixture_vs_floor", "mixture_vs_peft_same_batching",
                "gathered_vs_frozen_same_batches", "single_row_latency_vs_frozen",
                "pool_3_ready_s", "expert_time_per_row_e70_vs_e3"):
        assert _positive_finite(result["ratios"][key]), key
    assert result["targets"]["mixture_vs_floor"]["target"] == ">= 0.85"
    text = bench.format_serve(result)
    assert text.startswith("serve benchmark, ") and "x floor" in text and ", None" not in text


def test_rss_probe_runs_in_a_fresh_process(tiny_serve_pack):
    probe = bench.rss_in_fresh_process(70, tiny_serve_pack, timeout_s=300)
    assert probe["experts"] == 70 and probe["base_rss_mib"] > 0
    assert probe["added_mib"] >= 0 and probe["pool_bytes"] > 0
    assert probe["rss_mib"] == pytest.approx(probe["base_rss_mib"] + probe["added_mib"])


def test_time_paired_runs_each_part_of_every_variant_back_to_back():
    calls = []
    parts = {"a": [lambda: calls.append("a0"), lambda: calls.append("a1")],
             "b": [lambda: calls.append("b0"), lambda: calls.append("b1")]}
    times = bench.time_paired(parts, repeats=2, device=torch.device("cpu"), warmup=1)
    assert calls[:4] == ["a0", "a1", "b0", "b1"]                      # warm-up
    assert calls[4:] == ["a0", "b0", "b1", "a1", "b0", "a0", "a1", "b1"]
    for t in times.values():
        assert t["rounds"] == 2 and len(t["round_s"]) == 2
        assert t["min_s"] <= t["median_s"] <= t["max_s"]


def test_jobs_quick_json_and_table(tmp_path, capsys, restore_threads):
    """``bench jobs``: one training alone vs two side by side, each in a fresh process: both did
    the same steps, the ratios are measured, the table names both variants."""
    model_dir = tmp_path / "tiny-bert"
    saved_tiny_bert(model_dir)
    argv = ["jobs", "--quick", "--threads", "2", "--model", str(model_dir), "--data-dir", str(SAMPLES)]
    result = _run_json(capsys, argv + ["--json"])
    assert result["benchmark"] == "jobs" and result["settings"]["threads"] == 2
    assert (result["alone"]["threads"], result["side_by_side"]["jobs"], result["side_by_side"]["threads_each"]) == (2, 2, 1)
    steps = result["settings"]["steps"]
    for variant, runs in (("alone", 1), ("side_by_side", 2)):
        figures = result[variant]
        assert _positive_finite(figures["steps_per_s"]) and _positive_finite(figures["cpu_s_per_step"])
        assert figures["steps_per_s"] == pytest.approx(runs * steps / figures["wall_s"], rel=1e-9)
        assert figures["loop_s"] < figures["wall_s"]           # process start and model load are outside the loop
    ratios = result["ratios"]
    assert ratios["side_by_side_vs_alone_throughput"] == pytest.approx(
        result["side_by_side"]["steps_per_s"] / result["alone"]["steps_per_s"], rel=1e-9)
    assert ratios["side_by_side_vs_alone_loop_throughput"] == pytest.approx(
        2 * result["alone"]["loop_s"] / result["side_by_side"]["loop_s"], rel=1e-9)
    text = bench.format_jobs(result)                           # what the command prints without --json
    assert text.startswith("jobs benchmark, ") and "1 training, 2 thread(s)" in text
    assert "2 trainings, 1 thread(s) each" in text and "side_by_side_vs_alone_throughput" in text
