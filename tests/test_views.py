"""services.views and the workspace's read rules: what the pages show, as data and words."""

from __future__ import annotations

import os

from test_jobs import _expert

from ttmoe_core import store
from ttmoe_core.services import views, workspace


def test_pack_summary_says_whether_a_pack_has_a_router(tmp_path):
    ws = workspace.Workspace(tmp_path)
    ws.build_pack("p", [_expert("a"), _expert("b", task="cola")])
    folder = ws.pack_dir("p")
    assert workspace.is_pack(folder) and not workspace.has_router(folder)
    summary = views.pack_summary(folder)
    assert summary["names"] == ["a", "b"] and summary["router"] is None
    assert [i["name"] for i in summary["experts"]] == ["a", "b"]
    assert summary["experts"][0]["folder"] == str(workspace.pack_experts(folder) / "a")
    assert not workspace.is_pack(tmp_path) and "error" in views.pack_summary(tmp_path / "none")


def test_folder_views_list_valid_and_invalid_experts(tmp_path):
    store.save_expert(_expert("good"), tmp_path / "good")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / store.CONFIG_FILE).write_text("{")
    infos, invalid = views.folder_experts(tmp_path)
    assert [i["name"] for i in infos] == ["good"] and list(invalid) == [str(tmp_path / "bad")]
    info = infos[0]
    assert info["metric"] == "accuracy" and info["metric_value"] == 0.5
    assert info["tt_layout"] == {"query": {"in_factors": [2, 4], "out_factors": [4, 2]}}
    assert views.folder_packs(tmp_path) == ([], {})


def test_expert_spectra_in_one_call(tmp_path):
    folder = store.save_expert(_expert("a"), tmp_path / "a")
    stats = views.expert_spectra(folder)
    assert stats is not None and len(stats["layers"]) == len(stats["norms"]) >= 1
    assert all(len(v) >= 1 for v in stats["values"].values())


def test_stamp_changes_with_the_files(tmp_path):
    assert views.stamp(tmp_path / "none") == 0.0
    (tmp_path / "a.json").write_text("{}")
    os.utime(tmp_path / "a.json", (1000, 1000))
    os.utime(tmp_path, (1000, 1000))
    first = views.stamp(tmp_path)
    os.utime(tmp_path / "a.json", (2000, 2000))
    assert views.stamp(tmp_path) == 2000 > first


def test_sub_workspaces_skip_experts_packs_and_reserved_folders(tmp_path):
    store.save_expert(_expert("e"), tmp_path / "e")
    for name in ("mine", "packs", "reports", ".hidden"):
        (tmp_path / name).mkdir()
    assert workspace.sub_folders(tmp_path) == ["mine"]
    assert workspace.sub_workspace(tmp_path, "mine").root == tmp_path / "mine"
    assert workspace.sub_workspace(tmp_path, None).root == tmp_path
    for taken in ("e", "packs", "../up"):
        try:
            workspace.sub_workspace(tmp_path, taken)
        except workspace.WorkspaceError:
            continue
        raise AssertionError(taken)


def test_formats_and_words():
    assert views.fmt_date("2026-11-24T22:27:46+00:00") == "2026-11-24 22:27 UTC"
    assert views.fmt_date(None) == "date unknown" and views.fmt_date("soon") == "soon"
    assert views.shape_text({"in_factors": [8, 8, 6], "out_factors": [6, 8, 8]}) == "8,8,6 | 6,8,8"
    assert views.parse_shape("automatic", 384, 384) == (None, None)
    assert views.parse_shape("8,8,6 | 6,8,8", 384, 384) == ([8, 8, 6, 6, 8, 8], None)
    shape, error = views.parse_shape("8,x", 384, 384)
    assert shape is None and "not a list of integers" in error
    assert views.parse_shape("8,8", 384, 384)[1]                     # does not fit 384 -> 384
    events = [{"stage": "training"}, {"holdout": {"accuracy": 0.8125}, "best_step": 300}]
    assert views.holdout_words(events) == " · hold-out accuracy 0.812 (best at step 300)"
    assert views.holdout_words([]) == ""
    assert views.confidence_words(0.95).startswith("The router is confident")
    assert views.decision_words({"in_pool": False, "pool_score": -1.0}, None)[0] == "error"
    assert views.decision_words({"router_probs": {"a": 0.5, "b": 0.45, "c": 0.05}}, None)[0] == \
        "warning"
    assert views.decision_words({"router_probs": {"a": 0.9, "b": 0.1}}, None) is None


def test_one_line_and_one_byte_format():
    from ttmoe_core import budget, tt
    from ttmoe_core.errors import one_line

    assert one_line(ValueError("first\nsecond")) == "first" and one_line(KeyError()) == "KeyError"
    assert [budget.format_bytes(n) for n in (5, 135680, 3 * 2**30, 2**42)] == [
        "5 B", "132.5 KiB", "3.0 GiB", "4096.0 GiB"]
    assert tt.parse_shape("16, 8 | 4,4") == [16, 8, 4, 4]
