"""Schedule orders against torch.distributed.pipelining's own, and the in-flight memory function."""

from __future__ import annotations

import contextlib
import io
from unittest import mock

import pytest

from core.errors import PipeplanError
from planner.contracts.config import TrainConfig
from planner.pipeline.schedules import (
    MULTI_CHUNK_SCHEDULES,
    SCHEDULE_SPECS,
    Action,
    canonical_schedule,
    check_schedule,
    in_flight_microbatches,
    num_stages,
    schedule_actions,
    stage_to_device,
)

pipelining = pytest.importorskip("torch.distributed.pipelining")
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining._schedule_visualizer import get_schedule_ops
from torch.distributed.pipelining.schedules import ScheduleDualPipeV, ScheduleInterleavedZeroBubble

COMPUTE = {"F", "B", "I", "W"}
SHAPES = [(P, M) for P in (1, 2, 3, 4, 6) for M in (1, 3, 4, 7, 8, 12)]
"""Device and micro-batch counts compared with torch: below, at and above P, rounds that divide or not."""


def torch_order(name: str, P: int, M: int, per_rank: int) -> list[list[str]] | None:
    """torch's per-rank compute actions as strings ("I" renamed to our "B"); None if torch rejects the shape."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            ops = get_schedule_ops(name, P, M, num_stages_per_rank=per_rank)
    except (ValueError, AssertionError):
        return None
    return [[str(a).replace("I", "B") for a in rank if a is not None and a.computation_type.value in COMPUTE]
            for rank in ops]


def torch_zbh1_order(P: int, M: int) -> list[list[str]] | None:
    """ScheduleInterleavedZeroBubble with one stage per rank (the visualizer insists on >= 2),
    built on a mock stage exactly as get_schedule_ops builds its mocks."""
    stage = mock.create_autospec(PipelineStage, instance=True)
    stage.group_rank, stage.group_size, stage.submod, stage.num_stages = 0, P, None, P
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            sched = ScheduleInterleavedZeroBubble([stage], M)
    except ValueError:
        return None
    return [[str(a).replace("I", "B") for a in sched.pipeline_order[r] if a is not None] for r in range(P)]


def torch_dualpipev_order(P: int, M: int) -> list[list[str]] | None:
    """torch's ScheduleDualPipeV order (built on two mock stages, as get_schedule_ops builds its mocks),
    flattened the way pipeplan runs it: an OVERLAP_F_B is its F then its full backward, a full backward
    ("B") is B then W of the same micro-batch, an input gradient ("I") is our B."""
    stages = []
    for index in (0, 2 * P - 1):
        stage = mock.create_autospec(PipelineStage, instance=True)
        stage.group_rank, stage.group_size, stage.submod, stage.num_stages = 0, P, None, 2 * P
        stage.stage_index = index
        stages.append(stage)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            sched = ScheduleDualPipeV(stages, M)
    except ValueError:
        return None

    def flat(a) -> list[str]:
        if a.computation_type.value == "OVERLAP_F_B":
            return [x for sub in a.sub_actions for x in flat(sub)]
        if a.computation_type.value == "B":
            return [f"{a.stage_index}B{a.microbatch_index}", f"{a.stage_index}W{a.microbatch_index}"]
        return [str(a).replace("I", "B")]

    return [[x for a in sched.pipeline_order[r] if a is not None for x in flat(a)] for r in range(P)]


def ours(name: str, P: int, M: int, v: int) -> list[list[str]] | None:
    try:
        order = schedule_actions(name, P, M, v)
    except PipeplanError:
        return None
    return [[str(a) for a in order[r]] for r in range(P)]


@pytest.mark.parametrize("torch_name,name,v", [
    ("GPipe", "GPipe", 1), ("Interleaved1F1B", "Interleaved1F1B", 2),
    ("Interleaved1F1B", "Interleaved1F1B", 3), ("ZBVZeroBubble", "ZBV", 2),
    ("LoopedBFS", "LoopedBFS", 2), ("LoopedBFS", "LoopedBFS", 3),
])
def test_order_equals_torch(torch_name, name, v):
    checked = 0
    for P, M in SHAPES:
        expected = torch_order(torch_name, P, M, v)
        got = ours(name, P, M, v)
        assert (expected is None) == (got is None), f"{name} P={P} M={M}: torch accepts={expected is not None}"
        if expected is not None:
            assert got == expected, f"{name} P={P} M={M}"
            checked += 1
    assert checked >= len(SHAPES) * 3 // 4


def test_dualpipev_equals_torch_and_overlap_pairs_run_in_sequence():
    """DualPipeV (torch 2.13): every shape torch accepts (M >= 2P) gives torch's order, OVERLAP_F_B
    flattened to F then the full backward (torch's runtime runs the sub-actions one after the other);
    the shapes torch refuses, the registry's micro-batch rule refuses too."""
    checked = 0
    for P in (1, 2, 3, 4, 6):
        for M in (1, 2, P, 2 * P - 1, 2 * P, 2 * P + 1, 3 * P, 4 * P + 3):
            expected, got = torch_dualpipev_order(P, M), ours("DualPipeV", P, M, 2)
            assert (expected is None) == (got is None), f"P={P} M={M}"
            assert got == expected, f"P={P} M={M}"
            checked += expected is not None
    assert checked >= 20
    order = schedule_actions("DualPipeV", 4, 8, 2)
    seen = sorted((a.stage, a.op, a.microbatch) for acts in order.values() for a in acts)
    assert seen == sorted((s, op, m) for s in range(8) for op in "FBW" for m in range(8))
    for d, acts in order.items():
        assert all(stage_to_device(4, "DualPipeV", 2)[a.stage] == d for a in acts)


def test_zbh1_equals_torch_interleaved_zero_bubble_with_one_stage_per_rank():
    rejected = 0
    for P, M in SHAPES:
        expected, got = torch_zbh1_order(P, M), ours("ZBH1", P, M, 1)
        assert (expected is None) == (got is None), f"P={P} M={M}"
        assert got == expected, f"P={P} M={M}"
        rejected += expected is None
    assert 0 < rejected < len(SHAPES) // 2


def test_1f1b_matches_megatron_definition_and_torch_except_last_rank():
    """Megatron (schedules.py, forward_backward_pipelining_without_interleaving): rank r runs
    min(P-r-1, M) warm-up forwards, then one F and one B alternately, then the remaining Bs;
    micro-batches in order. torch's IR agrees except on the last rank (its off-by-one bug)."""
    for P, M in SHAPES:
        if M < P:
            continue
        order = schedule_actions("1F1B", P, M)
        for r in range(P):
            ops = "".join(a.op for a in order[r])
            warm = min(P - r - 1, M)
            assert ops == "F" * warm + "FB" * (M - warm) + "B" * warm
            for op in "FB":
                assert [a.microbatch for a in order[r] if a.op == op] == list(range(M))
            assert {a.stage for a in order[r]} == {r}
        torch_ops = torch_order("1F1B", P, M, 1)
        assert [[str(a) for a in order[r]] for r in range(P - 1)] == torch_ops[:P - 1]


def test_torch_1f1b_ir_is_still_off_by_one_on_the_last_rank():
    """If this starts failing, torch fixed its IR and the 1F1B check above can include the last rank."""
    assert torch_order("1F1B", 4, 4, 1)[3][0] == "3F1"


def test_every_action_runs_once():
    for name, v in (("GPipe", 1), ("1F1B", 1), ("Interleaved1F1B", 2), ("ZBH1", 1), ("ZBV", 2)):
        P, M = 4, 8
        order = schedule_actions(name, P, M, v)
        S = len(stage_to_device(P, name, v))
        ops = "FBW" if name in ("ZBH1", "ZBV") else "FB"
        seen = sorted((a.stage, a.op, a.microbatch) for acts in order.values() for a in acts)
        assert seen == sorted((s, op, m) for s in range(S) for op in ops for m in range(M))
        for d, acts in order.items():
            assert all(stage_to_device(P, name, v)[a.stage] == d for a in acts)


def test_action_prints_like_torch():
    assert str(Action(2, "F", 0)) == "2F0"


@pytest.mark.parametrize("P", range(1, 9))
def test_in_flight_closed_forms(P):
    for M in (1, 2, P, P + 1, 2 * P, 3 * P + 1):
        assert in_flight_microbatches("GPipe", P, M) == [M] * P
        if M >= P:
            assert in_flight_microbatches("1F1B", P, M) == [min(P - s, M) for s in range(P)]
        try:
            got = in_flight_microbatches("ZBH1", P, M)
        except PipeplanError:
            continue
        # W is deferred: every rank holds min(P, M) until their weight grads run.
        assert got == [min(P, M)] * P


def test_in_flight_zbv_and_interleaved_first_stage():
    # ZBV, M >= 2P-1: stage s of the V holds 2P - s (chunk 0 of rank 0 holds 2P).
    assert in_flight_microbatches("ZBV", 4, 8, 2) == [8, 7, 6, 5, 4, 3, 2, 1]
    # Interleaved (P=4, v=2, M=8): the device totals follow Megatron's warm-up + 1,
    # checked against the simulator in test_simulator; per stage:
    assert in_flight_microbatches("Interleaved1F1B", 4, 8, 2) == [8, 8, 7, 5, 4, 4, 3, 1]


@pytest.mark.parametrize("args,match", [
    (("1F1B", 4, 3), "at least as many micro-batches"),
    (("Interleaved1F1B", 4, 9, 2), "multiple of"),
    (("ZBH1", 4, 9), "multiple of"),
    (("GPipe", 4, 8, 2), "needs schedule Interleaved1F1B"),
    (("ZBV", 4, 8, 3), "2 stages per device"),
    (("GPipe", 0, 8), "devices"),
    (("GPipe", 2, 0), "micro-batches"),
    (("NoSuch", 2, 2), "unknown schedule"),
])
def test_bad_shapes_are_explained(args, match):
    with pytest.raises(PipeplanError, match=match):
        check_schedule(*args)


def test_num_stages_and_placement():
    assert num_stages(4, TrainConfig(schedule="ZBV")) == 8
    assert num_stages(4, TrainConfig(schedule="Interleaved1F1B", virtual_stages=3)) == 12
    assert stage_to_device(3, "ZBV", 2) == [0, 1, 2, 2, 1, 0]
    assert stage_to_device(3, "Interleaved1F1B", 2) == [0, 1, 2, 0, 1, 2]


def test_in_flight_is_cached_and_returns_a_copy():
    a = in_flight_microbatches("Interleaved1F1B", 8, 64, 4)
    a[0] = -1
    assert in_flight_microbatches("Interleaved1F1B", 8, 64, 4)[0] != -1


# -- the registry -------------------------------------------------------------------

@pytest.mark.parametrize("name", SCHEDULE_SPECS)
def test_registry_entry_is_consistent(name):
    import torch.distributed.pipelining.schedules as torch_schedules

    spec = SCHEDULE_SPECS[name]
    assert spec.torch_class in torch_schedules.__all__, spec.torch_class
    assert canonical_schedule(name.lower()) == name and all(canonical_schedule(a) == name for a in spec.aliases)
    v = spec.chunks_per_device or 3
    placement = stage_to_device(4, name, v)
    assert len(placement) == 4 * v and sorted(set(placement)) == [0, 1, 2, 3]
    if spec.placement == "v":
        assert placement == [0, 1, 2, 3, 3, 2, 1, 0]
    else:
        assert placement == [s % 4 for s in range(4 * v)]
    ops = {a.op for acts in schedule_actions(name, 4, 8, v).values() for a in acts}
    assert ops == ({"F", "B", "W"} if spec.split_backward else {"F", "B"})
    assert (spec.weight_credit > 0) == spec.split_backward
    assert (name in MULTI_CHUNK_SCHEDULES) == (v > 1)


def test_micro_batch_rules_match_torch():
    """Each registry rule accepts exactly the shapes torch's class accepts (torch_order is None when it
    refuses), for the schedules the visualizer builds."""
    for torch_name, name, v in (("GPipe", "GPipe", 1), ("1F1B", "1F1B", 1), ("Interleaved1F1B", "Interleaved1F1B", 2),
                                ("ZBVZeroBubble", "ZBV", 2), ("LoopedBFS", "LoopedBFS", 2)):
        for P, M in SHAPES:
            if name == "1F1B" and P == 1:
                continue  # the visualizer's 1F1B needs 2 ranks
            assert (torch_order(torch_name, P, M, v) is None) == (ours(name, P, M, v) is None), (name, P, M)


def test_config_reads_the_registry():
    assert TrainConfig(schedule="zbv", virtual_stages=1).virtual_stages == 2
    with pytest.raises(PipeplanError, match="needs schedule Interleaved1F1B"):
        TrainConfig(schedule="1F1B", virtual_stages=2)
    with pytest.raises(PipeplanError, match="choose one of GPipe, 1F1B, Interleaved1F1B, ZBH1, LoopedBFS, ZBV"):
        TrainConfig(schedule="DualPipe")


def test_looped_bfs_holds_every_micro_batch_and_plans():
    """LoopedBFS (torch 2.13): every stage holds all M micro-batches (like GPipe); the planner plans it
    and proves its plan against brute force in tests/test_exact.py; the export runs it (tests/test_export_train.py)."""
    assert in_flight_microbatches("LoopedBFS", 3, 5, 2) == [5] * 6
    from planner.contracts.cluster import Cluster
    from planner.solvers.solve import solve
    from profiler.synthetic import chain_profile

    plan = solve(chain_profile([1.0, 2.0, 1.5, 1.0, 0.5, 2.0, 1.0, 1.0]), Cluster.uniform(2, memory_bytes=2**30),
                 TrainConfig(schedule="LoopedBFS", virtual_stages=2, num_microbatches=4))
    assert plan.feasible and len(plan.stages) == 4 and plan.solver.status in ("optimal", "feasible")
    assert plan.solver.lower_bound_ms <= plan.step_time_ms
    from planner.export.job import EXPORTABLE_SCHEDULES

    assert "LoopedBFS" in EXPORTABLE_SCHEDULES and "DualPipeV" in EXPORTABLE_SCHEDULES


def test_dualpipev_memory_plan_and_micro_batch_rule():
    """DualPipeV (torch 2.13): stage s of the V holds 2P - s (as ZBV); M < 2P is refused as torch refuses it;
    the planner plans it with a lower bound <= the simulated step it reports."""
    assert in_flight_microbatches("DualPipeV", 3, 6, 2) == [6, 5, 4, 3, 2, 1]
    with pytest.raises(PipeplanError, match="at least as many micro-batches as stages"):
        check_schedule("DualPipeV", 3, 5, 2)
    from planner.contracts.cluster import Cluster
    from planner.solvers.solve import solve
    from profiler.synthetic import chain_profile

    plan = solve(chain_profile([1.0, 2.0, 1.5, 1.0, 0.5, 2.0, 1.0, 1.0]), Cluster.uniform(2, memory_bytes=2**30),
                 TrainConfig(schedule="DualPipeV", num_microbatches=4))
    assert plan.feasible and len(plan.stages) == 4 and plan.solver.status in ("optimal", "feasible")
    assert plan.solver.lower_bound_ms <= plan.step_time_ms
