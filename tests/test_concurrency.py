"""Two writers at once lose nothing (issue 33): read-modify-writes of ``pack.json`` under the
pack's lock, renames to one name, new expert folders made exclusively, across threads and
processes: 1,000 trials in all, every one checked.

- 400 ``update_pack`` increments of one counter in ``pack.json`` (2 processes and 2 threads, 100
  each): the counter ends at 400 (before the lock: 8 and 6 of 20 lost);
- 300 rename races (two renames to one name; 200 in threads, 100 between two processes): exactly
  one succeeds, the other gets a WorkspaceError, both experts still exist (before: 26 of 30 lost
  one);
- 300 races of two ``save_expert(new=True)`` to one folder (threads): exactly one writes it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.threads import held_elsewhere
from tests.tinymodels import tiny_bert, tiny_expert
from ttmoe_core import store
from ttmoe_core.errors import StoreError
from ttmoe_core.files import locks
from ttmoe_core.services.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
UPDATES = 100                 # per writer
RENAMES_THREADS, RENAMES_PROCESSES, NEW_SAVES = 200, 100, 300      # trials (pairs of writers)


@pytest.fixture(scope="module")
def expert():
    return tiny_expert(tiny_bert(), "sst2", rank=2, steps=1)


def _empty_pack(folder: Path, expert) -> Path:
    folder.mkdir()
    store.write_json(folder / store.PACK_FILE, {"format": store.PACK_FORMAT, "format_version": 1,
                                                "experts": [], "base_model": expert.base.to_dict(),
                                                "metrics": {"count": 0}})
    return folder


def _increment(pack: Path, times: int) -> None:
    def write(folder: Path, _names) -> None:
        manifest = store.read_json(folder / store.PACK_FILE, "pack")
        manifest["metrics"]["count"] += 1
        store.write_json(folder / store.PACK_FILE, manifest)

    for _ in range(times):
        store.update_pack(pack, write)


def _rename_trials(root: Path, source: str, trials: int) -> list[bool]:
    """In each trial folder, rename ``source`` to "c": True where it succeeded."""
    done = []
    for i in range(trials):
        try:
            Workspace(root / f"t{i}").rename_expert(source, "c")
            done.append(True)
        except StoreError:
            done.append(False)
    return done


def _child(code: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _threads(*targets) -> None:
    threads = [threading.Thread(target=t) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_no_pack_update_is_lost_between_processes_and_threads(tmp_path, expert):
    pack = _empty_pack(tmp_path / "pack", expert)
    start = time.perf_counter()
    children = [_child(f"from tests.test_concurrency import _increment; from pathlib import Path; "
                       f"_increment(Path({str(pack)!r}), {UPDATES})") for _ in range(2)]
    _threads(lambda: _increment(pack, UPDATES), lambda: _increment(pack, UPDATES))
    for child in children:
        _, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-2000:]
    count = store.read_json(pack / store.PACK_FILE, "pack")["metrics"]["count"]
    print(f"\n{4 * UPDATES} pack.json updates (2 processes, 2 threads): {count} kept, "
          f"{time.perf_counter() - start:.1f} s")
    assert count == 4 * UPDATES
    assert not [p for p in pack.parent.iterdir() if p.name != "pack"]     # no leftovers


def _rename_setup(root: Path, trials: int, expert) -> None:
    first = store.save_expert(expert, root / "t0" / "a")
    for i in range(trials):
        for name in ("a", "b"):
            if (i, name) != (0, "a"):
                shutil.copytree(first, root / f"t{i}" / name)


def _check_renames(root: Path, left: list[bool], right: list[bool]) -> None:
    for i, (a, b) in enumerate(zip(left, right)):
        folder = root / f"t{i}"
        assert a != b, f"trial {i}: {'both' if a else 'neither'} rename(s) succeeded"
        kept = sorted(p.name for p in folder.iterdir())
        assert kept == (["b", "c"] if a else ["a", "c"]), f"trial {i}: {kept}"
        assert store.load_expert(folder / "c").name == "c"


def test_two_renames_to_one_name_never_lose_an_expert(tmp_path, expert):
    _rename_setup(tmp_path, RENAMES_THREADS, expert)
    results: dict[str, list[bool]] = {}
    start = time.perf_counter()
    _threads(lambda: results.__setitem__("a", _rename_trials(tmp_path, "a", RENAMES_THREADS)),
             lambda: results.__setitem__("b", _rename_trials(tmp_path, "b", RENAMES_THREADS)))
    print(f"\n{RENAMES_THREADS} rename races in threads: {time.perf_counter() - start:.1f} s")
    _check_renames(tmp_path, results["a"], results["b"])


def test_two_processes_renaming_to_one_name_never_lose_an_expert(tmp_path, expert):
    _rename_setup(tmp_path, RENAMES_PROCESSES, expert)
    start = time.perf_counter()
    children = {name: _child(f"from tests.test_concurrency import _rename_trials; import json; "
                             f"from pathlib import Path; print(json.dumps(_rename_trials("
                             f"Path({str(tmp_path)!r}), {name!r}, {RENAMES_PROCESSES})))")
                for name in ("a", "b")}
    results = {}
    for name, child in children.items():
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-2000:]
        results[name] = json.loads(out.strip().splitlines()[-1])
    print(f"\n{RENAMES_PROCESSES} rename races between processes: "
          f"{time.perf_counter() - start:.1f} s")
    _check_renames(tmp_path, results["a"], results["b"])


def test_a_new_expert_folder_is_written_by_one_writer_only(tmp_path, expert):
    outcomes: list[list[str]] = [[] for _ in range(NEW_SAVES)]

    def writer(tag: str) -> None:
        for i in range(NEW_SAVES):
            try:
                store.save_expert(expert, tmp_path / f"e{i}", new=True)
                outcomes[i].append(tag)
            except StoreError:
                pass

    start = time.perf_counter()
    _threads(lambda: writer("x"), lambda: writer("y"))
    print(f"\n{NEW_SAVES} races of two new saves: {time.perf_counter() - start:.1f} s")
    assert all(len(won) == 1 for won in outcomes), [i for i, w in enumerate(outcomes) if len(w) != 1]


def test_a_held_lock_refuses_at_once_with_no_wait(tmp_path):
    with held_elsewhere(tmp_path / "x"):
        with pytest.raises(StoreError, match="being changed by another command"):
            with locks.locked(tmp_path / "x", wait_s=0):
                pass
        with locks.locked(tmp_path / "y", wait_s=0):     # another folder: free
            pass
    with locks.locked(tmp_path / "x", wait_s=0), locks.locked(tmp_path / "x", wait_s=0):
        pass                                             # re-entrant in one thread
