"""A resumed report keeps the starts it took and the run time over all of them (sessions.json)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_report import synthetic_results
from ttmoe_core import report
from ttmoe_core.report import sessions
from ttmoe_core.report.experiment import Run
from ttmoe_core.report.plan import ReportError
from ttmoe_core.report.run import EXPERIMENTS
from ttmoe_core.runtime import runinfo


def test_session_log_begins_updates_and_is_read_back_on_resume(tmp_path):
    log = sessions.SessionLog.open(tmp_path, resume=True)          # nothing there yet
    assert log.entries == []
    log.begin("2026-01-01T00:00:00+00:00", jobs=2)
    log.mark(12.34)
    on_disk = json.loads((tmp_path / sessions.FILE).read_text())
    assert on_disk == log.entries and on_disk[0]["seconds"] == 12.3 and on_disk[0]["jobs"] == 2
    assert on_disk[0]["last_seen"] >= on_disk[0]["started"]

    again = sessions.SessionLog.open(tmp_path, resume=True)
    again.begin("2026-01-02T00:00:00+00:00", jobs=1)
    again.mark(0.05)
    again.mark(99.0, force=False)                   # a beat right after a write is not written
    assert again.entries[-1]["seconds"] == 0.1
    assert [e["started"][:10] for e in again.entries] == ["2026-01-01", "2026-01-02"]
    assert sessions.total_seconds(again.entries) == pytest.approx(12.4)
    assert json.loads((tmp_path / sessions.FILE).read_text())[0]["seconds"] == 12.3   # kept as it was

    fresh = sessions.SessionLog.open(tmp_path, resume=False)      # a fresh run starts the log again
    fresh.begin("2026-01-03T00:00:00+00:00", jobs=1)
    assert len(json.loads((tmp_path / sessions.FILE).read_text())) == 1


@pytest.mark.parametrize("text", ["{not json", '{"started": "x"}', '[{"started": "x", "seconds": -1}]',
                                  '[{"started": 3, "seconds": 1}]', '[{"started": "x", "seconds": true}]',
                                  '[{"started": "x", "seconds": NaN}]',
                                  '[{"started": "x", "seconds": 1' + "0" * 400 + '}]'])
def test_a_broken_session_log_names_the_file_and_how_to_go_on(tmp_path, text):
    (tmp_path / sessions.FILE).write_text(text)
    with pytest.raises(ReportError, match=f"{sessions.FILE}.*delete it"):
        sessions.SessionLog.open(tmp_path, resume=True)
    assert (tmp_path / sessions.FILE).read_text() == text               # nothing lost


JSON = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                max_size=4), max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(st.one_of(JSON, st.lists(st.fixed_dictionaries({"started": st.text(max_size=8),
                                                       "seconds": st.floats() | st.integers(min_value=-10**400,
                                                                                            max_value=10**400)}),
                          max_size=3)))
def test_any_json_is_a_session_log_or_a_clear_error(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("sessions")
    (folder / sessions.FILE).write_text(json.dumps(data))
    try:
        log = sessions.SessionLog.open(folder, resume=True)
    except ReportError:
        return
    assert sessions.total_seconds(log.entries) >= 0
    log.begin("2026-01-01T00:00:00+00:00", jobs=1)
    assert len(json.loads((folder / sessions.FILE).read_text())) == len(log.entries)


def test_markdown_says_how_a_resumed_run_ran():
    results = synthetic_results()
    one = report.render_markdown(results)
    assert f"on {results['meta']['started']} (finished" in one and "starts (`--resume`)" not in one
    entries = [{"started": "2026-01-01T00:00:00+00:00", "seconds": 3600.0},
               {"started": "2026-01-02T00:00:00+00:00", "seconds": 7.5}]
    results["meta"].update(sessions=entries, seconds_all_sessions=sessions.total_seconds(entries))
    text = report.render_markdown(results)
    assert ("in 2 starts (`--resume`) from 2026-01-01T00:00:00+00:00 to "
            f"{results['meta']['finished']}: 3607.5 s (1.0 h) of run time over them ({sessions.RULE})") in text
    assert f"the last start began {results['meta']['started']} and ran {results['meta']['seconds']} s" in text
    assert "Hosts (starts): unknown (1, 2)." in text               # entries from before the log kept it
    entries[0]["from_log"] = True                    # filled in from an older run's log
    assert ("; 1 earlier start(s) filled in from the run's log count only to their last finished "
            "training)") in report.render_markdown(results)


def test_each_resumed_report_adds_a_start(samples_dir, tmp_path):
    """run_report on a work folder whose experiments are all finished: it only writes the report;
    each --resume adds a start to meta["sessions"] and the run time over them."""
    work = tmp_path / "work"
    (work / "experiments").mkdir(parents=True)
    for name, exp in synthetic_results()["experiments"].items():
        assert name in EXPERIMENTS
        (work / "experiments" / f"{name}.json").write_text(json.dumps(exp))
    first = report.run_report("small", tmp_path / "out1", data_dir=samples_dir, work_dir=work, resume=True)
    assert len(first["meta"]["sessions"]) == 1
    second = report.run_report("small", tmp_path / "out2", data_dir=samples_dir, work_dir=work, resume=True)
    meta = second["meta"]
    assert [s["started"] for s in meta["sessions"]] == [first["meta"]["started"], meta["started"]]
    assert meta["sessions"][0]["seconds"] == first["meta"]["seconds"]
    assert meta["sessions"][1]["seconds"] == meta["seconds"]
    assert meta["seconds_all_sessions"] == pytest.approx(first["meta"]["seconds"] + meta["seconds"], abs=0.11)
    assert json.loads((tmp_path / "out2" / report.RESULTS_FILE).read_text())["meta"]["sessions"] == meta["sessions"]
    assert "in 2 starts (`--resume`)" in (tmp_path / "out2" / report.MARKDOWN_FILE).read_text()


def test_status_tells_the_starts_so_far_or_that_they_are_unknown(tmp_path):
    (tmp_path / "settings.json").write_text(json.dumps({"settings": report.BUDGETS["small"].to_dict()}))
    assert report.work_status(tmp_path)["sessions"] == []
    assert "Started" not in report.render_status(report.work_status(tmp_path))
    log = sessions.SessionLog.open(tmp_path, resume=True)
    for day, seconds in (("01", 5400.0), ("02", 1800.0)):
        log.begin(f"2026-01-{day}T00:00:00+00:00", jobs=2)
        log.mark(seconds)
    text = report.render_status(report.work_status(tmp_path))
    last = json.loads((tmp_path / sessions.FILE).read_text())[-1]["last_seen"]
    assert ("Started 2 time(s), each `--resume` adding one: from 2026-01-01T00:00:00+00:00 to "
            f"{last} (last written), 2.0 h of run time so far ({sessions.RULE})") in text
    assert f"Hosts (starts): {runinfo.cpu_name()} (1, 2)." in text
    (tmp_path / sessions.FILE).write_text("[1, 2]")
    status = report.work_status(tmp_path)
    assert status["sessions"] is None
    assert f"The run's starts are not known: {tmp_path / sessions.FILE} is not a report's session log" \
        in report.render_status(status)


def test_hosts_group_the_starts_by_cpu_model(tmp_path):
    entries = [{"started": "a", "seconds": 1.0}, {"started": "b", "seconds": 1.0, "cpu": "AMD EPYC"},
               {"started": "c", "seconds": 1.0, "cpu": "Intel(R) Xeon(R) Processor"},
               {"started": "d", "seconds": 1.0, "cpu": "AMD EPYC"}]
    assert sessions.hosts(entries) == "unknown (1); AMD EPYC (2, 4); Intel(R) Xeon(R) Processor (3)"
    log = sessions.SessionLog.open(tmp_path, resume=True)
    log.begin("e", jobs=1)
    log.begin("f", jobs=1, cpu="given")
    on_disk = json.loads((tmp_path / sessions.FILE).read_text())
    assert [e["cpu"] for e in on_disk] == [runinfo.cpu_name(), "given"]


def test_duration_words():
    assert [sessions.duration(s) for s in (0, 59.4, 60, 3599, 3600, 16402)] == [
        "0 s", "59 s", "1.0 min", "60.0 min", "1.0 h", "4.6 h"]


def test_an_interrupted_start_counts_to_its_last_write_and_the_next_adds_to_it(
        tiny_bert, samples_dir, tmp_path, monkeypatch):
    """run_report's own wiring: a start cancelled in experiment 2 keeps the seconds of its last
    beat in sessions.json; the --resume after it adds a start and the report sums both."""
    from ttmoe_core.report import run as report_run

    synthetic = synthetic_results()["experiments"]
    monkeypatch.setattr(report_run, "load_backbone", lambda: tiny_bert)
    monkeypatch.setattr(sessions, "BEAT_S", 0.0)                 # every progress event writes
    clock = itertools.count(0.0, 10.0)                           # perf_counter: +10 s a call
    monkeypatch.setattr(report_run.time, "perf_counter", lambda: next(clock))

    def cancelled(run):
        run.tell("training", 1, 2)                               # a beat, then the user cancels
        raise ReportError("report cancelled during training")

    for name in EXPERIMENTS:
        monkeypatch.setitem(report_run.EXPERIMENTS, name, lambda run, name=name: dict(synthetic[name]))
    monkeypatch.setitem(report_run.EXPERIMENTS, "methods", cancelled)
    work = tmp_path / "work"
    with pytest.raises(ReportError, match="cancelled"):
        report.run_report("small", tmp_path / "out", data_dir=samples_dir, work_dir=work, resume=True)
    first = json.loads((work / sessions.FILE).read_text())
    assert len(first) == 1 and first[0]["seconds"] > 0
    assert (work / "experiments" / "contraction.json").is_file()
    assert not (work / "experiments" / "methods.json").exists()

    monkeypatch.setitem(report_run.EXPERIMENTS, "methods", lambda run: dict(synthetic["methods"]))
    meta = report.run_report("small", tmp_path / "out", data_dir=samples_dir, work_dir=work, resume=True)["meta"]
    assert meta["sessions"][0] == first[0] and len(meta["sessions"]) == 2
    assert meta["sessions"][1]["seconds"] == meta["seconds"] > 0
    assert meta["seconds_all_sessions"] == pytest.approx(first[0]["seconds"] + meta["seconds"])
    assert report.run_time(meta) == (meta["seconds_all_sessions"], 2)
    assert json.loads((work / sessions.FILE).read_text()) == meta["sessions"]   # closed with the start
    assert "in 2 starts (`--resume`)" in (tmp_path / "out" / report.MARKDOWN_FILE).read_text()


@pytest.mark.slow
def test_a_training_in_a_child_process_ticks_the_clock_and_stops_on_cancel(embedded, samples_dir, tmp_path):
    """The full budget's memory path trains in a fresh process: the wait ticks the start's clock
    (a beat each poll), and a cancel ends the child at the next poll instead of after the training."""
    budget = dataclasses.replace(report.BUDGETS["small"], comparison_tasks=("sst2",), steps=4, batch_size=4,
                                 max_length=32, train_rows=16, eval_rows=8, eval_every=1, patience=1,
                                 min_steps=2, measure_memory=True)
    ticks: list[bool] = []
    run = Run(budget=budget, backbone=embedded, data_dir=samples_dir, comparison_tasks=["sst2"])
    run.work_dir = tmp_path / "w"
    run.clock = ticks.append
    expert = run.expert("sst2", "tt-lora", measure_memory=True)
    assert 1 <= expert.metrics["steps_run"] <= 4
    assert ticks.count(False) >= 1 and ticks[-1] is True          # polled while it trained, then saved
    record = run.trainings[("sst2", "tt-lora", 0)]
    assert record["memory_measure"] is not None and record["peak_growth_mib"] > 0

    asked = itertools.count()            # the user cancels once the child has started (after the first ask)
    cancelled = Run(budget=budget, backbone=embedded, data_dir=samples_dir, comparison_tasks=["sst2"],
                    should_stop=lambda: next(asked) >= 1)
    started = time.perf_counter()
    with pytest.raises(ReportError, match="stopped"):
        cancelled.expert("sst2", "lora", measure_memory=True)
    assert time.perf_counter() - started < 60 and not cancelled.trainings



# ----------------------------------------------------------------------------- a moved work folder


def test_a_work_folder_resumes_from_another_path_to_the_same_data_and_refuses_changed_data(
        samples_dir, tmp_path):
    import shutil
    import types

    from ttmoe_core.report import run as report_run
    names = ["rte", "sst2"]
    here, there = tmp_path / "here", tmp_path / "there"
    for root in (here, there):
        for name in names:
            shutil.copytree(samples_dir / name, root / name)
    mine = report_run.data_fingerprint(here, names)
    assert mine == report_run.data_fingerprint(there, list(reversed(names)))
    assert report_run.data_fingerprint(None, names) is None         # the hub: nothing to hash
    budget = {"steps": 4000, "seeds": [0, 1, 2]}

    def settings(root):
        return {"settings": budget, "data_dir": str(root), "data": report_run.data_fingerprint(root, names)}

    work = tmp_path / "w"
    report_run._work_dir(types.SimpleNamespace(), work, False, settings(here))
    report_run._work_dir(types.SimpleNamespace(), work, True, settings(there))   # moved clone: resumes
    assert json.loads((work / "settings.json").read_text())["data_dir"] == str(there)

    # one changed byte in one task's file: other data, refused, the folder left as it was
    target = sorted((there / "sst2").glob("*.parquet"))[0]
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    target.write_bytes(bytes(raw))
    before = (work / "settings.json").read_text()
    with pytest.raises(ReportError, match="other settings or data"):
        report_run._work_dir(types.SimpleNamespace(), work, True, settings(there))
    assert (work / "settings.json").read_text() == before
    with pytest.raises(ReportError, match="other settings or data"):          # other settings
        report_run._work_dir(types.SimpleNamespace(), work, True,
                             {**settings(here), "settings": {**budget, "steps": 60}})

    # a folder written before fingerprints (no "data"): the path decides, as it did
    old = {"settings": budget, "data_dir": str(here)}
    assert report_run.same_run(old, settings(here)) and not report_run.same_run(old, settings(there))

    # a folder begun before experiment 3's settings (router_buckets, router_decoder) resumes under
    # today's; one begun before another setting holds it at its default (steps has none: refused)
    full = json.loads(json.dumps(report.BUDGETS["full"].to_dict()))
    before = {k: v for k, v in full.items() if k not in ("router_buckets", "router_decoder")}
    assert full["router_decoder"] == "smollm2-135m"
    assert report_run.same_run({"settings": before, "data_dir": "d"}, {"settings": full, "data_dir": "d"})
    assert not report_run.same_run({"settings": {**before, "router_decoder": None}, "data_dir": "d"},
                                   {"settings": full, "data_dir": "d"})
    assert not report_run.same_run({"settings": {k: v for k, v in full.items() if k != "steps"},
                                    "data_dir": "d"}, {"settings": full, "data_dir": "d"})
    no_seeds = {k: v for k, v in full.items() if k != "seeds"}      # seeds' default is (0,): not full's
    assert not report_run.same_run({"settings": no_seeds, "data_dir": "d"}, {"settings": full, "data_dir": "d"})
