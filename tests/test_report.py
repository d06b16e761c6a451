"""The paper-tables report: rendering (fast, synthetic results), AdapterFusion on a tiny model,
the CLI parser, the Compare page, and one ``slow`` end-to-end run of the ``small`` budget.

Traceability rule checked here: every numeric cell of every Markdown table is one of
``report.FORMATS`` applied to a number stored in the results.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest

from ttmoe_core import adapters, baselines, experts, report, tasks
from ttmoe_core.report import contraction, decoder, frontier, methods, seeds, worker

REPO_ROOT = Path(__file__).resolve().parents[1]
NUMERIC_CELL = re.compile(r"^[+-]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?(e[+-]\d+)?(%|×)?$")


# ----------------------------------------------------------------------------- helpers


def table_cells(markdown: str) -> list[str]:
    """Body cells of every Markdown table (header rows and separators left out), bold removed."""
    lines = markdown.splitlines()
    cells = []
    for i, line in enumerate(lines):
        if not line.startswith("|") or set(line) <= set("|-"):
            continue
        if i + 1 < len(lines) and set(lines[i + 1]) <= set("|-") and lines[i + 1].startswith("|"):
            continue  # a header row
        # a "mean ± std" cell holds two numbers, each checked on its own
        cells += [part.strip().strip("*") for c in line.strip().strip("|").split("|")
                  for part in c.split("±")]
    return cells


def numbers_in(obj) -> list[float]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, (int, float)):
        return [obj]
    if isinstance(obj, dict):
        return [n for v in obj.values() for n in numbers_in(v)]
    if isinstance(obj, (list, tuple)):
        return [n for v in obj for n in numbers_in(v)]
    return []


def formatted_numbers(results: dict) -> set[str]:
    out = set()
    for value in numbers_in(results):
        if isinstance(value, float) and not math.isfinite(value):
            continue
        out.update(fmt(value) for fmt in report.FORMATS.values())
    return out


def untraced_numbers(markdown: str, results: dict) -> list[str]:
    """Numeric table cells that are not a formatted value of ``results``."""
    known = formatted_numbers(results)
    return [c for c in table_cells(markdown) if NUMERIC_CELL.match(c) and c not in known]


def synthetic_frontier(claim: dict, run: dict) -> dict:
    """The frontier experiment's shape: two settings a method on one task, two seeds."""
    rows = [{"task": "sst2", "setting": s.tag, "method": s.method, "modules": s.modules, "rank": s.rank,
             "tt_shapes": None, "adapter_params": params, "seed": seed, "metric": "accuracy",
             "value": value + 0.01 * seed, "steps_run": 400, "best_step": 200, "cpu_seconds": 12.5,
             "train_seconds": 10.0, "lr": 1e-3, "alpha": 16.0, "from_experiment_2": s.rank in (5, 16)}
            for s, params, value in ((report.Setting("tt-lora", 2), 1728, 0.8),
                                     (report.Setting("tt-lora", 5), 9360, 0.82),
                                     (report.Setting("lora", 1), 9216, 0.84),
                                     (report.Setting("lora", 16), 147456, 0.85))
            for seed in (0, 1)]
    return {"tasks": ["sst2"], "seeds": [0, 1], "settings": [], "rows": rows,
            **frontier.summarise(rows), "claim": claim, "differences": ["f"], "run": run}


def synthetic_decoder(claim: dict, run: dict) -> dict:
    """The decoder experiment's shape: TT-LoRA at two rates on SST-2 and MRPC, LoRA on MRPC."""
    def row(task, method, rank, lr, value, holdout, f1=None):
        metric = "f1" if task == "mrpc" else "accuracy"
        metrics = {"accuracy": value} if f1 is None else {"accuracy": value, "f1": f1}
        return {"task": task, "method": method, "variant": f"{method}-r{rank}", "setting": f"{method}-r{rank}",
                "rank": rank, "lr": lr, "seed": 0, "metric": metric, "value": metrics[metric],
                "metrics": metrics, "holdout": {metric: holdout},
                "curve": [{"step": 200, "loss": 0.5, metric: holdout}] if method == "tt-lora" else [],
                "adapter_params": 1400 if method == "tt-lora" else 336 * rank, "steps_run": 800,
                "best_step": 600, "steps_cap": 4000, "wall_seconds": 12.5, "train_seconds": 11.5,
                "cpu_seconds": 20.25, "train_rows": 400, "eval_rows": 64, "expert": "x"}
    rows = [row("sst2", "tt-lora", 5, 1e-3, 0.875, 0.9), row("sst2", "tt-lora", 5, 3e-3, 0.5, 0.625),
            row("mrpc", "tt-lora", 5, 1e-3, 0.75, 0.8125, 0.8125),
            row("mrpc", "lora", 16, 5e-4, 0.78125, 0.84375, 0.84375),
            row("mrpc", "lora", 4, 5e-4, 0.71875, 0.75, 0.71875)]
    chosen = decoder.chosen_rows(rows)
    for r in rows:
        r["chosen"] = chosen.get(r["task"]) is r
    return {"model": "tiny-llama", "num_layers": 2, "hidden_size": 48, "modules": ["q_proj", "v_proj"],
            "module_sizes": [[48, 24], [48, 48]], "modules_adapted": 4, "seed": 0, "tasks": ["sst2", "mrpc"],
            "baseline_tasks": ["mrpc"], "lrs": [1e-3, 3e-3], "tt_lora_params": 1400, "lora_rank_at_tt": 4,
            "lora_params_at_tt": 1344, "lora_r16_params": 5376, "rows": rows,
            "comparisons": decoder.comparisons(rows), "floors": decoder.floors(rows), "margin": 0.02,
            "spread": "not measured (one seed)", "claim": claim, "differences": ["g"], "run": run}


def synthetic_results() -> dict:
    """A results dict shaped like ``run_report``'s, with made-up numbers (two tasks, two layers)."""
    run = {"started": "2026-01-01T00:00:00+00:00", "seconds": 12.5, "load_average_at_start": [1.5, 1.25, 1.0],
           "load_average_at_end": [1.75, 1.25, 1.0]}
    claim = {"paper": "something", "verdict": "holds", "evidence": "numbers"}
    names = list(tasks.DEMO_TASKS)
    confusion = [[10 if i == j else 1 for j in range(6)] for i in range(6)]
    router_rows = [{"variant": v, "layer": k, "cost_fraction": k / 6, "params": 1234 + k,
                    "accuracy": 0.8 + 0.01 * k, "per_task": {n: 0.9 for n in names},
                    "confusion": confusion, "ms_per_input": 1.25 + k, "fit_seconds": 0.4}
                   for v in ("linear", "mlp", "fusion") for k in (0, 2)]
    router_rows.insert(0, {**router_rows[0], "variant": "paper", "layer": 6, "cost_fraction": 1.0})
    method_rows = [{"task": t, "method": m, "seed": seed, "metric": "accuracy",
                    "value": 0.7 + 0.01 * i + 0.0125 * seed, "steps_run": 800 + 200 * seed,
                    "best_step": 400 + 200 * seed, "lr": 5e-4, "train_seconds": 3.25 + seed,
                    "cpu_seconds": 6.5 + seed, "wall_seconds": 5.0, "peak_growth_mib": 250.5,
                    "memory_measure": "x", "trainable_params": 10130 + i, "adapter_params": 9360 + i,
                    "train_rows": 400, "eval_rows": 64, "fraction_of_lora_adapter": 0.0635,
                    "fraction_of_lora_trainable": 0.0683}
                   for t in ("sst2", "rte") for seed in (0, 1) for i, m in enumerate(report.METHODS)]
    aggregate = seeds.aggregate(method_rows)
    for entry in aggregate:
        entry.update({"adapter_params": 9360, "trainable_params": 10130, "fraction_of_lora_adapter": 0.0635,
                      "train_rows": 400, "eval_rows": 64, "lr": 5e-4})
    comparisons, outcomes = methods.claim_per_task(aggregate, ["sst2", "rte"])
    ratio = {"model": "all-minilm-l6-v2 (measured)", "tt_lora": 9360, "lora": 147456, "adapter": 113040,
             "fraction_of_lora": 9360 / 147456, "fraction_of_adapter": 9360 / 113040}
    return {
        "meta": {"budget": "small", "settings": report.BUDGETS["small"].to_dict(), "seed": 0, "seeds": [0, 1],
                 "started": run["started"], "finished": "2026-01-01T00:05:00+00:00", "seconds": 300.0,
                 "machine": {"platform": "Linux", "cpu": "CPU", "logical_cpus": 4, "cores": 2,
                             "threads": 3, "device": "cpu", "gpu": None, "memory_gib": 8.0,
                             "python": "3.11", "torch": "2", "transformers": "4", "peft": "0",
                             "adapters": "1"},
                 "load_average_at_start": [1.5, 1.25, 1.0],
                 "base_model": {"name": "all-minilm-l6-v2"}, "data_dir": "/data",
                 "command": "python -m ttmoe_core report --budget small"},
        "paper": dict(report.PAPER),
        "experiments": {
            "contraction": {"task": "sst2", "rows": [
                {"batch_size": b, "contract_ms": 10.0 * b, "reconstruct_ms": 12.5 * b,
                 "contract_ms_per_input": 10.0, "reconstruct_ms_per_input": 12.5, "ratio": 1.25,
                 "max_abs_diff": 2.5e-7, "hidden_max_abs_diff": 3.1e-5, "hidden_max_abs": 5.94}
                for b in (1, 8, 32)], "claim": claim, "differences": ["a"], "run": run},
            "methods": {"tasks": ["sst2", "rte"], "seeds": [0, 1], "rows": method_rows, "ratios": [ratio],
                        "aggregate": aggregate, "comparisons": comparisons, "outcomes": outcomes,
                        "spread_rule": seeds.SPREAD_RULE, "margin": methods.MARGIN,
                        "summary": [{"method": m, "tasks": 2, "adapter_params": 9360, "mean_value": 0.71,
                                     "mean_train_seconds": 3.25, "mean_cpu_seconds": 7.0,
                                     "mean_peak_growth_mib": None}
                                    for m in report.METHODS],
                        "paper": {"tt_lora_fraction_of_lora": 0.02, "tt_lora_fraction_of_adapter": 0.003},
                        "claim": {**claim, "verdict": "does not hold"}, "differences": ["b"], "run": run},
            "routers": {"names": names, "rows": router_rows, "train_rows": 384, "held_out_rows": 192,
                        "best_layer": {"paper": 6, "linear": 2, "mlp": 2, "fusion": 2},
                        "claim": claim, "differences": ["c"], "run": run},
            "integration": {"experts": names, "router": {"variant": "fusion", "layer": 2, "accuracy": 0.9},
                            "rows": [{"task": n, "metric": "accuracy", "expert_alone": 0.8, "mixture": 0.75,
                                      "gap": -0.05, "routing_accuracy": 0.9, "rows": 64} for n in names],
                            "fusion_rows": [{"task": "sst2", "metric": "accuracy", "adapter_alone": 0.8,
                                             "fusion": 0.7, "gap": -0.1, "train_seconds": 4.5,
                                             "params": {"trained": 2659586}}],
                            "claim": claim, "differences": ["d"], "run": run},
            "frontier": synthetic_frontier(claim, run),
            "decoder": synthetic_decoder(claim, run),
            "mixed": {"rows": 384, "paper_gain_points": 4.0, "moe_mean": 0.7, "fusion_mean": 0.65,
                      "gain_points": 5.0,
                      "per_task": [{"task": n, "metric": "accuracy", "rows": 64, "moe": 0.7, "fusion": 0.65,
                                    "gain_points": 5.0, "routed_right": 0.9} for n in names],
                      "params": {"moe_total": 62000, "moe_router": 560000, "fusion_total": 3400000,
                                 "fusion_trained": 2660000, "moe_fraction_of_fusion": 0.018,
                                 "paper_moe_fraction_of_fusion": 0.0003},
                      "claim": claim, "differences": ["e"], "run": run},
        },
        "trainings": [{"task": "sst2", "method": "tt-lora", "seed": 0, "started": run["started"],
                       "train_rows": 400, "steps_run": 800, "train_seconds": 3.25, "cpu_seconds": 6.5,
                       "wall_seconds": 5.0, "metric": "accuracy", "value": 0.7, "peak_growth_mib": None}],
        "figures": {"mixed": {"html": "figures/mixed.html", "png": "figures/mixed.png"}},
    }


# ----------------------------------------------------------------------------- rendering (fast)


def test_render_markdown_has_every_section_and_claim():
    results = synthetic_results()
    text = report.render_markdown(results)
    for name in report.SECTIONS:
        assert f"## {report.SECTION_TITLES[name]}" in text
    assert text.count("**Paper's claim:**") == len(report.SECTIONS)
    assert "Here it does not hold" in text and "Here it holds" in text
    assert "![mixed](figures/mixed.png)" in text and "(figures/mixed.html)" in text
    assert "2026-01-01T00:00:00+00:00" in text and "seed 0" in text
    assert "–" in text  # a missing memory value renders as a dash, not "None"
    # the machine (runinfo.machine_info's keys) and the 1-minute load average at start
    assert ("Machine: CPU, 2 usable cores; Linux; torch 2 with 3 thread(s) on cpu; load average 1.5 at start"
            in text)
    assert "budget `small`, load average 1.5 at start.*" in text


def test_settings_render_the_same_after_a_json_round_trip():
    """results.json turns the budget's tuples into lists; the header still shows the budget as it is."""
    results = synthetic_results()
    reloaded = json.loads(json.dumps(results))
    assert isinstance(reloaded["meta"]["settings"]["comparison_tasks"], list)
    tasks_line = f"comparison_tasks={tuple(report.BUDGETS['small'].comparison_tasks)!r}"
    assert tasks_line in report.render_markdown(results)
    assert report.render_markdown(reloaded) == report.render_markdown(results)


def test_committed_report_renders_from_its_results():
    """reports/ as committed: every section, every number traced to results.json."""
    results = json.loads((REPO_ROOT / "reports" / report.RESULTS_FILE).read_text(encoding="utf-8"))
    text = report.render_markdown(results)
    assert set(results["experiments"]) <= set(report.SECTIONS)
    for name in results["experiments"]:              # a report may predate a section (frontier)
        assert f"## {report.SECTION_TITLES[name]}" in text
    assert untraced_numbers(text, results) == []
    assert text == (REPO_ROOT / "reports" / report.MARKDOWN_FILE).read_text(encoding="utf-8")


def test_results_of_older_versions_still_render():
    """A report of 2026-11 (machine keys usable_cpus/torch_threads, one-number load averages)."""
    results = json.loads((REPO_ROOT / "tests" / "fixtures" / "results_v1.json").read_text(encoding="utf-8"))
    assert "usable_cpus" in results["meta"]["machine"]      # still the old shape
    text = report.render_markdown(results)
    for name in results["experiments"]:
        assert f"## {report.SECTION_TITLES[name]}" in text
    machine = results["meta"]["machine"]
    assert (f"{machine['cpu']}, {machine['usable_cpus']} usable cores; {machine['platform']}; torch "
            f"{machine['torch']} with {machine['torch_threads']} thread(s) on {machine['device']}; load average "
            f"{machine['load_average_at_start']} at start") in text
    run = results["experiments"]["mixed"]["run"]
    assert f"load average {run['load_average_at_start']} at start.*" in text
    assert report.machine_summary(results["meta"]) == {
        "cpu": machine["cpu"], "gpu": machine["gpu"], "cores": machine["usable_cpus"],
        "threads": machine["torch_threads"], "device": machine["device"], "platform": machine["platform"],
        "torch": machine["torch"], "load_average": machine["load_average_at_start"]}
    assert untraced_numbers(text, results) == []


def test_every_table_number_is_traced_to_the_results():
    results = synthetic_results()
    text = report.render_markdown(results)
    numeric = [c for c in table_cells(text) if NUMERIC_CELL.match(c)]
    assert len(numeric) > 100
    assert untraced_numbers(text, results) == []
    tampered = text.replace("| 0.750 |", "| 0.751 |", 1)
    assert tampered != text and untraced_numbers(tampered, results) == ["0.751"]


def test_render_section_without_figure_links_and_formats():
    results = synthetic_results()
    section = report.render_section(results, "mixed", figure_links=False)
    assert section.startswith("## 5.") and "figures/" not in section
    assert report.fmt(None, "f3") == "–" and report.fmt(float("nan"), "f3") == "–"
    assert report.fmt(1234567, "int") == "1,234,567" and report.fmt(0.0635, "pct1") == "6.3%"
    assert report.fmt(1.25, "ratio") == "1.25×" and report.fmt(-0.05, "signed3") == "-0.050"


def test_figures_carry_the_results_numbers(tmp_path):
    results = synthetic_results()
    figures = report.build_figures(results)
    expected = {n for names in report.SECTION_FIGURES.values() for n in names}
    assert set(figures) == expected
    rows = results["experiments"]["contraction"]["rows"]
    assert list(figures["contraction_ms"].data[0].y) == [r["contract_ms"] for r in rows]
    assert list(figures["contraction_ms"].data[1].y) == [r["reconstruct_ms"] for r in rows]
    mixed = results["experiments"]["mixed"]
    assert list(figures["mixed"].data[0].y)[-1] == mixed["moe_mean"]
    written = report.write_figures({"mixed": figures["mixed"],
                                    "router_confusion_fusion": figures["router_confusion_fusion"],
                                    "contraction_ms": figures["contraction_ms"]}, tmp_path / "figures")
    for entry in written.values():
        assert (tmp_path / entry["html"]).is_file()
        assert (entry["png"] is not None) == report.png_available()
        if entry["png"]:
            assert (tmp_path / entry["png"]).read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "figures" / "plotly.min.js").is_file()


# ----------------------------------------------------------------------------- command line (fast)


def _parse(argv):
    from ttmoe_core.cli import Parser
    from ttmoe_core.cli import report as report_cli

    parser = Parser(prog="test")
    report_cli.add_parsers(parser.add_subparsers(dest="command", parser_class=Parser))
    return parser.parse_args(argv)


def test_report_parser_defaults_and_usage_errors(tmp_path):
    from ttmoe_core.cli import UsageError
    from ttmoe_core.cli import report as report_cli

    args = _parse(["report"])
    assert (args.budget, args.out, args.data_dir, args.json, args.jobs) == ("small", "reports", None, False, 1)
    assert args.func is report_cli.cmd_report
    assert _parse(["report", "--jobs", "2"]).jobs == 2
    with pytest.raises(UsageError):
        _parse(["report", "--budget", "huge"])
    for bad in ("0", "-1", "two"):
        with pytest.raises(UsageError, match="jobs"):
            _parse(["report", "--jobs", bad])
    with pytest.raises(UsageError, match="not a folder"):
        report_cli.cmd_report(_parse(["report", "--data-dir", str(tmp_path / "nope")]))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="task data missing"):
        report_cli.cmd_report(_parse(["report", "--data-dir", str(empty), "--out", str(tmp_path / "out")]))
    assert report_cli.main(["--budget", "huge"]) == 2


def test_report_module_runs_the_report_command():
    """``python -m ttmoe_core.report`` is the ``report`` subcommand on its own."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "ttmoe_core.report", "--budget", "huge"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "invalid choice: 'huge'" in done.stderr


def test_unknown_budget_and_missing_tasks(tmp_path):
    with pytest.raises(report.ReportError, match="unknown budget"):
        report.run_report("medium", tmp_path)
    with pytest.raises(report.ReportError, match="mnli"):
        report.run_report("small", tmp_path / "out", data_dir=tmp_path)


def test_only_some_experiments_run_into_the_work_folder_and_write_no_report(tmp_path, capsys):
    """``report --only contraction``: that experiment's JSON in the work folder, no report (a
    partial one would read as a whole); bad names and a missing work folder are refused."""
    from ttmoe_core import cli

    with pytest.raises(report.ReportError, match="unknown experiments"):
        report.run_report("small", tmp_path / "out", work_dir=tmp_path / "w", only=["nope"])
    with pytest.raises(report.ReportError, match="needs a work folder"):
        report.run_report("small", tmp_path / "out", only=["contraction"])
    code = cli.main(["report", "--budget", "small", "--out", str(tmp_path / "out"), "--work-dir",
                     str(tmp_path / "w"), "--only", "contraction", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["experiments"] == ["contraction"]
    saved = json.loads((tmp_path / "w" / "experiments" / "contraction.json").read_text())
    assert saved["rows"] and not (tmp_path / "out" / report.RESULTS_FILE).exists()
    again = report.run_report("small", tmp_path / "out", work_dir=tmp_path / "w", resume=True,
                              only=["contraction"])
    assert again["experiments"]["contraction"] == saved          # taken as finished, not rerun


# ----------------------------------------------------------------------------- AdapterFusion (tiny model)


@pytest.fixture(scope="module")
def tiny_adapters(tiny_bert, samples_dir):
    """Two bottleneck-adapter experts (sst2, cola) trained for 2 steps on the tiny BERT."""
    out = {}
    for task in ("sst2", "cola"):
        config = experts.ExpertConfig(task=task, method="adapter", rank=4, steps=2, batch_size=4,
                                      max_length=32, train_limit=16, eval_limit=8)
        out[task] = experts.train_expert(config, tiny_bert, data_dir=samples_dir)
    return out


def test_fused_encoder_loads_adapters_and_trains_only_fusion(tiny_bert, tiny_adapters):
    encoder = baselines.fused_encoder(tiny_bert, tiny_adapters)
    trainable = [n for n, p in encoder.named_parameters() if p.requires_grad]
    assert trainable and all("adapter_fusion_layer" in n for n in trainable)
    state = encoder.state_dict()
    for task, expert in tiny_adapters.items():
        key = next(k for k in expert.tensors if "adapter_down" in k and k.endswith("weight"))
        renamed = key.replace(f".adapters.{experts.ADAPTER_NAME}.", f".adapters.{task}.")
        assert state[renamed].equal(expert.tensors[key])
    with pytest.raises(baselines.FusionError, match="at least two"):
        baselines.fused_encoder(tiny_bert, {"sst2": tiny_adapters["sst2"]})


def test_train_fusion_mixed_tasks_per_task_heads(tiny_bert, tiny_adapters, samples_dir):
    train = {t: tasks.load_task(t, "train", data_dir=samples_dir, limit=12) for t in tiny_adapters}
    valid = tasks.load_task("cola", "validation", data_dir=samples_dir, limit=8)
    before = {k: v.clone() for k, v in tiny_bert.model.state_dict().items()}
    config = baselines.FusionConfig(steps=3, batch_size=6, max_length=32)
    result = baselines.train_fusion(tiny_bert, tiny_adapters, train, config, log_every=1)
    assert [h["step"] for h in result.history] == [1, 2, 3]
    assert all(math.isfinite(h["loss"]) for h in result.history)
    assert result.tasks == ["sst2", "cola"] and result.train_rows == {"sst2": 12, "cola": 12}
    params = result.params(tiny_adapters)
    assert params["adapters"] == sum(e.adapter_params() for e in tiny_adapters.values())
    assert params["fusion"] == result.model.fusion_params() > 0
    assert params["total"] == params["adapters"] + params["fusion"] + params["heads"]
    scored = baselines.evaluate_fusion(result, tiny_bert, valid)
    assert scored["rows"] == 8 and "mcc" in scored["metrics"]
    after = tiny_bert.model.state_dict()
    assert all(before[k].equal(after[k]) for k in before)   # the shared base model is untouched


def test_reconstructing_copy_matches_contraction(tiny_bert):
    import torch

    config = experts.ExpertConfig(task="sst2", init="kaiming", max_length=16)
    model = experts.build_expert_model(config, tiny_bert, num_labels=2,
                                       generator=torch.Generator().manual_seed(0)).eval()
    rebuilt = contraction.reconstructing_copy(model)
    assert not adapters.tt_layers(model.encoder) == {}
    assert all(isinstance(m, adapters.ReconstructedTTLoRALinear)
               for name, m in rebuilt.encoder.named_modules() if name.endswith(("query", "value")))
    batch = tiny_bert.tokenizer(["a short input", "another, longer input here"], padding=True,
                                return_tensors="pt")
    with torch.no_grad():
        _, contracted = contraction.forward(model, dict(batch))
        _, reconstructed = contraction.forward(rebuilt, dict(batch))
    assert (contracted - reconstructed).abs().max() <= report.TOLERANCE


# ----------------------------------------------------------------------------- Compare page


def test_compare_page_shows_a_report_folder(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    folder = tmp_path / "reports"
    folder.mkdir()
    results = synthetic_results()
    (folder / report.RESULTS_FILE).write_text(json.dumps(results))
    monkeypatch.setenv("TTMOE_REPORT_DIR", str(folder))
    monkeypatch.setenv("TTMOE_WORKSPACE", str(tmp_path / "workspace"))
    at = AppTest.from_file(str(REPO_ROOT / "pages" / "compare.py"), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Compare with the paper"
    shown = "\n".join(m.value for m in at.markdown)
    for name in report.SECTIONS:
        assert report.SECTION_TITLES[name] in shown
    assert any(m.label == "Paper's claims that hold here" and m.value == "6 of 7" for m in at.metric)
    assert any(b.label == "Run the small report" for b in at.button)
    # experiment 2 over two seeds: mean ± std per task and method, the spread rule, the seeds
    tt_sst2 = next(r for r in results["experiments"]["methods"]["aggregate"]
                   if (r["task"], r["method"]) == ("sst2", "tt-lora"))
    assert f"| {tt_sst2['value_mean']:.3f} ± {tt_sst2['value_std']:.3f} |" in shown
    assert f"Rule: {results['experiments']['methods']['spread_rule']}." in shown
    assert any("seeds 0, 1 (experiment 2: mean ± std), seed 0 elsewhere" in c.value for c in at.caption)


def _compare_page(report_dir, tmp_path, monkeypatch):
    """The Compare page run on the report folder ``report_dir``; no exception."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("TTMOE_REPORT_DIR", str(report_dir))
    monkeypatch.setenv("TTMOE_WORKSPACE", str(tmp_path / "workspace"))
    at = AppTest.from_file(str(REPO_ROOT / "pages" / "compare.py"), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_compare_page_shows_the_committed_report(tmp_path, monkeypatch):
    """The committed reports/ was written by an older version (other machine keys): still shown."""
    at = _compare_page(REPO_ROOT / "reports", tmp_path, monkeypatch)
    machine = json.loads((REPO_ROOT / "reports" / report.RESULTS_FILE).read_text())["meta"]["machine"]
    cores = machine.get("cores", machine.get("usable_cpus"))          # newer keys, or the older ones
    threads = machine.get("threads", machine.get("torch_threads"))
    assert cores and threads
    assert any(f"{cores} cores · torch {machine['torch']}, {threads} threads" in c.value for c in at.caption)


def test_compare_page_gives_a_resumed_runs_time_over_its_starts(tmp_path, monkeypatch):
    folder = tmp_path / "reports"
    folder.mkdir()
    results = synthetic_results()
    results["meta"].update(sessions=[{"started": "2026-01-01T00:00:00+00:00", "seconds": 5400.0},
                                     {"started": "2026-01-02T00:00:00+00:00", "seconds": 1800.0}],
                           seconds_all_sessions=7200.0)
    (folder / report.RESULTS_FILE).write_text(json.dumps(results))
    at = _compare_page(folder, tmp_path, monkeypatch)
    shown = next(m for m in at.metric if m.label == "Run time")
    assert shown.value == "2.0 h" and "2 starts" in shown.help


def test_compare_page_without_a_report(tmp_path, monkeypatch):
    at = _compare_page(tmp_path / "missing", tmp_path, monkeypatch)
    assert any("--budget full" in i.value for i in at.info)


# ----------------------------------------------------------------------------- a report of an older budget


def test_budget_changes_list_what_todays_budget_of_that_name_does_otherwise():
    meta = {"budget": "small", "settings": json.loads(json.dumps(report.BUDGETS["small"].to_dict()))}
    assert report.budget_changes(meta) == []
    meta["settings"]["steps"] = 60
    del meta["settings"]["seeds"]                       # a report older than the setting: its default
    del meta["settings"]["fusion_tasks"]                # no default: "not recorded" (None)
    small = report.BUDGETS["small"]
    assert report.budget_changes(meta) == [("steps", 60, small.steps), ("fusion_tasks", None, list(small.fusion_tasks)),
                                           ("seeds", [0], list(small.seeds))]
    assert report.budget_changes({"budget": "mine", "settings": {}}) == []
    assert report.budget_changes({"budget": "small", "settings": "broken"}) == []


def test_compare_page_warns_when_the_report_ran_an_older_budget(tmp_path, monkeypatch):
    folder = tmp_path / "reports"
    folder.mkdir()
    results = synthetic_results()
    (folder / report.RESULTS_FILE).write_text(json.dumps(results))
    assert not _compare_page(folder, tmp_path, monkeypatch).warning     # today's budget: no warning
    results["meta"]["settings"]["steps"] = 60
    (folder / report.RESULTS_FILE).write_text(json.dumps(results))
    warnings = [w.value for w in _compare_page(folder, tmp_path, monkeypatch).warning]
    assert len(warnings) == 1 and f"steps 60 → {report.BUDGETS['small'].steps}" in warnings[0]


# ----------------------------------------------------------------------------- end to end (slow)


@pytest.mark.slow
def test_small_report_end_to_end(tmp_path, record_property):
    """``report --budget small`` into tmp_path: structure, figures, and every number traced.

    The run time (≤ 300 s on 2 idle cores is the budget's aim) is recorded, not asserted.
    """
    started = time.perf_counter()
    returned = report.run_report("small", tmp_path)
    seconds = time.perf_counter() - started
    record_property("small_report_seconds", round(seconds, 1))
    print(f"report --budget small: {seconds:.0f} s")
    results = json.loads((tmp_path / report.RESULTS_FILE).read_text())
    assert results["meta"]["seconds"] == returned["meta"]["seconds"]
    assert set(results["experiments"]) == set(report.SECTIONS)
    markdown = (tmp_path / report.MARKDOWN_FILE).read_text()
    for name in report.SECTIONS:
        assert f"## {report.SECTION_TITLES[name]}" in markdown
        exp = results["experiments"][name]
        if name == "decoder":          # the small budget names no decoder (CI has none to load)
            assert exp["skipped"] and exp["claim"]["verdict"] == "not measured"
            continue
        assert exp["claim"]["verdict"] in ("holds", "partly holds", "does not hold")
        assert exp["run"]["seconds"] > 0 and exp["run"]["started"] in markdown
    assert markdown.count("**Paper's claim:**") == len(report.SECTIONS)
    assert results["meta"]["machine"]["threads"] >= 1 and results["meta"]["machine"]["cores"] >= 1
    # experiment 1 checked equality; experiment 2 trained every method on every comparison task
    assert results["experiments"]["contraction"]["max_abs_diff"] <= report.TOLERANCE
    methods = results["experiments"]["methods"]
    assert {(r["task"], r["method"]) for r in methods["rows"]} == {
        (t, m) for t in report.BUDGETS["small"].comparison_tasks for m in report.METHODS}
    assert methods["budget_matches_measured"] is True
    small = report.BUDGETS["small"]
    assert {(r["task"], r["method"], r["seed"]) for r in methods["rows"]} == {
        (t, m, s) for t in small.comparison_tasks for m in report.METHODS for s in small.seeds}
    assert all(a["n"] == len(small.seeds) and a["value_std"] is not None for a in methods["aggregate"])
    assert all(1 <= r["steps_run"] <= small.steps and r["cpu_seconds"] > 0 for r in methods["rows"])
    assert len(methods["comparisons"]) == 2 * len(small.comparison_tasks)
    assert f"Rule: {methods['spread_rule']}." in markdown
    assert len(results["experiments"]["integration"]["experts"]) >= 4
    # figures
    assert results["figures"]
    for entry in results["figures"].values():
        assert (tmp_path / entry["html"]).is_file()
        if report.png_available():
            assert (tmp_path / entry["png"]).is_file()
    # every number in the tables comes from results.json
    cells = [c for c in table_cells(markdown) if NUMERIC_CELL.match(c)]
    assert len(cells) > 100
    assert untraced_numbers(markdown, results) == []
    # the synthetic fixture keeps the shape of the real thing
    real_keys = {k: set(v) for k, v in results["experiments"].items()}
    fake = synthetic_results()["experiments"]
    for name, keys in real_keys.items():
        if "skipped" in keys:           # the small budget skips the decoder: nothing to compare
            continue
        assert set(fake[name]) <= keys | {"run"}, name


@pytest.mark.slow
def test_training_in_a_fresh_process_measures_memory(samples_dir, tmp_path):
    """Experiment 2's memory path (full budget): the expert comes back with its peak RSS growth."""
    train = tasks.load_task("sst2", "train", data_dir=samples_dir, limit=16)
    valid = tasks.load_task("sst2", "validation", data_dir=samples_dir, limit=8)
    config = experts.ExpertConfig(task="sst2", steps=4, batch_size=4, max_length=32, eval_limit=8,
                                  holdout_fraction=0.25, eval_every=1, patience=1, checkpoint_every=1)
    out = worker.train_in_fresh_process(config.to_dict(), "all-minilm-l6-v2", train, valid,
                                        checkpoint_dir=tmp_path / "ck")
    expert = out["expert"]
    assert isinstance(expert, experts.Expert) and expert.metrics["eval_rows"] == 8
    assert (tmp_path / "ck").is_dir()                       # the run checkpointed (full budget: resumable)
    assert 1 <= expert.metrics["steps_run"] <= 4 and expert.metrics["train_cpu_seconds"] > 0
    assert out["peak_growth_mib"] > 0
    assert out["peak_rss_mib"] >= out["rss_before_training_mib"] + out["peak_growth_mib"] - 1e-6
