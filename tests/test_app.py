"""AppTest checks of the Streamlit app (streamlit.testing.v1, no browser).

The app runs in this process, so its ui/ and planner/ modules are the ones
imported here: tests can record what the app passed to the library.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import streamlit as st
from helpers_app import synthetic_profile
from streamlit.testing.v1 import AppTest

from ui import cache
from ui.cluster_view import DEFAULT_DEVICES, DEFAULT_PER_NODE, DEFAULT_PRESET, device_table_key

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
GPT2_CONFIG = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 1000, "n_positions": 256,
               "n_embd": 128, "n_layer": 3, "n_head": 4, "n_inner": None, "activation_function": "gelu_new",
               "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True}


@pytest.fixture(autouse=True)
def _fresh_caches():
    # st.cache_data is process-global and survives across AppTest instances: clear plans and
    # timelines. Sample profiles (ui.cache's own LRU) are kept: they are deterministic and the
    # slowest thing to rebuild (~20 s for gpt 124M on 2 shared cores).
    st.cache_data.clear()
    st.cache_resource.clear()


def run_app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    return at.run()


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)




def specs(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def no_problems(at: AppTest) -> None:
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def test_default_page_renders_a_plan():
    at = run_app()
    no_problems(at)
    assert at.title[0].value.startswith("pipeplan")
    assert metric(at, "Predicted step time").endswith(" ms")
    assert metric(at, "Layer times estimated for") == "A100-80GB"
    figs = specs(at)
    # the pipeline timeline is horizontal bars placed with base= (px.timeline misplots numbers)
    assert any(t.get("type") == "bar" and t.get("orientation") == "h" and "base" in t
               for f in figs for t in f["data"]), "no timeline chart"
    memory = next(f for f in figs if "Memory per device" in json.dumps(f["layout"].get("title", "")))
    assert len(memory["data"][0]["x"]) == DEFAULT_DEVICES
    assert any("pipeplan export plan.json" in c.value for c in at.code)


def test_the_opening_example_shows_why_a_planner_matters():
    """Issue 17, item 14: the page opens on a case where the cut matters: GPT-2 350M on a node of two A100s
    and a node of two L4s. Every baseline partition is at least 1.3x slower than the plan (or does not fit)."""
    from ui.cluster_view import OPENING_KINDS

    at = run_app()
    no_problems(at)
    captions = " ".join(c.value for c in at.caption)
    assert "sample:gpt:350M" in captions
    assert "2 × A100-80GB + 2 × L4 on 2 nodes" in captions and "opens on a mixed cluster" in captions, captions
    speedup = metric(at, "Speed-up over best baseline")
    assert speedup == "no baseline fits" or float(speedup.rstrip("×")) >= 1.3, speedup
    baselines = next(d for d in at.dataframe if "vs plan" in d.value.columns).value.to_dict("records")
    assert len(baselines) == 4  # the plan and three baselines
    for row in baselines[1:]:
        assert row["vs plan"] == "does not fit" or float(row["vs plan"].split("×")[0]) >= 1.3, row
    assert OPENING_KINDS == ("A100-80GB", "A100-80GB", "L4", "L4")
    # refilling the table leaves the opening example: 4 x A100-80GB means what it says
    at.number_input(key="n_devices").set_value(2).run()
    at.number_input(key="n_devices").set_value(4).run()
    no_problems(at)
    captions = " ".join(c.value for c in at.caption)
    assert "4 × A100-80GB on 1 node" in captions and "opens on a mixed cluster" not in captions, captions


def test_eight_nodes_of_eight_gpus_read_as_nodes_not_64_rows():
    at = run_app()
    at.selectbox(key="preset").set_value("H100-SXM").run()
    at.number_input(key="n_devices").set_value(64).run()
    assert not at.exception, at.exception
    # pipeline-only planning cannot use 64 devices for 28 layers: the error names the app's control
    assert any("set “Parallelism” to automatic (PP × DP × TP)" in e.value for e in at.error), \
        [e.value for e in at.error]
    captions = " ".join(c.value for c in at.caption)
    assert "64 × H100-SXM on 8 nodes" in captions, captions
    nodes = next(d for d in at.dataframe if "table rows" in d.value.columns).value.to_dict("records")
    assert len(nodes) == 8 and all(r["devices"] == 8 and r["GPUs"] == "8 × H100-SXM" for r in nodes), nodes
    assert any("Edit single devices (64 rows)" in e.label for e in at.expander)


def test_hybrid_mode_ranks_configurations_on_8_nodes_of_8_and_plans_the_picked_one():
    at = run_app()
    at.selectbox(key="preset").set_value("H100-SXM").run()
    at.number_input(key="n_devices").set_value(64).run()
    at.radio(key="parallelism").set_value("automatic (PP × DP × TP)").run()
    no_problems(at)
    ranked = next(d for d in at.dataframe if "MFU %" in d.value.columns).value.to_dict("records")
    assert len(ranked) >= 2 and all(r["pp"] * r["dp"] * r["tp"] == 64 for r in ranked), ranked
    steps = [r["step ms"] for r in ranked]
    assert steps == sorted(steps)
    assert float(metric(at, "Predicted step time").split()[0].replace(",", "")) == pytest.approx(steps[0], abs=0.051)
    # the second configuration: its plan, its command lines, its job
    at.selectbox(key="picked_config").set_value(1).run()
    no_problems(at)
    assert float(metric(at, "Predicted step time").split()[0].replace(",", "")) == pytest.approx(steps[1], abs=0.051)
    code = " ".join(c.value for c in at.code)
    second = ranked[1]
    assert f"--tp {second['tp']} --dp {second['dp']}" in code, code
    assert at.get("download_button"), "no job download for the hybrid plan"
    # fixed degrees with a TP degree the node cannot hold: one clear error, no spinner left
    at.radio(key="parallelism").set_value("fixed degrees").run()
    at.number_input(key="hybrid_tp").set_value(3).run()
    assert not at.exception
    assert any("tp" in e.value.lower() or "tensor" in e.value.lower() for e in at.error), [e.value for e in at.error]
    assert all(s.proto.state != "running" for s in at.status), "a status box is left spinning"


def test_changing_the_device_count_changes_the_plan():
    at = run_app()
    no_problems(at)
    before = metric(at, "Predicted step time")
    at.number_input(key="n_devices").set_value(2).run()
    no_problems(at)
    assert metric(at, "Predicted step time") != before
    memory = next(f for f in specs(at) if "Memory per device" in json.dumps(f["layout"].get("title", "")))
    assert len(memory["data"][0]["x"]) == 2


def test_profile_json_upload_plans_that_profile():
    at = run_app()
    at.radio(key="model_source").set_value("Profile JSON").run()
    assert any("Upload a Profile JSON" in i.value for i in at.info)
    profile = synthetic_profile(12)
    at.file_uploader(key="upload_profile_json").upload("synthetic.json", profile.to_json().encode(),
                                                        "application/json").run()
    no_problems(at)
    assert metric(at, "Layers") == "12"
    assert metric(at, "Parameters") == "120.00M"
    assert metric(at, "Predicted step time").endswith(" ms")


def test_hf_config_upload_plans_that_model():
    at = run_app()
    at.radio(key="model_source").set_value("HF config.json").run()
    at.file_uploader(key="upload_hf_config").upload("config.json", json.dumps(GPT2_CONFIG).encode(),
                                                    "application/json").run()
    no_problems(at)
    assert int(metric(at, "Layers")) >= GPT2_CONFIG["n_layer"]
    assert metric(at, "Predicted step time").endswith(" ms")
    # too long a sequence for the config: a clear error, the rest of the page intact
    at.number_input(key="upload_seq_len").set_value(4096).run()
    assert not at.exception, at.exception
    assert any("max_position_embeddings" in e.value for e in at.error)
    assert at.number_input(key="n_devices").value == DEFAULT_DEVICES
    at.number_input(key="upload_seq_len").set_value(128).run()
    no_problems(at)
    assert "seq len 128" in " ".join(c.value for c in at.caption)


def test_bad_upload_shows_an_error_and_keeps_the_rest():
    at = run_app()
    at.radio(key="model_source").set_value("Profile JSON").run()
    at.file_uploader(key="upload_profile_json").upload("broken.json", b"{ not json", "application/json").run()
    assert not at.exception, at.exception
    assert any("not valid JSON" in e.value for e in at.error)
    assert at.number_input(key="n_devices").value == DEFAULT_DEVICES  # the cluster section is still there
    assert at.selectbox(key="schedule").value == "1F1B"  # so is the training section


def test_infeasible_cluster_shows_the_diagnosis():
    at = AppTest.from_file(APP, default_timeout=120)
    key = device_table_key(DEFAULT_DEVICES, DEFAULT_PRESET, DEFAULT_PER_NODE)
    at.session_state[key] = {"edited_rows": {i: {"memory_gib": 0.25} for i in range(DEFAULT_DEVICES)},
                             "added_rows": [], "deleted_rows": []}
    at.run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert any("No plan fits" in e for e in errors), errors
    assert not any(m.label == "Predicted step time" for m in at.metric)
    assert not at.get("download_button")  # nothing to export
    assert at.number_input(key="n_devices").value == DEFAULT_DEVICES
    # the status box ends, and says the diagnosis took time (not "Solved ... in 0.00 s")
    assert any(s.label.startswith("No plan fits: diagnosed in") and s.state == "error" for s in at.status)
    assert all(s.state != "running" for s in at.status), [(s.label, s.state) for s in at.status]
    # suggestions name the app's controls, never a CLI flag
    assert not any("(--" in e for e in errors), errors


def test_settings_the_schedule_refuses_end_the_status_with_the_reason():
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.number_input(key="num_microbatches").set_value(2).run()  # 1F1B on 4 devices needs M >= 4
    assert not at.exception, at.exception
    assert all(s.state != "running" and "Solving" not in s.label for s in at.status)
    assert any(s.label.startswith("Cannot plan") and s.state == "error" for s in at.status)
    assert any("1F1B needs at least as many micro-batches as devices" in e.value for e in at.error)


def test_diagnosis_suggestions_are_said_in_app_terms():
    from ui.plan_view import in_app_terms

    text = "turn activation recomputation on (--recompute on): fits, predicted step 3.0 ms with 8 micro-batches of 1"
    assert in_app_terms(text) == ("turn activation recomputation on (set “Recompute activations” to on): fits, "
                                  "predicted step 3.0 ms with 8 micro-batches of 1")
    assert in_app_terms("train in bf16 (--precision bf16): fits") == "train in bf16 (set “Precision” to bf16_mixed): fits"
    assert in_app_terms("use 6 devices like a100 (fits)") == "use 6 devices like a100 (fits)"


def test_python_upload_only_with_code_execution_allowed(monkeypatch):
    at = run_app()
    assert "Python file (.py)" not in at.radio(key="model_source").options
    monkeypatch.setenv("PIPEPLAN_ALLOW_CODE", "1")
    st.cache_data.clear()
    at = run_app()
    assert "Python file (.py)" in at.radio(key="model_source").options
    assert any("Code execution is allowed" in w.value for w in at.warning)


def test_export_bytes_equal_pipeplan_export(monkeypatch, tmp_path):
    from planner import export

    seen = {}
    real = export.export_zip_bytes

    def recording(plan, **kwargs):
        data = real(plan, **kwargs)
        seen.update(plan=plan, kwargs=kwargs, data=data)
        return data

    monkeypatch.setattr(export, "export_zip_bytes", recording)
    at = run_app()
    no_problems(at)
    assert at.download_button(key="download_zip") is not None
    assert seen, "the app did not build the export zip"
    (tmp_path / "plan.json").write_text(seen["plan"].to_json(indent=2))
    argv = [sys.executable, "-m", "cli", "export", str(tmp_path / "plan.json"), "-o", str(tmp_path / "job")]
    if seen["kwargs"].get("model_source"):
        argv += ["--model-source", seen["kwargs"]["model_source"]]
    subprocess.run(argv, check=True, cwd=ROOT, capture_output=True)
    with zipfile.ZipFile(io.BytesIO(seen["data"])) as zf:
        names = sorted(zf.namelist())
        assert {"train.py", "launch.sh", "slurm.sbatch", "plan.json", "README.md"} <= set(names)
        written = sorted(str(p.relative_to(tmp_path / "job")) for p in (tmp_path / "job").rglob("*") if p.is_file())
        assert names == written
        for name in names:
            assert zf.read(name) == (tmp_path / "job" / name).read_bytes(), name


def test_baselines_read_same_not_one_times_slower():
    from ui.plan_view import versus_plan

    assert versus_plan(100.2, 100.0) == "same (within 0.5%)"
    assert versus_plan(124.0, 100.0) == "1.24× slower"
    assert versus_plan(None, 100.0) == "does not fit"


def test_nothing_uploaded_yet_is_not_called_a_mistake():
    at = run_app()
    at.radio(key="model_source").set_value("Profile JSON").run()
    no_problems(at)
    infos = [i.value for i in at.info]
    assert any(i.startswith("No plan yet: pick a sample model or upload one") for i in infos), infos
    assert not any("Fix" in i for i in infos), infos


def test_utilisation_per_device_adds_up_to_the_simulated_step():
    from planner.contracts.cluster import Cluster
    from planner.contracts.config import TrainConfig
    from planner.pipeline.simulator import simulate
    from planner.solvers.solve import solve
    from profiler.synthetic import chain_profile
    from ui.plan_facts import device_use

    plan = solve(chain_profile([1.0, 2.0, 3.0, 1.5, 2.5, 1.0]), Cluster.uniform(3, "A100-80GB"),
                 TrainConfig(num_microbatches=6))
    timeline = simulate(plan)
    rows = device_use(plan, timeline)
    assert len(rows) == 3
    for row, idle in zip(rows, timeline.bubble_per_device):
        assert row.busy_ms + row.idle_ms == pytest.approx(timeline.makespan_ms)
        assert row.utilisation == pytest.approx(1 - idle)
    # the busiest device does every F and B of its stage: M x (fwd + bwd) at the least
    busiest = max(rows, key=lambda r: r.busy_ms)
    stage = next(s for s in plan.stages if s.device == busiest.device)
    assert busiest.busy_ms >= 6 * (stage.fwd_ms + stage.bwd_ms) * (1 - 1e-9)


def test_layers_chart_uses_the_plans_cost_model():
    """Each stage's bars add up to the stage table's fwd + bwd (issue: the chart showed fp32 reference
    times, 16x the bf16 plan's)."""
    from planner.contracts.cluster import Cluster
    from planner.contracts.config import TrainConfig
    from planner.solvers.solve import solve
    from profiler.sources import load_profile
    from ui.charts import layer_strip_figure

    profile = load_profile("sample:gpt:tiny", estimate_for="A100-80GB", batch_size=2)
    cluster = Cluster.uniform(2, "A100-80GB", precision="bf16_mixed")
    plan = solve(profile, cluster, TrainConfig(num_microbatches=4, micro_batch_size=2, precision="bf16_mixed",
                                               recompute="on"))
    fig = layer_strip_figure(profile, plan)
    for stage, bars in zip(plan.stages, [t for t in fig.data if t.type == "bar"]):
        overhead = 2 * plan.cluster.devices[stage.device].action_overhead_ms
        assert sum(bars.y) == pytest.approx(stage.fwd_ms + stage.bwd_ms - overhead, rel=1e-9)
    assert cluster.speed_factor(0, profile) > 2  # bf16 on an A100 is far from the fp32 reference


def test_measured_times_on_a_device_without_a_peak_are_not_silently_scaled():
    """A CPU-measured profile planned on A100s: the A100s cannot be scaled (no reference TFLOP/s), so
    they run at the CPU's speed, and the app says so in a warning above the plan."""
    import dataclasses

    from planner.contracts.cluster import Cluster, Device
    from profiler.synthetic import chain_profile

    measured = chain_profile([1.0, 2.0])
    measured.provenance = dataclasses.replace(measured.provenance, method="measured", device="cpu",
                                              reference_tflops=None)
    gpus = Cluster.uniform(2, "A100-80GB")
    assert gpus.unscaled_devices(measured) == [0, 1]
    assert gpus.speed_factor(0, measured) == 1.0
    explicit = Cluster(devices=[Device(name="d0", memory_bytes=1 << 30, speed=3.0)])
    assert explicit.unscaled_devices(measured) == []
    estimated = dataclasses.replace(measured.provenance, reference_tflops=19.5)
    measured.provenance = estimated
    assert gpus.unscaled_devices(measured) == []


def test_measuring_on_this_machine_warns_that_the_gpus_run_at_its_speed():
    at = run_app()
    at.selectbox(key="sample_model").set_value("gpt").run()
    at.selectbox(key="sample_size_gpt").set_value("tiny").run()
    at.toggle(key="measure").set_value(True).run()
    assert not at.exception, at.exception
    warnings = [w.value for w in at.warning]
    assert any("measured on cpu" in w and "planned at cpu speed" in w for w in warnings), warnings


def test_sweep_marks_counts_where_nothing_fits_and_cut_lines_show_on_dark():
    from ui.charts import CUT_LINE_COLOUR, sweep_figure

    fig = sweep_figure([1, 2, 4, 8], [None, None, 40.0, 25.0], "devices", 4)
    marks = [t for t in fig.data if t.name == "does not fit"]
    assert len(marks) == 1 and list(marks[0].x) == [1, 2] and set(marks[0].text) == {"does not fit"}
    assert CUT_LINE_COLOUR not in ("#000000", "#ffffff")  # neither vanishes on a dark or light theme


def test_edits_survive_switching_sources_and_devices_per_node():
    at = run_app()
    at.selectbox(key="sample_model").set_value("llama").run()
    at.selectbox(key="sample_size_llama").set_value("7B").run()
    at.radio(key="model_source").set_value("HF config.json").run()
    at.radio(key="model_source").set_value("Sample model").run()
    assert at.selectbox(key="sample_model").value == "llama"
    assert at.selectbox(key="sample_size_llama").value == "7B"
    # a hand-made mixed cluster keeps its rows when devices per node changes, and the caption says what it holds
    key = device_table_key(DEFAULT_DEVICES, DEFAULT_PRESET, DEFAULT_PER_NODE)
    at.session_state[key] = {"edited_rows": {2: {"preset": "L4"}, 3: {"preset": "L4"}}, "added_rows": [],
                             "deleted_rows": []}
    at.run()
    at.number_input(key="devices_per_node").set_value(2).run()
    assert not at.exception, at.exception
    captions = " ".join(c.value for c in at.caption)
    assert "2 × A100-80GB + 2 × L4 on 2 nodes" in captions, captions
    # the opening table is A100, A100, L4, L4 already: make row 1 an H100 and renumber again
    key = device_table_key(DEFAULT_DEVICES, DEFAULT_PRESET, 2)
    at.session_state[key] = {"edited_rows": {1: {"preset": "H100-SXM"}}, "added_rows": [], "deleted_rows": []}
    at.run()
    at.number_input(key="devices_per_node").set_value(4).run()
    captions = " ".join(c.value for c in at.caption)
    assert "1 × A100-80GB + 1 × H100-SXM + 2 × L4 on 1 node" in captions, captions  # 4 to a node


def test_automatic_micro_batches_say_the_size_the_plan_uses():
    at = run_app()
    at.radio(key="mb_mode").set_value("automatic").run()
    assert not at.exception, at.exception
    captions = " ".join(c.value for c in at.caption)
    infos = " ".join(i.value for i in at.info)
    used = re.search(r"(\d+) micro-batches of (\d+)", captions)
    # the opening GPT-2 350M on 2 x A100 + 2 x L4 with a global batch of 32: micro-batches of 1 beat the 2 set in tab 1
    assert used and used.groups() == ("32", "1"), captions
    assert at.number_input(key="micro_batch_size").value == 2
    assert "runs micro-batches of **1**, not the 2 set in tab 1" in infos, infos


def test_settings_travel_in_the_url_and_a_bad_link_is_ignored():
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update({"schedule": "GPipe", "n_devices": "2", "sample_model": "llama", "size": "tiny",
                            "num_microbatches": "nonsense", "preset": "TPU9"})
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="schedule").value == "GPipe"
    assert at.number_input(key="n_devices").value == 2
    assert at.selectbox(key="sample_model").value == "llama"
    assert at.selectbox(key="sample_size_llama").value == "tiny"
    assert at.number_input(key="num_microbatches").value == 8  # the bad values were dropped
    assert at.selectbox(key="preset").value == DEFAULT_PRESET
    assert "GPipe, 8 micro-batches" in " ".join(c.value for c in at.caption)
    # a change goes back into the URL
    at.selectbox(key="recompute").set_value("on").run()
    assert at.query_params["recompute"] == ["on"] or at.query_params["recompute"] == "on"
    assert at.query_params["schedule"] in ("GPipe", ["GPipe"])


def test_pin_a_plan_then_compare_with_the_next():
    at = run_app()
    at.button(key="pin_plan").click().run()
    at.number_input(key="n_devices").set_value(2).run()
    no_problems(at)
    table = next(d for d in at.dataframe if "vs pinned" in d.value.columns)
    rows = table.value.to_dict("records")
    assert [r[""] for r in rows] == ["pinned", "current"]
    assert [r["devices"] for r in rows] == [DEFAULT_DEVICES, 2]
    assert rows[1]["vs pinned"].endswith(("faster", "slower", "(within 0.5%)"))
    at.button(key="unpin_plan").click().run()
    assert not any("vs pinned" in d.value.columns for d in at.dataframe)


def test_use_the_fastest_schedule_in_one_click():
    at = run_app()
    at.button(key="compare_schedules").click().run()
    no_problems(at)
    rows = next(d for d in at.dataframe if "fits" in d.value.columns).value.to_dict("records")
    best = min((r for r in rows if r["fits"]), key=lambda r: r["step ms"])[""]
    if best == "1F1B":  # already in use: no button
        assert not [b for b in at.button if b.key == "use_best_schedule"]
        return
    at.button(key="use_best_schedule").click().run()
    no_problems(at)
    assert at.selectbox(key="schedule").value == best
    assert best in " ".join(c.value for c in at.caption)


def test_uploaded_hf_config_is_named_by_its_own_file_name_not_the_servers_path(tmp_path):
    at = run_app()
    at.radio(key="model_source").set_value("HF config.json").run()
    at.file_uploader(key="upload_hf_config").upload("my_gpt2.json", json.dumps(GPT2_CONFIG).encode(),
                                                    "application/json").run()
    no_problems(at)
    commands = " ".join(c.value for c in at.code)
    # the plan's profile already names the upload (hf:my_gpt2.json), so export needs no --model-source
    assert "hf:my_gpt2.json" in commands and "/tmp" not in commands and "--model-source" not in commands, commands
    # the job's files name the upload the same way (render_job's source_label)
    from planner.contracts.cluster import Cluster
    from planner.contracts.config import TrainConfig
    from planner.export.job import render_job
    from planner.solvers.solve import solve
    from profiler.hf import profile_hf_config

    config = tmp_path / "config.json"
    config.write_text(json.dumps(GPT2_CONFIG))
    plan = solve(profile_hf_config(config, seq_len=64, estimate_for="A100-80GB"), Cluster.uniform(2, "A100-80GB"),
                 TrainConfig(num_microbatches=2))
    files = render_job(plan, model_source=f"hf:{config}", source_label="hf:my_gpt2.json")
    assert all(str(tmp_path) not in text for text in files.values())
    assert "hf:my_gpt2.json" in files["README.md"] and json.loads(files["model/config.json"]) == GPT2_CONFIG


def test_any_transformers_architecture_is_picked_and_planned():
    """The model picker lists transformers' architectures (every task pipeplan trains); picking one plans
    its default config, offers that config.json for download and names it in the CLI line (issue 14)."""
    from profiler.hf_tasks import architectures

    at = run_app()
    at.radio(key="model_source").set_value("transformers architecture").run()
    no_problems(at)
    picker = at.selectbox(key="architecture")
    assert picker.value == "llama" and set(picker.options) == set(architectures()) and len(picker.options) > 250
    at.number_input(key="upload_seq_len").set_value(256).run()
    no_problems(at)
    assert int(metric(at, "Layers")) == 32 + 4  # Llama-7B's default: embeddings, rotary, 32 blocks, norm, head
    at.number_input(key="upload_seq_len").set_value(384).run()  # 256 and 384: the first trace (2048), analysed again
    no_problems(at)
    assert "seq len 384" in " ".join(c.value for c in at.caption)
    assert [p.reused for key, p in cache._hf_profilers.items() if key[0] == "llama-config.json"] == [2]
    text = " ".join(m.value for m in at.markdown) + " ".join(c.value for c in at.code)
    assert "hf:llama-config.json" in text
    picker = at.selectbox(key="architecture").set_value("t5").run()
    no_problems(at)
    assert "T5ForConditionalGeneration" in " ".join(c.value for c in at.caption)
    assert metric(at, "Predicted step time").endswith(" ms") or any("No plan fits" in m.value for m in at.markdown)
