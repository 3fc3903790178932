"""The report in a real browser: headless Chromium opens it from disk with no network, every chart draws, the
console stays free of errors, no hostile string runs, and a full-page screenshot is saved beside the test's files.

Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them) and selenium (the `test` extra); skipped
naming whichever of the two is missing.
"""

from __future__ import annotations

import shutil
import time

import pytest

from bench.views.report import build

from .report_runs import HOSTILE_MODEL, HOSTILE_REASON, write_runs

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
MISSING = [name for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not path]
pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"{' and '.join(MISSING) or 'nothing'} not on PATH (Debian: apt-get install chromium chromium-driver; "
    ".ci/run installs them)",
)
# No network, no first-run or sync traffic: the machine has no route out, and the page must not need one.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)
CHARTS_DRAWN_S = 30


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def charts_state(driver) -> list[dict]:
    return driver.execute_script(
        """return Array.from(document.querySelectorAll("div.chart")).map(div => ({
             id: div.id,
             svg: div.querySelectorAll("svg.main-svg").length,
             traces: div.querySelectorAll("g.trace").length,
           }));"""
    )


def test_the_report_renders_its_charts_in_chromium_without_errors(browser, tmp_path):
    page = build(write_runs(tmp_path / "runs"), tmp_path / "report.html")
    browser.get(page.as_uri())
    deadline = time.monotonic() + CHARTS_DRAWN_S
    while (state := charts_state(browser)) and not all(c["traces"] for c in state) and time.monotonic() < deadline:
        time.sleep(0.2)

    expected = browser.execute_script("return document.querySelectorAll(\"script[type='application/json']\").length")
    assert len(state) == expected >= 7, state  # H200: 5 charts, A100: 3 minus accuracy
    assert all(c["svg"] >= 1 and c["traces"] >= 1 for c in state), state
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    assert browser.execute_script("return window.__xss") is None  # no hostile string ran
    text = browser.execute_script("return document.body.innerText")
    assert HOSTILE_MODEL in text and HOSTILE_REASON in text  # shown as text instead
    resources = browser.execute_script('return performance.getEntriesByType("resource").map(r => r.name)')
    assert [r for r in resources if not r.startswith(("file:", "data:", "blob:"))] == []

    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, min(height, 16000))
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 50_000
    print(f"screenshot: {shot}")
