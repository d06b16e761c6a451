"""The decoder experiment (experiment 2's methods on a decoder, issue 31): the LoRA rank at
TT-LoRA's parameter count on hand-computed shapes, the runs it trains on a tiny llama through
the Run's model loader (names, methods, ranks, rates, expert folders), a resumed report that
reuses finished experts and continues a checkpoint, its Markdown (and old results without it),
``report --status`` and the budgets' settings."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from tests.test_report import synthetic_results, untraced_numbers
from tests.tinymodels import SAMPLES, tiny_bert, tiny_decoder
from ttmoe_core import budget as param_budget
from ttmoe_core import experts, report, store
from ttmoe_core.report import decoder
from ttmoe_core.report.experiment import Run
from ttmoe_core.report.markdown import RENDER_ORDER
from ttmoe_core.report.plan import DECODER_ONLY
from ttmoe_core.report.run import same_run

SMOLLM2_QV = [(576, 576), (576, 192)] * 30       # 30 layers: q_proj 576→576, v_proj 576→192 (3 KV heads)


def test_lora_rank_at_a_count_is_the_nearest_on_hand_computed_shapes():
    sizes = [(10, 20)]                                          # 30 parameters a LoRA rank
    assert decoder.lora_params(sizes, 1) == 30 and decoder.lora_params(sizes, 4) == 120
    assert decoder.lora_rank_at(1000, sizes) == 33              # 990 (off 10) beats 1,020 (off 20)
    assert decoder.lora_rank_at(1010, sizes) == 34              # 1,020 (off 10) beats 990 (off 20)
    assert decoder.lora_rank_at(1005, sizes) == 33              # a tie: the smaller rank
    assert decoder.lora_rank_at(1, sizes) == 1                  # never below rank 1
    assert decoder.lora_rank_at(10**6, sizes) == 33333


def test_tt_lora_r5_on_smollm2_matches_lora_r1():
    # balanced factors: 576 = 12·8·6 in, q out 6·8·12, v out 192 = 4·6·8; rank 5, r_0 = r_6 = 1:
    # q: 1·12·5 + 5·8·5 + 5·6·5 + 5·6·5 + 5·8·5 + 5·12·1 = 60+200+150+150+200+60 = 820
    # v: 1·12·5 + 5·8·5 + 5·6·5 + 5·4·5 + 5·6·5 + 5·8·1 = 60+200+150+100+150+40 = 700
    assert decoder.tt_lora_params(SMOLLM2_QV, 5) == 30 * (820 + 700) == 45_600
    assert decoder.lora_params(SMOLLM2_QV, 1) == 30 * (576 + 576 + 576 + 192) == 57_600
    assert decoder.lora_rank_at(45_600, SMOLLM2_QV) == 1       # 57,600 is nearer than 115,200
    # the parameter calculator counts the same from the preset's dimensions
    assert param_budget.compute_budget("smollm2-135m", "tt-lora", rank=5).trainable_params == 45_600
    assert param_budget.compute_budget("smollm2-135m", "lora", rank=16).trainable_params == 16 * 57_600


def test_module_sizes_read_the_models_own_layers():
    model = tiny_decoder("llama", num_layers=2).model          # hidden 48, 4 heads / 2 KV heads of 12
    assert decoder.module_sizes(model, ["q_proj", "v_proj"]) == [(48, 48), (48, 24)] * 2
    # 48 = 8·6 in; q out 6·8, v out 24 = 4·6: 380 + 320 a layer
    assert decoder.tt_lora_params(decoder.module_sizes(model, ["q_proj", "v_proj"]), 5) == 2 * (380 + 320)


BUDGET = dataclasses.replace(report.BUDGETS["small"], decoder_model="tiny-llama")


def _run(work, **kw) -> Run:
    """A Run of ``BUDGET`` whose decoder is a tiny llama (2 layers), on the shipped samples."""
    return Run(budget=BUDGET, backbone=tiny_bert(), data_dir=SAMPLES, work_dir=work,
               load_model=lambda name: tiny_decoder("llama", num_layers=2), **kw)


@pytest.fixture(scope="module")
def decoder_exp(tmp_path_factory):
    """The small budget's decoder experiment on a tiny llama, in a work folder."""
    work = tmp_path_factory.mktemp("work")
    return work, decoder.exp_decoder(_run(work))


EXPECTED = [("sst2", "tt-lora", 5, 1e-3, "tt-lora-r5-lr0.001"), ("sst2", "tt-lora", 5, 3e-3, "tt-lora-r5-lr0.003"),
            ("mrpc", "tt-lora", 5, 1e-3, "tt-lora-r5-lr0.001"), ("mrpc", "tt-lora", 5, 3e-3, "tt-lora-r5-lr0.003"),
            ("mrpc", "lora", 16, 5e-4, "lora"), ("mrpc", "lora", 4, 5e-4, "lora-r4")]


def test_the_decoder_experiment_trains_the_planned_runs(decoder_exp):
    work, exp = decoder_exp
    assert exp["model"] == "tiny-llama" and exp["modules"] == ["q_proj", "v_proj"]
    assert (exp["tt_lora_params"], exp["lora_rank_at_tt"], exp["lora_params_at_tt"]) == (1400, 4, 4 * 336)
    assert [(r["task"], r["method"], r["rank"], r["lr"], r["variant"]) for r in exp["rows"]] == EXPECTED
    for row in exp["rows"]:
        folder = work / row["expert"]
        assert folder == work / "decoder" / "experts" / f"{row['task']}-{row['variant']}-seed0"
        loaded = store.load_expert(folder)                      # a full expert folder, pack-ready
        assert loaded.base.name == "tiny-llama" and loaded.name == row["task"]
        assert (loaded.config.method, loaded.config.rank, loaded.config.lr) == (row["method"], row["rank"], row["lr"])
        assert loaded.adapter_params() == row["adapter_params"]
        assert row["cpu_seconds"] > 0 and row["wall_seconds"] > 0 and row["steps_run"] <= BUDGET.steps
        assert row["metric"] in row["holdout"] and row["value"] == row["metrics"][row["metric"]]
        if row["task"] == "mrpc":
            assert set(row["metrics"]) == {"accuracy", "f1"} and row["metric"] == "f1"
        if row["method"] == "tt-lora":                          # its hold-out curve, every eval_every steps
            assert [p["step"] for p in row["curve"]] == list(range(2, row["steps_run"] + 1, 2))
            assert max(p[row["metric"]] for p in row["curve"]) == row["holdout"][row["metric"]]
    assert [r["adapter_params"] for r in exp["rows"]][-2:] == [16 * 336, 4 * 336]
    assert not list((work / "experts").glob("*"))              # nothing among the encoder's experts


def test_the_pack_expert_is_the_best_hold_out_rate_and_the_verdict_reads_it(decoder_exp):
    _, exp = decoder_exp
    for task in ("sst2", "mrpc"):
        tt = [r for r in exp["rows"] if r["task"] == task and r["method"] == "tt-lora"]
        best = max(tt, key=lambda r: r["holdout"][r["metric"]])   # the first of a tie
        assert [r["chosen"] for r in tt] == [r is best for r in tt]
    chosen = next(r for r in exp["rows"] if r["task"] == "mrpc" and r["chosen"])
    by = {c["baseline_rank"]: c for c in exp["comparisons"]}
    assert set(by) == {16, 4} and all(c["task"] == "mrpc" for c in exp["comparisons"])
    lora16 = next(r for r in exp["rows"] if r["variant"] == "lora")
    assert by[16]["difference"] == pytest.approx(chosen["value"] - lora16["value"])
    assert by[16]["spread"] is None and "one seed" in exp["claim"]["evidence"]
    floors = {f["task"]: f for f in exp["floors"]}
    assert [c["metric"] for c in floors["mrpc"]["checks"]] == ["accuracy", "f1"]
    assert floors["mrpc"]["met"] == (chosen["metrics"]["accuracy"] >= 0.75 and chosen["metrics"]["f1"] >= 0.83)
    assert floors["mrpc"]["lora_r16"] == {"accuracy": lora16["metrics"]["accuracy"], "f1": lora16["metrics"]["f1"]}
    assert floors["sst2"]["lora_r16"] is None                  # no baseline on SST-2 in this budget
    expected = "holds" if by[16]["difference"] >= -0.02 else "does not hold"
    assert exp["claim"]["verdict"] == expected


def test_a_resumed_report_reuses_finished_experts_and_continues_a_checkpoint(decoder_exp, tmp_path,
                                                                              monkeypatch):
    source, exp = decoder_exp
    work = tmp_path / "work"
    shutil.copytree(source, work)
    part = work / "decoder" / "experts" / "mrpc-lora-seed0"       # LoRA r16 on MRPC: not finished
    shutil.rmtree(part)
    part.with_name(part.name + ".training.json").unlink()
    flag = {"stop": False}

    def progress(stage, done, total):
        if stage.startswith("training LoRA expert on mrpc") and done >= 2:
            flag["stop"] = True                                   # cancelled after step 2

    with pytest.raises(Exception, match="cancel"):
        decoder.exp_decoder(_run(work, resume=True, progress=progress, should_stop=lambda: flag["stop"]))
    checkpoint = part.with_name(part.name + ".checkpoint")
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["loop"]["step"] >= 2

    (work / "settings.json").write_text(json.dumps({"settings": BUDGET.to_dict()}))
    status = report.work_status(work)                          # report --status lists it in progress
    assert [r["run"] for r in status["decoder_running"]] == ["mrpc-lora-seed0"]
    assert len(status["decoder_finished"]) == 5 and status["decoder_total"] == 6
    text = report.render_status(status)
    assert "Decoder experiment (experiment 2's methods on tiny-llama" in text
    assert "5 of about 6 trainings finished" in text and "| mrpc-lora-seed0 | mrpc | LoRA |" in text
    assert "| tt-lora-r5-lr0.003 | sst2 | TT-LoRA |" in text

    calls = []
    train = experts.train_expert

    def spy(config, backbone, **kw):
        calls.append((config.task, config.method, config.resolved().rank, kw["resume"],
                      (kw["checkpoint_dir"] / "state.json").is_file()))
        return train(config, backbone, **kw)

    monkeypatch.setattr(experts, "train_expert", spy)
    again = decoder.exp_decoder(_run(work, resume=True))
    assert calls == [("mrpc", "lora", 16, True, True)]          # only it, from its checkpoint
    assert not checkpoint.exists()
    keys = ("task", "variant", "value", "metrics", "holdout", "steps_run", "best_step", "curve", "chosen")
    assert [{k: r[k] for k in keys} for r in again["rows"]] == [{k: r[k] for k in keys} for r in exp["rows"]]
    assert report.work_status(work)["decoder_running"] == []


def test_markdown_renders_the_section_beside_experiment_2_and_old_results_without_it(decoder_exp):
    _, exp = decoder_exp
    results = synthetic_results()
    results["experiments"]["decoder"] = {**exp, "run": results["experiments"]["methods"]["run"]}
    text = report.render_markdown(results)
    assert "## 2c. The methods on a decoder (tiny-llama)" in text
    assert text.index("## 2b.") < text.index("## 2c.") < text.index("## 3.")
    assert untraced_numbers(text, results) == []
    section = report.render_section(results, "decoder", figure_links=False)
    for row in exp["rows"]:
        assert f"| {row['task']} | {report.METHOD_LABELS[row['method']]} | {row['rank']} | {row['lr']:.1e} |" in section
    assert "| mrpc | f1 | 0.83 |" in section and "| mrpc | accuracy | 0.75 |" in section
    assert "seed spread: not measured (one seed)" in section
    old = synthetic_results()
    del old["experiments"]["decoder"]
    assert "2c." not in report.render_markdown(old)
    skipped = decoder.exp_decoder(Run(budget=report.BUDGETS["small"], backbone=None, data_dir=None))
    assert skipped["claim"]["verdict"] == "not measured"
    old["experiments"]["decoder"] = {**skipped, "run": results["experiments"]["methods"]["run"]}
    assert "the small budget runs no decoder experiment." in report.render_markdown(old)
    assert sorted(RENDER_ORDER) == sorted(report.SECTIONS) and report.SECTIONS[-1] == "decoder"


def test_budgets_and_a_work_folder_that_predates_the_decoder_settings():
    full = report.BUDGETS["full"]
    assert full.decoder_model == report.BUDGETS["full-demo"].decoder_model == "smollm2-135m"
    assert full.decoder_tasks == ("sst2", "mrpc", "qnli") and full.decoder_baseline_tasks == ("sst2", "mrpc")
    assert report.BUDGETS["small"].decoder_model is None
    today = {"settings": report.BUDGETS["full-demo"].to_dict(), "data_dir": "/d"}
    before = {"settings": {k: v for k, v in today["settings"].items() if k not in DECODER_ONLY},
              "data_dir": "/d"}
    assert same_run(json.loads(json.dumps(before)), json.loads(json.dumps(today)))
    changed = {**today["settings"], "decoder_lrs": [1e-3]}
    assert not same_run(json.loads(json.dumps({**today, "settings": changed})), json.loads(json.dumps(today)))


def test_a_setting_with_its_own_rate_is_its_own_variant():
    plain, rated = report.Setting("tt-lora", 5), report.Setting("tt-lora", 5, lr=3e-3)
    assert rated.tag == "tt-lora-r5-lr0.003" and "lr" not in plain.to_dict() and rated.to_dict()["lr"] == 3e-3
    run = Run(budget=report.BUDGETS["full"], backbone=None, data_dir=None)
    assert run.variant(plain) == "tt-lora" and run.variant(rated) == "tt-lora-r5-lr0.003"
    assert run._plan("sst2", "tt-lora-r5-lr0.003", 0)[1].lr == 3e-3
    assert run._plan("sst2", "tt-lora", 0)[1].lr == 1e-3           # the budget's TT-LoRA rate


def _pack_script():
    """scripts/build_decoder_pack.py as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "build_decoder_pack.py"
    spec = importlib.util.spec_from_file_location("build_decoder_pack", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_pack_script_takes_the_sections_pack_experts_into_a_pack(decoder_exp, tmp_path, capsys):
    work, exp = decoder_exp
    script = _pack_script()
    chosen = script.choose(work, ["sst2", "mrpc"])
    assert {t: p.name for t, p in chosen.items()} == {
        r["task"]: r["expert"].rsplit("/", 1)[1] for r in exp["rows"] if r["chosen"]}
    with pytest.raises(SystemExit, match="qnli"):
        script.choose(work, ["sst2", "qnli"])
    out = tmp_path / "demo-smollm2"
    assert script.main(["--work-dir", str(work), "--out", str(out), "--tasks", "sst2,mrpc", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert not out.exists() and f"train-router --pack {out} --variant ngram --layer 10 --all-rows" in printed
    assert f"eval-moe --pack {out} --save" in printed and f"calibrate-pool --pack {out}" in printed
    script.assemble(out, chosen, "the command")
    pack = store.load_pack(out)
    assert [e.name for e in pack.experts] == ["sst2", "mrpc"] and pack.manifest["base_model"]["name"] == "tiny-llama"
    build = pack.manifest["build"]
    assert build["command"] == "the command" and set(pack.manifest["validation"]) == {"sst2", "mrpc"}
    lrs = {r["task"]: r["lr"] for r in exp["rows"] if r["chosen"]}
    assert build["lr"] == lrs and build["experts_from"]["sst2"].endswith(f"decoder/experts/{chosen['sst2'].name}")
    script.record(out, "python -m ttmoe_core calibrate-pool --pack x")
    steps = store.load_pack(out).manifest["build"]["steps"]
    assert [s["command"] for s in steps] == ["store.build_pack (this script)",
                                             "python -m ttmoe_core calibrate-pool --pack x"]
