"""Experiment 3 (router variants): the pure pieces (depth mapping, the parameters' front, the
smallest router near the best) on hand-made rows, and the experiment itself on a tiny encoder and
the tiny decoder (every variant, every n-gram table size, both markdown subsections)."""

from __future__ import annotations

import dataclasses

import pytest

from tests.test_report import synthetic_results, untraced_numbers
from tests.tinymodels import tiny_decoder
from ttmoe_core import report
from ttmoe_core.report.experiment import Run
from ttmoe_core.report.plots import build_figures
from ttmoe_core.report.router_variants import (
    exp_routers,
    layers_on,
    params_front,
    smallest_near_best,
)


def test_layers_on_keeps_the_fractions_of_depth():
    assert layers_on([0, 2, 6], 6, 30) == [0, 10, 30]          # MiniLM → SmolLM2-135M
    assert layers_on([0, 2], 2, 3) == [0, 3]
    assert layers_on([1], 2, 3) == [2]                          # 1.5 rounds half up
    assert layers_on([2], 6, 3) == [1]
    assert layers_on([0, 1, 2], 6, 2) == [0, 1]                 # distinct, ascending
    assert layers_on([6, 0], 6, 6) == [0, 6]
    with pytest.raises(ValueError, match="positive"):
        layers_on([0], 0, 30)


def _row(variant, params, accuracy, layer=2, buckets=None):
    return {"variant": variant, "layer": layer, "buckets": buckets, "params": params,
            "accuracy": accuracy}


HAND = [_row("paper", 2310, 0.50, layer=6), _row("linear", 2310, 0.70), _row("mlp", 100_000, 0.80),
        _row("fusion", 500_000, 0.86), _row("ngram", 150_000, 0.85, buckets=4096),
        _row("ngram", 500_000, 0.86, buckets=16384), _row("ngram", 1_700_000, 0.90, buckets=65536),
        _row("linear", 2310, 0.60, layer=0)]


def test_params_front_of_a_hand_made_list():
    front = params_front(HAND)
    assert [(f["variant"], f["layer"], f["buckets"]) for f in front] == [
        ("linear", 2, None), ("mlp", 2, None), ("ngram", 2, 4096), ("fusion", 2, None),
        ("ngram", 2, 16384), ("ngram", 2, 65536)]       # fusion and ngram 16384 tie: both kept
    assert front[0] == {"variant": "linear", "layer": 2, "buckets": None, "params": 2310, "accuracy": 0.70}
    # brute force: a row is on the front iff nothing has ≤ params and > accuracy, or < params and ≥
    for row in HAND:
        dominated = any((q["params"] <= row["params"] and q["accuracy"] > row["accuracy"])
                        or (q["params"] < row["params"] and q["accuracy"] >= row["accuracy"]) for q in HAND)
        assert dominated != any(f["params"] == row["params"] and f["accuracy"] == row["accuracy"]
                                and f["variant"] == row["variant"] and f["layer"] == row["layer"]
                                for f in front)


def test_smallest_router_within_a_point_of_the_best():
    near = smallest_near_best(HAND)
    assert (near["variant"], near["buckets"], near["params"]) == ("ngram", 65536, 1_700_000)
    assert near["best"]["accuracy"] == 0.90
    relaxed = smallest_near_best(HAND, points=5.0)              # 0.85 is within 5 points of 0.90
    assert (relaxed["variant"], relaxed["buckets"]) == ("ngram", 4096)
    exact = smallest_near_best([_row("a", 10, 0.80), _row("b", 5, 0.79)])   # exactly one point
    assert exact["variant"] == "b" and smallest_near_best([]) is None


def test_paper_router_reads_a_decoders_last_real_token_whatever_the_padding():
    """On a decoder the paper's feature is the state at the last real token: the same with the
    batch padded on the right (as ``tokenize_mixed`` pads) or on the left (rows rolled), rows of
    different lengths, as each row alone."""
    import torch

    from ttmoe_core import routing
    from ttmoe_core.base import backbone

    bb = tiny_decoder("llama", num_layers=2)
    texts, pairs = ["a short one", "a much longer input with many more words in it"], [None, None]
    config = routing.RouterConfig(variant="paper", max_length=32).resolved(bb.info.num_layers)
    right, _ = backbone.tokenize_mixed(bb.tokenizer, texts, pairs, 32, bb.device)
    pads = right["attention_mask"].shape[1] - right["attention_mask"].sum(1)
    assert int(pads[0]) > 0 and right["attention_mask"][0, -1] == 0
    left = {k: torch.stack([row.roll(int(n)) for row, n in zip(v, pads)]) for k, v in right.items()}
    assert left["attention_mask"][0, 0] == 0 and left["attention_mask"][0, -1] == 1
    last = {side: routing.batch_features(bb.model, batch, texts, pairs, config)["last"]
            for side, batch in (("right", right), ("left", left))}
    alone = []
    for text in texts:                                            # each row without padding
        batch, _ = backbone.tokenize_mixed(bb.tokenizer, [text], [None], 32, bb.device)
        alone.append(routing.batch_features(bb.model, batch, [text], [None], config)["last"][0])
    torch.testing.assert_close(last["right"], torch.stack(alone), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(last["left"], torch.stack(alone), rtol=1e-4, atol=1e-5)


def test_run_loads_another_model_once_and_lazily(tiny_bert):
    calls = []

    def load(name):
        calls.append(name)
        return tiny_decoder("llama", num_layers=2)

    run = Run(budget=report.BUDGETS["small"], backbone=tiny_bert, data_dir=None, load_model=load)
    assert calls == []
    first = run.other_model("tiny-llama")
    assert run.other_model("tiny-llama") is first and calls == ["tiny-llama"]


def test_budgets_name_a_decoder_for_the_full_runs_only():
    assert report.BUDGETS["small"].router_decoder is None
    assert report.BUDGETS["full"].router_decoder == report.BUDGETS["full-demo"].router_decoder == "smollm2-135m"
    assert all(len(b.router_buckets) >= 2 for b in report.BUDGETS.values())


@pytest.fixture(scope="module")
def routers_exp(tiny_bert, samples_dir):
    """Experiment 3 of the small budget on tiny BERT (2 layers) and a tiny llama (3 layers)."""
    budget = dataclasses.replace(report.BUDGETS["small"], router_decoder="tiny-llama", router_epochs=5)
    run = Run(budget=budget, backbone=tiny_bert, data_dir=samples_dir,
              load_model=lambda name: tiny_decoder("llama", num_layers=3))
    return run, exp_routers(run)


def _check_rows(exp, layers, last, buckets, experts=6):
    got = {(r["variant"], r["layer"], r["buckets"]) for r in exp["rows"]}
    want = ({("paper", last, None)} | {(v, k, None) for v in ("linear", "mlp", "fusion") for k in layers}
            | {("ngram", layers_on([report.MIXTURE_ROUTER[1]], 2, last)[0], b) for b in buckets})
    assert got == want
    ngram = sorted((r for r in exp["rows"] if r["variant"] == "ngram"), key=lambda r: r["buckets"])
    sizes = [r["params"] for r in ngram]
    assert all(a < b for a, b in zip(sizes, sizes[1:]))            # larger table, more parameters
    assert sizes[1] - sizes[0] == 4 * (ngram[1]["buckets"] - ngram[0]["buckets"]) * experts
    assert all(0 <= r["accuracy"] <= 1 and r["ms_per_input"] > 0 for r in exp["rows"])
    front = exp["params_frontier"]
    assert front and front == params_front(exp["rows"])
    assert [f["params"] for f in front] == sorted(f["params"] for f in front)
    near = exp["smallest_near_best"]
    assert near["accuracy"] >= near["best"]["accuracy"] - 0.01 - 1e-12
    assert exp["claim"]["verdict"] in ("holds", "does not hold")


def test_every_variant_and_table_size_on_an_encoder_and_a_decoder(routers_exp, tiny_bert):
    run, exp = routers_exp
    buckets = run.budget.router_buckets
    _check_rows(exp, [0, 2], 2, buckets)
    assert any((r["variant"], r["layer"]) == report.MIXTURE_ROUTER for r in exp["rows"])
    dec = exp["decoder"]
    assert dec["model"] == "tiny-llama" and dec["num_layers"] == 3 and dec["layers"] == [0, 3]
    _check_rows(dec, [0, 3], 3, buckets)
    assert "tiny-llama" in exp["differences"][-1]


def test_markdown_renders_both_tables_and_old_results_without_them(routers_exp):
    _, exp = routers_exp
    results = synthetic_results()
    old = report.render_section(results, "routers", figure_links=False)
    assert "against router parameters" not in old and "On a decoder" not in old
    results["experiments"]["routers"] = {**exp, "run": results["experiments"]["routers"]["run"]}
    text = report.render_section(results, "routers", figure_links=False)
    assert text.count("Routing accuracy against router parameters") == 2
    assert "### On a decoder (tiny-llama)" in text and "**On the decoder, the paper's claim" in text
    assert text.count("Smallest router within 1 point of the most accurate") == 2
    for size in report.BUDGETS["small"].router_buckets:
        assert f"ngram ({size:,} buckets)" in text
    assert untraced_numbers(text, results) == []
    assert "router_frontier" in build_figures(results)           # the figures take the new rows
    # the front is marked: as many "yes" in the new tables as routers on the two fronts
    tables = text.split("Routing accuracy against router parameters")[1:]
    marked = sum(t.split("Smallest router")[0].count("| yes |") for t in tables)
    assert marked == len(exp["params_frontier"]) + len(exp["decoder"]["params_frontier"])


def test_what_the_routers_measurements_point_to_cites_the_decoder(routers_exp):
    from ttmoe_core.report.verdicts import factor

    _, exp = routers_exp
    exp = {**exp, "claim": {**exp["claim"], "verdict": "does not hold"}}   # a sentence is given
    paper = next(r for r in exp["decoder"]["rows"] if r["variant"] == "paper")
    text = factor("routers", {"experiments": {"routers": exp}})
    assert f"on tiny-llama the paper's router reaches {paper['accuracy']:.3f}" in text
    assert f"the claim there {exp['decoder']['claim']['verdict']}" in text
    old = {k: v for k, v in exp.items() if k != "decoder"}
    assert "tiny-llama" not in factor("routers", {"experiments": {"routers": old}})
