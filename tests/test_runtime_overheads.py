"""The cost model's runtime terms: the optimizer step per stage, the per-action overhead of the
pipeline runtime, and `pipeplan calibrate` that measures them (docs/cost-model.md, "Runtime overheads")."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from cli import main as cli_main
from planner.calibration.calibrate import calibrate, calibrated_cluster, fit_action_overhead, fit_link
from planner.contracts.cluster import Cluster, Device, Link
from planner.contracts.config import TrainConfig
from planner.costmodel.cost import OPTIMIZER_STEP_TRAFFIC_BYTES, clip_allreduce_ms, predicted_step_time_ms
from planner.pipeline.simulator import simulate_times
from planner.solvers.evaluate import evaluate_partition
from profiler import load_profile
from profiler.gpus import ADAMW_STEP_BYTES_PER_PARAM, get_preset, optimizer_step_ms
from profiler.profile import Profile


@pytest.fixture(scope="module")
def estimated() -> Profile:
    return load_profile("sample:gpt:tiny", batch_size=2, estimate_for="A100-80GB")


def two_devices(overhead: float = 0.0) -> Cluster:
    return Cluster(devices=[Device(name=f"d{i}", memory_bytes=8 << 30, speed=1.0, action_overhead_ms=overhead)
                            for i in range(2)])


def halves(profile: Profile) -> list[list[str]]:
    ids = [n.id for n in profile.nodes]
    return [ids[: len(ids) // 2], ids[len(ids) // 2:]]


def test_estimated_optimizer_time_is_the_adamw_roofline(estimated):
    preset = get_preset("A100-80GB")
    for n in estimated.nodes:
        expected = 0.0 if n.param_count == 0 else \
            1e3 * n.param_count * ADAMW_STEP_BYTES_PER_PARAM / (preset.memory_efficiency * preset.mem_bw_gbs * 1e9) \
            + preset.kernel_overhead_us * 1e-3
        assert n.optimizer_ms == pytest.approx(expected)
        assert n.optimizer_ms == optimizer_step_ms(n.param_count, preset)


def test_measured_profile_times_the_optimizer_of_every_layer_with_parameters():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        prof = load_profile("sample:mlp:tiny", batch_size=2, measure="cpu")
    finally:
        torch.set_num_threads(threads)
    for n in prof.nodes:
        assert (n.optimizer_ms > 0) == (n.param_count > 0), n.id
        assert math.isfinite(n.optimizer_ms)
    # the profile JSON carries it
    again = Profile.from_json(prof.to_json())
    assert [n.optimizer_ms for n in again.nodes] == [n.optimizer_ms for n in prof.nodes]


def test_plan_charges_each_stage_its_optimizer_step_after_the_drain(estimated):
    cfg = TrainConfig(schedule="1F1B", num_microbatches=4, micro_batch_size=2)
    plan = evaluate_partition(estimated, two_devices(), cfg, halves(estimated))
    for st in plan.stages:
        own = sum(n.optimizer_ms for n in estimated.nodes if n.id in st.node_ids)
        assert st.optimizer_ms == pytest.approx(own)
    without = simulate_times([s.fwd_ms for s in plan.stages], [s.bwd_ms for s in plan.stages],
                             [plan.stages[0].comm_out_ms], schedule="1F1B", num_devices=2, num_microbatches=4)
    opt = max(s.optimizer_ms for s in plan.stages)
    sync = clip_allreduce_ms(plan.cluster, [0, 1])
    assert opt > 0
    assert sync == pytest.approx(2 * plan.cluster.intra_node.transfer_ms(8))
    assert plan.step_time_ms == pytest.approx(without.makespan_ms + sync + opt)
    # the timeline shows one "O" event per device, starting when the pipeline has drained
    from planner.pipeline.simulator import simulate

    tl = simulate(plan)
    steps = [e for e in tl.events if e.op == "O"]
    assert len(steps) == 2
    assert [e.start_ms for e in steps] == pytest.approx([without.makespan_ms + sync] * 2)
    # the solvers' objective is the pipeline part; the closed form adds the optimizer when given it
    closed = predicted_step_time_ms([s.fwd_ms for s in plan.stages], [s.bwd_ms for s in plan.stages],
                                    [s.comm_out_ms + s.comm_grad_ms for s in plan.stages], 4, "1F1B", 2)
    assert plan.solver.objective_ms == pytest.approx(closed)
    assert predicted_step_time_ms([s.fwd_ms for s in plan.stages], [s.bwd_ms for s in plan.stages],
                                  [s.comm_out_ms + s.comm_grad_ms for s in plan.stages], 4, "1F1B", 2,
                                  stage_optimizer=[s.optimizer_ms for s in plan.stages]) == pytest.approx(closed + opt)


def test_other_optimizers_scale_by_their_memory_traffic(estimated):
    base = TrainConfig(schedule="1F1B", num_microbatches=4, micro_batch_size=2)
    adamw = evaluate_partition(estimated, two_devices(), base, halves(estimated))
    sgd = evaluate_partition(estimated, two_devices(), dataclasses.replace(base, optimizer="sgd"), halves(estimated))
    for a, s in zip(adamw.stages, sgd.stages):
        assert s.optimizer_ms == pytest.approx(a.optimizer_ms * OPTIMIZER_STEP_TRAFFIC_BYTES["sgd"]
                                               / ADAMW_STEP_BYTES_PER_PARAM)
    assert OPTIMIZER_STEP_TRAFFIC_BYTES["adamw"] == ADAMW_STEP_BYTES_PER_PARAM


def test_action_overhead_is_added_to_every_forward_and_backward(estimated):
    cfg = TrainConfig(schedule="1F1B", num_microbatches=4, micro_batch_size=2)
    plain = evaluate_partition(estimated, two_devices(0.0), cfg, halves(estimated))
    slow = evaluate_partition(estimated, two_devices(0.5), cfg, halves(estimated))
    for a, b in zip(plain.stages, slow.stages):
        assert b.fwd_ms == pytest.approx(a.fwd_ms + 0.5)
        assert b.bwd_ms == pytest.approx(a.bwd_ms + 0.5)
        assert b.bwd_weight_ms == pytest.approx(a.bwd_weight_ms)
    # uniform-ish 1F1B: (M + P - 1) actions of each kind on the critical path
    assert slow.step_time_ms - plain.step_time_ms == pytest.approx((4 + 2 - 1) * 1.0, rel=0.05)


def test_clip_allreduce_is_a_ring_over_the_slowest_neighbour_link():
    slow = Link(bandwidth_bytes_per_s=1e9, latency_s=1e-3)
    devices = [Device(name=f"d{i}", memory_bytes=1 << 30, node=i // 2) for i in range(4)]
    cluster = Cluster(devices=devices, intra_node=Link(bandwidth_bytes_per_s=1e11, latency_s=1e-6), inter_node=slow)
    assert clip_allreduce_ms(cluster, [0, 1, 2, 3]) == pytest.approx(2 * 3 * slow.transfer_ms(8))
    assert clip_allreduce_ms(cluster, [0, 1]) == pytest.approx(2 * cluster.intra_node.transfer_ms(8))
    assert clip_allreduce_ms(cluster, [2, 2]) == 0.0


def test_link_fit_recovers_latency_and_bandwidth():
    link = Link(bandwidth_bytes_per_s=3e9, latency_s=40e-6)
    sizes = [4096, 1 << 18, 1 << 22]
    fitted = fit_link({n: link.transfer_ms(n) / 1e3 for n in sizes})
    assert fitted.latency_s == pytest.approx(40e-6)
    assert fitted.bandwidth_bytes_per_s == pytest.approx(3e9)


def test_overhead_fit_inverts_the_simulator():
    link = Link(bandwidth_bytes_per_s=2e9, latency_s=1e-4)
    f, b, overhead = 0.05, 0.2, 0.7
    measured = {str(m): simulate_times([f + overhead] * 2, [b + overhead] * 2, [link.transfer_ms(256)],
                                       schedule="1F1B", num_devices=2, num_microbatches=m).makespan_ms
                for m in (4, 16)}
    raw = {"stage_fwd_ms": f, "stage_bwd_ms": b, "stage_bytes": 256, "pipeline_step_ms": measured}
    assert fit_action_overhead(raw, link) == pytest.approx(overhead)


@pytest.mark.slow
@pytest.mark.torchrun  # two calibration ranks under torchrun (~25 s)
def test_calibrate_runs_two_real_ranks_and_writes_a_cluster(tmp_path, capsys):
    out = tmp_path / "cluster.json"
    assert cli_main(["calibrate", "--devices", "3", "--memory", "16GB", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "per forward/backward action" in printed and str(out) in printed
    cluster = Cluster.from_json(out.read_text())
    assert cluster.num_devices == 3
    assert cluster.devices[0].memory_bytes == 16 << 30
    assert cluster.devices[0].action_overhead_ms >= 0
    assert cluster.intra_node.latency_s >= 0 and cluster.intra_node.bandwidth_bytes_per_s > 0
    result = calibrate()
    assert result.backend == "gloo"
    assert set(result.raw["pipeline_step_ms"]) == {"4", "24"}
    # the calibration pipeline takes longer with more micro-batches: the fit has something to fit
    assert result.raw["pipeline_step_ms"]["24"] > result.raw["pipeline_step_ms"]["4"]
    again = calibrated_cluster(result, 2, 1 << 30)
    assert again.intra_node == result.link
    json.dumps(result.to_dict())


def test_calibrate_rejects_bad_arguments(capsys):
    assert cli_main(["calibrate", "--devices", "0"]) == 2
    assert "--devices must be between 1" in capsys.readouterr().err
    assert cli_main(["calibrate", "--memory", "lots"]) == 2
    assert "cannot read memory size" in capsys.readouterr().err


@pytest.mark.parametrize(("model", "solver"), [("gpt", "dp"), ("gpt", "highs"), ("unet3d", "highs")])
def test_solvers_charge_the_overhead_and_per_tensor_latency_too(model, solver):
    """With a calibrated-looking cluster the solvers' objective is the plan's closed form: an
    optimal plan has gap 0 (the DP and the ILP see the same overhead and per-tensor latency)."""
    prof = load_profile(f"sample:{model}:tiny", estimate_for="A100-80GB")
    # without optimizer times: the solvers leave that term out, so a baseline could win on it alone
    prof = Profile(model=prof.model, provenance=prof.provenance, edges=prof.edges,
                   nodes=[dataclasses.replace(n, optimizer_ms=None) for n in prof.nodes])
    cluster = Cluster(devices=[Device(name=f"d{i}", memory_bytes=8 << 30, speed=1.0, action_overhead_ms=0.3)
                               for i in range(3)],
                      intra_node=Link(bandwidth_bytes_per_s=2e9, latency_s=1e-4))
    from planner.solvers.solve import solve

    plan = solve(prof, cluster, TrainConfig(num_microbatches=6, solver=solver, time_limit_s=20))
    assert plan.feasible
    assert (plan.solver.backend, plan.solver.status) == (solver, "optimal")
    assert plan.solver.gap == pytest.approx(0.0, abs=1e-6)
    assert plan.solver.lower_bound_ms == pytest.approx(plan.solver.objective_ms, rel=1e-6)
    assert all(s.fwd_ms > 0.3 for s in plan.stages)
