"""The ``soak`` run: many requests to the HTTP API (``services.server``) on a loopback port of this
process, and the resident memory of the process along the way.

``clients`` threads (one keep-alive ``httpx`` connection each) send ``requests`` requests in all,
bounded by ``seconds``: mixed validation rows of the pack's tasks (``moe.mixed_rows``), one row a
request; every 10th names its expert, every 25th asks to abstain and every 50th is refused (an
unknown expert: 422), so the error path is soaked too. RSS (``/proc/self/statm``) is read after a
warm-up of ``warmup`` requests and then every ``sample_every`` requests; the figure is the growth
from the warm-up to the end (target: under 50 MB for 10,000 requests). Not a test: a run.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import torch

from ..moe import TTLoRAMoE
from ..runtime.runinfo import load_average, rss_mib
from .http import serving
from .moe import mixed_rows
from .results import envelope, header_lines, ratio_lines, ratios_and_targets

SOAK_DEFAULTS = {"requests": 10_000, "seconds": 1800.0, "clients": 16, "rows": 512,
                 "warmup": 500, "sample_every": 1000, "max_wait_ms": 5, "max_length": None}
SOAK_QUICK = {"requests": 200, "seconds": 60.0, "clients": 4, "rows": 32, "warmup": 20,
              "sample_every": 50, "max_wait_ms": 5, "max_length": 32}


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


def bench_soak(settings: dict, pack: str | Path, data_dir, device: torch.device) -> dict:
    """Run the soak with ``settings`` (keys of ``SOAK_DEFAULTS``); JSON-ready (seconds, MiB)."""
    import httpx

    from ..services.server import ServeSettings, create_app

    load_before = load_average()
    mixture = TTLoRAMoE.from_pack(pack, device=str(device))
    mixture.max_length = settings["max_length"] or mixture.max_length
    texts, pairs, _ = mixed_rows([c.task for c in mixture.cards], settings["rows"], data_dir)
    app = create_app(mixture, ServeSettings(max_wait_ms=settings["max_wait_ms"], queue_size=1024))
    total, clients = settings["requests"], settings["clients"]
    lock = threading.Lock()
    state = {"next": 0, "done": 0, "status": {}, "samples": [], "warm_rss": None, "warm_at": None}
    rss_start = rss_mib()

    def record(status: int) -> None:
        with lock:
            state["status"][status] = state["status"].get(status, 0) + 1
            state["done"] += 1
            done = state["done"]
            if done == settings["warmup"]:
                state["warm_rss"], state["warm_at"] = rss_mib(), time.perf_counter()
            if done % settings["sample_every"] == 0 or done == total:
                state["samples"].append({"requests": done, "rss_mib": rss_mib(),
                                         "seconds": time.perf_counter() - began})

    def client(url: str, deadline: float) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while time.monotonic() < deadline:
                with lock:
                    k = state["next"]
                    if k >= total:
                        return
                    state["next"] += 1
                try:
                    status = http.post("/v1/predict",
                                       json=_body(k, texts, pairs, mixture.names)).status_code
                except httpx.HTTPError:
                    status = 0                                   # no answer (counted apart)
                record(status)

    with serving(app) as url:
        began = time.perf_counter()
        deadline = time.monotonic() + settings["seconds"]
        threads = [threading.Thread(target=client, args=(url, deadline)) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - began
        calls = app.state.batcher.calls
    rss_end = rss_mib()
    warm = state["warm_rss"] if state["warm_rss"] is not None else rss_start
    after_warm = (wall - (state["warm_at"] - began)) if state["warm_at"] else wall
    growth = rss_end - warm
    return {
        **envelope("soak", device, load_before),
        "settings": {"pack": str(pack), "experts": mixture.names, **settings, "host": "127.0.0.1",
                     "request_mix": "1 row each; every 10th names its expert, every 25th "
                                    "abstains, every 50th names an unknown expert (422)"},
        "requests": state["done"], "seconds": wall, "requests_per_s": state["done"] / wall,
        "status": {str(k): v for k, v in sorted(state["status"].items())},
        "model_calls": calls, "rss_start_mib": rss_start, "rss_after_warmup_mib": warm,
        "rss_end_mib": rss_end, "seconds_after_warmup": after_warm, "samples": state["samples"],
        **ratios_and_targets({"soak_rss_growth_mb": growth * 2**20 / 1e6}),
    }


def format_soak(result: dict) -> str:
    """The result as text: requests, statuses, RSS samples and the growth."""
    lines = header_lines(result) + [
        f"{result['requests']} requests in {result['seconds']:.1f} s "
        f"({result['requests_per_s']:.1f}/s, {result['model_calls']} model calls); "
        f"status counts {result['status']}",
        f"RSS: start {result['rss_start_mib']:.1f} MiB, after warm-up "
        f"{result['rss_after_warmup_mib']:.1f} MiB, end {result['rss_end_mib']:.1f} MiB", "",
        f"{'requests':>9s} {'seconds':>8s} {'RSS MiB':>9s}"]
    lines += [f"{s['requests']:9d} {s['seconds']:8.1f} {s['rss_mib']:9.1f}"
              for s in result["samples"]]
    return "\n".join(lines + ratio_lines(result))
