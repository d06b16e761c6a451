"""The ``soak`` run: many requests to the HTTP server (``python -m ttmoe_core serve``, its own
process on a free loopback port) and the server's resident memory along the way.

``clients`` threads of this process (one keep-alive ``httpx`` connection each) send ``requests``
requests in all, bounded by ``seconds``: mixed validation rows of the pack's tasks
(``moe.mixed_rows``), one row a request; every 10th names its expert, every 25th asks to abstain
and every 50th is refused (an unknown expert: 422), so the error path is soaked too. The server's
RSS (``/proc/PID/statm``, Linux) is read after a warm-up of ``warmup`` requests and then every
``sample_every`` requests; the figure is the growth from the warm-up to the end (target: under
50 MB for 10,000 requests), beside the growth over the last half of the run. The server inherits
this process's environment: ``MALLOC_MMAP_THRESHOLD_=131072`` (recorded) fixes glibc's mmap
threshold, so large freed tensor buffers go back to the system. Not a test: a run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from ..runtime.runinfo import load_average
from ..store import expert_folder, open_expert, read_pack_manifest
from .moe import mixed_rows
from .results import envelope, header_lines, ratio_lines, ratios_and_targets

SOAK_DEFAULTS = {"requests": 10_000, "seconds": 1800.0, "clients": 16, "rows": 512,
                 "warmup": 500, "sample_every": 1000, "max_wait_ms": 5}
SOAK_QUICK = {"requests": 200, "seconds": 60.0, "clients": 4, "rows": 32, "warmup": 20,
              "sample_every": 50, "max_wait_ms": 5}


def _body(k: int, texts, pairs, names) -> dict:
    """Request ``k``: one mixed row, with an expert, abstain or a refused expert now and then."""
    i = k % len(texts)
    body: dict = {"text": texts[i], "text_pair": pairs[i]}
    if k % 50 == 49:
        body["expert"] = "no-such-expert"
    elif k % 10 == 9:
        body["expert"] = names[k % len(names)]
    elif k % 25 == 24:
        body["abstain"] = True
    return body


def _rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` (Linux ``/proc``), MiB."""
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _start_server(pack: str | Path, device: torch.device, settings: dict) -> tuple:
    """``python -m ttmoe_core serve`` on a free loopback port, one torch thread as this process;
    (process, base URL) once ``/healthz`` answers 200."""
    # optional: the serve extra
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "ttmoe_core", "serve", "--pack", str(pack), "--port",
               str(port), "--max-wait-ms", str(settings["max_wait_ms"]), "--queue-size", "1024",
               "--log-level", "warning", "--device", str(device)]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server stopped: {process.communicate()[1][-500:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not answer /healthz within 300 s")


def bench_soak(settings: dict, pack: str | Path, data_dir, device: torch.device) -> dict:
    """Run the soak with ``settings`` (keys of ``SOAK_DEFAULTS``); JSON-ready (seconds, MiB)."""
    # optional: the serve extra
    import httpx

    load_before = load_average()
    names = read_pack_manifest(Path(pack))["experts"]
    tasks = [_task(pack, name) for name in names]
    texts, pairs, _ = mixed_rows(tasks, settings["rows"], data_dir)
    total, clients = settings["requests"], settings["clients"]
    lock = threading.Lock()
    state = {"next": 0, "done": 0, "status": {}, "samples": [], "warm_rss": None, "warm_at": None}
    process, url = _start_server(pack, device, settings)
    rss_start = _rss_mib(process.pid)
    began = time.perf_counter()

    def record(status: int) -> None:
        with lock:
            state["status"][status] = state["status"].get(status, 0) + 1
            state["done"] += 1
            done = state["done"]
            if done == settings["warmup"]:
                state["warm_rss"], state["warm_at"] = _rss_mib(process.pid), time.perf_counter()
            if done % settings["sample_every"] == 0 or done == total:
                state["samples"].append({"requests": done, "rss_mib": _rss_mib(process.pid),
                                         "seconds": time.perf_counter() - began})

    def client(deadline: float) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while time.monotonic() < deadline:
                with lock:
                    k = state["next"]
                    if k >= total:
                        return
                    state["next"] += 1
                try:
                    status = http.post("/v1/predict",
                                       json=_body(k, texts, pairs, names)).status_code
                except httpx.HTTPError:
                    status = 0                                   # no answer (counted apart)
                record(status)

    try:
        deadline = time.monotonic() + settings["seconds"]
        threads = [threading.Thread(target=client, args=(deadline,)) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - began
        rss_end = _rss_mib(process.pid)
        metrics = httpx.get(f"{url}/metrics", timeout=30).text
    finally:
        process.terminate()
        process.wait(60)
    calls = next((float(line.split()[-1]) for line in metrics.splitlines()
                  if line.startswith("ttmoe_batch_rows_count")), None)
    warm = state["warm_rss"] if state["warm_rss"] is not None else rss_start
    samples = state["samples"]
    half = next((s for s in samples if s["requests"] >= state["done"] / 2), None)
    return {
        **envelope("soak", device, load_before),
        "settings": {"pack": str(pack), "experts": names, **settings, "host": "127.0.0.1",
                     "server": "python -m ttmoe_core serve, its own process",
                     "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
                     "request_mix": "1 row each; every 10th names its expert, every 25th "
                                    "abstains, every 50th names an unknown expert (422)"},
        "requests": state["done"], "seconds": wall, "requests_per_s": state["done"] / wall,
        "status": {str(k): v for k, v in sorted(state["status"].items())},
        "model_calls": calls, "rss_start_mib": rss_start, "rss_after_warmup_mib": warm,
        "rss_end_mib": rss_end, "samples": samples,
        "rss_growth_last_half_mib": None if half is None else rss_end - half["rss_mib"],
        **ratios_and_targets({"soak_rss_growth_mb": (rss_end - warm) * 2**20 / 1e6}),
    }


def _task(pack: str | Path, name: str) -> str:
    """The task of the pack's expert ``name`` (its config), without loading any tensor."""
    return open_expert(expert_folder(Path(pack), name), None, "the pack").expert.config.task


def format_soak(result: dict) -> str:
    """The result as text: requests, statuses, RSS samples and the growth."""
    lines = header_lines(result) + [
        f"{result['requests']} requests in {result['seconds']:.1f} s "
        f"({result['requests_per_s']:.1f}/s, {result['model_calls']:.0f} model calls); "
        f"status counts {result['status']}",
        f"RSS: start {result['rss_start_mib']:.1f} MiB, after warm-up "
        f"{result['rss_after_warmup_mib']:.1f} MiB, end {result['rss_end_mib']:.1f} MiB; "
        f"growth over the last half {result['rss_growth_last_half_mib']:.1f} MiB", "",
        f"{'requests':>9s} {'seconds':>8s} {'RSS MiB':>9s}"]
    lines += [f"{s['requests']:9d} {s['seconds']:8.1f} {s['rss_mib']:9.1f}"
              for s in result["samples"]]
    return "\n".join(lines + ratio_lines(result))
