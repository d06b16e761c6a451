"""Path escapes: every name-bearing field (an expert's ``name``, the ``experts`` of pack.json and
router_config.json, every name given to the workspace) and every path a user chooses, tried with
``..``, absolute paths, symbolic links and odd Unicode. Each attempt ends in a StoreError, and a
sentinel folder outside the workspace keeps every byte (its content hash is unchanged)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_jobs import _expert

from tests.tinymodels import tree_hashes
from ttmoe_core import routing, store
from ttmoe_core.services import workspace
from ttmoe_core.services.workspace import Workspace
from ttmoe_core.store import StoreError

HOSTILE = ["..", "../..", "../outside", "../outside/expert", "/", ".", "", "packs/../..",
           "ｅｘｐｅｒｔ", "exp\u202eert", "\u202e", "a\x00b", "\x00", "x" * 65, "x" * 4096,
           "a/b", "a\\b", ".hidden", "-rf", " ok", "ok\n", "ok/", "~", "$HOME", "*"]


def _tree(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (links and folders too) with its content hash or kind."""
    entries = {str(p.relative_to(folder)): ("link:" + os.readlink(p) if p.is_symlink()
                                            else "dir" if p.is_dir() else "")
               for p in folder.rglob("*")}
    return {**entries, **tree_hashes(folder)}


@pytest.fixture
def outside(tmp_path) -> Path:
    """The sentinel: a valid expert, a valid pack and a data file outside the workspace."""
    folder = tmp_path / "outside"
    store.save_expert(_expert("sentinel"), folder / "expert")
    store.build_pack(folder / "pack", [_expert("sentinel")])
    (folder / "data.txt").write_text("keep me")
    return folder


@pytest.fixture
def ws(tmp_path) -> Workspace:
    root = tmp_path / "ws"
    store.save_expert(_expert("ok"), root / "ok")
    space = Workspace(root)
    space.build_pack("p", [root / "ok"])
    return space


def _linear_router(num_experts: int = 1) -> routing.Router:
    return routing.build(routing.RouterConfig(variant="linear", layer=0), num_experts,
                         hidden_size=8, num_layers=1)


def _refused(call) -> None:
    with pytest.raises(StoreError):
        call()


@pytest.mark.parametrize("name", HOSTILE + ["<outside>", "<outside>/expert"])
def test_every_name_given_to_the_workspace(ws, outside, name):
    name = name.replace("<outside>", str(outside))
    before, inside = _tree(outside), _tree(ws.root)
    base = _expert("ok").base
    calls = [lambda: ws.expert_dir(name), lambda: ws.pack_dir(name),
             lambda: ws.save_expert(_expert(name)), lambda: ws.save_expert(_expert(name), replace=True),
             lambda: ws.expert_target(name, replace=True), lambda: ws.rename_expert("ok", name),
             lambda: ws.rename_expert(name, "new"), lambda: ws.delete_expert(name),
             lambda: ws.build_pack(name, [ws.root / "ok"]), lambda: ws.delete_pack(name),
             lambda: ws.save_router(name, _linear_router(), ["ok"], {}, base),
             lambda: ws.save_router("p", _linear_router(), [name], {}, base),
             lambda: ws.build_pack("q", [_expert(name)])]
    for call in calls:
        _refused(call)
    assert _tree(outside) == before and _tree(ws.root) == inside


@pytest.mark.parametrize("name", HOSTILE + ["<outside>", "<outside>/expert"])
def test_every_name_field_of_the_files(tmp_path, outside, name):
    """An expert's name, pack.json's and router_config.json's experts: refused when loading,
    building and adding, whatever they say."""
    name = name.replace("<outside>", str(outside))
    before = _tree(outside)
    expert_dir = store.save_expert(_expert("e"), tmp_path / "e")
    config = json.loads((expert_dir / store.CONFIG_FILE).read_text())
    config["name"] = name
    (expert_dir / store.CONFIG_FILE).write_text(json.dumps(config))
    _refused(lambda: store.load_expert(expert_dir))
    _refused(lambda: store.build_pack(tmp_path / "built", [expert_dir]))
    _refused(lambda: store.build_pack(tmp_path / "built", [_expert(name)]))
    _refused(lambda: store.save_expert(_expert(name), tmp_path / "saved"))
    pack = tmp_path / "pack"
    store.build_pack(pack, [_expert("e")], router=_linear_router(), router_metrics={},
                     extra=None)
    _refused(lambda: store.append_expert(pack, _expert(name)))
    for file in (store.PACK_FILE, store.ROUTER_CONFIG_FILE):
        data = json.loads((pack / file).read_text())
        original = list(data["experts"])
        data["experts"] = [name]
        (pack / file).write_text(json.dumps(data))
        _refused(lambda: store.load_pack(pack))
        data["experts"] = original
        (pack / file).write_text(json.dumps(data))
    assert store.load_pack(pack).names == ["e"]
    assert not (tmp_path / "built").exists() and not (tmp_path / "saved").exists()
    assert _tree(outside) == before


def test_links_inside_a_pack_are_refused(ws, outside):
    before = _tree(outside)
    pack = ws.pack_dir("p")
    # experts/<name> that leads out of the pack, listed under its own name
    (pack / "experts" / "ok").rename(pack / "experts" / "moved")
    (pack / "experts" / "ok").symlink_to(outside / "expert", target_is_directory=True)
    _refused(lambda: store.load_pack(pack))
    _refused(lambda: store.save_router(pack, _linear_router(), ["ok"], {}, _expert("ok").base))
    _refused(lambda: store.build_pack(pack, [_expert("ok")], replace=True))
    _refused(lambda: store.append_expert(pack, _expert("two")))
    assert list(ws.list_packs()[1]) == [pack]
    (pack / "experts" / "ok").unlink()
    (pack / "experts" / "moved").rename(pack / "experts" / "ok")
    # the experts folder itself leads out
    (pack / "experts").rename(pack / "experts.real")
    (pack / "experts").symlink_to(outside / "pack" / "experts", target_is_directory=True)
    _refused(lambda: store.load_pack(pack))
    (pack / "experts").unlink()
    (pack / "experts.real").rename(pack / "experts")
    # one file of an expert is a link (to a valid file of the same name outside)
    config = pack / "experts" / "ok" / store.CONFIG_FILE
    config.unlink()
    config.symlink_to(outside / "expert" / store.CONFIG_FILE)
    _refused(lambda: store.load_pack(pack))
    _refused(lambda: store.load_expert(pack / "experts" / "ok"))
    # a corrupt pack with links in it can still be deleted: the links go, their targets stay
    ws.delete_pack("p")
    assert not pack.exists() and _tree(outside) == before


def test_an_expert_folder_that_is_a_link(ws, outside):
    before = _tree(outside)
    (ws.root / "linked").symlink_to(outside / "expert", target_is_directory=True)
    valid, invalid = ws.list_experts()
    assert ws.root / "linked" not in valid and "symbolic link" in invalid[ws.root / "linked"]
    for call in (lambda: ws.delete_expert("linked"), lambda: ws.rename_expert("linked", "mine"),
                 lambda: ws.save_expert(_expert("linked"), replace=True),
                 lambda: store.save_expert(_expert("linked"), ws.root / "linked")):
        _refused(call)
    # a source of a new pack is only read, wherever it is: the sentinel is copied, not moved
    assert store.load_pack(ws.build_pack("q", [ws.root / "linked"]) and ws.pack_dir("q")).names == ["sentinel"]
    (ws.root / "packs" / "lp").symlink_to(outside / "pack", target_is_directory=True)
    for call in (lambda: ws.delete_pack("lp"), lambda: ws.build_pack("lp", [ws.root / "ok"]),
                 lambda: ws.save_router("lp", _linear_router(), ["sentinel"], {}, _expert("ok").base)):
        _refused(call)
    assert _tree(outside) == before


def test_a_corrupt_expert_with_a_linked_file_is_deleted_not_followed(ws, outside):
    before = _tree(outside)
    folder = ws.root / "ok"
    (folder / store.WEIGHTS_FILE).unlink()
    (folder / store.WEIGHTS_FILE).symlink_to(outside / "expert" / store.WEIGHTS_FILE)
    assert ws.root / "ok" in ws.list_experts()[1]
    ws.delete_expert("ok")
    assert not folder.exists() and _tree(outside) == before


@pytest.mark.parametrize("target", ["expert", "pack", "data.txt", ".", "link", "link-to-pack"])
def test_user_chosen_paths_outside_are_never_replaced(outside, target, tmp_path):
    """The store's own writers refuse to replace anything but a valid expert / pack or an empty
    folder, and never follow a link: the sentinel survives every call."""
    path = outside / target if not target.startswith("link") else tmp_path / "link"
    if target.startswith("link"):
        path.symlink_to(outside / ("pack" if target == "link-to-pack" else "expert"),
                        target_is_directory=True)
    before = _tree(outside)
    calls = [lambda: store.build_pack(path, [_expert("x")], replace=True),
             lambda: store.append_expert(path, _expert("x")),
             lambda: store.save_router(path, _linear_router(), ["x"], {}, _expert("x").base)]
    if target != "expert":
        calls.append(lambda: store.save_expert(_expert("x"), path))
    for call in calls:
        try:
            call()
        except StoreError:
            continue
        assert target in ("pack", "expert")       # replacing a valid one of its kind is allowed
    after = _tree(outside)
    kept = {k: v for k, v in before.items() if not k.startswith(target + "/") and k != target}
    assert {k: v for k, v in after.items() if k in kept} == kept
    assert (outside / "data.txt").read_text() == "keep me"


def test_a_name_is_never_joined_unchecked(tmp_path, outside):
    """The issue's case: an expert named by an absolute path once made the pack writer delete an
    unrelated folder."""
    victim = outside / "expert"
    before = _tree(outside)
    for call in (lambda: store.build_pack(tmp_path / "p", [_expert(str(victim))]),
                 lambda: store.append_expert(tmp_path / "p", _expert(str(victim))),
                 lambda: store.build_pack(tmp_path / "p", [_expert("../" * 8 + str(victim))])):
        _refused(call)
    assert _tree(outside) == before and not (tmp_path / "p").exists()


def test_workspace_listings_of_a_hostile_root(tmp_path, outside):
    """Files where folders are expected, links out, loops, FIFOs: listed as invalid or skipped."""
    root = tmp_path / "ws"
    (root / "packs").mkdir(parents=True)
    (root / "file").write_text("x")
    (root / "loop").symlink_to(root / "loop")
    (root / "out").symlink_to(outside / "expert", target_is_directory=True)
    (root / "fifo").mkdir()
    os.mkfifo(root / "fifo" / store.CONFIG_FILE)
    (root / "packs" / "out").symlink_to(outside / "pack", target_is_directory=True)
    ws = workspace.Workspace(root)
    valid, invalid = ws.list_experts()
    assert valid == [] and set(invalid) == {root / "out", root / "fifo"}
    assert "not a regular file" in invalid[root / "fifo"]
    valid, invalid = ws.list_packs()
    assert valid == [] and list(invalid) == [root / "packs" / "out"]
    _refused(lambda: ws.delete_expert("fifo"))    # not a file the store writes: left alone
    assert (root / "fifo" / store.CONFIG_FILE).exists()
