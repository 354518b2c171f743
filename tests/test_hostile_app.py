"""Hostile inputs through the app: the plain upload handler the app calls (ui.uploads.profile_from_upload),
then the running app (AppTest) in one session: each bad upload or table edit shows st.error, no exception,
no payload runs, and the app still plans afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import streamlit as st
from hostile.corpus import CASES, Base, by_name
from hostile.harness import base_documents, markers_absent
from streamlit.testing.v1 import AppTest

from core.errors import PipeplanError
from ui.cluster_view import DEFAULT_DEVICES, DEFAULT_PER_NODE, DEFAULT_PRESET, device_table_key
from ui.uploads import ModelRequest, profile_from_upload

APP = str(Path(__file__).resolve().parents[1] / "app.py")
UPLOAD_KIND = {"profile": "profile_json", "archive": "profile_json", "hf": "hf_config", "code": "python"}
HANDLER_CASES = [c for c in CASES if c.kind in UPLOAD_KIND and c.app]


@pytest.fixture(scope="module")
def base() -> Base:
    return base_documents()


@pytest.fixture(autouse=True)
def _fresh_caches():
    from ui import cache

    cache.clear()
    st.cache_resource.clear()


@pytest.mark.parametrize("case", HANDLER_CASES, ids=lambda c: c.name)
def test_upload_handler_refuses(case, base, tmp_path):
    path = case.build(tmp_path, base)
    data = path.read_bytes()
    request = ModelRequest(batch_size=1, seq_len=64)
    with pytest.raises(PipeplanError) as err:
        profile_from_upload(UPLOAD_KIND[case.kind], path.name, data, request, allow_code=False)
    msg = str(err.value)
    assert "\n" not in msg.strip() and len(msg) < 600, msg
    if case.kind == "code":
        assert "--allow-code" in msg
    markers_absent(tmp_path, case)


def _errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


@pytest.mark.slow  # one app session, seven hostile uploads (~4 s); test_upload_handler_refuses stays fast
def test_app_survives_hostile_uploads_then_plans(base, tmp_path):
    at = AppTest.from_file(APP, default_timeout=180).run()
    assert not at.exception and not _errors(at)
    at.radio(key="model_source").set_value("Profile JSON").run()
    cases = by_name()
    for name in ("profile_truncated", "profile_nan", "profile_unknown_schema", "profile_5000_digit_int",
                 "pt2_with_pickle_payload_as_profile", "zip_bomb_1gib", "profile_huge_60mib"):
        folder = tmp_path / name
        folder.mkdir()
        path = cases[name].build(folder, base)
        # named .json: the widget's type filter is only a hint to the browser, an attacker renames the file
        at.file_uploader(key="upload_profile_json").upload(f"{name}.json", path.read_bytes(), "application/json").run()
        assert not at.exception, (name, at.exception)
        errs = _errors(at)
        assert any("Cannot load this model" in e for e in errs), (name, errs)
        markers_absent(folder, cases[name])
    # the app still answers: a good profile plans
    good = json.dumps(base.profile).encode()
    at.file_uploader(key="upload_profile_json").upload("good.json", good, "application/json").run()
    assert not at.exception and not _errors(at), _errors(at)
    assert any(m.label == "Predicted step time" for m in at.metric)


def test_app_refuses_remote_code_config_and_python_upload(base, tmp_path):
    at = AppTest.from_file(APP, default_timeout=180).run()
    sources = at.radio(key="model_source").options
    assert "Python file (.py)" not in sources, "the .py upload must be hidden unless code execution is allowed"
    at.radio(key="model_source").set_value("HF config.json").run()
    for name in ("hf_trust_remote_code_architecture", "hf_known_type_with_auto_map", "hf_million_layers"):
        folder = tmp_path / name
        folder.mkdir()
        path = by_name()[name].build(folder, base)
        at.file_uploader(key="upload_hf_config").upload("config.json", path.read_bytes(), "application/json").run()
        assert not at.exception, (name, at.exception)
        assert any("Cannot load this model" in e for e in _errors(at)), (name, _errors(at))
        markers_absent(folder, by_name()[name])
    at.radio(key="model_source").set_value("Sample model").run()
    assert not at.exception and not _errors(at)
    assert any(m.label == "Predicted step time" for m in at.metric)


def _edit_devices(at: AppTest, edits: dict) -> AppTest:
    key = device_table_key(DEFAULT_DEVICES, DEFAULT_PRESET, DEFAULT_PER_NODE)
    at.session_state[key] = {"edited_rows": {}, "added_rows": [], "deleted_rows": [], **edits}
    return at.run()


@pytest.mark.parametrize("edits, expect", [
    ({"edited_rows": {0: {"memory_gib": 0.0}}}, r"device row 0 .*memory limit must be positive"),
    ({"edited_rows": {1: {"memory_gib": -8.0}}}, r"device row 1 .*memory limit must be positive"),
    ({"edited_rows": {2: {"preset": "custom"}}}, r"device row 2 .*needs a memory limit"),
    ({"added_rows": [{}]}, r"device row 4"),
    ({"deleted_rows": [0, 1, 2, 3]}, r"device table is empty"),
], ids=["zero_memory", "negative_memory", "custom_without_memory", "empty_row", "no_devices"])
def test_app_cluster_table_errors_name_the_row(edits, expect):
    import re

    at = AppTest.from_file(APP, default_timeout=180).run()
    _edit_devices(at, edits)
    assert not at.exception
    errs = _errors(at)
    assert any(e.startswith("Cluster (tab 2)") and re.search(expect, e) for e in errs), errs
    _edit_devices(at, {})  # the user fixes the table: the app plans again
    assert not at.exception and not _errors(at), _errors(at)
    assert any(m.label == "Predicted step time" for m in at.metric)


def test_app_training_settings_name_the_field():
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.radio(key="mb_mode").set_value("automatic").run()
    at.number_input(key="global_batch").set_value(17).run()  # micro-batch size 2 does not divide 17
    assert not at.exception
    assert any("global_batch 17 is not a multiple of micro_batch_size 2" in e for e in _errors(at)), _errors(at)
    at.number_input(key="n_devices").set_value(8).run()
    at.radio(key="mb_mode").set_value("fixed").run()
    at.number_input(key="num_microbatches").set_value(2).run()  # 1F1B on 8 devices needs >= 8
    assert not at.exception
    assert any("needs at least as many micro-batches as devices" in e for e in _errors(at)), _errors(at)
    at.number_input(key="num_microbatches").set_value(8).run()
    assert not at.exception and not _errors(at), _errors(at)


def test_profile_json_cannot_point_the_export_at_a_server_file(base, tmp_path):
    """A profile whose model.source names a server path: the app asks for the config.json instead of
    reading the path, and exports once the user uploads it."""
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.radio(key="model_source").set_value("Profile JSON").run()
    doc = json.loads(json.dumps(base.profile))
    doc["model"]["source"] = "hf:/etc/passwd"
    at.file_uploader(key="upload_profile_json").upload("p.json", json.dumps(doc).encode(), "application/json").run()
    assert not at.exception
    assert not [t for t in at.text_input if "made from" in (t.label or "")], "no free-text model source"
    errs = _errors(at)
    assert any("Cannot export this plan" in e and "upload the config.json" in e for e in errs), errs
    cfg = json.dumps({"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2, "vocab_size": 100}).encode()
    at.file_uploader(key="profile_export_config").upload("config.json", cfg, "application/json").run()
    assert not at.exception and not _errors(at), _errors(at)
    assert not any("/etc/passwd" in c.value for c in at.code)


def test_app_refuses_a_step_too_large_to_simulate(base):
    """A 600-layer profile on 512 devices x 4096 micro-batches (both within the widgets' ranges): one error,
    no exception, fast; the app plans again once the user lowers the count (issue 18:
    core.limits.MAX_STAGE_MICROBATCHES)."""
    import copy
    import time

    doc = copy.deepcopy(base.profile)
    node, edge = doc["nodes"][0], doc["edges"][0]
    doc["nodes"] = [{**node, "id": f"l{i}", "name": f"l{i}", "module_path": f"l{i}"} for i in range(600)]
    doc["edges"] = [{**edge, "src": f"l{i}", "dst": f"l{i + 1}"} for i in range(599)]
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.radio(key="model_source").set_value("Profile JSON").run()
    at.file_uploader(key="upload_profile_json").upload("p600.json", json.dumps(doc).encode(), "application/json").run()
    at.number_input(key="n_devices").set_value(512).run()
    at.radio(key="mb_mode").set_value("fixed").run()
    start = time.monotonic()
    at.number_input(key="num_microbatches").set_value(4096).run()
    took = time.monotonic() - start
    assert not at.exception, at.exception
    errs = _errors(at)
    assert any("512 stages x 4096 micro-batches is more than pipeplan simulates (at most 262144" in e
               for e in errs), errs
    assert took < 60, f"{took:.1f} s"
    at.number_input(key="n_devices").set_value(4).run()
    at.number_input(key="num_microbatches").set_value(8).run()
    assert not at.exception and not _errors(at), _errors(at)


@pytest.mark.parametrize("bwrap", ["none", None])
def test_app_says_which_sandbox_runs_code(bwrap, monkeypatch):
    """With code execution allowed, the app's warning says when only the weaker sandbox is available."""
    from profiler.sandbox import sandbox_status

    monkeypatch.setenv("PIPEPLAN_ALLOW_CODE", "1")
    if bwrap is None:
        monkeypatch.delenv("PIPEPLAN_BWRAP", raising=False)
        if not sandbox_status()[0]:
            pytest.skip("no working bwrap here")
    else:
        monkeypatch.setenv("PIPEPLAN_BWRAP", bwrap)
    at = AppTest.from_file(APP, default_timeout=180).run()
    warnings = [w.value for w in at.warning if "Code execution is allowed" in w.value]
    assert len(warnings) == 1, [w.value for w in at.warning]
    weaker = "file: models run in the weaker sandbox" in warnings[0]
    assert weaker == (bwrap == "none"), warnings[0]
