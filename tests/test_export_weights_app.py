"""The app's export section takes a pretrained-weights path as text for the job (issue 21): it goes
into train.py's settings, launch.sh and the CLI command, and the server never opens it."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture(autouse=True)
def _fresh_caches():
    st.cache_data.clear()  # process-global: another test's export zip must not be reused
    st.cache_resource.clear()


def test_weights_path_goes_into_the_job_and_the_command(monkeypatch):
    from planner import export

    seen = {}
    real = export.export_zip_bytes

    def recording(plan, **kwargs):
        seen.update(kwargs=kwargs, data=real(plan, **kwargs))
        return seen["data"]

    monkeypatch.setattr(export, "export_zip_bytes", recording)
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    path = "/nowhere/on/this/server/ckpt"  # a path of the training machine: the server never opens it
    at.text_input(key="export_weights").input(path).run()
    assert seen["kwargs"]["weights"] == path
    with zipfile.ZipFile(io.BytesIO(seen["data"])) as zf:
        train = zf.read("train.py").decode()
        assert json.loads(train.split('SETTINGS = json.loads(r"""')[1].split('""")')[0])["weights"] == path
        assert f"--weights {path}" in zf.read("launch.sh").decode()
    assert any(f"pipeplan export plan.json -o job/ --weights {path}" in c.value for c in at.code)
    at.text_input(key="export_weights").input("/data/pytorch_model.bin").run()
    assert any("pickle checkpoints (.bin/.pt) are refused" in e.value for e in at.error)
