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
    """The charts in view (those inside a closed <details> are drawn when it opens)."""
    return driver.execute_script(
        """return Array.from(document.querySelectorAll("div.chart"))
             .filter(div => !div.closest("details:not([open])")).map(div => ({
             id: div.id,
             svg: div.querySelectorAll("svg.main-svg").length,
             traces: div.querySelectorAll("g.trace").length,
           }));"""
    )


def wait_for_charts(driver) -> list[dict]:
    deadline = time.monotonic() + CHARTS_DRAWN_S
    while (state := charts_state(driver)) and not all(c["traces"] for c in state) and time.monotonic() < deadline:
        time.sleep(0.2)
    return state


def test_the_report_renders_its_charts_in_chromium_without_errors(browser, tmp_path):
    page = build(write_runs(tmp_path / "runs"), tmp_path / "report.html")
    browser.get(page.as_uri())
    state = wait_for_charts(browser)

    expected = browser.execute_script(
        """return document.querySelectorAll("script[type='application/json']").length
             - document.querySelectorAll("details:not([open]) div.chart").length"""
    )
    # accuracy at the chosen rate against trainable parameters (no update rank in these runs); H200: throughput,
    # memory, steps (every cell's accuracy behind the toggle); A100: throughput, memory, steps
    assert len(state) == expected >= 7, state
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


def rows_of(driver, table_id: str, column: int) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.getElementById(arguments[0]).tBodies[0].rows)"
        ".filter(r => !r.hidden).map(r => r.cells[arguments[1]].textContent.trim())",
        table_id,
        column,
    )


def test_a_reader_sorts_and_filters_a_table_and_opens_every_rate_and_seed_offline(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    page = build(write_runs(tmp_path / "runs"), tmp_path / "report.html")
    browser.set_window_size(1280, 1000)
    browser.get(page.as_uri())
    wait_for_charts(browser)
    column = browser.execute_script(
        "return Array.from(document.querySelectorAll('#accuracy-table th'))"
        ".findIndex(th => th.textContent === 'trainable')"
    )
    header = browser.find_elements(By.CSS_SELECTOR, "#accuracy-table th")[column]
    numbers = lambda: [int(v.replace(",", "")) for v in rows_of(browser, "accuracy-table", column)]  # noqa: E731
    header.click()
    assert numbers() == sorted(numbers()) and len(set(numbers())) > 1
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    assert numbers() == sorted(numbers(), reverse=True)

    models = rows_of(browser, "accuracy-table", 1)
    menu = browser.find_element(By.CSS_SELECTOR, ".filters[data-for=accuracy-table] select[data-filter=model]")
    Select(menu).select_by_visible_text("tiny-llama")
    kept = rows_of(browser, "accuracy-table", 1)
    assert set(kept) == {"tiny-llama"} and 0 < len(kept) < len(models)

    raw = browser.find_element(By.CSS_SELECTOR, "details.raw div.chart")
    assert not raw.is_displayed() and raw.get_attribute("data-drawn") is None  # every rate and seed: hidden
    raw.find_element(By.XPATH, "ancestor::details[1]/summary").click()
    deadline = time.monotonic() + CHARTS_DRAWN_S
    while not raw.find_elements(By.CSS_SELECTOR, "g.trace") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert raw.is_displayed() and raw.find_elements(By.CSS_SELECTOR, "g.trace")

    assert browser.execute_script("return document.documentElement.scrollWidth") <= 1280  # wide tables scroll inside
    assert browser.execute_script('return performance.getEntriesByType("resource").length') == 0  # no request at all
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
