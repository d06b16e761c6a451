"""runtime.allocator: glibc's mmap threshold set in-process, the environment's setting kept."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import pytest

from ttmoe_core.runtime import allocator

REPO = Path(__file__).resolve().parents[1]


def _glibc() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallopt")
    except OSError:
        return False


CHECK = ("import ctypes, sys; from ttmoe_core.runtime import allocator; "
         "print(allocator.fix_mmap_threshold())")


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _glibc(), reason="glibc's mallopt")
def test_threshold_is_set_unless_the_environment_sets_it():
    fresh = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                           check=True, env={"PATH": ""}, cwd=REPO)
    assert fresh.stdout.strip() == "True"
    kept = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                          check=True, env={"MALLOC_MMAP_THRESHOLD_": "65536"}, cwd=REPO)
    assert kept.stdout.strip() == "False"


def test_not_linux_is_left_alone(monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.fix_mmap_threshold() is False
