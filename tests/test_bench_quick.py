"""Smoke test of the benchmark suite: `python -m bench.run --quick` writes every results file and
the benchmarks page, well-formed. No timing thresholds (the machine is shared); results go to a
temporary folder so the committed full-run results and docs/benchmarks.md stay untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
OURS = ["quality", "solver", "memory", "accuracy", "scale", "hybrid"]
ENV_KEYS = {"machine", "cpu_count", "torch", "date", "load_average_1m"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, PIPEPLAN_BENCH_RESULTS=str(tmp / "results"), PIPEPLAN_BENCH_DOCS=str(tmp / "docs"))
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--only", *OURS], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp


def load(tmp: Path, name: str) -> dict:
    d = json.loads((tmp / "results" / f"{name}.json").read_text())
    assert d["benchmark"] == name and d["quick"] is True
    assert ENV_KEYS <= set(d["env"]), d["env"]
    return d


def test_run_record(quick_run):
    d = load(quick_run, "run")
    assert [r["name"] for r in d["runs"]] == OURS
    assert all(r["status"] == "ok" for r in d["runs"]), d["runs"]


def test_quality(quick_run):
    d = load(quick_run, "quality")
    assert d["rows"]
    for r in d["rows"]:
        assert r["status"] in ("ok", "infeasible", "not_applicable")
        if r["status"] == "ok":
            assert r["optimal_ms"] > 0 and r["lower_bound_ms"] > 0
            assert r["optimal_over_lower_bound"] >= 1 - 1e-9
            assert set(r["baseline_over_optimal"]) == {"uniform_layers", "param_balanced", "time_balanced"}
            assert all(v is None or v >= 1 - 1e-6 for v in r["baseline_over_optimal"].values())
    assert {r["schedule"] for r in d["rows"]} == {"1F1B", "Interleaved1F1B", "ZBV"}


def test_solver(quick_run):
    d = load(quick_run, "solver")
    for sweep in ("size_sweep", "stage_sweep"):
        rows = d[sweep]["rows"]
        assert rows
        for r in rows:
            for b in ("dp", "highs", "cbc", "highs_cold", "cbc_cold"):
                assert r[b]["status"] in ("optimal", "feasible", "heuristic", "timeout", "skipped", "infeasible")
            assert r["dp"]["seconds"] >= 0


def test_memory(quick_run):
    d = load(quick_run, "memory")
    for r in d["rows"]:
        assert r["status"] == "ok", r
        assert r["single_device"]["memtracker_peak"]["total"] > 0
        assert r["single_device"]["predicted_over_tracked"] > 0
        assert len(r["stages"]) == 2 and all(s["tracked_bytes"] > 0 for s in r["stages"])


def test_accuracy(quick_run):
    d = load(quick_run, "accuracy")
    for r in d["rows"]:
        assert r["status"] == "ok", r
        assert r["measured_step_ms"] > 0 and r["predicted_step_ms"] > 0
        assert len(r["step_times_ms"]) == d["steps"]
        assert all(s["peak_rss_bytes"] for s in r["stages"])


def test_scale(quick_run):
    d = load(quick_run, "scale")
    r = d["result"]
    assert r["status"] == "ok", r
    assert r["profile_wall_s"] > 0 and r["rss_after_plan_bytes"] >= r["rss_after_profile_bytes"] > 0


def test_hybrid(quick_run):
    d = load(quick_run, "hybrid")
    for r in d["search_time"]:
        assert r["search_s"] > 0 and r["top"], r
        assert r["top"][0]["step_time_ms"] > 0 and r["alpa_over_ours"] > 0 and r["aceso_over_ours"] > 0
        steps = [c["step_time_ms"] for c in r["top"]]
        assert steps == sorted(steps)
    assert d["megatron_table1"]
    for r in d["megatron_table1"]:
        assert r["status"] == "ok", r
        assert r["paper"]["predicted_over_published"] > 0 and r["pipeplan_pick"]["step_time_ms"] > 0


def test_report(quick_run):
    page = (quick_run / "docs" / "benchmarks.md").read_text()
    for heading in ("## 1. Plan quality", "## 2. Solver speed", "## 3. Prediction accuracy", "## 4. Memory accuracy",
                    "## 5. Scale"):
        assert heading in page
    assert "could not be read" not in page and "No results yet" not in page
    for fig in ("quality", "solver", "accuracy", "memory"):
        html = (quick_run / "docs" / "benchmarks" / f"{fig}.html").read_text()
        assert "plotly" in html.lower()
        assert f"benchmarks/{fig}.html" in page


def test_pair_bound_quick(tmp_path):
    """bench_pair_bound --quick: every case solved with the device-pair bound and without it, each with a plan
    and a gap in [0, 1) (no ordering asserted: the two runs' time-limited searches differ by load)."""
    env = dict(os.environ, PIPEPLAN_BENCH_RESULTS=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "bench.bench_pair_bound", "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    d = json.loads((tmp_path / "pair_bound.json").read_text())
    assert d["benchmark"] == "pair_bound" and d["quick"] is True
    assert len(d["rows"]) == 4 and d["summary"]["cases"] == 4
    for r in d["rows"]:
        for run in (r["with"], r["without"]):
            assert run["optimal_ms"] > 0 and 0 <= run["gap"] < 1
