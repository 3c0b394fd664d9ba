"""report.html in headless Chromium (Debian's `chromium` + `chromium-driver`, driven by selenium): every section
and image present and loaded, no failed request, no console error; a screenshot is saved beside the report."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from test_report import run_dir  # noqa: F401  (the module-scoped run folder fixture)
from tunelens.io import write_json

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def ensure_chromium() -> None:
    """Install Debian's chromium and chromium-driver when absent (the test machines run as root)."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    if not shutil.which("apt-get"):
        pytest.fail("headless Chromium is needed: install the `chromium` and `chromium-driver` packages")
    cmd = "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver"
    res = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True)
    if res.returncode != 0 or not CHROMEDRIVER.exists():
        pytest.fail(f"could not install chromium/chromium-driver ({cmd}): {res.stderr[-800:]}")


@pytest.fixture(scope="session")
def browser():
    ensure_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,900", "--hide-scrollbars"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    # an explicit driver path: selenium never tries to download a driver or a browser
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    yield driver
    driver.quit()


def _open(driver, html: Path):
    driver.get_log("browser"), driver.get_log("performance")  # drop what earlier pages logged
    driver.get(html.resolve().as_uri())
    driver.execute_script("return document.readyState")


def _failed_requests(driver) -> list[str]:
    bad = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.loadingFailed":
            bad.append(f"{msg['params'].get('errorText')}: {msg['params'].get('requestId')}")
        elif msg["method"] == "Network.responseReceived" and msg["params"]["response"].get("status", 200) >= 400:
            bad.append(f"HTTP {msg['params']['response']['status']}: {msg['params']['response']['url'][:100]}")
    return bad


def _check_page(driver, html: Path, shot: Path) -> list[dict]:
    from selenium.webdriver.common.by import By

    from tunelens.report import SECTION_IDS

    _open(driver, html)
    for sid in SECTION_IDS:
        section = driver.find_element(By.ID, sid)
        assert section.is_displayed() and section.find_element(By.TAG_NAME, "h2").text, sid
    imgs = driver.execute_script(
        "return Array.from(document.images).map(i => ({section: i.closest('section').id, complete: i.complete,"
        " w: i.naturalWidth, h: i.naturalHeight, alt: i.alt}))")
    for img in imgs:
        assert img["complete"] and img["w"] > 0 and img["h"] > 0, img
    # nothing wider than the window: a wide table scrolls inside its own box, the page never sideways
    for width in (1200, 900):
        driver.set_window_size(width, 900)
        sizes = driver.execute_script("const e = document.documentElement; return [e.scrollWidth, e.clientWidth]")
        assert sizes[0] <= sizes[1], f"page {sizes[0]} px wide in a {sizes[1]} px window"
    driver.set_window_size(1200, 900)
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == [], errors
    assert _failed_requests(driver) == []
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1200, min(height + 50, 16000))
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    driver.set_window_size(1200, 900)
    return imgs


def test_full_report_loads_cleanly_in_chromium(browser, run_dir, tmp_path):  # noqa: F811
    from tunelens.report import build_report

    paths = build_report(run_dir, tmp_path)
    imgs = _check_page(browser, paths["html"], tmp_path / "report.png")
    with_plots = {i["section"] for i in imgs}
    assert {"gains-costs", "safety", "heatmap", "graft", "repair", "learning-curve"} <= with_plots
    assert len(imgs) == paths["html"].read_text().count("<img ")
    print(f"screenshot: {tmp_path / 'report.png'}")


def test_report_of_a_failed_run_loads_cleanly_in_chromium(browser, tmp_path):
    from tunelens.report import build_report

    write_json(tmp_path / "run.json", {"schema": "tunelens.run/1", "config": {}, "order": ["tune", "audit"],
                                       "stages": {"tune": {"status": "failed", "dir": None, "error": "boom <x>"}},
                                       "started": "2026-01-01T00:00:00+00:00", "finished": None})
    paths = build_report(tmp_path)
    imgs = _check_page(browser, paths["html"], tmp_path / "report-failed.png")
    assert imgs == []
    assert "the tune stage failed: boom <x>" in browser.find_element("id", "learning-curve").text
