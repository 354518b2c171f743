"""simulate(plan), the `pipeplan simulate` command and the Plotly figures."""

from __future__ import annotations

import json

import plotly.graph_objects as go
import pytest

from cli import main
from core.errors import PipeplanError
from planner.contracts.cluster import Cluster, Device
from planner.contracts.config import TrainConfig
from planner.contracts.plan import Plan, StagePlan
from planner.costmodel.memory import stage_memory_bytes
from planner.pipeline.schedules import in_flight_microbatches, stage_to_device
from planner.pipeline.simulator import simulate, simulate_times
from profiler.profile import ModelInfo
from ui.timeline_plot import COLORS, idle_intervals, memory_figure, timeline_figure

GiB = 2**30


def hand_plan(schedule: str = "1F1B", P: int = 4, M: int = 8, v: int = 1, comm: float = 0.25) -> Plan:
    """A plan built by hand: stage s takes 1+s/10 ms forward, twice that backward, 10 MB of activations."""
    config = TrainConfig(schedule=schedule, num_microbatches=M, virtual_stages=v)
    S = P * (2 if schedule == "ZBV" else v)
    in_flight = in_flight_microbatches(schedule, P, M, config.virtual_stages)
    place = stage_to_device(P, schedule, config.virtual_stages)
    stages = []
    for s in range(S):
        fwd = 1.0 + s / 10
        mem = stage_memory_bytes(param_count=1000, activation_bytes=10e6, input_bytes=1e6, relay_bytes=0,
                                 in_flight=in_flight[s], config=config)
        stages.append(StagePlan(index=s, device=place[s], node_ids=[f"layer{s}"], fwd_ms=fwd, bwd_ms=2 * fwd,
                                bwd_input_ms=0.0, bwd_weight_ms=0.0, comm_out_ms=comm if s < S - 1 else 0.0,
                                comm_out_bytes=10**6, recompute=False, in_flight=in_flight[s], memory=mem,
                                memory_limit_bytes=80 * GiB, param_count=1000))
    cluster = Cluster(devices=[Device(name=f"gpu{d}", memory_bytes=80 * GiB) for d in range(P)])
    return Plan(model=ModelInfo(source="sample:mlp:tiny", name="mlp", param_count=1000 * S),
                profile_fingerprint="x", cluster=cluster, config=config, feasible=True, stages=stages,
                step_time_ms=1.0)


@pytest.mark.parametrize("schedule,v", [("GPipe", 1), ("1F1B", 1), ("Interleaved1F1B", 2), ("ZBH1", 1), ("ZBV", 2)])
def test_simulate_plan_reads_the_stage_fields(schedule, v):
    plan = hand_plan(schedule, v=v)
    tl = simulate(plan)
    direct = simulate_times([s.fwd_ms for s in plan.stages], [s.bwd_ms for s in plan.stages],
                            [s.comm_out_ms for s in plan.stages[:-1]], schedule=schedule, num_devices=4,
                            num_microbatches=8, virtual_stages=v)
    assert tl.makespan_ms == direct.makespan_ms
    assert tl.peak_in_flight == [s.in_flight for s in plan.stages]
    # The simulated peak per stage is the plan's activation memory (one memory formula).
    for d in range(4):
        mine = [s for s in plan.stages if tl.stage_device[s.index] == d]
        if len(mine) == 1:
            assert tl.peak_memory_bytes[d] == mine[0].memory.activations
        else:
            assert tl.peak_memory_bytes[d] <= sum(s.memory.activations for s in mine)


def test_simulate_plan_overrides_and_refusals():
    plan = hand_plan("1F1B")
    assert simulate(plan, schedule="gpipe").schedule == "GPipe"
    assert simulate(plan, num_microbatches=16).num_microbatches == 16
    with pytest.raises(PipeplanError, match="Re-plan with --schedule ZBV"):
        simulate(plan, schedule="ZBV")
    with pytest.raises(PipeplanError, match="at least as many micro-batches"):
        simulate(plan, num_microbatches=2)
    empty = Plan(model=plan.model, profile_fingerprint="x", cluster=plan.cluster, config=plan.config, feasible=False)
    with pytest.raises(PipeplanError, match="nothing to simulate"):
        simulate(empty)


def test_cli_simulate_table_json_html(tmp_path, capsys):
    path = tmp_path / "plan.json"
    path.write_text(hand_plan("Interleaved1F1B", v=2).to_json())
    html, tl_path = tmp_path / "t.html", tmp_path / "t.json"
    assert main(["simulate", str(path), "--html", str(html), "--timeline-json", str(tl_path)]) == 0
    out = capsys.readouterr().out
    expected = simulate(hand_plan("Interleaved1F1B", v=2))
    assert f"makespan {expected.makespan_ms:.3f} ms" in out and "gpu0" in out and "MiB" in out
    text = html.read_text()
    assert text.startswith("<!doctype html>") and "plotly" in text.lower() and "F forward" in text
    assert json.loads(tl_path.read_text())["makespan_ms"] == expected.makespan_ms

    assert main(["simulate", str(path), "--json", "--microbatches", "4"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_microbatches"] == 4 and len(info["devices"]) == 4
    assert info["devices"][0]["peak_activation_bytes"] == simulate(
        hand_plan("Interleaved1F1B", v=2), num_microbatches=4).peak_memory_bytes[0]


@pytest.mark.parametrize("argv,match", [
    (["--schedule", "ZBV"], "Re-plan"),
    (["--microbatches", "0"], "micro-batches >= 1"),
    (["--schedule", "nosuch"], "unknown schedule"),
    (["--microbatches", "100000000"], "at most"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, argv, match):
    path = tmp_path / "plan.json"
    path.write_text(hand_plan("1F1B").to_json())
    assert main(["simulate", str(path), *argv]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_missing_or_broken_plan(tmp_path, capsys):
    assert main(["simulate", str(tmp_path / "nope.json")]) == 2
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["simulate", str(bad)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_timeline_figure_bars_match_events():
    tl = simulate(hand_plan("ZBH1"))
    fig = timeline_figure(tl)
    by_name = {t.name: t for t in fig.data}
    assert {"F forward", "B input grad", "W weight grad", "send/recv (async transfer)"} <= set(by_name)
    f = by_name["F forward"]
    assert isinstance(f, go.Bar) and f.orientation == "h" and f.marker.color == COLORS["F"]
    evs = [e for e in tl.events if e.op == "F"]
    assert list(f.base) == [e.start_ms for e in evs]
    assert list(f.x) == pytest.approx([e.end_ms - e.start_ms for e in evs])
    assert list(f.text) == [str(e.microbatch) for e in evs]
    assert fig.layout.xaxis.type == "linear"
    # Idle bars cover exactly the bubble.
    idle = sum(b - a for spans in idle_intervals(tl) for a, b in spans)
    assert idle == pytest.approx(tl.bubble_fraction * tl.num_devices * tl.makespan_ms)
    assert sum(by_name["idle (bubble)"].x) == pytest.approx(idle)


def test_timeline_figure_windows_large_timelines():
    S, P = 16, 8
    tl = simulate_times([1.0] * S, [2.0] * S, [0.1] * (S - 1), schedule="Interleaved1F1B", num_devices=P,
                        num_microbatches=400, virtual_stages=2)
    fig = timeline_figure(tl, max_ops=2000)
    drawn = sum(len(t.x) for t in fig.data if t.name in ("F forward", "B backward"))
    assert 0 < drawn <= 2000
    assert "showing micro-batches 0–" in fig.layout.title.text  # in the title: always in view
    fig = timeline_figure(tl, microbatch_window=(10, 12))
    assert sum(len(t.x) for t in fig.data if t.name == "F forward") == 2 * S
    # the axis spans the window, not the whole step (a window squeezed into the left of the axis)
    ends = [x0 + w for t in fig.data if t.name == "F forward" for x0, w in zip(t.base, t.x)]
    lo, hi = fig.layout.xaxis.range
    assert hi == pytest.approx(max(e.end_ms for e in tl.events if 10 <= e.microbatch < 12 and e.op != "O"))
    assert hi < 0.2 * tl.makespan_ms and max(ends) <= hi + 1e-9 and lo >= 0
    # interleaved chunks: the hatching of the second chunk is in the legend
    assert any(t.name == "chunk 1 (pattern)" for t in fig.data)
    # the title and the legend get their own bands at the top (16 devices overlapped them)
    assert fig.layout.title.yref == "container" and fig.layout.margin.t >= 120


def test_memory_figure_steps_and_peak():
    tl = simulate(hand_plan("1F1B"))
    fig = memory_figure(tl)
    assert len(fig.data) == 4 and fig.data[0].line.shape == "hv"
    assert "peak" in fig.data[0].name
    top = max(fig.data[0].y)
    assert top == pytest.approx(tl.peak_memory_bytes[0] / 2**20)
    blank = memory_figure(simulate_times([1.0], [1.0], [], schedule="GPipe", num_devices=1, num_microbatches=2))
    assert "no activation sizes" in blank.layout.annotations[0].text
