"""Kill tests: a child process that saves or overwrites an expert, replaces a pack or its router,
or adds an expert to a pack is SIGKILLed at many points of the operation. Afterwards the target
holds the old or the new version, intact (it loads and its tensors are those of one version):
never neither, never a half-written one; and after ``store.recover`` no leftovers remain.

Two ways to choose the points, both in this test's child only (the engine has no hook):
- at file-system steps: the child counts the Python lines run in the engine's file-system module
  (``safefs``: temporary folders, links, fsync, the swap, removal, recovery) and in ``shutil``
  during the operation (a calibration run gives the total) and kills itself at line k, for k
  spread from the first to the last of them, and at every line of the publishing step
  (``safefs.replace_dir``: the swap, or the backup's two renames);
- at random times: the child signals that it starts, the parent waits a random delay within the
  operation's measured duration and sends SIGKILL (this hits the middle of system calls too).

The figures (trials, old and new outcomes) are printed as one summary line per kind.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import shutil
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from ttmoe_core import routing, store
from ttmoe_core.files import safefs

TRACED = (safefs.__file__, shutil.__file__)       # where the file-system steps are
# "…, backup": as where the OS cannot swap two folders in one step (backup + rename + recover)
KINDS = ("overwrite expert", "overwrite expert, backup", "new expert", "replace pack",
         "replace router", "add expert")
STEP_TRIALS, TIMED_TRIALS = 6, 3          # per kind, + one per line of the publishing step
OLD, NEW = {"accuracy": 0.25}, {"accuracy": 0.75}


def _router(seed: int) -> routing.Router:
    return routing.build(routing.RouterConfig(variant="linear", layer=0, seed=seed), 2,
                         hidden_size=8, num_layers=1)


def _operation(kind: str, src: Path, target: Path):
    """The store call a trial kills, given its sources (loaded before the clock starts)."""
    if kind.endswith(", backup"):
        safefs.exchange = lambda a, b: False          # in this child only
        kind = kind.removesuffix(", backup")
    if kind in ("overwrite expert", "new expert"):
        expert = store.load_expert(src / "new")
        return lambda: store.save_expert(expert, target)
    if kind == "replace pack":
        experts = [store.load_expert(src / name) for name in ("c", "d")]
        return lambda: store.build_pack(target, experts, router=_router(1), router_metrics=NEW,
                                        replace=True)
    if kind == "replace router":
        base = store.load_expert(src / "a").base
        return lambda: store.save_router(target, _router(1), ["a", "b"], NEW, base)
    expert = store.load_expert(src / "e")
    return lambda: store.append_expert(target, expert)


def _child(kind: str, src: str, target: str, kill_at: int | None, conn) -> None:
    """Run one operation; with ``kill_at``, SIGKILL itself at that line of safefs/shutil code."""
    operation = _operation(kind, Path(src), Path(target))
    lines, publishing = [0], []

    def count(frame, event, arg):
        if event == "line":
            lines[0] += 1
            if kill_at is not None and lines[0] >= kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if frame.f_code is safefs.replace_dir.__code__:
                publishing.append(lines[0])
        return count

    conn.send("ready")
    started = time.perf_counter()
    sys.settrace(lambda frame, event, arg: count if frame.f_code.co_filename in TRACED else None)
    operation()
    sys.settrace(None)
    conn.send((lines[0], publishing, time.perf_counter() - started))


def _expert(name: str, metrics: dict, seed: int):
    from test_jobs import _expert as tiny_expert

    torch.manual_seed(seed)
    expert = tiny_expert(name)
    expert.metrics = dict(metrics)
    return expert


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """Source experts (old/new of one expert; a, b, c, d, e for packs) and the old pack."""
    src = tmp_path_factory.mktemp("sources")
    store.save_expert(_expert("x", OLD, 0), src / "old")
    store.save_expert(_expert("x", NEW, 1), src / "new")
    for i, name in enumerate("abcde"):
        store.save_expert(_expert(name, OLD, 10 + i), src / name)
    pair = [store.load_expert(src / name) for name in "ab"]
    store.build_pack(src / "pack", pair, router=_router(0), router_metrics=OLD)
    store.build_pack(src / "pack-without-router", pair)
    return src


def _prepare(kind: str, src: Path, trial: Path) -> Path:
    """The trial's target in its old state."""
    target = trial / "target"
    if kind.startswith("overwrite expert"):
        shutil.copytree(src / "old", target)
    elif kind in ("replace pack", "replace router"):
        shutil.copytree(src / "pack", target)
    elif kind == "add expert":
        shutil.copytree(src / "pack-without-router", target)
    return target


def _outcome(kind: str, target: Path, src: Path) -> str:
    """"old" or "new" (or "absent" for a new expert not yet published); fails the test on a
    target that is neither, half-written, or mixed."""
    kind = kind.removesuffix(", backup")
    if kind in ("overwrite expert", "new expert"):
        if kind == "new expert" and not os.path.lexists(target):
            return "absent"
        loaded = store.load_expert(target)
        version = "old" if loaded.metrics == OLD else "new"
        reference = store.load_expert(src / version)
        assert all(torch.equal(loaded.tensors[k], v) for k, v in reference.tensors.items())
        assert set(loaded.tensors) == set(reference.tensors)
        return version
    if kind == "add expert":
        pack = store.load_pack(target)
        assert pack.names in (["a", "b"], ["a", "b", "e"]), pack.names
        return "old" if pack.names == ["a", "b"] else "new"
    pack = store.load_pack(target)
    pack.build_router()
    version = "old" if pack.router_metrics == OLD else "new"
    expected_names = ["a", "b"] if kind == "replace router" or version == "old" else ["c", "d"]
    assert pack.names == expected_names and pack.router_metrics in (OLD, NEW)
    reference = _router(0 if version == "old" else 1).state_dict()     # the router's own bytes
    assert all(torch.equal(pack.router_state[k], v) for k, v in reference.items())
    return version


def _leftovers(trial: Path) -> list[str]:
    found = []
    for folder in (trial, trial / "target", trial / "target" / "experts"):
        if folder.is_dir():
            found += [str(folder / name) for name in os.listdir(folder) if name.startswith(".")]
    return found + sorted(n for n in os.listdir(trial) if n != "target")


def _run(context, kind: str, src: Path, trial: Path, kill_at: int | None = None,
         delay: float | None = None) -> tuple[int, tuple | None]:
    """Run one child; returns its exit code and what it reported after the operation."""
    parent, child = context.Pipe()
    process = context.Process(target=_child, args=(kind, str(src), str(trial / "target"), kill_at, child))
    process.start()
    child.close()
    assert parent.poll(60) and parent.recv() == "ready"
    if delay is not None:
        time.sleep(delay)
        with contextlib.suppress(ProcessLookupError):     # it may have finished already
            os.kill(process.pid, signal.SIGKILL)
    process.join(60)
    try:
        report = parent.recv() if parent.poll(0) else None
    except EOFError:              # killed before it reported
        report = None
    parent.close()
    return process.exitcode, report


def _swaps_in_one_step(tmp_path: Path) -> bool:
    a, b = tmp_path / "swap-a", tmp_path / "swap-b"
    a.mkdir()
    b.mkdir()
    try:
        return safefs.exchange(a, b)
    finally:
        shutil.rmtree(a)
        shutil.rmtree(b)


@pytest.mark.slow            # about 30 s: some 90 child processes, each with real fsyncs
def test_killed_saves_leave_the_old_or_the_new_version(sources, tmp_path, capsys):
    context = multiprocessing.get_context("forkserver")
    # the children run this module's _child: preloaded with it, each starts in tens of ms
    context.set_forkserver_preload(["torch", "ttmoe_core.store", "ttmoe_core.router", __name__])
    seed = int(os.environ.get("TTMOE_KILL_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    one_step = _swaps_in_one_step(tmp_path)
    summary = {}
    for kind in KINDS:
        calibration = tmp_path / f"{kind.replace(' ', '-')}-calibration"
        calibration.mkdir()
        _prepare(kind, sources, calibration)
        code, report = _run(context, kind, sources, calibration)
        assert code == 0 and report is not None
        lines, publishing, seconds = report
        assert _outcome(kind, calibration / "target", sources) == "new"
        # evenly from the first to the last line, the inner points shifted at random
        points = [("step", 1 + round(i * (lines - 1) / (STEP_TRIALS - 1))
                   + (rng.randrange(-2, 3) if 0 < i < STEP_TRIALS - 1 else 0)) for i in range(STEP_TRIALS)]
        points += [("step", line) for line in publishing]
        points += [("time", rng.uniform(0, 1.2 * seconds)) for _ in range(TIMED_TRIALS)]
        outcomes: Counter = Counter()
        for i, (how, point) in enumerate(points):
            trial = tmp_path / f"{kind.replace(' ', '-')}-{i}"
            trial.mkdir()
            _prepare(kind, sources, trial)
            code, _ = _run(context, kind, sources, trial, kill_at=point if how == "step" else None,
                           delay=point if how == "time" else None)
            backup = kind.endswith(", backup") or not one_step
            before = None if backup and not (trial / "target").exists() else \
                _outcome(kind, trial / "target", sources)
            store.recover(trial)
            store.recover(trial / "target")
            after = _outcome(kind, trial / "target", sources)
            assert before in (None, after), (kind, how, point)
            assert _leftovers(trial) == [], (kind, how, point)
            outcomes[(after, "killed" if code == -signal.SIGKILL else "finished")] += 1
            outcomes[("missing until recover", "")] += before is None and backup
        summary[kind] = (lines, len(points), seconds, outcomes)
    total = sum(trials for _, trials, _, _ in summary.values())
    with capsys.disabled():
        print(f"\nkill tests (seed {seed}, one-step swap {'yes' if one_step else 'no: backup + recover'}): "
              f"{total} trials")
        for kind, (lines, trials, seconds, outcomes) in summary.items():
            counts = ", ".join(f"{version} {how} {n}".replace("  ", " ")
                               for (version, how), n in sorted(outcomes.items()) if n)
            print(f"  {kind:25s} {trials} trials over {lines} file-system lines / "
                  f"{seconds * 1000:.0f} ms: {counts}")
        print("  (old/new/absent: the version found afterwards; killed/finished: whether the kill "
              "came before the operation ended; missing until recover: the backup scheme's window "
              "between its two renames, put right by recover)")
    assert total >= 50
    # the trials are spread over the operation: some end old, some new, for every kind
    for kind, (*_, outcomes) in summary.items():
        versions = {version for (version, _), n in outcomes.items() if n} - {"missing until recover"}
        assert "new" in versions and versions & {"old", "absent"}, (kind, outcomes)
    assert summary["overwrite expert, backup"][-1][("missing until recover", "")] >= 1
