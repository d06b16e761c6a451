"""A person's path through the app, end to end, in headless Chromium (playwright + Debian's
chromium, as tests/test_browser.py).

A fresh server (cold caches, an empty workspace): a deep link to /playground first → the
Overview → Budget: the LLaMA-3.2-1B preset, 33,920 and 1,235,814,400 read in full → Train: 5 steps
of SST-2 → "Try it" → the Playground answers a typed review with that expert → the demo pack
answers a premise/hypothesis pair. Every step: no exception element, no console error other than
known offline noise, no metric value cut off, and a time limit. Screenshots (the 1280×800 view
and the whole page) of each step under ``test-artifacts/journey/`` (or $TTMOE_SCREENSHOTS/journey);
the step times are printed.

Without a browser the test is skipped locally and FAILS under CI (``CI=true``).

``TTMOE_MEASURE_REFRESH=1`` adds a measurement: the same training run watched (the Train page
open, refreshing) and unwatched (on another page); the engine's own training time of each.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
from test_browser import CHROMIUM_ARGS, _chromium, _wait_idle, streamlit_server

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK = Path(os.environ.get("TTMOE_PACK") or REPO_ROOT / "assets" / "demo")
VIEW = {"width": 1280, "height": 800}
REVIEW = "a gorgeous , witty , seductive movie ."
PREMISE, HYPOTHESIS = "A man is playing a guitar on stage.", "Nobody is making music."
# seconds each step may take on a slow 2-core machine (the first ones load the engine)
LIMITS = {"cold deep link /playground": 120, "overview": 60, "budget": 60, "train 5 steps": 300,
          "try it": 120, "demo pack": 120}
# console messages of a machine without internet (fonts, usage statistics, …), not app errors
OFFLINE_NOISE = re.compile(r"net::ERR_|Failed to load resource|fonts\.|webhooks|segment|"
                           r"ERR_INTERNET_DISCONNECTED|ERR_NAME_NOT_RESOLVED", re.I)

# the refresh measurement: a warm-up, then watched and unwatched runs alternately
PAIRS = int(os.environ.get("TTMOE_MEASURE_PAIRS", "2"))
RUNS = ("warm-up",) + tuple(f"{kind} {i + 1}" for i in range(PAIRS)
                            for kind in ("watched", "unwatched"))
REFRESH_S = float(os.environ.get("TTMOE_TRAIN_REFRESH_S", "5"))  # as pages/train.py

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _browser_or_fail():
    """(chromium path, playwright.sync_api); skip locally, fail in CI, when either is missing."""
    chromium = _chromium()
    try:
        import playwright.sync_api as api
    except ImportError:
        api = None
    if chromium is None or api is None:
        missing = "chromium (apt-get install chromium)" if chromium is None else "playwright"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"no {missing}: the journey test must run in CI")
        pytest.skip(f"no {missing}")
    return chromium, api


@pytest.fixture(scope="module")
def fresh_server(tmp_path_factory):
    """A server of its own (cold caches) on an empty workspace: (url, log file, workspace)."""
    log_path = tmp_path_factory.mktemp("streamlit") / "server.log"
    workspace = tmp_path_factory.mktemp("workspace")
    env = {"TTMOE_WORKSPACE": str(workspace), "TTMOE_DATA_DIR": str(REPO_ROOT / "assets" / "samples")}
    with streamlit_server(log_path, env) as url:
        yield url, log_path, workspace


class Journey:
    """Steps with a time limit each; checks and screenshots after every step."""

    def __init__(self, page, shots: Path):
        self.page, self.shots, self.times, self.problems = page, shots, {}, []
        self.console: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.console.append(m.text))
        page.on("pageerror", lambda e: self.console.append(f"page error: {e}"))

    def step(self, name: str, action) -> None:
        started = time.perf_counter()
        action()
        _wait_idle(self.page, timeout_s=LIMITS[name])
        self.times[name] = time.perf_counter() - started
        self.check(name)

    def check(self, name: str) -> None:
        page = self.page
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        page.screenshot(path=str(self.shots / f"{len(self.times):02d}-{slug}.png"))
        _whole_page(page, self.shots / f"{len(self.times):02d}-{slug}-whole.png")
        if self.times[name] > LIMITS[name]:
            self.problems.append(f"{name}: {self.times[name]:.1f} s > {LIMITS[name]} s")
        exceptions = page.locator('[data-testid="stException"]')
        if exceptions.count():
            self.problems.append(f"{name}: exception {exceptions.first.inner_text()[:300]}")
        cut = page.evaluate("""() => [...document.querySelectorAll(
                '[data-testid="stMetricValue"] div, [data-testid="stMetricValue"]')]
            .filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.innerText)""")
        if cut:
            self.problems.append(f"{name}: metric values cut off: {cut}")
        nav = page.locator('[data-testid="stSidebarNav"]')
        if not nav.count() or "Budget calculator" not in nav.inner_text():
            self.problems.append(f"{name}: not app.py's navigation")
        errors = [m for m in self.console if not OFFLINE_NOISE.search(m)]
        if errors:
            self.problems.append(f"{name}: console errors {errors[:3]}")
        self.console.clear()

    def metric(self, label: str) -> str:
        box = self.page.locator('[data-testid="stMetric"]').filter(
            has=self.page.locator('[data-testid="stMetricLabel"]', has_text=label)).first
        return box.locator('[data-testid="stMetricValue"]').inner_text().strip()

    def nav(self, title: str) -> None:
        self.page.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True).click()

    def set_number(self, label: str, value: int) -> None:
        box = self.page.get_by_label(label, exact=False).first
        box.fill(str(value))
        box.press("Enter")
        _wait_idle(self.page)


def _whole_page(page, path: Path) -> None:
    """A screenshot of the whole page at 1280 px wide (Streamlit scrolls inside its main block,
    so the viewport grows to fit it for the shot, then goes back to 1280×800)."""
    height = page.evaluate("() => Math.max(...[...document.querySelectorAll("
                           "'[data-testid=\"stMain\"], [data-testid=\"stMainBlockContainer\"]')]"
                           ".map(e => e.scrollHeight), 800)")
    page.set_viewport_size({"width": VIEW["width"], "height": min(int(height) + 40, 8000)})
    page.wait_for_timeout(500)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(VIEW)
    page.wait_for_timeout(300)


def _table_shows_whole(page, raw: str) -> bool:
    """True when a dataframe holds the value ``raw`` (its accessible table has raw values; the
    grid itself is a canvas) and that grid needs no horizontal scrolling: every column, with the
    formatted value, is in view."""
    return page.evaluate("""(raw) => {
        const grids = [...document.querySelectorAll('[data-testid="stDataFrame"]')];
        const grid = grids.find(g => [...g.querySelectorAll('td')].some(
            c => c.textContent.trim() === raw));
        if (!grid) return false;
        const scroller = grid.querySelector('.dvn-scroller');
        return !scroller || scroller.scrollWidth <= scroller.clientWidth + 1;
    }""", raw)


def test_a_person_trains_an_expert_and_tries_it(fresh_server):
    chromium, api = _browser_or_fail()
    if not (PACK / "pack.json").is_file():
        pytest.skip(f"no demo pack at {PACK} (python -m ttmoe_core build-demo)")
    url, log_path, _ = fresh_server
    shots = Path(os.environ.get("TTMOE_SCREENSHOTS") or REPO_ROOT / "test-artifacts") / "journey"
    shots.mkdir(parents=True, exist_ok=True)
    for old in shots.glob("*.png"):
        old.unlink()
    with api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEW)
            page.set_default_timeout(120_000)
            j = Journey(page, shots)

            def cold_deep_link():
                page.goto(f"{url}/playground", wait_until="domcontentloaded")
                page.get_by_role("heading", name="Playground").wait_for()
            j.step("cold deep link /playground", cold_deep_link)

            def overview():
                j.nav("Overview")
                page.get_by_text("Where to next").first.wait_for()
            j.step("overview", overview)

            def budget():
                j.nav("Budget calculator")
                page.get_by_role("button", name="Paper preset (LLaMA-3.2-1B)").click()
                page.get_by_text("33,920").first.wait_for()
                page.get_by_text("All methods on the same targets").scroll_into_view_if_needed()
            j.step("budget", budget)
            assert j.metric("Trainable parameters") == "33,920"
            assert _table_shows_whole(page, "1235814400"), "1,235,814,400 cut off in the table"

            def train():
                j.nav("Train an expert")
                page.get_by_role("heading", name="Training settings").wait_for()
                j.set_number("Steps", 5)
                j.set_number("Batch size", 8)
                j.set_number("Max length (tokens)", 64)
                j.set_number("Validation rows (at most)", 32)
                page.get_by_role("button", name="Train", exact=True).click()
                page.get_by_role("button", name="Cancel training").wait_for()
                # a rerun may show the old and the new button for a moment: wait for one, disabled
                train_button = page.get_by_role("button", name="Train", exact=True)
                api.expect(train_button).to_have_count(1, timeout=30_000)
                api.expect(train_button).to_be_disabled(timeout=30_000)
                page.get_by_text("Saved expert").wait_for(timeout=LIMITS["train 5 steps"] * 1000)
            j.step("train 5 steps", train)

            def try_it():
                page.get_by_role("button", name="Try it").click()
                page.get_by_role("heading", name="Playground").wait_for()
                text = page.get_by_label("Text", exact=True)
                text.fill(REVIEW)
                text.press("Control+Enter")
                _wait_idle(page)
                page.get_by_role("button", name="Answer", exact=True).click()
                page.locator('[data-testid="stMetricLabel"]', has_text="Answer").wait_for()
            j.step("try it", try_it)
            assert j.metric("Chosen expert") == "sst2"
            assert j.metric("Answer") in ("positive", "negative")

            def demo_pack():
                page.get_by_text("A pack (router + experts)").click()
                _wait_idle(page)
                page.get_by_label("Text", exact=True).fill(PREMISE)
                pair = page.get_by_label(re.compile("^Second text"))
                pair.fill(HYPOTHESIS)
                pair.press("Control+Enter")
                _wait_idle(page)
                page.get_by_role("button", name="Route and answer").click()
                page.get_by_text("Router: probability of each expert").wait_for()
            j.step("demo pack", demo_pack)
            assert j.metric("Chosen expert") in ("mnli", "rte", "qnli", "qqp")
            assert j.metric("Answer") in ("entailment", "neutral", "contradiction",
                                          "not_entailment", "duplicate", "not_duplicate")
        finally:
            browser.close()
    print("\njourney step times (s): " + ", ".join(f"{k} {v:.1f} (limit {LIMITS[k]})"
                                                   for k, v in j.times.items()))
    print(f"screenshots: {shots}\nstreamlit log: {log_path}")
    log = log_path.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert not j.problems, "\n".join(j.problems)


@pytest.mark.skipif(not os.environ.get("TTMOE_MEASURE_REFRESH"),
                    reason="a measurement (minutes): set TTMOE_MEASURE_REFRESH=1")
def test_watching_a_run_costs_little_training_speed(fresh_server):
    """The same run (seed, data, steps), alternately watched on the Train page (the live view
    refreshes every ``REFRESH_S`` seconds) and unwatched (on the Overview meanwhile), twice each.
    The engine's own training time of the fastest watched and fastest unwatched run are compared
    (the minimum is robust to other load); watching must cost < 5%."""
    chromium, api = _browser_or_fail()
    url, _, workspace = fresh_server
    steps = int(os.environ.get("TTMOE_MEASURE_STEPS", "40"))
    seconds = {}
    with api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEW)
            page.set_default_timeout(600_000)
            j = Journey(page, Path("/tmp"))
            page.goto(f"{url}/train", wait_until="domcontentloaded")
            page.get_by_role("heading", name="Training settings").wait_for()
            for run in RUNS:
                _wait_idle(page)
                j.set_number("Steps", 4 if run == "warm-up" else steps)
                j.set_number("Batch size", 8)
                j.set_number("Max length (tokens)", 64)
                j.set_number("Validation rows (at most)", 16)
                name = page.get_by_role("textbox", name="Expert name")
                name.fill(run.replace(" ", "-"))
                name.press("Enter")
                _wait_idle(page)
                page.get_by_role("button", name="Train", exact=True).click()
                page.get_by_role("button", name="Cancel training").wait_for()
                if run.startswith("unwatched"):  # another page until the expert is saved
                    j.nav("Overview")
                    page.get_by_text("Where to next").first.wait_for()
                    saved = workspace / run.replace(" ", "-") / "adapter_config.json"
                    deadline = time.time() + 600
                    while not saved.is_file() and time.time() < deadline:
                        time.sleep(0.5)
                    j.nav("Train an expert")
                page.get_by_text("Saved expert").wait_for()
                _wait_idle(page)
                seconds[run] = float(j.metric("Training time").split()[0])
        finally:
            browser.close()
    # the fastest of each kind: other load on the machine only ever slows a run down
    watched = [v for k, v in seconds.items() if k.startswith("watched")]
    unwatched = [v for k, v in seconds.items() if k.startswith("unwatched")]
    cost = min(watched) / min(unwatched) - 1
    median_cost = float(np.median(watched)) / float(np.median(unwatched)) - 1
    print(f"\n{steps} steps, refresh every {REFRESH_S:g} s: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items())
          + f"; fastest watched vs fastest unwatched: {cost:+.1%}; medians: {median_cost:+.1%}")
    assert cost < 0.05

