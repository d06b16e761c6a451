"""A resumed report keeps the starts it took and the run time over all of them (sessions.json)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_report import synthetic_results
from ttmoe_core import report
from ttmoe_core.report import sessions
from ttmoe_core.report.budgets import ReportError
from ttmoe_core.report.run import EXPERIMENTS


def test_session_log_begins_updates_and_is_read_back_on_resume(tmp_path):
    log = sessions.SessionLog.open(tmp_path, resume=True)          # nothing there yet
    assert log.entries == []
    log.begin("2026-01-01T00:00:00+00:00", jobs=2)
    log.update(12.34)
    on_disk = json.loads((tmp_path / sessions.FILE).read_text())
    assert on_disk == log.entries and on_disk[0]["seconds"] == 12.3 and on_disk[0]["jobs"] == 2
    assert on_disk[0]["last_seen"] >= on_disk[0]["started"]

    again = sessions.SessionLog.open(tmp_path, resume=True)
    again.begin("2026-01-02T00:00:00+00:00", jobs=1)
    again.update(0.05)
    assert [e["started"][:10] for e in again.entries] == ["2026-01-01", "2026-01-02"]
    assert sessions.total_seconds(again.entries) == pytest.approx(12.4)
    assert json.loads((tmp_path / sessions.FILE).read_text())[0]["seconds"] == 12.3   # kept as it was

    fresh = sessions.SessionLog.open(tmp_path, resume=False)      # a fresh run starts the log again
    fresh.begin("2026-01-03T00:00:00+00:00", jobs=1)
    assert len(json.loads((tmp_path / sessions.FILE).read_text())) == 1


@pytest.mark.parametrize("text", ["{not json", '{"started": "x"}', '[{"started": "x", "seconds": -1}]',
                                  '[{"started": 3, "seconds": 1}]', '[{"started": "x", "seconds": true}]',
                                  '[{"started": "x", "seconds": NaN}]'])
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
                                                       "seconds": st.floats() | st.integers()}), max_size=3)))
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
            f"{results['meta']['finished']}: 3607.5 s of run time") in text
    assert f"the last start began {results['meta']['started']} and ran {results['meta']['seconds']} s" in text


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
        log.update(seconds)
    text = report.render_status(report.work_status(tmp_path))
    assert ("Started 2 time(s) (`--resume`) from 2026-01-01T00:00:00+00:00, the last at "
            "2026-01-02T00:00:00+00:00: 2.00 hours of run time") in text
    (tmp_path / sessions.FILE).write_text("[1, 2]")
    status = report.work_status(tmp_path)
    assert status["sessions"] is None and f"Its `{sessions.FILE}` cannot be read" in report.render_status(status)
