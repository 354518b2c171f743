"""ZBH1 export: torch 2.13 has no ZB-H1 class of its own, but ScheduleInterleavedZeroBubble given one
stage per rank runs exactly pipeplan's ZB-H1 order (checked here action by action), and the
exported job trains like --single-process (torchrun, gloo)."""

from __future__ import annotations

import warnings
from unittest import mock

import pytest
from helpers_export import check_equivalence, gpt_tiny_stages, hand_plan

from core.errors import PipeplanError
from planner.pipeline.schedules import schedule_actions

COMPUTE = ("FORWARD", "BACKWARD_INPUT", "BACKWARD_WEIGHT", "FULL_BACKWARD")


def torch_zbh1_order(P: int, M: int) -> dict[int, list[str]]:
    """Per rank, the compute actions of the torch class the registry names for ZBH1 (IZB) with one
    stage per rank (mock stages, as torch's _schedule_visualizer does; its get_schedule_ops insists
    on >= 2 stages per rank). torch writes the input-gradient backward "I"; pipeplan calls it "B"."""
    import torch.distributed.pipelining.schedules as torch_schedules
    from torch.distributed.pipelining import PipelineStage

    from planner.pipeline.schedules import SCHEDULE_SPECS

    stage = mock.create_autospec(PipelineStage, instance=True)
    stage.group_rank, stage.group_size, stage.submod, stage.num_stages = 0, P, None, P
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = getattr(torch_schedules, SCHEDULE_SPECS["ZBH1"].torch_class)([stage], M)
    return {r: [str(a).replace("I", "B") for a in acts if a is not None and a.computation_type.name in COMPUTE]
            for r, acts in sched.pipeline_order.items()}


@pytest.mark.parametrize("P", [2, 3, 4, 8])
def test_torch_interleaved_zero_bubble_with_one_stage_per_rank_is_pipeplans_zbh1(P):
    for M in range(1, 17):
        try:
            ours = {r: [str(a) for a in acts] for r, acts in schedule_actions("ZBH1", P, M).items()}
        except PipeplanError:  # pipeplan refuses the same micro-batch counts torch refuses
            with pytest.raises(ValueError, match="multiple of the number of rounds"):
                torch_zbh1_order(P, M)
            continue
        assert torch_zbh1_order(P, M) == ours, f"P={P} M={M}"


@pytest.mark.slow
@pytest.mark.torchrun
def test_gpt_zbh1_two_ranks_matches_single_process(tmp_path):
    # 4 micro-batches on 2 ranks: 2 rounds, W postponed on rank 0; tied wte/lm_head across ranks
    plan = hand_plan("sample:gpt:tiny", gpt_tiny_stages(2), schedule="ZBH1", num_microbatches=4, seq_len=32)
    check_equivalence(tmp_path, "zbh1", plan, 2)
