"""Issue 19 item 3: `pipeplan calibrate --from-run` recovers known parameters from a synthetic log,
and calibrates from a real tiny torchrun run's logs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers_export import gpt_tiny_stages, hand_plan

from planner.calibration.from_run import _simulated_pipeline_ms, calibrate_from_run, fit_link


def synthetic_log(plan, factor: float, overhead: float, latency_ms: float, peak: list[int], steps: int = 4) -> str:
    fwd = [factor * st.fwd_ms + overhead for st in plan.stages]
    bwd = [factor * st.bwd_ms + overhead for st in plan.stages]
    _, _, comm = fit_link(plan)
    pipe = _simulated_pipeline_ms(plan, fwd, bwd, comm(latency_ms))
    lines = []
    for step in range(1, steps + 1):
        ranks = [{"rank": r, "step_s": (pipe + 2.0) / 1e3, "fwd_s": 0, "bwd_s": 0, "opt_s": 0.0015, "sync_s": 0.0005,
                  "wait_s": 0.001, "peak_bytes": peak[r]} for r in range(2)]
        stages = [{"stage": s, "fwd_ms": f, "bwd_ms": b, "act_peak_bytes": 1000 + s, "n_fwd": 4, "n_bwd": 4}
                  for s, (f, b) in enumerate(zip(fwd, bwd))]
        lines.append(json.dumps({"step": step, "loss": 1.0, "step_time_s": (pipe + 2) / 1e3, "samples_per_s": 1.0,
                                 "max_mem_bytes": 1, "ranks": ranks, "stages": stages}))
    return "rank 0: stage 0 ...\n" + "\n".join(lines) + "\n"


def test_synthetic_log_recovers_speed_overhead_latency_and_reserve():
    plan = hand_plan("sample:gpt:tiny", gpt_tiny_stages(2))
    plan.stages[0].comm_out_bytes = 4_000_000
    plan.stages[0].comm_out_ms = plan.cluster.intra_node.transfer_ms(4_000_000)
    planned_mem = [st.memory.total - st.memory.reserve for st in plan.stages]
    log = synthetic_log(plan, factor=2.5, overhead=0.4, latency_ms=0.7, peak=[m + 5000 for m in planned_mem])
    cluster, report = calibrate_from_run(plan, [log])
    for d in cluster.devices:
        assert d.speed == pytest.approx(1 / 2.5, rel=1e-6)
        assert d.action_overhead_ms == pytest.approx(0.4, abs=1e-6)
    assert cluster.intra_node.latency_s * 1e3 == pytest.approx(0.7, rel=1e-3)
    assert report["reserve_bytes"] == 5000
    assert report["steps_used"] == 3  # the first step is warm-up
    assert all(abs(r["error"]) < 1e-6 for r in report["compute_residuals"])
    assert abs(report["step"]["error_after"]) < 1e-6


def test_from_run_refuses_logs_without_measurements():
    from core.errors import PipeplanError

    plan = hand_plan("sample:gpt:tiny", gpt_tiny_stages(2))
    with pytest.raises(PipeplanError, match="no measured step lines"):
        calibrate_from_run(plan, ['{"step": 1, "loss": 2.0}\n'])


@pytest.mark.slow
@pytest.mark.torchrun
def test_real_run_calibrates_and_cli_writes_cluster(tmp_path):
    from helpers_export import export, run_job

    from cli import main as cli_main
    from planner.contracts.cluster import Cluster

    plan = hand_plan("sample:gpt:tiny", gpt_tiny_stages(2))
    job = export(tmp_path, "job", plan)
    lines = run_job(job, ["--steps", "4"], 2)
    log = tmp_path / "run.log"
    log.write_text("\n".join(json.dumps(d) for d in lines) + "\n")
    out, rep = tmp_path / "cluster.json", tmp_path / "report.json"
    assert cli_main(["calibrate", "--from-run", str(log), "--plan", str(job / "plan.json"), "-o", str(out),
                     "--report", str(rep)]) == 0
    cluster = Cluster.from_json(out.read_text())
    assert all(d.speed > 0 for d in cluster.devices)
    report = json.loads(rep.read_text())
    assert report["steps_used"] == 3 and len(report["compute_residuals"]) == 4


def test_gpu_check_calibration_loop_cpu_path(tmp_path):
    """bench/gpu_check.py's loop (issue 19 item 5) on its CPU path, with the job runs replaced by
    synthetic logs: calibrate, re-plan, export, "run", score."""
    from bench.gpu_check import calibration_loop
    from profiler import load_profile

    prof = load_profile("sample:gpt:tiny", batch_size=2)
    from planner.contracts.cluster import Cluster
    from planner.contracts.config import TrainConfig
    from planner.solvers.solve import solve

    plan = solve(prof, Cluster.uniform(2, memory_bytes=64 << 30), TrainConfig(schedule="1F1B", num_microbatches=4,
                                                                              micro_batch_size=2))
    mem = [st.memory.total - st.memory.reserve for st in plan.stages]
    first = synthetic_log(plan, factor=10.0, overhead=0.2, latency_ms=0.1, peak=mem)

    def runner(job, args, nproc):
        assert (job / "train.py").is_file() and nproc == 2
        return first

    out = calibration_loop(prof, plan, first, 2, tmp_path, runner=runner)
    assert out["status"] == "ok", out
    assert out["before"]["error"] < -0.5 and out["fit"]["action_overhead_ms"] >= 0
