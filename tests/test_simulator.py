"""The schedule simulator: closed forms, one memory function, and invariants under random times."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import PipeplanError
from planner.contracts.timeline import Timeline
from planner.pipeline.schedules import SPLIT_BACKWARD_SCHEDULES, _rounds, check_schedule, in_flight_microbatches
from planner.pipeline.simulator import _encode, _encoded_order, _run, simulate_times

ALL = (("GPipe", 1), ("1F1B", 1), ("Interleaved1F1B", 2), ("Interleaved1F1B", 3), ("ZBH1", 1), ("ZBV", 2),
       ("DualPipeV", 2))


def uniform(schedule, P, M, v=1, f=1.0, b=2.0, w=None, comm=0.0, act=None):
    S = P * v
    split = {} if w is None else {"bwd_input_ms": [b] * S, "bwd_weight_ms": [w] * S}
    return simulate_times([f] * S, [b + (w or 0.0)] * S, [comm] * (S - 1), schedule=schedule, num_devices=P,
                          num_microbatches=M, virtual_stages=v, activation_bytes=act, **split)


def valid(schedule, P, M, v=1) -> bool:
    try:
        check_schedule(schedule, P, M, v)
    except PipeplanError:
        return False
    return True


# -- closed forms (docs/schedules.md derives each) ---------------------------------------------

@pytest.mark.parametrize("schedule", ["GPipe", "1F1B"])
@pytest.mark.parametrize("P", [1, 2, 3, 4, 8])
def test_gpipe_and_1f1b_closed_form(schedule, P):
    for M in (P, P + 1, 2 * P, 16):
        for f, b in ((1.0, 2.0), (1.5, 1.5), (3.0, 1.0)):
            tl = uniform(schedule, P, M, f=f, b=b)
            assert tl.makespan_ms == pytest.approx((M + P - 1) * (f + b))
            assert tl.bubble_fraction == pytest.approx((P - 1) / (M + P - 1))
            assert tl.bubble_per_device == pytest.approx([(P - 1) / (M + P - 1)] * P)


def test_gpipe_closed_form_also_below_P_microbatches():
    assert uniform("GPipe", 4, 2).makespan_ms == pytest.approx((2 + 4 - 1) * 3.0)


@pytest.mark.parametrize("v", [1, 2, 3, 4])
def test_interleaved_closed_form(v):
    """Per-chunk times f, b: T = (v*max(M,P) + min(M,P) - 1)(f + b); for M >= P the bubble is (P-1)/(vM+P-1)."""
    for P in (1, 2, 3, 4, 6):
        for M in range(1, 3 * P + 2):
            if not valid("Interleaved1F1B", P, M, v):
                continue
            for f, b in ((1.0, 2.0), (2.0, 1.0)):
                tl = uniform("Interleaved1F1B", P, M, v, f=f, b=b)
                assert tl.makespan_ms == pytest.approx((v * max(M, P) + min(M, P) - 1) * (f + b)), (P, M)
                if M >= P:
                    assert tl.bubble_fraction == pytest.approx((P - 1) / (v * M + P - 1))


@pytest.mark.parametrize("f,b,w", [(1.0, 1.0, 1.0), (1.0, 2.0, 1.0), (2.0, 1.0, 1.0), (1.0, 1.0, 0.5), (3.0, 2.0, 1.0)])
def test_zb_h1_matches_the_zero_bubble_paper(f, b, w):
    """Qi et al. 2023, sec. 3.1: ZB-H1's bubble is (P-1)(T_F + T_B - T_W), i.e. one step takes
    M(T_F+T_B+T_W) + (P-1)(T_F+T_B-T_W); checked for M >= P and T_W <= min(T_F, T_B)."""
    for P in range(1, 9):
        for M in (P, P + 1, 2 * P, 3 * P):
            if valid("ZBH1", P, M):
                tl = uniform("ZBH1", P, M, f=f, b=b, w=w)
                assert tl.makespan_ms == pytest.approx(M * (f + b + w) + (P - 1) * (f + b - w)), (P, M)


def test_zb_h1_is_one_third_of_1f1b_bubble_with_equal_times():
    P, M = 4, 8
    one_f_one_b = uniform("1F1B", P, M, f=1.0, b=2.0)  # full backward = B + W = 2
    zb = uniform("ZBH1", P, M, f=1.0, b=1.0, w=1.0)
    assert (zb.makespan_ms - 3 * M) * 3 == pytest.approx(one_f_one_b.makespan_ms - 3 * M)


def test_zbv_equal_times_reaches_the_lower_bound():
    """ZBV with T_F = T_B = T_W = t per chunk and M >= 2P-1 (the count torch builds the order
    for): T = (6M + P - 1) t. It is optimal: device P-1 has 6M t of work and cannot start
    before P-1 chunk forwards have run."""
    for P in range(1, 8):
        for M in range(2 * P - 1, 2 * P + 6):
            for t in (1.0, 0.5):
                assert uniform("ZBV", P, M, 2, f=t, b=t, w=t).makespan_ms == pytest.approx((6 * M + P - 1) * t)


def test_dualpipev_equal_times_reaches_the_same_bound_as_zbv():
    """DualPipeV with its OVERLAP_F_B pairs run in sequence (as torch 2.13 runs them), T_F = T_B = T_W = t
    per chunk, M >= 2P: (6M + P - 1) t, as ZBV (docs/schedules.md)."""
    for P in range(1, 7):
        for M in range(2 * P, 2 * P + 5):
            assert uniform("DualPipeV", P, M, 2, f=1.0, b=1.0, w=1.0).makespan_ms == pytest.approx(6 * M + P - 1)


def test_default_backward_split_is_half_and_half():
    a = uniform("ZBH1", 4, 8, f=1.0, b=1.0, w=1.0)
    b = simulate_times([1.0] * 4, [2.0] * 4, [0.0] * 3, schedule="ZBH1", num_devices=4, num_microbatches=8)
    assert a.makespan_ms == b.makespan_ms


# -- one memory function ----------------------------------------------------------------------

def held_from_events(tl: Timeline) -> tuple[list[int], list[float]]:
    """Independent reading of the timeline: per stage, peak micro-batches held (taken at F start,
    freed at the end of B, or W for zero-bubble schedules); per device, peak bytes with 1 byte per
    micro-batch per stage of weight `stage + 1`."""
    release = "W" if tl.schedule in SPLIT_BACKWARD_SCHEDULES else "B"
    changes = []
    for e in tl.events:
        if e.op == "F":
            changes.append((e.start_ms, 1, e.stage, e.device))
        elif e.op == release:
            changes.append((e.end_ms, -1, e.stage, e.device))
    changes.sort(key=lambda c: (c[0], c[1]))
    held, peak = [0] * tl.num_stages, [0] * tl.num_stages
    level, top = [0.0] * tl.num_devices, [0.0] * tl.num_devices
    for _, delta, s, d in changes:
        held[s] += delta
        peak[s] = max(peak[s], held[s])
        level[d] += delta * (s + 1)
        top[d] = max(top[d], level[d])
    return peak, top


@pytest.mark.parametrize("schedule,v", ALL)
def test_timeline_in_flight_equals_the_memory_function(schedule, v):
    cases = 0
    for P in range(1, 9):
        for M in sorted({1, 2, P - 1, P, P + 1, 2 * P, 2 * P + 3} - {0}):
            if not valid(schedule, P, M, v):
                continue
            S = P * v
            fwd = [1.0 + (s * 7 % 5) / 3 for s in range(S)]  # uneven, so timing differs from uniform
            bwd = [2.0 + (s * 3 % 4) / 2 for s in range(S)]
            tl = simulate_times(fwd, bwd, [0.3] * (S - 1), schedule=schedule, num_devices=P, num_microbatches=M,
                                virtual_stages=v, activation_bytes=[s + 1 for s in range(S)])
            expected = in_flight_microbatches(schedule, P, M, v)
            peak, top = held_from_events(tl)
            assert peak == expected, (schedule, P, M)
            assert tl.peak_in_flight == expected
            assert tl.peak_memory_bytes == [round(x) for x in top]
            cases += 1
    assert cases >= 16  # DualPipeV runs only M >= 2P: 2 shapes per P


def test_interleaved_device_totals_follow_megatron_warmup():
    """Megatron's interleaved warm-up: (v-1)*round + 2(P-1-r) forwards, +1 in steady state,
    capped at vM chunk-micro-batches held by rank r (a round is P micro-batches, or M if fewer)."""
    for P in range(1, 7):
        for v in (2, 3):
            for M in range(1, 3 * P + 1):
                if valid("Interleaved1F1B", P, M, v):
                    tl = uniform("Interleaved1F1B", P, M, v, act=[1.0] * (P * v))
                    assert tl.peak_memory_bytes == [min((v - 1) * _rounds(P, M) + 2 * (P - 1 - r) + 1, v * M)
                                                    for r in range(P)]


def test_memory_curve_starts_empty_and_ends_empty():
    tl = uniform("1F1B", 4, 8, act=[100.0] * 4)
    for curve, peak in zip(tl.memory_ms, tl.peak_memory_bytes):
        assert curve[0] == (0.0, 0) and curve[-1][1] == 0
        assert max(b for _, b in curve) == peak
    assert tl.peak_memory_bytes == [400, 300, 200, 100]


# -- invariants under random times ------------------------------------------------------------

times = st.floats(min_value=0.01, max_value=10.0, allow_nan=False, allow_infinity=False)


@st.composite
def scenario(draw):
    schedule, v = draw(st.sampled_from(ALL))
    P = draw(st.integers(1, 5))
    M = draw(st.integers(1, 10))
    if schedule == "1F1B":
        M = max(M, P)
    if not valid(schedule, P, M, v):
        M = P * v * draw(st.integers(1, 2))  # a multiple of P; of 2P for DualPipeV (M >= stages)
    S = P * v
    return (schedule, v, P, M, draw(st.lists(times, min_size=S, max_size=S)),
            draw(st.lists(times, min_size=S, max_size=S)), draw(st.lists(times, min_size=S, max_size=S)),
            draw(st.lists(st.floats(0.0, 5.0), min_size=S - 1, max_size=S - 1)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_random_times_respect_devices_and_dependencies(case):
    schedule, v, P, M, fwd, b_in, b_w, comm = case
    S = P * v
    split = schedule in SPLIT_BACKWARD_SCHEDULES
    bwd = [x + y for x, y in zip(b_in, b_w)]
    tl = simulate_times(fwd, bwd, comm, schedule=schedule, num_devices=P, num_microbatches=M, virtual_stages=v,
                        bwd_input_ms=b_in if split else None, bwd_weight_ms=b_w if split else None)
    dev = tl.stage_device
    link = [0.0 if dev[s] == dev[s + 1] else comm[s] for s in range(S - 1)]
    ops = {(e.stage, e.op, e.microbatch): e for e in tl.compute_events()}
    assert len(ops) == len(tl.compute_events()) == S * M * (3 if split else 2)
    eps = 1e-9

    # Durations are the inputs.
    duration = {"F": fwd, "B": b_in if split else bwd, "W": b_w}
    for (s, op, _), e in ops.items():
        want = duration[op][s]
        assert e.end_ms - e.start_ms == pytest.approx(want)
        assert e.device == dev[s]

    # One op at a time per device, and each op starts as soon as the device and its inputs allow.
    ready = {}
    for (s, op, m), e in ops.items():
        if op == "F":
            r = 0.0 if s == 0 else ops[(s - 1, "F", m)].end_ms + link[s - 1]
        elif op == "B":
            r = ops[(s, "F", m)].end_ms if s == S - 1 else ops[(s + 1, "B", m)].end_ms + link[s]
            assert e.start_ms >= ops[(s, "F", m)].end_ms - eps
        else:
            r = ops[(s, "B", m)].end_ms
        assert e.start_ms >= r - eps, (s, op, m)
        ready[(s, op, m)] = r
    for d in range(P):
        mine = sorted((e for e in ops.values() if e.device == d), key=lambda e: e.start_ms)
        prev_end = 0.0
        for e in mine:
            assert e.start_ms >= prev_end - eps
            assert math.isclose(e.start_ms, max(prev_end, ready[(e.stage, e.op, e.microbatch)]), abs_tol=1e-7)
            prev_end = e.end_ms

    # Critical-path lower bound: the busiest device, and one micro-batch's full chain.
    busiest = max(sum(e.end_ms - e.start_ms for e in ops.values() if e.device == d) for d in range(P))
    chain = sum(fwd) + sum(b_in if split else bwd) + 2 * sum(link) + (b_w[0] if split else 0.0)
    assert tl.makespan_ms >= max(busiest, chain) - 1e-7
    assert 0.0 <= tl.bubble_fraction < 1.0

    # Transfers: a send and a matching recv per cross-device hop, each as long as its link.
    sends = sorted((e.stage, e.peer_stage, e.microbatch, e.start_ms, e.end_ms) for e in tl.events if e.op == "send")
    recvs = sorted((e.peer_stage, e.stage, e.microbatch, e.start_ms, e.end_ms) for e in tl.events if e.op == "recv")
    assert sends == recvs and len(sends) == 2 * M * sum(1 for x in link if x > 0)
    for e in tl.events:
        if e.op in ("send", "recv"):
            assert e.device == dev[e.stage] and abs(e.stage - e.peer_stage) == 1
            assert e.end_ms - e.start_ms == pytest.approx(link[min(e.stage, e.peer_stage)])
            sender, receiver = (e.stage, e.peer_stage) if e.op == "send" else (e.peer_stage, e.stage)
            op = "F" if receiver == sender + 1 else "B"  # activations go down, gradients come back
            assert e.start_ms == ops[(sender, op, e.microbatch)].end_ms


# -- contracts and errors ---------------------------------------------------------------------

def test_timeline_json_round_trip():
    tl = uniform("Interleaved1F1B", 3, 6, 2, comm=0.5, act=[10.0] * 6)
    back = Timeline.from_json(tl.to_json())
    assert back == tl
    assert back.events[0].peer_stage == -1 and any(e.op == "send" for e in back.events)


def test_timeline_json_rejects_garbage():
    with pytest.raises(PipeplanError, match="schema"):
        Timeline.from_json('{"schema": "nope"}')
    good = uniform("1F1B", 2, 2).to_dict()
    for bad_event, match in (({"op": "X"}, "op is 'X'"), ({"device": "0"}, r"events\[0\]\.device"),
                             ({"colour": 1}, "unknown field")):
        doc = json.loads(json.dumps(good))
        doc["events"][0].update(bad_event)
        with pytest.raises(PipeplanError, match=match):
            Timeline.from_dict(doc)


@pytest.mark.parametrize("kwargs,match", [
    ({"fwd_ms": [1.0]}, "fwd_ms: need 4 values"),
    ({"comm_ms": [0.0] * 4}, "comm_ms"),
    ({"bwd_ms": [1.0, -1.0, 1.0, 1.0]}, r"bwd_ms\[1\] must be a finite number >= 0"),
    ({"bwd_ms": [1.0, float("nan"), 1.0, 1.0]}, "finite"),
    ({"activation_bytes": [1.0]}, "activation_bytes"),
    ({"schedule": "1F1B", "num_microbatches": 2}, "at least as many micro-batches"),
])
def test_bad_inputs_are_explained(kwargs, match):
    args = {"fwd_ms": [1.0] * 4, "bwd_ms": [2.0] * 4, "comm_ms": [0.0] * 3, "schedule": "GPipe",
            "num_devices": 4, "num_microbatches": 8}
    args.update(kwargs)
    with pytest.raises(PipeplanError, match=match):
        simulate_times(args.pop("fwd_ms"), args.pop("bwd_ms"), args.pop("comm_ms"), **args)


def test_malformed_order_is_reported_as_a_deadlock():
    # torch's own example of an un-runnable order: rank 0 waits for 1B0 while rank 1 waits for 0F1.
    order = ([(0, "F", 0), (0, "B", 0), (0, "F", 1), (0, "B", 1)],
             [(1, "F", 0), (1, "F", 1), (1, "B", 0), (1, "B", 1)])
    with pytest.raises(PipeplanError, match="deadlocks"):
        _run(_encode(order, 2, 2), 2, 2, ([1.0] * 2, [1.0] * 2, [0.0] * 2), [0.0])
    with pytest.raises(PipeplanError, match="runs 0B0 before 0F0"):
        _encode(([(0, "B", 0), (0, "F", 0)], [(1, "F", 0), (1, "B", 0)]), 2, 1)
    assert _run(_encoded_order("1F1B", 2, 2, 1), 2, 2, ([1.0] * 2, [1.0] * 2, [0.0] * 2), [0.0])[0]
