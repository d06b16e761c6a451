"""Figures are pure functions: the numbers given come back out of the traces."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from ttmoe_core import adapters, budget, experts, tt
from ttmoe_core.services import figures


def test_router_probs_bar_keeps_order_values_and_highlights_choice():
    probs = {"sst2": 0.7, "cola": 0.2, "mnli": 0.1}
    fig = figures.router_probs_bar(probs, chosen="sst2")
    bar = fig.data[0]
    assert list(bar.y) == ["sst2", "cola", "mnli"]
    assert list(bar.x) == pytest.approx([0.7, 0.2, 0.1])
    assert list(bar.marker.color) == [figures.ACCENT, figures.MUTED, figures.MUTED]


def test_confusion_heatmap_counts_and_normalised_rows():
    names = ["a", "b", "c"]
    matrix = [[8, 2, 0], [1, 3, 0], [0, 0, 0]]
    counts = figures.confusion_heatmap(names, matrix).data[0]
    assert [list(row) for row in counts.z] == [[8, 2, 0], [1, 3, 0], [0, 0, 0]]
    assert list(counts.x) == names and list(counts.y) == names
    normalised = figures.confusion_heatmap(names, matrix, normalise=True).data[0]
    sums = [sum(row) for row in normalised.z]
    assert sums[:2] == pytest.approx([1.0, 1.0]) and sums[2] == 0.0  # an empty row stays empty
    assert normalised.z[1] == pytest.approx([0.25, 0.75, 0.0])
    assert normalised.text[0][0] == "80%"


def test_loss_curve_steps_loss_and_speed():
    history = [{"step": 5, "loss": 0.7, "examples_per_s": 30.0},
               {"step": 10, "loss": 0.5, "examples_per_s": 32.0}]
    fig = figures.loss_curve(history)
    assert list(fig.data[0].x) == [5, 10] and list(fig.data[0].y) == pytest.approx([0.7, 0.5])
    assert list(fig.data[1].y) == pytest.approx([30.0, 32.0]) and fig.data[1].yaxis == "y2"
    assert len(figures.loss_curve([{"step": 1, "loss": 1.0}]).data) == 1  # no speed: one trace


def test_method_comparison_bar_is_log_and_holds_the_paper_counts():
    reports = budget.compare_methods("llama-3.2-1b", targets=["q_proj", "v_proj"],
                                     shapes=budget.PAPER_PRESET["shapes"])
    fig = figures.method_comparison_bar(reports)
    assert fig.layout.xaxis.type == "log"
    bar = fig.data[0]
    assert list(bar.y) == [r.label for r in reports]
    assert list(bar.x[:2]) == [33_920, 1_703_936]


def test_params_bar_linear_axis():
    fig = figures.params_bar(["x", "y"], [3, 4], log=False)
    assert fig.layout.xaxis.type == "linear" and list(fig.data[0].x) == [3, 4]


def test_tt_cores_figure_boxes_have_the_cores_sizes():
    cores = tt.core_shapes([16, 8, 4, 4], [4, 4, 8, 16], 5)
    fig = figures.tt_cores_figure(cores, num_input=4)
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert len(rects) == len(cores)
    for rect, (r_in, mode, r_out) in zip(rects, cores):
        assert rect.x1 - rect.x0 == pytest.approx(mode)
        assert rect.y1 - rect.y0 == pytest.approx(r_in * r_out)
    assert sum(fig.data[0].customdata) == tt.param_count(cores)
    assert {rects[0].fillcolor, rects[-1].fillcolor} == {figures.INPUT_CORE, figures.OUTPUT_CORE}


def test_delta_w_spectra_of_tt_cores_are_those_of_the_layers_own_delta():
    """The singular values the ΔW plots show (``experts.delta_w_spectra``, from the cores only) equal a
    dense SVD of each layer's reconstructed α·ΔW; beyond the boundary rank they are exactly 0."""
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.query = nn.Linear(12, 6)

    model = nn.Module()
    model.layer = nn.ModuleList([Block(), Block()])
    adapters.inject_tt_lora(model, ["query"], rank=3, alpha=4.0, shapes={"query": [3, 4, 2, 3]},
                            init="kaiming", generator=torch.Generator().manual_seed(0))
    tensors = adapters.expert_cores(model)
    layout = {"query": {"in_factors": [3, 4], "out_factors": [2, 3]}}
    spectra = experts.delta_w_spectra(tensors, "tt-lora", 4.0, 3, layout)
    assert list(spectra) == ["layer.0.query", "layer.1.query"]
    for name, layer in adapters.tt_layers(model).items():
        dense = torch.linalg.svdvals(layer.delta_weight(0).detach().double())
        assert spectra[name].shape == (6,) and spectra[name].dtype == torch.float64
        torch.testing.assert_close(spectra[name], dense, rtol=1e-5, atol=1e-6)
        assert torch.all(spectra[name][3:] == 0) and torch.all(spectra[name][:3] > 0)
    with pytest.raises(ValueError, match="TT-LoRA and LoRA only"):
        experts.delta_w_spectra(tensors, "adapter", 1.0, 16)


def test_delta_w_spectra_of_lora_are_those_of_scaled_b_times_a():
    a, b = torch.randn(2, 5), torch.randn(3, 2)
    tensors = {"base_model.model.encoder.layer.0.attention.self.query.lora_A.weight": a,
               "base_model.model.encoder.layer.0.attention.self.query.lora_B.weight": b,
               "head.weight": torch.zeros(2, 5)}
    (name, values), = experts.delta_w_spectra(tensors, "lora", alpha=8.0, rank=2).items()
    assert name == "encoder.layer.0.attention.self.query"
    dense = torch.linalg.svdvals(4.0 * (b.double() @ a.double()))
    torch.testing.assert_close(values[:2], dense[:2])
    assert values.shape == (3,) and values[2] == 0


def test_delta_w_norms_groups_by_target():
    names = ["encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.value",
             "encoder.layer.1.attention.self.query", "encoder.layer.1.attention.self.value"]
    fig = figures.delta_w_norms(names, [1.0, 2.0, 3.0, 4.0])
    assert [trace.name for trace in fig.data] == ["query", "value"]
    assert list(fig.data[0].x) == ["L0", "L1"] and fig.layout.barmode == "group"
    assert list(fig.data[1].y) == pytest.approx([2.0, 4.0])


def test_singular_values_log_axis_from_one():
    fig = figures.singular_values([3.0, 1.0, 1e-18, 0.0], rank_bound=2)
    assert fig.layout.yaxis.type == "log"
    assert list(fig.data[0].x) == [1, 2, 3]  # an exact zero has no place on a log axis
    assert list(fig.data[0].y) == pytest.approx([3.0, 1.0, 1e-18])


def test_metric_bar_percentages():
    fig = figures.metric_bar({"sst2": 0.8, "cola": 0.5})
    assert list(fig.data[0].x) == ["sst2", "cola"] and list(fig.data[0].text) == ["80.0%", "50.0%"]


def test_pipeline_diagram_names_every_expert_and_highlights_the_chosen_one():
    fig = figures.pipeline_diagram(["sst2", "cola", "mnli"], chosen="cola")
    texts = [a.text for a in fig.layout.annotations if a.text]
    assert any("router" in t for t in texts) and any("answer" in t for t in texts)
    for name in ("sst2", "cola", "mnli"):
        assert any(name in t for t in texts)
    fills = [s.fillcolor for s in fig.layout.shapes if s.type == "rect"]
    assert fills.count(figures.ACCENT) == 1
    assert "<b>TT-LoRA expert: cola</b>" in texts


def test_short_layer_name():
    assert figures.short_layer_name("encoder.layer.3.attention.self.query") == "L3 query"
    assert figures.short_layer_name("model.layers.12.self_attn.q_proj") == "L12 q_proj"
    assert figures.short_layer_name("head") == "head"


@pytest.mark.parametrize("module", ["services/figures.py", "services/jobs.py",
                                    "services/workflows.py", "services/views.py",
                                    "services/workspace.py"])
def test_engine_modules_do_not_import_streamlit(module):
    tree = ast.parse((Path(__file__).resolve().parents[1] / "ttmoe_core" / module).read_text())
    names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names]
    names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert not any(name.split(".")[0] == "streamlit" for name in names)


def test_compact_counts_fit_after_a_bar_and_the_full_number_stays():
    assert [figures.compact_count(n) for n in (999, 33920, 1703936, 251932672, 1235814400)] == [
        "999", "33,920", "1.70M", "252M", "1.24B"]
    fig = figures.params_bar(["full"], [1235814400])
    assert list(fig.data[0].x) == [1235814400] and list(fig.data[0].text) == ["1.24B"]
