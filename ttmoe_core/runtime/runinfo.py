"""What a timed result needs to be read: the time, the machine, its load and this process's memory.

One home for the helpers the benchmarks, the report and the app's jobs share.
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from pathlib import Path

import torch


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, or None where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def memory_gib() -> float | None:
    """Physical memory of the machine in GiB, or None where the OS does not say."""
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (AttributeError, ValueError, OSError):
        return None


def machine_info(device: torch.device | str, libraries: bool = False) -> dict:
    """CPU, cores, threads, device and GPU, memory, versions: what a timing depends on.

    ``libraries`` adds the versions of transformers, peft and adapters (the report's baselines).
    """
    device = torch.device(device)
    info = {"platform": platform.platform(), "cpu": cpu_name(), "logical_cpus": os.cpu_count(),
            "cores": usable_cores(), "threads": torch.get_num_threads(), "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "memory_gib": memory_gib(), "python": platform.python_version(),
            "torch": torch.__version__}
    if libraries:
        # the libraries' versions, imported only when asked (adapters and peft are optional)
        import adapters as adapters_lib
        import peft
        import transformers

        info.update(transformers=transformers.__version__, peft=peft.__version__,
                    adapters=adapters_lib.__version__)
    return info


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB."""
    # Unix only (peak RSS)
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10   # bytes on macOS, KiB on Linux


def rss_mib() -> float | None:
    """Current resident memory of this process (Linux), MiB; None elsewhere."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
