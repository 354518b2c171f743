"""The app's Training / Inference switch (issue 20): Inference shows throughput, latency and memory per
device against limits, from planner.solvers.inference; Training stays the default."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.mark.slow
def test_inference_mode_shows_throughput_latency_memory():
    at = AppTest.from_file(APP, default_timeout=180).run()
    assert not at.exception
    assert at.radio(key="pipeplan_mode").value == "Training"
    at.radio(key="pipeplan_mode").set_value("Inference").run()
    assert not at.exception, at.exception
    labels = {m.label: m.value for m in at.metric}
    assert "Throughput, samples/s" in labels and "Latency per request" in labels
    assert "Fullest device memory" in labels
    assert any("4. Inference plan" in h.value for h in at.header)
    assert any("proven optimal" in c.value for c in at.caption), [c.value for c in at.caption]
    at.selectbox(key="inf_objective").set_value("latency").run()
    assert not at.exception
    assert not at.error, [e.value for e in at.error]
