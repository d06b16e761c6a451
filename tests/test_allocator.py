"""runtime.allocator: glibc's mmap threshold set in-process, the environment's setting kept."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ttmoe_core.runtime import allocator

CHECK = ("import ctypes, sys; from ttmoe_core.runtime import allocator; "
         "print(allocator.fix_mmap_threshold())")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_threshold_is_set_unless_the_environment_sets_it():
    fresh = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                           check=True, env={"PATH": ""})
    assert fresh.stdout.strip() == "True"
    kept = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                          check=True, env={"MALLOC_MMAP_THRESHOLD_": "65536"})
    assert kept.stdout.strip() == "False"


def test_not_linux_is_left_alone(monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.fix_mmap_threshold() is False
