"""Real-browser smoke test: `streamlit run app.py`, open every page in headless Chromium.

Each page must finish its script run without an exception element and show its heading; a
screenshot of every page is saved under ``test-artifacts/screenshots/`` (or $TTMOE_SCREENSHOTS).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# (url path, h1 heading, a text the finished page shows)
# a deep link first: a fresh server must still run every page through app.py's navigation
PAGES = [
    ("budget", "Budget calculator", "All methods on the same targets"),
    ("", "TT-LoRA MoE Studio", "Where to next"),
    ("train", "Train an expert", "Training settings"),
    ("experts", "Experts", "Workspace"),
    ("router", "Router", "Train a router"),
    ("playground", "Playground", "Type a text"),
]

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def _wait_idle(page, quiet_s: float = 1.5, timeout_s: float = 180.0) -> None:
    """Until the "running" status widget has been absent for ``quiet_s`` seconds."""
    deadline = time.time() + timeout_s
    quiet_since = None
    while time.time() < deadline:
        if page.locator('[data-testid="stStatusWidget"]').count() == 0:
            quiet_since = quiet_since or time.time()
            if time.time() - quiet_since >= quiet_s:
                return
        else:
            quiet_since = None
        page.wait_for_timeout(250)
    raise TimeoutError("the page script was still running after "
                       f"{timeout_s:.0f} s")


def _screenshot(page, path: Path) -> None:
    """The whole page: Streamlit scrolls inside its main block, so grow the viewport to fit it."""
    height = page.evaluate(
        "() => Math.max(...[...document.querySelectorAll('[data-testid=\"stMain\"], "
        "[data-testid=\"stMainBlockContainer\"]')].map(e => e.scrollHeight), 1000)")
    page.set_viewport_size({"width": 1440, "height": min(int(height) + 40, 8000)})
    page.wait_for_timeout(500)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size({"width": 1440, "height": 1000})


@contextlib.contextmanager
def streamlit_server(log_path: Path, env: dict[str, str]) -> Iterator[str]:
    """``streamlit run app.py`` on a free port with ``env`` (its output in ``log_path``); yields
    its URL once healthy, stops it at the end."""
    port = _free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1",
             "--browser.gatherUsageStats", "false"],
            cwd=REPO_ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/_stcore/health", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        print(f"\nstreamlit log: {log_path}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log_path = tmp_path_factory.mktemp("streamlit") / "server.log"
    with streamlit_server(log_path, {"TTMOE_WORKSPACE": str(tmp_path_factory.mktemp("workspace"))}
                          ) as url:
        yield url


def test_every_page_renders_in_chromium(server):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    shots = Path(os.environ.get("TTMOE_SCREENSHOTS") or REPO_ROOT / "test-artifacts" / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    failures = []
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            for url_path, heading, text in PAGES:
                page.goto(f"{server}/{url_path}", wait_until="domcontentloaded")
                page.wait_for_selector("h1", timeout=120_000)
                _wait_idle(page)
                page.get_by_text(text, exact=False).first.wait_for(timeout=60_000)
                _wait_idle(page)
                if url_path == "playground" and page.get_by_text("Route and answer").count():
                    page.get_by_role("button", name="Route and answer").click()
                    page.get_by_text("Chosen expert").first.wait_for(timeout=60_000)
                    _wait_idle(page)
                name = url_path or "overview"
                _screenshot(page, shots / f"{name}.png")
                exceptions = page.locator('[data-testid="stException"]')
                if exceptions.count():
                    failures.append(f"{name}: exception shown: {exceptions.first.inner_text()[:300]}")
                nav = page.locator('[data-testid="stSidebarNav"]').inner_text()
                if "Budget calculator" not in nav or "common" in nav.split():
                    failures.append(f"{name}: not app.py's navigation: {nav!r}")
                headings = page.locator("h1").all_inner_texts()
                if not any(heading in h for h in headings):
                    failures.append(f"{name}: no h1 {heading!r} (found {headings})")
                if heading.split()[0] not in page.title() and "TT-LoRA" not in page.title():
                    failures.append(f"{name}: document title {page.title()!r}")
        finally:
            browser.close()
    print(f"\nscreenshots: {shots}")
    assert not failures, "\n".join(failures)
