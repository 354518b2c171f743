"""Unit tests of the app's plain helpers in ui/ (no Streamlit runtime needed)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_app import synthetic_profile

from cli import build_parser
from core.errors import PipeplanError
from planner.contracts.cluster import Cluster
from planner.contracts.config import TrainConfig
from planner.contracts.plan import Plan
from planner.solvers.evaluate import device_memory_bytes
from planner.solvers.solve import solve
from profiler.gpus import GPU_PRESETS, GiB
from ui import charts
from ui.cluster_table import CUSTOM, base_rows, cluster_from_rows, node_summary_rows, rows_for_count
from ui.commands import cli_commands
from ui.plan_facts import MEMORY_PARTS, device_memory, headline
from ui.uploads import MAX_UPLOAD_BYTES, ModelRequest, code_execution_allowed, profile_from_upload

# -- cluster table -------------------------------------------------------------

def test_base_rows_fill_nodes_and_blank_numbers_mean_preset():
    rows = base_rows(5, "H100-SXM", 2)
    assert [r["node"] for r in rows] == [0, 0, 1, 1, 2]
    cluster = cluster_from_rows(rows, intra_node_gbs=450, inter_node_gbs=25, precision="bf16_mixed")
    assert cluster.num_devices == 5
    assert all(d.memory_bytes == GPU_PRESETS["H100-SXM"].memory_bytes for d in cluster.devices)
    assert cluster.devices[0].tflops == GPU_PRESETS["H100-SXM"].bf16_tflops
    assert cluster.link(0, 1).bandwidth_bytes_per_s == 450e9
    assert cluster.link(1, 2).bandwidth_bytes_per_s == 25e9


def test_mixed_devices_custom_and_overrides():
    rows = [{"name": "big", "preset": "A100-80GB", "memory_gib": 40.0, "tflops": float("nan"), "speed": None, "node": 0},
            {"name": "small", "preset": "L4", "memory_gib": None, "tflops": None, "speed": 0.5, "node": 0},
            {"name": "mine", "preset": CUSTOM, "memory_gib": 12, "tflops": 50, "speed": None, "node": 1}]
    c = cluster_from_rows(rows, intra_node_gbs=100, inter_node_gbs=10, precision="fp32")
    assert [d.name for d in c.devices] == ["big", "small", "mine"]
    assert c.devices[0].memory_bytes == 40 * GiB and c.devices[0].tflops == GPU_PRESETS["A100-80GB"].fp32_tflops
    assert c.devices[1].memory_bytes == GPU_PRESETS["L4"].memory_bytes and c.devices[1].speed == 0.5
    assert c.devices[2].preset is None and c.devices[2].memory_bytes == 12 * GiB and c.devices[2].tflops == 50


@pytest.mark.parametrize("row, message", [
    ({"name": "x", "preset": CUSTOM, "memory_gib": None, "node": 0}, "custom device needs a memory limit"),
    ({"name": "x", "preset": "A100-80GB", "memory_gib": "lots", "node": 0}, "must be numbers"),
    ({"name": "x", "preset": "A100-80GB", "memory_gib": -1, "node": 0}, "must be positive"),
    ({"name": "x", "preset": "TPU9", "node": 0}, "unknown GPU preset"),
])
def test_bad_cells_name_the_row(row, message):
    with pytest.raises(PipeplanError, match=message):
        cluster_from_rows([row], intra_node_gbs=100, inter_node_gbs=10, precision="fp32")


def test_empty_table_is_an_error():
    with pytest.raises(PipeplanError, match="empty"):
        cluster_from_rows([], intra_node_gbs=100, inter_node_gbs=10, precision="fp32")


def test_rows_for_count_truncates_or_extends_with_last_row():
    rows = [{"name": "a", "preset": "A100-80GB", "node": 0}, {"name": "b", "preset": "L4", "node": 0}]
    assert [r["name"] for r in rows_for_count(rows, 1, 8)] == ["a"]
    grown = rows_for_count(rows, 4, 3)
    assert [(r["name"], r["preset"], r["node"]) for r in grown] == [
        ("a", "A100-80GB", 0), ("b", "L4", 0), ("gpu2", "L4", 0), ("gpu3", "L4", 1)]


# -- uploads -------------------------------------------------------------------

REQ = ModelRequest(batch_size=1, seq_len=64, estimate_for="A100-80GB")


def test_node_summary_groups_a_64_device_table_into_8_nodes():
    rows = base_rows(64, "H100-SXM", 8)
    rows[9] = {**rows[9], "preset": "A100-80GB"}  # one edited row shows in its node's line
    summary = node_summary_rows(rows)
    assert [r["node"] for r in summary] == list(range(8))
    assert all(r["devices"] == 8 for r in summary)
    assert summary[0] == {"node": 0, "devices": 8, "GPUs": "8 × H100-SXM", "table rows": "0–7"}
    assert summary[1]["GPUs"] == "7 × H100-SXM + 1 × A100-80GB"
    rows[3] = {**rows[3], "node": 7}  # a device moved to another node: its row is listed there
    summary = node_summary_rows(rows)
    assert summary[0]["table rows"] == "0, 1, 2, 4, 5, 6, 7" and summary[7]["devices"] == 9


def test_profile_json_upload_round_trips():
    p = synthetic_profile(5)
    got = profile_from_upload("profile_json", "p.json", p.to_json().encode(), REQ)
    assert got.to_json() == p.to_json()


@pytest.mark.parametrize("kind, data, message", [
    ("profile_json", b"{not json", "not valid JSON"),
    ("profile_json", b'{"schema": "other/1"}', "schema"),
    ("hf_config", b"[1, 2]", "JSON object"),
    ("hf_config", b"", "empty"),
    ("profile_json", b" " * (MAX_UPLOAD_BYTES + 1), "limited to 5 MB"),
])
def test_bad_uploads_raise_clear_errors(kind, data, message):
    with pytest.raises(PipeplanError, match=message):
        profile_from_upload(kind, "f.json", data, REQ)


def test_python_upload_refused_without_allow_code(tmp_path):
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').write('x')\ndef make_model():\n    pass\n".encode()
    with pytest.raises(PipeplanError, match="allow-code"):
        profile_from_upload("python", "m.py", code, REQ, allow_code=False)
    assert not marker.exists()


def test_code_execution_flag_is_exactly_one():
    assert code_execution_allowed({"PIPEPLAN_ALLOW_CODE": "1"})
    for value in ("", "0", "true", "yes"):
        assert not code_execution_allowed({"PIPEPLAN_ALLOW_CODE": value})
    assert not code_execution_allowed({})


# -- plan read-outs ------------------------------------------------------------

@pytest.fixture(scope="module")
def interleaved_plan():
    cluster = Cluster.uniform(2, "A100-80GB")
    config = TrainConfig(schedule="Interleaved1F1B", virtual_stages=2, num_microbatches=4, micro_batch_size=2,
                         reserve_bytes=GiB, time_limit_s=5)
    return solve(synthetic_profile(8), cluster, config)


def test_device_memory_sums_stages_and_matches_the_planner(interleaved_plan):
    plan = interleaved_plan
    assert plan.feasible
    mems = device_memory(plan)
    assert [m.stages for m in mems] == [tuple(s.index for s in plan.stages if s.device == d) for d in range(2)]
    planner_totals = device_memory_bytes(plan.stages, plan.config.reserve_bytes)
    for m in mems:
        assert m.memory.total == planner_totals[m.device]
        assert m.memory.reserve == GiB  # once per device, not once per stage
        assert m.fraction == pytest.approx(planner_totals[m.device] / plan.cluster.devices[m.device].memory_bytes)


def test_headline_numbers_come_from_the_plan(interleaved_plan):
    plan = interleaved_plan
    h = headline(plan)
    assert h.step_time_ms == plan.step_time_ms and h.bubble_fraction == plan.bubble_fraction
    fitting = {k: v for k, v in plan.baselines.items() if v is not None}
    assert fitting, "the solver should report baselines"
    assert h.best_baseline_ms == min(fitting.values())
    assert h.speedup_over_best_baseline == pytest.approx(min(fitting.values()) / plan.step_time_ms)
    assert h.speedup_over_best_baseline >= 1 - 1e-9  # the optimum is never slower than a baseline


def test_memory_chart_bars_equal_the_plan_bytes(interleaved_plan):
    fig = charts.memory_per_device_figure(interleaved_plan)
    bars = {t.name: t for t in fig.data if t.type == "bar"}
    mems = device_memory(interleaved_plan)
    for part in MEMORY_PARTS:
        assert list(bars[charts.MEMORY_LABELS[part]].y) == pytest.approx([getattr(m.memory, part) / GiB for m in mems])
    limit = next(t for t in fig.data if t.name == "device limit")
    assert list(limit.y) == pytest.approx([m.limit_bytes / GiB for m in mems])
    assert all("% used" in t for t in limit.text)


def test_layer_strip_colours_every_layer_by_its_stage(interleaved_plan):
    profile = synthetic_profile(8)
    fig = charts.layer_strip_figure(profile, interleaved_plan)
    shown = {x: t.name for t in fig.data for x in t.x}
    assert sorted(shown) == list(range(8))
    stage_of = interleaved_plan.node_to_stage
    assert all(shown[i] == f"stage {stage_of[n.id]}" for i, n in enumerate(profile.nodes))


def test_cli_commands_parse_with_the_real_cli(interleaved_plan):
    text = cli_commands(interleaved_plan, "sample:gpt:tiny", "--batch-size 2 --seq-len 64 --estimate-for A100-80GB",
                        export_source="hf:/tmp/x/config.json")
    lines = text.splitlines()
    assert lines[0].startswith("pipeplan profile sample:gpt:tiny") and lines[-1].startswith("pipeplan export")
    parser = build_parser()
    for line in lines:
        argv = shlex.split(line)
        assert argv[0] == "pipeplan"
        parser.parse_args(argv[1:])  # SystemExit on an unknown flag or subcommand


@pytest.mark.slow  # runs each printed command as a CLI process (~5 s)
def test_cli_commands_reproduce_the_apps_plan(tmp_path):
    """Run the printed commands for real: the CLI's plan has the app's cuts and step time."""
    from profiler import load_profile

    flags = "--batch-size 2 --seq-len 32 --estimate-for A100-80GB"
    profile = load_profile("sample:gpt:tiny", batch_size=2, seq_len=32, estimate_for="A100-80GB")
    cluster = cluster_from_rows(base_rows(2, "L4", 8) + [{"name": "big", "preset": "A100-80GB", "node": 1}],
                                intra_node_gbs=25, inter_node_gbs=10, precision="bf16_mixed")
    config = TrainConfig(schedule="1F1B", num_microbatches=4, micro_batch_size=2, precision="bf16_mixed",
                         reserve_bytes=GiB, time_limit_s=5)
    plan = solve(profile, cluster, config)
    assert plan.feasible
    cli_plan = run_printed_commands(plan, cluster, flags, tmp_path)
    assert cli_plan.module_fqns_per_stage() == plan.module_fqns_per_stage()
    assert cli_plan.step_time_ms == pytest.approx(plan.step_time_ms)
    assert (tmp_path / "job" / "train.py").is_file()


@pytest.mark.slow  # runs each printed command as a CLI process (~10 s)
def test_cli_commands_reproduce_a_hybrid_configuration(tmp_path):
    """A configuration picked from the app's ranked list (not the fastest): the printed commands, with its
    degrees fixed, give the same plan."""
    from planner.solvers.hybrid import search_parallel
    from profiler import load_profile
    from ui.hybrid_view import SEARCH_SOLVE_LIMIT_S, search_base

    flags = "--batch-size 1 --seq-len 64 --estimate-for A100-80GB"
    profile = load_profile("sample:gpt:tiny", batch_size=1, seq_len=64, estimate_for="A100-80GB")
    cluster = cluster_from_rows(base_rows(8, "A100-80GB", 4), intra_node_gbs=300, inter_node_gbs=25,
                                precision="bf16_mixed")
    base = search_base(TrainConfig(precision="bf16_mixed", time_limit_s=2))
    ranked = search_parallel(profile, cluster, 32, base=base, time_limit_s=SEARCH_SOLVE_LIMIT_S).ranked
    hybrid = [c for c in ranked if c.dp * c.tp > 1]
    assert hybrid, [c.label for c in ranked]
    plan = solve(profile, cluster, hybrid[-1].config(base))
    assert plan.feasible
    cli_plan = run_printed_commands(plan, cluster, flags, tmp_path)
    for field in ("tensor_parallel", "data_parallel", "dp_sharding", "num_microbatches", "micro_batch_size"):
        assert getattr(cli_plan.config, field) == getattr(plan.config, field), field
    assert cli_plan.module_fqns_per_stage() == plan.module_fqns_per_stage()
    assert cli_plan.step_time_ms == pytest.approx(plan.step_time_ms)


def run_printed_commands(plan: Plan, cluster: Cluster, flags: str, tmp_path: Path) -> Plan:
    """Run the CLI lines the app prints for `plan` (cluster.json next to them) and return the plan.json they wrote."""
    (tmp_path / "cluster.json").write_text(cluster.to_json())
    for line in cli_commands(plan, "sample:gpt:tiny", flags).splitlines():
        argv = [sys.executable, "-m", "cli", *shlex.split(line)[1:]]
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, env=_env(), check=False)
        assert done.returncode == 0, (line, done.stderr)
    return Plan.from_json((tmp_path / "plan.json").read_text())


def _env() -> dict[str, str]:
    import os

    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}


# -- export source of an uploaded Profile JSON: never a server path typed or named in the profile ----------

def test_profile_export_source_is_a_sample_or_the_uploaded_config(tmp_path):
    from ui.model_view import profile_export_source, save_session_config

    assert profile_export_source("sample:gpt:tiny", None) == "sample:gpt:tiny"
    for server_path in ("hf:/etc/passwd", "hf:/srv/models/llama/config.json", "file:/x/model.py:make"):
        with pytest.raises(PipeplanError, match=r"upload the config\.json it was made from") as err:
            profile_export_source(server_path, None)
        assert "\n" not in str(err.value)
    saved = save_session_config(b'{"model_type": "gpt2"}', tmp_path / "session")
    assert saved.read_bytes() == b'{"model_type": "gpt2"}' and saved.name == "config.json"
    assert saved.is_relative_to(tmp_path / "session")
    assert profile_export_source("hf:/etc/passwd", saved) == f"hf:{saved}"
    with pytest.raises(PipeplanError, match="limited to|MiB|MB"):
        save_session_config(b" " * (MAX_UPLOAD_BYTES + 1), tmp_path / "session")


def test_app_has_no_free_text_export_source():
    """The text field that let a user type `hf:/any/server/path` is gone."""
    source = (Path(__file__).resolve().parents[1] / "ui" / "model_view.py").read_text()
    assert "profile_export_source\"" not in source and "st.text_input(\n            \"Model this profile" not in source


@pytest.mark.parametrize("empty", [{}, {"name": None, "preset": None, "memory_gib": None},
                                   {"name": "  ", "preset": "", "memory_gib": None, "node": 0}])
def test_empty_device_row_says_so(empty):
    rows = base_rows(2, "L4", 8)
    rows.insert(1, empty)
    with pytest.raises(PipeplanError) as err:
        cluster_from_rows(rows, intra_node_gbs=25, inter_node_gbs=10, precision="bf16_mixed")
    assert str(err.value) == "device row 1 is empty: fill it in or delete it"


def test_row_with_only_a_name_still_asks_for_memory():
    with pytest.raises(PipeplanError, match=r"device row 0 \(x\): a custom device needs a memory limit"):
        cluster_from_rows([{"name": "x", "preset": CUSTOM}], intra_node_gbs=25, inter_node_gbs=10,
                          precision="bf16_mixed")


def test_every_diagnosis_suggestion_is_said_in_app_terms(monkeypatch):
    """Issue 17, item 8: every kind of suggestion planner/solvers/diagnose.py writes (more devices, the
    combined savings, memory, recompute, precision, optimizer, schedule, micro-batch size) reaches the
    app naming a control, never a CLI flag. diagnose() runs for real with its solves faked to fit, so a
    new suggestion with a new flag fails here."""
    import dataclasses

    from planner.contracts.cluster import Cluster
    from planner.contracts.config import TrainConfig
    from planner.solvers import diagnose as dg
    from planner.solvers import search
    from profiler.synthetic import chain_profile
    from ui.plan_view import CONTROL_OF_FLAG, in_app_terms

    profile = chain_profile([1.0] * 8)
    cluster = Cluster.uniform(2, "A100-80GB")
    config = TrainConfig(schedule="GPipe", num_microbatches=4, micro_batch_size=2, precision="fp32",
                         optimizer="adamw", recompute="off")

    def fake_plan(cfg):
        return dataclasses.replace(search.solve_once(profile, Cluster.uniform(2, "A100-80GB"),
                                                     TrainConfig(num_microbatches=4)), config=cfg)

    texts = []
    for more_devices_fit in (True, False):
        def fits(_profile, c, cfg, _fingerprint, more=more_devices_fit):
            return fake_plan(cfg) if more or c.num_devices == cluster.num_devices else None

        monkeypatch.setattr(dg, "_fits", fits)
        monkeypatch.setattr(dg, "_fewest_devices_with_every_saving",
                            lambda p, c, cfg, out, fp: (6, fake_plan(dataclasses.replace(cfg, micro_batch_size=1))))
        diagnosis = dg.diagnose(profile, cluster, config).diagnosis
        texts += diagnosis.suggestions + diagnosis.problems + [diagnosis.message]
    flags = {m.group(0) for t in texts for m in re.finditer(r"--[a-z-]+", t)}
    assert {"--recompute", "--precision", "--optimizer", "--schedule"} <= flags, texts  # every kind was made
    assert flags <= set(CONTROL_OF_FLAG), flags - set(CONTROL_OF_FLAG)
    said = [in_app_terms(t) for t in texts]
    assert not [t for t in said if "--" in t], said
    assert any("set “Recompute activations” to on) and micro-batches of 1" in t for t in said), said
    assert any("set “Micro-batch size” to 1" in t for t in said), said
    assert any("set “Schedule” to 1F1B" in t for t in said) and any("set “Optimizer” to sgd_momentum" in t
                                                                     for t in said), said


def test_background_imports_start_once_and_import_transformers():
    """ui/warmup.py: the app imports transformers after its first page, once per server process."""
    import threading

    from ui import warmup

    started = warmup.start_background_imports()
    again = warmup.start_background_imports()
    assert again is False
    for thread in threading.enumerate():
        if thread.name == "pipeplan-warmup":
            thread.join(timeout=120)
    assert "transformers" in sys.modules
    assert started or warmup._started.is_set()
