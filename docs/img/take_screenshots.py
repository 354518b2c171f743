"""Retake the README screenshots of the app's opening example.

    .venv/bin/python docs/img/take_screenshots.py

Starts `streamlit run app.py` on a free loopback port, opens it in Debian's headless chromium through
Playwright (never `playwright install`; $PIPEPLAN_CHROMIUM names another binary), and writes
docs/img/app_plan.png (the plan view: headline metrics above the timeline) and docs/img/app_timeline.png
(the timeline chart alone).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "img"
CHROMIUM = os.environ.get("PIPEPLAN_CHROMIUM", "/usr/bin/chromium")


def main() -> int:
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port",
                             str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
                             "--browser.gatherUsageStats", "false"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
                raise SystemExit("streamlit did not start")
            time.sleep(0.3)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM,
                                        args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(180_000)
            page.goto(url)
            page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg')
            page.get_by_text("Predicted step time").first.wait_for()
            while page.locator('[data-testid="stStatusWidgetRunningIcon"], '
                               '[data-testid="stStatusWidgetRunningManIcon"]').count():
                time.sleep(0.2)
            page.locator('[data-testid="stHeading"]', has_text="4. Plan").first.evaluate(
                "el => el.scrollIntoView({block: 'start'})")
            time.sleep(1.0)
            page.screenshot(path=str(OUT / "app_plan.png"), full_page=False)
            page.locator('[data-testid="stPlotlyChart"]').first.screenshot(path=str(OUT / "app_timeline.png"))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    for name in ("app_plan.png", "app_timeline.png"):
        print(OUT / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
