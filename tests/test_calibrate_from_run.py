"""Issue 19 item 3: `pipeplan calibrate --from-run` recovers known parameters from a synthetic log,
and calibrates from a real tiny torchrun run's logs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers_export import gpt_tiny_stages, hand_plan

from planner.calibration.from_run import WARMUP_STEPS, _simulated_pipeline_ms, calibrate_from_run, fit_link


def synthetic_log(plan, factor: float, overhead: float, transfer_ms: float, peak: list[int], steps: int = 6,
                  untimed_ms: float = 0.0, step_overhead_ms: float = 0.0) -> str:
    """A job's log whose steps take the plan's step model at these parameters: timed stage actions factor x
    planned + overhead, each rank's untimed time untimed_ms per action (charged per action by the model), the
    pipeline simulated with this per-transfer overhead (the plan's latency kept), then the clip all-reduce, the
    fixed per-step cost and the optimizer (its planned time x factor); the first WARMUP_STEPS steps 3x slower.
    Per rank the parts add up to the step: its receive waits take what its actions do not."""
    from planner.costmodel.cost import clip_allreduce_ms

    M = plan.config.num_microbatches
    fwd = [factor * st.fwd_ms + overhead for st in plan.stages]
    bwd = [factor * st.bwd_ms + overhead for st in plan.stages]
    link, _, comm = fit_link(plan)
    opt = [factor * st.optimizer_ms for st in plan.stages]
    clip = clip_allreduce_ms(plan.cluster, [st.device for st in plan.stages])
    step_ms = _simulated_pipeline_ms(plan, [f + untimed_ms for f in fwd], [b + untimed_ms for b in bwd],
                                     comm(link.latency_ms, transfer_ms), opt, clip + step_overhead_ms)
    lines = []
    for step in range(1, steps + 1):
        slow = 3.0 if step <= WARMUP_STEPS else 1.0
        ranks = []
        for r in range(2):
            parts = {"fwd_s": M * fwd[r] / 1e3, "bwd_s": M * bwd[r] / 1e3, "opt_s": (opt[r] + step_overhead_ms) / 1e3,
                     "sync_s": 0.0, "clip_s": clip / 1e3}
            rest = slow * step_ms / 1e3 - sum(parts.values()) - 2 * M * untimed_ms / 1e3
            assert rest >= 0, "the synthetic parts exceed the step"
            ranks.append({"rank": r, "step_s": slow * step_ms / 1e3, **parts, "wait_s": rest, "peak_bytes": peak[r]})
        stages = [{"stage": s, "fwd_ms": f, "bwd_ms": b, "act_peak_bytes": 1000 + s, "n_fwd": M, "n_bwd": M}
                  for s, (f, b) in enumerate(zip(fwd, bwd))]
        lines.append(json.dumps({"step": step, "loss": 1.0, "step_time_s": slow * step_ms / 1e3, "samples_per_s": 1.0,
                                 "max_mem_bytes": 1, "ranks": ranks, "stages": stages}))
    return "rank 0: stage 0 ...\n" + "\n".join(lines) + "\n"


def test_synthetic_log_recovers_speed_overhead_transfer_overhead_and_reserve():
    plan = hand_plan("sample:gpt:tiny", gpt_tiny_stages(2))
    plan.stages[0].comm_out_bytes = 4_000_000
    plan.stages[0].comm_out_ms = plan.cluster.intra_node.transfer_ms(4_000_000)
    planned_mem = [st.memory.total - st.memory.reserve for st in plan.stages]
    log = synthetic_log(plan, factor=2.5, overhead=0.4, transfer_ms=0.7, peak=[m + 5000 for m in planned_mem])
    cluster, report = calibrate_from_run(plan, [log])
    for d in cluster.devices:
        assert d.speed == pytest.approx(1 / 2.5, rel=1e-6)
        assert d.action_overhead_ms == pytest.approx(0.4, abs=1e-6)
    assert cluster.intra_node.transfer_overhead_s * 1e3 == pytest.approx(0.7, rel=1e-3)
    assert cluster.intra_node.latency_s == plan.cluster.intra_node.latency_s
    assert report["reserve_bytes"] == 5000
    assert report["steps_used"] == 3  # the first WARMUP_STEPS steps are warm-up
    assert all(abs(r["error"]) < 1e-6 for r in report["compute_residuals"])
    assert abs(report["step"]["error_after"]) < 1e-6


def test_untimed_time_joins_the_action_overhead_and_the_optimizers_excess_is_a_step_overhead():
    """Each rank's time outside its timed actions, optimizer, clipping, sync and waits is charged per action
    (2 M actions per stage); the optimizer's measured time beyond its planned traffic is a fixed per-step
    cost; with both fitted the refit cluster's step model reproduces the measured step."""
    plan = hand_plan("sample:gpt:tiny", gpt_tiny_stages(2))
    for st in plan.stages:
        st.optimizer_ms = 0.25
    plan.stages[0].comm_out_bytes = 4_000_000
    plan.stages[0].comm_out_ms = plan.cluster.intra_node.transfer_ms(4_000_000)
    planned_mem = [st.memory.total - st.memory.reserve for st in plan.stages]
    log = synthetic_log(plan, factor=2.0, overhead=0.3, transfer_ms=0.2, peak=planned_mem, untimed_ms=0.15,
                        step_overhead_ms=0.9)
    cluster, report = calibrate_from_run(plan, [log])
    assert report["action_overhead_parts_ms"] == {"timed": pytest.approx(0.3, abs=1e-6),
                                                  "untimed": pytest.approx(0.15, abs=1e-6)}
    for d in cluster.devices:
        assert d.action_overhead_ms == pytest.approx(0.45, abs=1e-6)
        assert d.step_overhead_ms == pytest.approx(0.9, abs=1e-6)
    assert cluster.intra_node.transfer_overhead_s * 1e3 == pytest.approx(0.2, rel=1e-3)
    assert abs(report["step"]["error_after"]) < 1e-6


def test_a_log_with_clipping_inside_opt_s_fits_no_step_overhead():
    """Logs from before train.py timed the clipping apart (no clip_s): opt_s holds the clip all-reduce,
    which waits for the last rank, so nothing of it is taken as the optimizer's fixed cost."""
    plan = hand_plan("sample:gpt:tiny", gpt_tiny_stages(2))
    for st in plan.stages:
        st.optimizer_ms = 0.25
    planned_mem = [st.memory.total - st.memory.reserve for st in plan.stages]
    lines = []
    for raw in synthetic_log(plan, factor=2.0, overhead=0.3, transfer_ms=0.2, peak=planned_mem,
                             step_overhead_ms=0.9).splitlines():
        if raw.startswith("{"):
            d = json.loads(raw)
            for r in d["ranks"]:
                r["opt_s"] += r.pop("clip_s")
            raw = json.dumps(d)
        lines.append(raw)
    cluster, report = calibrate_from_run(plan, ["\n".join(lines)])
    assert report["step_overhead_ms"] == 0.0 and all(d.step_overhead_ms == 0.0 for d in cluster.devices)
    assert abs(report["step"]["error_after"]) < 1e-6  # the link takes what is left, as before


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
    lines = run_job(job, ["--steps", "6"], 2)
    log = tmp_path / "run.log"
    log.write_text("\n".join(json.dumps(d) for d in lines) + "\n")
    out, rep = tmp_path / "cluster.json", tmp_path / "report.json"
    assert cli_main(["calibrate", "--from-run", str(log), "--plan", str(job / "plan.json"), "-o", str(out),
                     "--report", str(rep)]) == 0
    cluster = Cluster.from_json(out.read_text())
    assert all(d.speed > 0 for d in cluster.devices)
    report = json.loads(rep.read_text())
    assert report["steps_used"] == 3 and len(report["compute_residuals"]) == 4  # 6 steps less 3 of warm-up


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
    first = synthetic_log(plan, factor=10.0, overhead=0.2, transfer_ms=0.1, peak=mem)

    def runner(job, args, nproc):
        assert (job / "train.py").is_file() and nproc == 2
        return first

    out = calibration_loop(prof, plan, first, 2, tmp_path, runner=runner)
    assert out["status"] == "ok", out
    assert out["before"]["error"] < -0.5 and out["fit"]["action_overhead_ms"] >= 0


def test_identical_devices_share_one_compute_factor():
    """Stage 0 measured 2x its plan, stage 1 3x, on two devices the cluster describes identically: one factor
    for both (least squares over the 4 stage times, no overhead: the hand solution below), not 2 and 3 (a
    per-device factor would carry the stages' layer mix into the re-plan as a device speed)."""
    plan = hand_plan("sample:gpt:tiny", gpt_tiny_stages(2))
    assert plan.cluster.devices[0].kind() == plan.cluster.devices[1].kind()
    mem = [st.memory.total - st.memory.reserve for st in plan.stages]
    log = json.loads(synthetic_log(plan, factor=1.0, overhead=0.0, transfer_ms=0.1, peak=mem).splitlines()[-1])
    x = [plan.stages[0].fwd_ms, plan.stages[0].bwd_ms, plan.stages[1].fwd_ms, plan.stages[1].bwd_ms]
    y = [2 * x[0], 2 * x[1], 3 * x[2], 3 * x[3]]
    for s in (0, 1):
        log["stages"][s]["fwd_ms"], log["stages"][s]["bwd_ms"] = y[2 * s], y[2 * s + 1]
    cluster, report = calibrate_from_run(plan, [json.dumps(log)])
    # with a free overhead o: the 2-parameter least squares y = a x + o (numpy gives the same)
    import numpy as np

    a, o = np.linalg.lstsq(np.array([[v, 1.0] for v in x]), np.array(y), rcond=None)[0]
    if o < 0:
        a, o = float(np.dot(x, y) / np.dot(x, x)), 0.0
    assert cluster.devices[0].speed == cluster.devices[1].speed
    assert list(report["device_factor"].values()) == [pytest.approx(a, abs=1e-4)] * 2
    assert report["action_overhead_ms"] == pytest.approx(o, abs=1e-4)


def test_the_step_overhead_is_paid_once_per_step_by_the_plan_and_its_timeline():
    """Device.step_overhead_ms: the solver's predicted step, the simulated timeline and the exact search's
    bound all add the slowest device's fixed step cost once (cost.step_end_ms), so the partition is the same."""
    from dataclasses import replace

    from planner.contracts.cluster import Cluster
    from planner.contracts.config import TrainConfig
    from planner.pipeline.simulator import simulate
    from planner.solvers.solve import solve
    from profiler import load_profile

    prof = load_profile("sample:gpt:tiny", batch_size=2)
    cfg = TrainConfig(schedule="1F1B", num_microbatches=4, micro_batch_size=2, optimizer="adamw")
    base = Cluster.uniform(2, memory_bytes=64 << 30)
    slow = replace(base, devices=[replace(d, step_overhead_ms=1.5 if i else 0.5) for i, d in enumerate(base.devices)])
    plan0, plan1 = solve(prof, base, cfg), solve(prof, slow, cfg)
    assert [st.node_ids for st in plan1.stages] == [st.node_ids for st in plan0.stages]
    assert plan1.step_time_ms == pytest.approx(plan0.step_time_ms + 1.5, rel=1e-9)
    assert simulate(plan1).makespan_ms == pytest.approx(plan1.step_time_ms, rel=1e-9)
    assert plan1.solver.status == "optimal"
    assert plan1.solver.lower_bound_ms <= plan1.step_time_ms * (1 + 1e-9)


def test_no_step_overhead_without_optimizer_times_and_no_link_fit_without_a_transfer():
    """A plan without optimizer times charges no step end (the simulator adds it only after an optimizer
    step), so nothing is fitted into it; a parameter that does not move the step (a boundary within one
    device) is not bisected off to 10^6 ms: the link keeps the plan's values."""
    from planner.calibration.from_run import _bisect_to

    assert _bisect_to(lambda x: 5.0, 10.0) is None
    plan = hand_plan("sample:gpt:tiny", gpt_tiny_stages(2))
    plan.stages[0].comm_out_bytes = 4_000_000
    plan.stages[0].comm_out_ms = plan.cluster.intra_node.transfer_ms(4_000_000)
    planned_mem = [st.memory.total - st.memory.reserve for st in plan.stages]
    log = synthetic_log(plan, factor=2.0, overhead=0.3, transfer_ms=0.2, peak=planned_mem, step_overhead_ms=0.9)
    cluster, report = calibrate_from_run(plan, [log])
    assert report["step_overhead_ms"] == 0.0 and all(d.step_overhead_ms == 0.0 for d in cluster.devices)
    assert cluster.intra_node.transfer_overhead_s * 1e3 == pytest.approx(0.2, rel=1e-3)

    one = hand_plan("sample:gpt:tiny", gpt_tiny_stages(2), schedule="ZBV")  # both chunks on device 0
    assert {st.device for st in one.stages} == {0}
    one.stages[0].comm_out_bytes = 4_000_000
    one.stages[0].comm_out_ms = 0.0
    lines = []
    for raw in synthetic_log(one, factor=2.0, overhead=0.3, transfer_ms=0.0, peak=[0, 0]).splitlines():
        if raw.startswith("{"):  # 1 ms more per step, waiting: more than the model can explain
            d = json.loads(raw)
            for r in d["ranks"]:
                r["step_s"] += 1e-3
                r["wait_s"] += 1e-3
            raw = json.dumps(d)
        lines.append(raw)
    cluster, report = calibrate_from_run(one, ["\n".join(lines)])
    assert report["link"]["transfer_overhead_ms"] == 0.0
    assert cluster.intra_node.latency_s == one.cluster.intra_node.latency_s


def test_every_device_of_a_fitted_kind_is_refit_so_data_parallel_replicas_stay_uniform():
    """The plan's stages sit on the first replica's devices; the refit applies the fitted factor to every
    device of that kind, so a dp > 1 re-plan still sees one kind of device (parallel.check_uniform)."""
    from planner.contracts.cluster import Cluster
    from planner.costmodel.parallel import check_uniform

    plan = hand_plan("sample:gpt:tiny", gpt_tiny_stages(2), data_parallel=2)
    plan.cluster = Cluster.uniform(4, memory_bytes=16 << 30)
    planned_mem = [st.memory.total - st.memory.reserve for st in plan.stages]
    log = synthetic_log(plan, factor=2.5, overhead=0.4, transfer_ms=0.3, peak=planned_mem)
    cluster, _ = calibrate_from_run(plan, [log])
    assert [d.speed for d in cluster.devices] == pytest.approx([1 / 2.5] * 4, rel=1e-6)
    check_uniform(cluster)
