"""The ``http`` benchmark: the HTTP API (``services.server``) on a loopback port of this process,
mixed validation rows of the pack's tasks (``moe.mixed_rows``) sent from 1, 8, 32 and 64
concurrent clients (threads, one keep-alive ``httpx`` connection each), every request
``rows_per_request`` rows; each level bounded by a number of requests and by seconds.

Side by side in one run, on one mixture: the server that coalesces concurrent requests into one
model call and the same server with coalescing off (each request its own call), the levels
interleaved (coalescing, then not, per level); beside them the offline ``TTLoRAMoE.predict`` on
all the rows in one call. Figures: rows/s, latency per request (p50, p95, p99), rows per model
call, and the ratios coalescing / not and HTTP / offline.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from ..moe import TTLoRAMoE
from ..runtime.runinfo import load_average
from .moe import mixed_rows
from .results import envelope, header_lines, ratio_lines, ratios_and_targets

HTTP_DEFAULTS = {"rows": 256, "clients": [1, 8, 32, 64], "requests": 256, "seconds": 20.0,
                 "rows_per_request": 1, "max_wait_ms": 5, "repeats": 3, "max_length": None}
HTTP_QUICK = {"rows": 64, "clients": [1, 8, 32, 64], "requests": 64, "seconds": 5.0,
              "rows_per_request": 1, "max_wait_ms": 5, "repeats": 1, "max_length": 32}
HOST = "127.0.0.1"                    # loopback only
MODES = {"coalescing": True, "no coalescing": False}


@contextmanager
def serving(app) -> Iterator[str]:
    """Run ``app`` on uvicorn in a thread on a free loopback port; yields its base URL. TCP_NODELAY
    as ``serve`` sets it (each connection inherits it)."""
    # optional: the serve extra
    import uvicorn

    sock = socket.create_server((HOST, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        if not server.started:
            raise RuntimeError("the benchmark's server did not start")
        yield f"http://{HOST}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of sorted values, nearest rank."""
    return sorted_values[min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))]


def load_level(url: str, bodies: Sequence[dict], clients: int, requests: int,
               seconds: float) -> dict:
    """``clients`` threads POST ``bodies`` (round-robin, client k starting at k) until
    ``requests`` are answered in all or ``seconds`` pass: rows/s and latency percentiles (s)."""
    # optional: the serve extra
    import httpx

    per_client = max(1, requests // clients)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    rows, errors = [0] * clients, [0] * clients
    start = threading.Barrier(clients + 1)
    deadline: list[float] = []

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            start.wait()
            for i in range(per_client):
                if time.monotonic() > deadline[0]:
                    break
                body = bodies[(k + i * clients) % len(bodies)]
                t0 = time.perf_counter()
                answer = http.post("/v1/predict", json=body)
                latencies[k].append(time.perf_counter() - t0)
                if answer.status_code == 200:
                    rows[k] += len(answer.json()["results"])
                else:
                    errors[k] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    deadline.append(time.monotonic() + seconds)
    began = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    flat = sorted(x for part in latencies for x in part)
    return {"clients": clients, "requests": len(flat), "rows": sum(rows), "errors": sum(errors),
            "seconds": wall, "rows_per_s": sum(rows) / wall,
            "p50_s": _percentile(flat, 0.50), "p95_s": _percentile(flat, 0.95),
            "p99_s": _percentile(flat, 0.99)}


def bench_http(settings: dict, pack: str | Path, data_dir, device: torch.device) -> dict:
    """Run the benchmark with ``settings`` (keys of ``HTTP_DEFAULTS``) on a pack with a router;
    the result is JSON-ready (seconds)."""
    # optional: the serve extra (fastapi)
    from ..services.server import ServeSettings, create_app

    load_before = load_average()
    mixture = TTLoRAMoE.from_pack(pack, device=str(device))
    if mixture.router is None:
        raise ValueError(f"pack {pack} has no router: the http benchmark needs one")
    mixture.max_length = settings["max_length"] or mixture.max_length
    texts, pairs, _ = mixed_rows([c.task for c in mixture.cards], settings["rows"], data_dir)
    step = settings["rows_per_request"]
    bodies = [{"rows": [{"text": t, "text_pair": p} for t, p in
                        zip(texts[i:i + step], pairs[i:i + step])]}
              for i in range(0, len(texts), step)]

    expected = mixture.predict(texts, pairs)              # the reference answers; a warm-up
    offline = []
    for _ in range(settings["repeats"]):
        t0 = time.perf_counter()
        mixture.predict(texts, pairs)
        offline.append(time.perf_counter() - t0)
    offline_rate = len(texts) / statistics.median(offline)

    apps = {mode: create_app(mixture, ServeSettings(max_wait_ms=settings["max_wait_ms"],
                                                    coalesce=coalesce, queue_size=1024))
            for mode, coalesce in MODES.items()}
    levels: dict[str, list[dict]] = {mode: [] for mode in MODES}
    with serving(apps["coalescing"]) as url_on, serving(apps["no coalescing"]) as url_off:
        urls = {"coalescing": url_on, "no coalescing": url_off}
        # optional: the serve extra
        import httpx

        first = httpx.post(f"{url_on}/v1/predict", json={"rows": bodies[0]["rows"]}, timeout=60)
        same = [a["expert"] == b["expert"] and a["label"] == b["label"]
                for a, b in zip(first.json()["results"], expected)]
        for clients in settings["clients"]:
            for mode in MODES:
                batcher = apps[mode].state.batcher
                calls_before = batcher.calls
                level = load_level(urls[mode], bodies, clients, settings["requests"],
                                   settings["seconds"])
                level["rows_per_call"] = level["rows"] / max(1, batcher.calls - calls_before)
                levels[mode].append(level)

    ratios = {}
    for on, off in zip(levels["coalescing"], levels["no coalescing"]):
        ratios[f"coalescing_vs_not_c{on['clients']}"] = on["rows_per_s"] / off["rows_per_s"]
    for on in levels["coalescing"]:
        ratios[f"http_vs_offline_c{on['clients']}"] = on["rows_per_s"] / offline_rate
    return {
        **envelope("http", device, load_before),
        "settings": {"pack": str(pack), "experts": mixture.names, "rows": len(texts),
                     "max_length": mixture.max_length, "clients": settings["clients"],
                     "requests": settings["requests"], "seconds": settings["seconds"],
                     "rows_per_request": step, "max_wait_ms": settings["max_wait_ms"],
                     "host": HOST, "statistic": "latency per request, client side; offline: "
                     f"median of {settings['repeats']} calls on all rows"},
        "check": {"same_answers_as_offline": sum(same) / len(same)},
        "offline": {"median_s": statistics.median(offline), "rows_per_s": offline_rate},
        "levels": levels,
        **ratios_and_targets(ratios),
    }


def format_http(result: dict) -> str:
    """The result as text: one table row per mode and number of clients, then the ratios."""
    lines = header_lines(result) + [
        f"offline TTLoRAMoE.predict, all {result['settings']['rows']} rows in one call: "
        f"{result['offline']['rows_per_s']:.1f} rows/s", "",
        f"{'server':14s} {'clients':>7s} {'requests':>8s} {'errors':>6s} {'rows/s':>8s} "
        f"{'rows/call':>9s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s}"]
    for mode, rows in result["levels"].items():
        for row in rows:
            lines.append(f"{mode:14s} {row['clients']:7d} {row['requests']:8d} "
                         f"{row['errors']:6d} {row['rows_per_s']:8.1f} {row['rows_per_call']:9.1f}"
                         f" {row['p50_s'] * 1e3:8.1f} {row['p95_s'] * 1e3:8.1f} "
                         f"{row['p99_s'] * 1e3:8.1f}")
    return "\n".join(lines + ratio_lines(result))
