"""The workspace: every file operation a user can trigger stays inside its root, acts only on
valid experts and packs, and checks every name; listings sort valid from invalid folders."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from test_jobs import _expert

from ttmoe_core import routing, store
from ttmoe_core.services import workspace
from ttmoe_core.services.workspace import Workspace, WorkspaceError
from ttmoe_core.store import CONFIG_FILE, WEIGHTS_FILE

BAD_NAMES = ["", ".", "..", ".hidden", "-x", "a/b", "../escape", "/abs", "a" * 65, "tab\tname",
             "café", "packs"]


@pytest.fixture
def ws(tmp_path) -> Workspace:
    root = tmp_path / "workspace"
    root.mkdir()
    return Workspace(root)


@pytest.fixture
def sentinel(tmp_path) -> Path:
    """A valid expert folder outside the workspace that no operation may touch."""
    return store.save_expert(_expert("sentinel"), tmp_path / "outside" / "sentinel")


def _router(num_experts: int = 2) -> routing.Router:
    return routing.build(routing.RouterConfig(variant="linear", layer=0), num_experts,
                         hidden_size=8, num_layers=1)


# ----------------------------------------------------------------------------- listing


def test_list_experts_sorts_valid_and_invalid(ws):
    root = ws.root
    store.save_expert(_expert("good"), root / "good")
    store.save_expert(_expert("no_weights"), root / "no_weights")
    (root / "no_weights" / WEIGHTS_FILE).unlink()
    store.save_expert(_expert("bad_json"), root / "bad_json")
    (root / "bad_json" / CONFIG_FILE).write_text("{")
    shutil.copytree(root / "good", root / ".hidden")              # temp/hidden folders are skipped
    (root / "unrelated").mkdir()                                  # not an expert folder at all
    (root / "unrelated" / "notes.txt").write_text("hello")
    (root / "a_file.txt").write_text("not a folder")
    ws.build_pack("p", [root / "good"])                           # packs/ is not an expert
    valid, invalid = ws.list_experts()
    assert valid == [root / "good"]
    assert set(invalid) == {root / "no_weights", root / "bad_json"}
    assert "missing" in invalid[root / "no_weights"]
    assert "JSON" in invalid[root / "bad_json"]
    assert workspace.list_experts(root / "does-not-exist") == ([], {})


def test_list_packs_sorts_valid_and_invalid(ws):
    folder = store.save_expert(_expert("a"), ws.root / "a")
    ws.build_pack("good", [folder])
    ws.build_pack("broken", [folder])
    (ws.pack_dir("broken") / "experts" / "a" / WEIGHTS_FILE).unlink()
    (ws.packs_root / "not-a-pack").mkdir()
    valid, invalid = ws.list_packs()
    assert valid == [ws.pack_dir("good")]
    assert list(invalid) == [ws.pack_dir("broken")] and "missing" in invalid[ws.pack_dir("broken")]
    assert workspace.list_packs(ws.root / "nothing") == ([], {})


def test_default_pack_is_the_committed_demo_pack():
    assert workspace.default_pack() == Path(__file__).resolve().parents[1] / "assets" / "demo"


# ----------------------------------------------------------------------------- names and paths


@pytest.mark.parametrize("name", BAD_NAMES)
def test_every_operation_refuses_a_bad_name(ws, sentinel, name):
    folder = store.save_expert(_expert("ok"), ws.root / "ok")
    calls = [lambda: ws.expert_dir(name), lambda: ws.save_expert(_expert(name)),
             lambda: ws.rename_expert("ok", name), lambda: ws.rename_expert(name, "new"),
             lambda: ws.delete_expert(name), lambda: ws.expert_target(name, replace=True)]
    if name != "packs":        # a good pack name, only reserved for experts
        calls += [lambda: ws.pack_dir(name), lambda: ws.build_pack(name, [folder]),
                  lambda: ws.delete_pack(name)]
    for call in calls:
        with pytest.raises(WorkspaceError):
            call()
    assert store.load_expert(sentinel).name == "sentinel"
    assert ws.list_experts()[0] == [folder] and not ws.packs_root.exists()


def test_symbolic_links_are_refused(ws, sentinel):
    (ws.root / "link").symlink_to(sentinel, target_is_directory=True)
    for call in (lambda: ws.delete_expert("link"), lambda: ws.rename_expert("link", "mine"),
                 lambda: ws.save_expert(_expert("link"), replace=True)):
        with pytest.raises(WorkspaceError, match="symbolic link|leaves"):
            call()
    # a packs folder that leads out of the workspace
    (ws.root / "packs").symlink_to(sentinel.parent, target_is_directory=True)
    with pytest.raises(WorkspaceError, match="leaves"):
        ws.build_pack("sentinel", [sentinel])
    with pytest.raises(WorkspaceError, match="leaves"):
        ws.delete_pack("sentinel")
    assert store.load_expert(sentinel).name == "sentinel"
    assert not (ws.root / "mine").exists()


# ----------------------------------------------------------------------------- experts


def test_save_and_replace_only_over_a_valid_expert(ws):
    path = ws.save_expert(_expert("a"))
    assert path == ws.root / "a" and store.load_expert(path).name == "a"
    with pytest.raises(WorkspaceError, match="already exists"):
        ws.save_expert(_expert("a"))
    newer = _expert("a")
    newer.metrics = {"accuracy": 0.9}
    ws.save_expert(newer, replace=True)
    assert store.load_expert(path).metrics == {"accuracy": 0.9}
    (ws.root / "notes").mkdir()
    (ws.root / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(WorkspaceError, match="not a valid expert"):
        ws.save_expert(_expert("notes"), replace=True)
    with pytest.raises(WorkspaceError, match="packs"):
        ws.expert_target("packs", replace=True)
    assert (ws.root / "notes" / "todo.txt").read_text() == "keep me"
    assert sorted(p.name for p in ws.root.iterdir()) == ["a", "notes"]   # no leftovers


def test_rename_moves_folder_and_config(ws):
    ws.save_expert(_expert("alpha"))
    ws.save_expert(_expert("taken"))
    target = ws.rename_expert("alpha", "beta")
    assert target == ws.root / "beta" and store.load_expert(target).name == "beta"
    assert not (ws.root / "alpha").exists()
    with pytest.raises(WorkspaceError, match="already exists"):
        ws.rename_expert("beta", "taken")
    with pytest.raises(WorkspaceError, match="no such expert"):
        ws.rename_expert("alpha", "gamma")
    (ws.root / "junk").mkdir()
    with pytest.raises(WorkspaceError, match="not a valid expert"):
        ws.rename_expert("junk", "gamma")
    assert sorted(p.name for p in ws.root.iterdir()) == ["beta", "junk", "taken"]


def test_delete_only_a_valid_expert(ws):
    ws.save_expert(_expert("gone"))
    ws.delete_expert("gone")
    assert not (ws.root / "gone").exists()
    (ws.root / "data").mkdir()
    (ws.root / "data" / "train.csv").write_text("text,label\n")
    with pytest.raises(WorkspaceError, match="not a valid expert"):
        ws.delete_expert("data")
    with pytest.raises(WorkspaceError, match="no such expert"):
        ws.delete_expert("gone")
    assert (ws.root / "data" / "train.csv").is_file()


# ----------------------------------------------------------------------------- packs


def test_build_pack_save_router_and_delete_pack(ws, sentinel):
    folders = [ws.save_expert(_expert(n)) for n in ("a", "b")]
    experts = ws.build_pack("p", folders)
    assert [e.name for e in experts] == ["a", "b"]
    with pytest.raises(WorkspaceError, match="already exists"):
        ws.build_pack("p", folders)
    ws.build_pack("with-outside-expert", [folders[0], sentinel])   # sources are only read
    assert store.load_pack(ws.pack_dir("with-outside-expert")).names == ["a", "sentinel"]
    path = ws.save_router("p", _router(), ["a", "b"], {"accuracy": 1.0}, experts[0].base)
    pack = store.load_pack(path)
    assert pack.router_metrics == {"accuracy": 1.0} and pack.router_config.variant == "linear"
    with pytest.raises(WorkspaceError, match="no such pack"):
        ws.save_router("nope", _router(), ["a", "b"], {}, experts[0].base)
    (ws.packs_root / "junk").mkdir()
    with pytest.raises(WorkspaceError, match="not a valid pack"):
        ws.save_router("junk", _router(), ["a", "b"], {}, experts[0].base)
    with pytest.raises(WorkspaceError, match="not a valid pack"):
        ws.delete_pack("junk")
    ws.delete_pack("p")
    assert sorted(os.listdir(ws.packs_root)) == ["junk", "with-outside-expert"]
    assert store.load_expert(sentinel).name == "sentinel"


# ----------------------------------------------------------------------------- corrupt folders, recovery


def test_a_corrupt_expert_or_pack_can_be_deleted_a_folder_of_other_files_not(ws):
    folder = ws.save_expert(_expert("broken"))
    (folder / CONFIG_FILE).write_text('{"rank": "abc"}')
    assert folder in ws.list_experts()[1]
    ws.delete_expert("broken")                                   # only expert files: ours
    assert not folder.exists()
    folder = ws.save_expert(_expert("mixed"))
    (folder / CONFIG_FILE).write_text("{")
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(WorkspaceError, match="not a valid expert"):
        ws.delete_expert("mixed")                                # other files in it: not ours
    ws.build_pack("bad", [ws.save_expert(_expert("a"))])
    (ws.pack_dir("bad") / store.PACK_FILE).write_text('{"format": "ttmoe-pack", "experts": 3}')
    assert ws.pack_dir("bad") in ws.list_packs()[1]
    ws.delete_pack("bad")
    assert not ws.pack_dir("bad").exists() and (folder / "notes.txt").is_file()


def test_listing_survives_wrong_types_and_bad_bytes(ws):
    for name, content in (("types", '{"format": "ttmoe-expert", "rank": "abc", "tensors": 3}'),
                          ("bytes", b"\xff\xfe\x00garbage"), ("empty", b"")):
        folder = ws.save_expert(_expert(name))
        data = content.encode() if isinstance(content, str) else content
        (folder / CONFIG_FILE).write_bytes(data)
    (ws.root / "marker_is_a_dir" / CONFIG_FILE).mkdir(parents=True)
    valid, invalid = ws.list_experts()
    assert valid == [] and sorted(p.name for p in invalid) == ["bytes", "empty", "marker_is_a_dir", "types"]
    assert "adapter_config.json" in invalid[ws.root / "types"]


def test_opening_a_workspace_recovers_killed_saves(ws):
    """Leftovers of a killed process (dead pid in their names) are cleaned when a workspace is
    opened: temporary folders removed, a backup whose folder is missing put back."""
    ws.save_expert(_expert("kept"))
    ws.build_pack("p", [ws.root / "kept"])
    dead = 999_999_999
    tmp = ws.root / f".new.tmp-{dead}-00ff00ff"
    store.save_expert(_expert("new"), tmp)
    os.rename(ws.root / "kept", ws.root / f".kept.old-{dead}-00ff00ff")
    (ws.packs_root / f".p.tmp-{dead}-00ff00ff").mkdir()
    (ws.pack_dir("p") / f".pack.json.tmp-{dead}-00ff00ff").write_text("{")
    again = Workspace(ws.root)
    assert [p.name for p in again.list_experts()[0]] == ["kept"]
    assert sorted(os.listdir(ws.root)) == ["kept", "packs"]
    assert os.listdir(ws.packs_root) == ["p"]
    assert not [n for n in os.listdir(ws.pack_dir("p")) if n.startswith(".")]
