"""planner/costmodel/cost.py, term by term, against hand calculations (docs/cost-model.md writes each down)."""

from __future__ import annotations

import numpy as np
import pytest

from planner.contracts.cluster import Cluster, Device, Link
from planner.costmodel.cost import (
    StageTimeCoefficients,
    backward_split_ms,
    boundary_comm_ms,
    clip_allreduce_ms,
    closed_form_pieces,
    closed_form_step_ms,
    cycle_ms,
    fill_drain_ms,
    link_coefficients,
    predicted_step_time_ms,
    split_backward_ms,
    stage_optimizer_ms,
    stage_time_coefficients,
    zero_bubble_weight_factor,
)
from planner.pipeline.schedules import SCHEDULE_SPECS
from profiler.gpus import ADAMW_STEP_BYTES_PER_PARAM, OPTIMIZER_STEP_TRAFFIC_BYTES
from profiler.profile import ProfileNode


def test_stage_compute_by_hand():
    # 6 ms forward, 10 ms backward (4 of it W) on the reference device; the device is 2x faster and
    # pays 0.5 ms per action: fwd 3 + 0.5, bwd 5 + 0.5, W 2, B 3 + 0.5
    co = StageTimeCoefficients(speed=2.0, action_overhead_ms=0.5)
    assert co.compute_ms(6.0, 10.0, 4.0) == (3.5, 5.5, 3.5, 2.0)
    # recompute re-runs the forward before B: +3 on bwd and on B
    assert co.compute_ms(6.0, 10.0, 4.0, recompute=True) == (3.5, 8.5, 6.5, 2.0)
    assert co.per_ref_ms == 0.5 and co.constant_ms == 1.0


def test_coefficients_are_linear_and_agree_with_compute():
    co = stage_time_coefficients(1.6, 0.3, "ZBH1", is_last=False)
    f, b, w, comm = 7.0, 11.0, 5.0, 0.25
    for r in (False, True):
        T, c = co.cycle_and_fill_ms(f, b, w, r, comm)
        # the ILP's rows: T = per_ref * (f + b + r f) + constant + comm;  c = T - credit * per_ref * w
        assert T == pytest.approx(co.per_ref_ms * (f + b + r * f) + co.constant_ms + comm, rel=1e-15)
        assert c == pytest.approx(T - co.weight_credit * co.per_ref_ms * w, rel=1e-15)
    # arrays (the DP builds every interval at once) give the same numbers
    T_arr, _ = co.cycle_and_fill_ms(np.array([f, 2 * f]), np.array([b, 2 * b]), np.array([w, 2 * w]), False, comm)
    assert T_arr[0] == co.cycle_and_fill_ms(f, b, w, False, comm)[0]


def test_weight_credit_comes_from_the_registry_and_skips_the_last_stage():
    for name, spec in SCHEDULE_SPECS.items():
        assert zero_bubble_weight_factor(name) == spec.weight_credit
        assert stage_time_coefficients(1.0, 0.0, name, is_last=True).weight_credit == 0.0
    assert zero_bubble_weight_factor("ZBH1") == 2.0 and zero_bubble_weight_factor("1F1B") == 0.0


def test_cycle_and_fill():
    assert cycle_ms(1.0, 2.0, 0.5) == 3.5
    assert fill_drain_ms(3.5, 1.0, 2.0) == 1.5


def test_closed_form_pieces_by_hand():
    # 1F1B, M = 8, P = 4 uniform stages of T = 3 ms: (M + P - 1) T = 33
    assert closed_form_step_ms(8, 1, 3.0, 12.0) == 33.0
    assert predicted_step_time_ms([1.0] * 4, [2.0] * 4, [0.0] * 4, 8, "1F1B", 4) == 33.0
    # interleaved, v = 2 chunks of T = 1.5 per device: (M v + P - 1) T = (16 + 3) 1.5 = 28.5
    assert closed_form_step_ms(8, 2, 3.0, 12.0) == 28.5
    assert closed_form_pieces(8, 2) == ((8.0, 0.0), (7.5, 0.5))
    # one device: M T (the first piece wins)
    assert closed_form_step_ms(4, 1, 3.0, 3.0) == 12.0
    peaks = np.array([3.0, 1.0])
    assert list(closed_form_step_ms(8, 1, peaks, np.array([12.0, 100.0]))) == [33.0, 107.0]


def test_zero_bubble_credit_in_the_closed_form():
    # ZB-H1 on P = 2, M = 4, F = 1, B = 1, W = 1: c_0 = 3 - 2 * 1 = 1, c_1 = 3 (last stage)
    step = predicted_step_time_ms([1.0, 1.0], [2.0, 2.0], [0.0, 0.0], 4, "ZBH1", 2, stage_bwd_weight=[1.0, 1.0])
    assert step == max(4 * 3.0, 3 * 3.0 + 1.0 + 3.0)


def test_optimizer_step_after_the_drain_adds_the_slowest_device():
    step = predicted_step_time_ms([1.0, 1.0], [2.0, 2.0], [0.0, 0.0], 4, "1F1B", 2, stage_optimizer=[0.5, 2.0])
    assert step == 15.0 + 2.0


def test_backward_split_rule():
    assert split_backward_ms(8.0) == (4.0, 4.0)
    assert split_backward_ms(8.0, has_weights=False) == (8.0, 0.0)
    with_params = ProfileNode(id="a", name="a", kind="linear", module_path="a", fwd_ms=1.0, bwd_ms=8.0, param_count=10)
    without = ProfileNode(id="b", name="b", kind="relu", module_path="b", fwd_ms=1.0, bwd_ms=8.0)
    measured = ProfileNode(id="c", name="c", kind="linear", module_path="a", fwd_ms=1.0, bwd_ms=8.0, param_count=10,
                           bwd_input_ms=5.0, bwd_weight_ms=3.0)
    assert backward_split_ms(with_params) == (4.0, 4.0)
    assert backward_split_ms(without) == (8.0, 0.0)
    assert backward_split_ms(measured) == (5.0, 3.0)


def test_link_alpha_beta_by_hand():
    link = Link(bandwidth_bytes_per_s=1e9, latency_s=1e-3)
    # 2 tensors of 1 MB in total: 2 x 1 ms + 1e6 / 1e9 s = 3 ms
    assert link.transfer_ms(1e6, 2) == pytest.approx(3.0)
    assert (link.latency_ms, link.ms_per_byte) == (1.0, 1e-6)
    cluster = Cluster(devices=[Device(name=f"d{i}", memory_bytes=1 << 30, node=i) for i in range(2)],
                      inter_node=link)
    assert link_coefficients(cluster, 0, 1) == (1.0, 1e-6)
    assert link_coefficients(cluster, 1, 1) == (0.0, 0.0)
    assert boundary_comm_ms(cluster, 0, 1, 1e6, 2) == pytest.approx(3.0)
    assert boundary_comm_ms(cluster, 0, 0, 1e6, 2) == 0.0


def test_clip_allreduce_ring_by_hand():
    slow = Link(bandwidth_bytes_per_s=1e9, latency_s=1e-3)
    cluster = Cluster(devices=[Device(name=f"d{i}", memory_bytes=1 << 30, node=i // 2) for i in range(4)],
                      intra_node=Link(bandwidth_bytes_per_s=1e12, latency_s=0.0), inter_node=slow)
    # 2 (P - 1) = 6 messages of 8 bytes over the slowest neighbour link
    assert clip_allreduce_ms(cluster, [0, 1, 2, 3]) == pytest.approx(6 * (1.0 + 8e-6))
    assert clip_allreduce_ms(cluster, [2, 2]) == 0.0


def test_optimizer_traffic_lives_once():
    assert ADAMW_STEP_BYTES_PER_PARAM == OPTIMIZER_STEP_TRAFFIC_BYTES["adamw"] == 44
    # SGD moves 28 B per parameter where AdamW moves 44: 10 ms of AdamW on a 2x device is 28/44 x 5 ms
    assert stage_optimizer_ms(10.0, "sgd", 2.0) == pytest.approx(5.0 * 28 / 44)
