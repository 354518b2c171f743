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


def test_hybrid_8_nodes_of_8_gpus_ranked_planned_and_downloaded(server, browser, tmp_path):
    """8 nodes × 8 H100 (from a shared link), Parallelism set to automatic by a click: the ranked
    configurations, the best one's plan, and its job, whose settings carry the degrees."""
    import json
    import urllib.parse

    page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page.set_default_timeout(120_000)
    page.goto(f"{server}/?" + urllib.parse.urlencode({"n_devices": 64, "preset": "H100-SXM",
                                                      "devices_per_node": 8}))
    page.get_by_role("tab", name="2. Cluster").click()
    wait_for(lambda: "64 × H100-SXM on 8 nodes" in page_text(page), 180, "the 8 × 8 cluster")
    page.get_by_role("tab", name="3. Training").click()
    page.get_by_text("automatic (PP × DP × TP)", exact=True).click()
    settled(page, lambda t: "Configuration shown below" in t and "Predicted step time" in t, 180)
    text = page_text(page)
    assert "64 GPUs (8 per node)" in text and "pruned by their bound" in text, text[:2000]
    page.locator('[data-testid="stHeading"]', has_text="4. Parallelism").first.evaluate(
        "el => el.scrollIntoView({block: 'start'})")
    time.sleep(0.5)
    page.screenshot(path=str(ARTIFACTS / "app_hybrid_8x8.png"), full_page=False)
    with page.expect_download() as plan_info:
        page.get_by_role("button", name="plan.json").click()
    plan_path = tmp_path / "plan.json"
    plan_info.value.save_as(plan_path)
    config = json.loads(plan_path.read_text())["config"]
    assert config["data_parallel"] * config["tensor_parallel"] > 1, config
    with page.expect_download() as zip_info:
        page.get_by_role("button", name="Download training job (.zip)").click()
    zip_path = tmp_path / "job.zip"
    zip_info.value.save_as(zip_path)
    with zipfile.ZipFile(zip_path) as zf:
        assert {"train.py", "launch.sh", "plan.json"} <= set(zf.namelist())
        job_plan = json.loads(zf.read("plan.json"))
    assert job_plan["config"]["tensor_parallel"] == config["tensor_parallel"]
    assert job_plan["config"]["data_parallel"] == config["data_parallel"]
    page.close()


TIMINGS = ROOT / "bench" / "results" / "app_timings.json"
LLAMA_7B_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
                   "intermediate_size": 11008, "num_attention_heads": 32, "num_hidden_layers": 32,
                   "num_key_value_heads": 32, "max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
                   "vocab_size": 32000, "tie_word_embeddings": False, "hidden_act": "silu"}
TARGETS_S = {"first page load (opening example, fresh server)": None, "cluster cell edit": 2.0,
             "Interleaved1F1B solve": 2.0, "ZBV solve": 2.0, "1,024 micro-batches shown": 5.0,
             "HF config upload (Llama-7B shape, first)": 3.0, "HF sequence-length change": 1.0}
"""Issue 17, item 11's targets (seconds); recorded next to each measurement, never asserted: the
machine is shared and its timings are noisy."""
ISSUE_REPORTED_S = {"cluster cell edit": "2.4–2.8", "Interleaved1F1B solve": "3–4", "ZBV solve": "3–4",
                    "1,024 micro-batches shown": "28–38", "HF config upload (Llama-7B shape, first)": "10",
                    "HF sequence-length change": "10"}
"""What issue 17 measured before the fixes (GPT-2 124M on 4 x A100 then; the opening example is now
GPT-2 350M on 2 x A100 + 2 x L4)."""


def page_text(page) -> str:
    return page.evaluate("() => document.body.innerText")


RUNNING = ('[data-testid="stStatusWidgetRunningIcon"], [data-testid="stStatusWidgetRunningManIcon"], '
           '[data-testid="stStatusWidgetNewYearsIcon"]')
"""The status widget's running icons (the widget itself also shows "File change. Rerun" when someone
edits a source file, which is not a run)."""


def settled(page, done, timeout_s: float = 120) -> None:
    """Wait until done(page text) holds and the script has stopped running (no running icon),
    twice in a row 100 ms apart, so the last element drawn is on screen."""
    deadline = time.time() + timeout_s
    streak = 0
    while time.time() < deadline:
        running = page.locator(RUNNING).count() > 0
        streak = streak + 1 if (not running and done(page_text(page))) else 0
        if streak >= 2:
            return
        time.sleep(0.05)
    page.screenshot(path=str(ARTIFACTS / "timing_timeout.png"), full_page=True)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for the page to settle")


def timed(page, results: dict, label: str, act, done, timeout_s: float = 180) -> float:
    """Seconds from the user's action until the page settled with done() true (less the final 50 ms poll)."""
    start = time.perf_counter()
    act()
    settled(page, done, timeout_s)
    seconds = round(time.perf_counter() - start - 0.05, 2)
    results[label] = seconds
    print(f"{label}: {seconds} s", flush=True)
    return seconds


def step_time(text: str) -> str | None:
    import re

    m = re.search(r"Predicted step time\s+([\d,.]+ ms)", text)
    return m.group(1) if m else None


def planned(text: str) -> bool:
    """A plan or its diagnosis is on the page (Llama-7B does not fit the opening cluster)."""
    return step_time(text) is not None or "No plan fits" in text


def test_interaction_timings(server, browser, tmp_path):
    """Issue 17, item 11: each interaction timed in a real browser and written to
    bench/results/app_timings.json (rendered into docs/benchmarks.md by `python -m bench.app_timings`).
    The targets are recorded, not asserted."""
    import json
    import platform

    results: dict[str, float] = {}
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(180_000)
    timed(page, results, "first page load (opening example, fresh server)", lambda: page.goto(server),
          lambda t: step_time(t) is not None and "Simulated makespan" in t, timeout_s=300)

    # a cell edit in the device table: the last L4 gets a relative speed of 2
    page.get_by_role("tab", name="2. Cluster").click()
    grid = page.locator('[data-testid="stDataFrame"]').first
    box = None
    while box is None or box != grid.bounding_box():  # the caption beside the table is filled after it
        box = grid.bounding_box()
        time.sleep(0.5)
    before = step_time(page_text(page))
    # the grid is a canvas: open row 3's "Relative speed" cell (header 36 px, rows 35 px, the column at
    # 77% of the width in a 1400 px window) with a double click
    page.mouse.dblclick(box["x"] + 0.77 * box["width"], box["y"] + 36 + 35 * 3 + 17)
    time.sleep(0.5)

    page.keyboard.type("2")
    time.sleep(0.5)  # the cell's editor takes the text; Enter commits it (the edit the user waits on)
    timed(page, results, "cluster cell edit", lambda: page.keyboard.press("Enter"),
          lambda t: step_time(t) not in (None, before))

    page.get_by_role("tab", name="3. Training").click()
    schedule = page.locator('[data-testid="stSelectbox"]', has_text="Schedule")

    def pick(name):
        def act():
            schedule.click()
            page.get_by_role("option", name=name, exact=True).click()
        return act

    timed(page, results, "Interleaved1F1B solve", pick("Interleaved1F1B"),
          lambda t: "Interleaved1F1B, 8 micro-batches" in t and step_time(t) is not None)
    timed(page, results, "ZBV solve", pick("ZBV"), lambda t: "ZBV, 8 micro-batches" in t and step_time(t))
    timed(page, results, "back to 1F1B (cached)", pick("1F1B"), lambda t: "1F1B, 8 micro-batches" in t)

    count = page.get_by_label("Micro-batches (M)")

    def microbatches(m):
        def act():
            count.fill(str(m))
            count.press("Enter")
        return act

    timed(page, results, "1,024 micro-batches shown", microbatches(1024),
          lambda t: "1F1B, 1024 micro-batches" in t and "Simulated makespan" in t)
    page.screenshot(path=str(ARTIFACTS / "app_1024_microbatches.png"), full_page=False)
    timed(page, results, "back to 8 micro-batches (cached)", microbatches(8),
          lambda t: "1F1B, 8 micro-batches" in t and "Simulated makespan" in t)

    page.get_by_role("tab", name="1. Model").click()
    page.get_by_text("HF config.json", exact=True).click()
    settled(page, lambda t: "Upload a HF config.json" in t)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(LLAMA_7B_CONFIG))
    timed(page, results, "HF config upload (Llama-7B shape, first)",
          # The run-view uploaders (run logs, their plan.json) share the test id.
          lambda: page.get_by_role("tabpanel", name="Model")
          .get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(config)),
          lambda t: "seq len 4096" in t and planned(t))
    seq = page.get_by_label("Sequence length")

    def seq_len(n):
        def act():
            seq.fill(str(n))
            seq.press("Enter")
        return act

    # a new length analyses the kept trace again (profiler.hf.HfLengthProfiler): the median of three lengths
    changes = [timed(page, results, "HF sequence-length change", seq_len(n), lambda t, n=n: f"seq len {n}" in t
                     and planned(t)) for n in (2048, 1024, 3072)]
    results["HF sequence-length change"] = sorted(changes)[1]
    timed(page, results, "HF sequence-length change back (cached)", seq_len(4096),
          lambda t: "seq len 4096" in t and planned(t))
    page.close()

    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    TIMINGS.write_text(json.dumps({
        "what": "seconds from a user's action in headless chromium until the Streamlit page settled "
                "(tests/test_browser_e2e.py::test_interaction_timings)",
        "env": {"machine": platform.machine(), "cpu_count": os.cpu_count(),
                "load_average_1m": round(os.getloadavg()[0], 2),
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "timings_s": results, "targets_s": TARGETS_S, "issue_reported_s": ISSUE_REPORTED_S}, indent=2) + "\n")
    assert set(TARGETS_S) <= set(results)


def test_pick_a_transformers_architecture_and_plan_it(server, browser):
    """Issue 14: the model picker lists transformers' architectures; picking one (T5, an encoder-decoder)
    profiles its default config and plans it in the browser."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(180_000)
    page.goto(server)
    settled(page, lambda t: step_time(t) is not None, timeout_s=300)
    page.get_by_text("transformers architecture", exact=True).click()
    settled(page, lambda t: "LlamaForCausalLM" in t and planned(t), timeout_s=180)
    box = page.locator('[data-testid="stSelectbox"]', has_text="Architecture")
    box.click()
    page.keyboard.type("t5")
    page.get_by_role("option", name="t5", exact=True).click()
    settled(page, lambda t: "T5ForConditionalGeneration" in t and planned(t), timeout_s=180)
    assert "hf:t5-config.json" in page_text(page)
    page.screenshot(path=str(ARTIFACTS / "app_architecture_t5.png"), full_page=True)
    page.close()
