"""Issue 19 item 4: the app's measured-run view: upload a run's logs and its plan.json; per stage
planned vs measured compute and memory, and the refit cluster to download."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st
from streamlit.testing.v1 import AppTest

sys.path.insert(0, str(Path(__file__).parent))
from helpers_export import gpt_tiny_stages, hand_plan
from test_calibrate_from_run import synthetic_log

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def test_run_logs_and_plan_upload_show_the_comparison_and_refit():
    st.cache_data.clear()
    plan = hand_plan("sample:gpt:tiny", gpt_tiny_stages(2))
    planned = [s.memory.total - s.memory.reserve for s in plan.stages]
    log = synthetic_log(plan, factor=2.0, overhead=0.5, transfer_ms=0.2, peak=[m + 1000 for m in planned])
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception
    at.file_uploader(key="run_plan").upload("plan.json", plan.to_json().encode(), "application/json")
    at.file_uploader(key="run_logs").upload("run.log", log.encode(), "text/plain").run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    assert any(m.label == "Measured step" for m in at.metric)
    stages = next(d.value for d in at.dataframe if "fwd measured ms" in d.value.columns)
    assert list(stages["fwd measured ms"]) == [2.5, 2.5] and list(stages["fwd planned ms"]) == [1.0, 1.0]
    assert any("Refit: speeds" in m.value and "0.500 ms per action" in m.value for m in at.markdown)
