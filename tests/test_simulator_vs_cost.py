"""The planner's closed-form step time (the ILP objective) equals the simulated makespan where a
closed form exists (docs/schedules.md, "Agreement with the planner's closed form")."""

from __future__ import annotations

import pytest

from core.errors import PipeplanError
from planner.pipeline.schedules import check_schedule
from planner.pipeline.simulator import simulate_times

cost = pytest.importorskip("planner.costmodel.cost")


@pytest.mark.parametrize("schedule,v", [("GPipe", 1), ("1F1B", 1), ("Interleaved1F1B", 2),
                                        ("Interleaved1F1B", 3), ("ZBH1", 1)])
def test_uniform_stages_closed_form_equals_simulation(schedule, v):
    checked = 0
    for P in (1, 2, 3, 4, 8):
        for M in (P, P + 1, 2 * P, 4 * P):
            try:
                check_schedule(schedule, P, M, v)
            except PipeplanError:
                continue
            S = P * v
            for f, b in ((1.0, 2.0), (0.5, 1.5)):
                if schedule == "ZBH1" and b / 2 > f:
                    continue  # the paper's form needs t_W <= min(t_F, t_B); see docs/schedules.md
                tl = simulate_times([f] * S, [b] * S, [0.0] * (S - 1), schedule=schedule, num_devices=P,
                                    num_microbatches=M, virtual_stages=v)
                predicted = cost.predicted_step_time_ms([f] * S, [b] * S, [0.0] * S, M, schedule, P, v,
                                                        stage_bwd_weight=[b / 2] * S)
                assert predicted == pytest.approx(tl.makespan_ms), (P, M, f, b)
                checked += 1
    assert checked >= 10
