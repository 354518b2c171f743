"""End-to-end test in a real browser: `streamlit run app.py` driven by Playwright + Debian's chromium.

Never `playwright install`: Playwright drives the system chromium
(`apt-get install -y chromium`; .ci/run does it), or the binary $PIPEPLAN_CHROMIUM names.
Without it the test is skipped locally and fails when $CI is set (.ci/run sets it), so CI
never passes without having run it. Screenshots land in tests/artifacts/.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = Path(os.environ.get("PIPEPLAN_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMELINE = '[data-testid="stPlotlyChart"] .main-svg'

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chromium() -> Path:
    """The chromium binary; checked before the Streamlit server starts."""
    if CHROMIUM.exists():
        return CHROMIUM
    reason = (f"{CHROMIUM} not found: the browser test needs Debian's chromium. Install it with "
              "`apt-get install -y chromium` (.ci/run does) or set PIPEPLAN_CHROMIUM to a chromium binary; "
              "never `playwright install`.")
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason} CI is set, so a missing browser is a failure, not a skip.")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def server(chromium):
    port = free_port()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with open(ARTIFACTS / "streamlit.log", "w") as log:
        yield from _serve(port, log)


def _serve(port: int, log):
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--server.headless", "true", "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"streamlit did not start; see {ARTIFACTS / 'streamlit.log'}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        yield b
        b.close()


def timeline_rows(page) -> list[str]:
    """The device rows on the timeline's y axis (the first chart on the page), without comm rows."""
    chart = page.locator('[data-testid="stPlotlyChart"]').first
    ticks = chart.locator(".yaxislayer-above .ytick text").all_text_contents()
    return [t for t in ticks if t.startswith("dev ") and not t.endswith("comm")]


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def test_plan_change_devices_and_download(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page.set_default_timeout(120_000)
    page.goto(server)
    page.wait_for_selector(TIMELINE, timeout=180_000)
    page.get_by_text("Predicted step time").first.wait_for()
    rows_before = wait_for(lambda: timeline_rows(page), 30, "timeline rows")
    assert len(rows_before) == 4, rows_before
    step_before = page.locator('[data-testid="stMetric"]', has_text="Predicted step time").inner_text()
    # The plan view: scrolled so the Plan section's headline and timeline fill the window.
    page.locator('[data-testid="stHeading"]', has_text="4. Plan").first.evaluate(
        "el => el.scrollIntoView({block: 'start'})")
    time.sleep(0.5)
    page.screenshot(path=str(ARTIFACTS / "app_plan.png"), full_page=False)
    page.locator('[data-testid="stPlotlyChart"]').first.screenshot(path=str(ARTIFACTS / "app_timeline.png"))

    page.get_by_role("tab", name="2. Cluster").click()
    devices = page.get_by_label("Devices", exact=True)
    devices.fill("2")
    devices.press("Enter")
    rows_after = wait_for(lambda: (r := timeline_rows(page)) and len(r) == 2 and r, 120, "a 2-device timeline")
    assert rows_after != rows_before
    step_after = wait_for(lambda: (t := page.locator('[data-testid="stMetric"]', has_text="Predicted step time")
                                   .inner_text()) != step_before and t, 60, "a new step time")
    assert step_after != step_before
    page.screenshot(path=str(ARTIFACTS / "app_plan_2_devices.png"), full_page=True)

    with page.expect_download() as zip_info:
        page.get_by_role("button", name="Download training job (.zip)").click()
    zip_path = tmp_path / "job.zip"
    zip_info.value.save_as(zip_path)
    assert zip_info.value.suggested_filename == "pipeplan_job.zip"
    with page.expect_download() as plan_info:
        page.get_by_role("button", name="plan.json").click()
    plan_path = tmp_path / "plan.json"
    plan_info.value.save_as(plan_path)

    # The zip the browser got equals what `pipeplan export` writes for the plan the browser got.
    subprocess.run([sys.executable, "-m", "cli", "export", str(plan_path), "-o", str(tmp_path / "job")],
                   cwd=ROOT, check=True, capture_output=True)
    with zipfile.ZipFile(io.BytesIO(zip_path.read_bytes())) as zf:
        assert {"train.py", "launch.sh", "slurm.sbatch", "plan.json", "README.md"} <= set(zf.namelist())
        for name in zf.namelist():
            assert zf.read(name) == (tmp_path / "job" / name).read_bytes(), name
    page.close()
