"""What watching a training run on the Train page costs the run, as CPU accounting (issue 15).

A fresh server per refresh interval (``TTMOE_TRAIN_REFRESH_S``), headless Chromium on the Train
page, one long SST-2 run of the sample data started from the page. Over a window of the run the
script reads, from /proc, the CPU seconds of the server's training threads (its busiest three
threads) and of everything else involved: the server's other threads, Chromium, the playwright
driver and this process. The second, as a share of the first, is what watching takes from training
on a machine where the browser shares the cores with the server (the worst case: a user's browser
normally runs elsewhere). CPU seconds, unlike wall-clock A/B runs, do not drift with other load on
a shared VM.

    python scripts/refresh_cost.py --refresh 1 2 5 --seconds 30

Needs playwright and a chromium binary (as tests/test_browser.py). Linux only (/proc).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_browser import CHROMIUM_ARGS, _chromium, _wait_idle, streamlit_server  # noqa: E402
from test_journey import Journey  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(stat_path: str) -> float:
    fields = open(stat_path).read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK      # utime + stime


def snapshot(server: int) -> tuple[dict[str, float], float]:
    """(CPU seconds per server thread, CPU seconds of the browser side and this process)."""
    threads = {}
    for tid in os.listdir(f"/proc/{server}/task"):
        try:
            threads[tid] = cpu_seconds(f"/proc/{server}/task/{tid}/stat")
        except FileNotFoundError:
            pass
    browser = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline").read()
            if int(pid) != server and ("chrom" in cmd or "playwright" in cmd):
                browser += cpu_seconds(f"/proc/{pid}/stat")
        except (FileNotFoundError, ProcessLookupError):
            pass
    return threads, browser + time.process_time()


def measure(refresh: float, seconds: float, workspace: Path) -> dict:
    import playwright.sync_api as api

    env = {"TTMOE_WORKSPACE": str(workspace), "TTMOE_TRAIN_REFRESH_S": str(refresh),
           "TTMOE_DATA_DIR": str(REPO / "assets" / "samples")}
    with streamlit_server(workspace / "server.log", env) as url:
        port = url.rsplit(":", 1)[1]
        server = next(int(p) for p in filter(str.isdigit, os.listdir("/proc"))
                      if f"\0{port}\0" in open(f"/proc/{p}/cmdline").read())
        with api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.set_default_timeout(300_000)
                journey = Journey(page, workspace)
                page.goto(f"{url}/train", wait_until="domcontentloaded")
                page.get_by_role("heading", name="Training settings").wait_for()
                _wait_idle(page)
                journey.set_number("Steps", 5000)
                journey.set_number("Batch size", 8)
                journey.set_number("Max length (tokens)", 64)
                journey.set_number("Validation rows (at most)", 16)
                name = page.get_by_role("textbox", name="Expert name")
                name.fill("refresh-cost")
                name.press("Enter")
                _wait_idle(page)
                page.get_by_role("button", name="Train", exact=True).click()
                page.get_by_role("button", name="Cancel training").wait_for()
                time.sleep(5)                                   # past loading and tokenizing
                (a, a_rest), t0 = snapshot(server), time.time()
                time.sleep(seconds)
                (b, b_rest), wall = snapshot(server), time.time() - t0
            finally:
                browser.close()
    deltas = sorted((b[k] - a.get(k, 0.0) for k in b), reverse=True)
    training, rest = sum(deltas[:3]), sum(deltas[3:]) + (b_rest - a_rest)
    return {"refresh_s": refresh, "window_s": round(wall, 1),
            "training_cores": round(training / wall, 3), "other_cores": round(rest / wall, 3),
            "other_share_of_training": round(rest / training, 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refresh", type=float, nargs="+", default=[1.0, 2.0, 5.0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window of the run")
    args = parser.parse_args(argv)
    for refresh in args.refresh:
        with tempfile.TemporaryDirectory() as folder:
            row = measure(refresh, args.seconds, Path(folder))
        print(f"refresh {row['refresh_s']:g} s: training {row['training_cores']:.2f} cores, "
              f"watching {row['other_cores']:.3f} cores = {row['other_share_of_training']:.1%} "
              f"of training's CPU ({row['window_s']} s window)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
