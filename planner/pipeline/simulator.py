"""The schedule simulator: run a schedule's action order with per-stage times
and get the Timeline of one training step.

Model (docs/schedules.md, "The simulator"):
- each device runs its actions in the schedule's order, one at a time, each as
  soon as the device is free and the action's inputs have arrived;
- F(s, m) needs F(s-1, m) finished plus the boundary's send time; B(s, m) needs
  B(s+1, m) finished plus the send time (the last stage's B needs its own F);
  W(s, m) needs B(s, m);
- a send between stages on the same device costs 0; otherwise it takes the
  boundary's comm time, overlaps with compute on both ends (async p2p) and only
  delays the receiver. Each transfer is a "send" event on the sender and a
  "recv" event (same interval) on the receiver.
"""

from __future__ import annotations

from functools import lru_cache

from core.errors import PipeplanError
from planner.contracts.config import MAX_MICROBATCHES, canonical_schedule
from planner.contracts.plan import Plan
from planner.contracts.timeline import Event, Timeline
from planner.costmodel.cost import split_backward_ms, step_end_ms
from planner.pipeline.schedules import _order, check_schedule, chunks_per_device, schedule_spec, stage_to_device

_F, _B, _W = 0, 1, 2
_OP_NAMES = ("F", "B", "W")


def simulate_times(fwd_ms: list[float], bwd_ms: list[float], comm_ms: list[float], *,
                   schedule: str, num_devices: int, num_microbatches: int, virtual_stages: int = 1,
                   bwd_input_ms: list[float] | None = None, bwd_weight_ms: list[float] | None = None,
                   activation_bytes: list[float] | None = None,
                   optimizer_ms: list[float] | None = None, sync_ms: float = 0.0,
                   makespan_only: bool = False) -> Timeline | tuple[float, float]:
    """Simulate one step of `schedule` from per-stage times (ms per micro-batch).

    fwd_ms, bwd_ms: per stage (S = devices x chunks per device); bwd_ms is the full backward.
    comm_ms: per boundary (S-1 values): send time from stage b to b+1, and of the
        gradient back from b+1 to b.
    bwd_input_ms, bwd_weight_ms: the B / W split for ZBH1 and ZBV. When one is
        missing it is bwd_ms minus the other; when both are, the cost model's default
        (cost.split_backward_ms for a stage with weights: B = W = bwd_ms / 2).
    activation_bytes: saved-activation bytes per micro-batch per stage, for the
        memory curves; without it memory_ms and peak_memory_bytes stay empty.
    optimizer_ms: per stage, its after-drain work: the data-parallel gradient sync (StagePlan.dp_sync_ms,
        simulate() adds it) and its optimizer step (clipping + update). Clipping by the global
        norm needs every gradient, so every device starts its optimizer step `sync_ms` (the
        norm's all-reduce) after the last backward or transfer ends, and runs its stages'
        steps back to back (an "O" event).
    makespan_only: return (makespan_ms, bubble_fraction) only, the same numbers as the Timeline's, without
        building its events and memory curves (the solvers score many candidates this way).
    """
    name = check_schedule(schedule, num_devices, num_microbatches, virtual_stages)
    P, M = num_devices, num_microbatches
    v = chunks_per_device(name, virtual_stages)
    S = P * v
    fwd = _per_stage(fwd_ms, S, "fwd_ms")
    bwd = _per_stage(bwd_ms, S, "bwd_ms")
    comm = _per_stage(comm_ms, S - 1, "comm_ms (one per boundary)")
    split = schedule_spec(name).split_backward
    if split:
        b_dur, w_dur = _split_backward(bwd, bwd_input_ms, bwd_weight_ms, S)
    else:
        b_dur, w_dur = bwd, [0.0] * S
    act = _per_stage(activation_bytes, S, "activation_bytes") if activation_bytes is not None else None

    device_of = stage_to_device(P, name, virtual_stages)
    # Send time over boundary b (stage b <-> b+1): free within a device.
    link = [0.0 if device_of[b] == device_of[b + 1] else comm[b] for b in range(S - 1)]
    compute, transfers = _run(_encoded_order(name, P, M, virtual_stages), S, M, (fwd, b_dur, w_dur), link)
    if makespan_only:
        return _makespan(compute, transfers, P, S, device_of, optimizer_ms, sync_ms)

    events = [_event(d, s, m, _OP_NAMES[k], t0, t1, -1) for d, s, m, k, t0, t1 in compute]
    # Each transfer shows on both ends: "send" on the sender, "recv" (same interval) on the receiver.
    events += [_event(d, s, m, "send", t0, t1, peer) for d, s, m, t0, t1, peer in transfers]
    events += [_event(device_of[peer], peer, m, "recv", t0, t1, s) for _, s, m, t0, t1, peer in transfers]
    drained = max((e.end_ms for e in events), default=0.0)
    busy = [0.0] * P
    for d, _, _, _, t0, t1 in compute:
        busy[d] += t1 - t0
    if optimizer_ms is not None:
        opt = _per_stage(optimizer_ms, S, "optimizer_ms")
        for d in range(P):
            own = [s for s in range(S) if device_of[s] == d]
            step = sum(opt[s] for s in own)
            if step > 0:
                events.append(_event(d, own[0], -1, "O", drained + sync_ms, drained + sync_ms + step, -1))
                busy[d] += step
    makespan = max((e.end_ms for e in events), default=0.0)
    bubble_dev = [1.0 - b / makespan if makespan > 0 else 0.0 for b in busy]
    bubble = 1.0 - sum(busy) / (P * makespan) if makespan > 0 else 0.0

    peak_in_flight, memory_ms, peak_bytes = _holdings(compute, P, S, act, _W if split else _B)
    return Timeline(schedule=name, num_devices=P, num_microbatches=M, events=events,
                    makespan_ms=makespan, bubble_fraction=bubble, bubble_per_device=bubble_dev,
                    memory_ms=memory_ms, peak_memory_bytes=peak_bytes, virtual_stages=v,
                    stage_device=list(device_of), peak_in_flight=peak_in_flight)


def _makespan(compute: list[tuple], transfers: list[tuple], P: int, S: int, device_of: list[int],
              optimizer_ms: list[float] | None, sync_ms: float) -> tuple[float, float]:
    """simulate_times' makespan and bubble without the events: the same maxima and sums, in the same order."""
    drained = max(max((c[5] for c in compute), default=0.0), max((t[4] for t in transfers), default=0.0)) \
        if compute or transfers else 0.0
    busy = [0.0] * P
    for d, _, _, _, t0, t1 in compute:
        busy[d] += t1 - t0
    makespan = drained
    if optimizer_ms is not None:
        opt = _per_stage(optimizer_ms, S, "optimizer_ms")
        for d in range(P):
            step = sum(opt[s] for s in range(S) if device_of[s] == d)
            if step > 0:
                makespan = max(makespan, drained + sync_ms + step)
                busy[d] += step
    bubble = 1.0 - sum(busy) / (P * makespan) if makespan > 0 else 0.0
    return makespan, bubble


@lru_cache(maxsize=32)
def _encoded_order(name: str, P: int, M: int, v: int) -> tuple[tuple[tuple[int, ...], ...], ...]:
    return _encode(_order(name, P, M, v), P * chunks_per_device(name, v), M)


def _encode(order, S: int, M: int) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """Per device, each action with its dependency precomputed, as
    (kind, stage, mb, need, in_boundary, key, out_boundary, peer_stage):
    need = key of the op it waits for (F: idx, B: SM + idx with idx = stage*M + mb; -1: none),
    in_boundary = boundary whose send time delays it (-1: none), key = its own key (-1 for W),
    out_boundary = boundary it sends over when done (-1: none), peer_stage = the receiver.
    Raises PipeplanError if a device runs B before its F, or W before its B (the static half of
    a malformed order; the run catches the rest as a deadlock)."""
    SM = S * M
    encoded = []
    for d, acts in enumerate(order):
        rows, seen = [], set()
        for s, op, m in acts:
            idx = s * M + m
            if op == "F":
                rows.append((_F, s, m, idx - M if s else -1, s - 1 if s else -1, idx,
                             s if s < S - 1 else -1, s + 1))
            else:
                before = "F" if op == "B" else "B"
                if (s, before, m) not in seen:
                    raise PipeplanError(f"malformed schedule order: device {d} runs {s}{op}{m} before {s}{before}{m}")
                if op == "B":
                    need, bin_ = (idx, -1) if s == S - 1 else (SM + idx + M, s)
                    rows.append((_B, s, m, need, bin_, SM + idx, s - 1 if s else -1, s - 1))
                else:
                    rows.append((_W, s, m, SM + idx, -1, -1, -1, -1))
            seen.add((s, op, m))
        encoded.append(tuple(rows))
    return tuple(encoded)


def _run(seq: tuple, S: int, M: int, durations: tuple[list[float], ...],
         link: list[float]) -> tuple[list[tuple], list[tuple]]:
    """Execute the encoded orders (see _encode); returns compute rows (device, stage, mb, kind,
    start, end) and transfer rows (device, stage, mb, start, end, peer_stage), one per
    cross-device send.

    Each device advances through its list until an action's input is missing,
    then waits on that input's key; finishing an op wakes its waiters. Every
    action is visited O(1) times, so the run is linear in the number of actions.
    """
    P = len(seq)
    done = [-1.0] * (2 * S * M)  # end time of F (key idx) and of B (key SM + idx); -1: not yet
    pos = [0] * P
    free_at = [0.0] * P
    waiting: dict[int, list[int]] = {}  # key -> devices waiting for it
    compute: list[tuple] = []
    transfers: list[tuple] = []
    append, transfer = compute.append, transfers.append
    runnable = list(range(P))
    while runnable:
        d = runnable.pop()
        acts, i, t = seq[d], pos[d], free_at[d]
        n = len(acts)
        while i < n:
            kind, s, m, need, b_in, key, b_out, peer = acts[i]
            if need >= 0:
                ready = done[need]
                if ready < 0.0:
                    waiting.setdefault(need, []).append(d)
                    break
                if b_in >= 0:
                    ready += link[b_in]
                if ready > t:  # noqa: PLR1730 (a plain comparison is faster than max() here)
                    t = ready
            start = t
            t += durations[kind][s]
            append((d, s, m, kind, start, t))
            i += 1
            if key < 0:
                continue
            done[key] = t
            if b_out >= 0 and link[b_out] > 0.0:
                transfer((d, s, m, t, t + link[b_out], peer))
            woken = waiting.pop(key, None)
            if woken:
                runnable.extend(woken)
        pos[d], free_at[d] = i, t
    stuck = [d for d in range(P) if pos[d] < len(seq[d])]
    if stuck:
        d = stuck[0]
        kind, s, m = seq[d][pos[d]][:3]
        raise PipeplanError(f"the schedule order deadlocks: device {d} waits forever at {s}{_OP_NAMES[kind]}{m} "
                            f"(devices stuck: {stuck}); the action order is malformed")
    return compute, transfers


def _event(device: int, stage: int, microbatch: int, op: str, start_ms: float, end_ms: float,
           peer_stage: int) -> Event:
    """Event(...) without the keyword-only __init__ (Event validates nothing): ~40% faster,
    which matters at 10^5 events per timeline (bench/bench_simulator.py)."""
    e = _new_event(Event)
    e.device, e.stage, e.microbatch, e.op = device, stage, microbatch, op
    e.start_ms, e.end_ms, e.peer_stage = start_ms, end_ms, peer_stage
    return e


_new_event = Event.__new__


def _holdings(compute: list[tuple], P: int, S: int, act: list[float] | None, release: int
              ) -> tuple[list[int], list[list[tuple[float, int]]], list[int]]:
    """Activation holdings over time: a stage takes a micro-batch at its F's start and frees
    it at the end of its B (W for zero-bubble schedules). Returns peak micro-batches per
    stage and, with activation bytes, each device's bytes held as steps [(time, bytes)]
    and their peaks.

    A device's rows are in execution order and its ops do not overlap, so these change
    points are already sorted in time (a free at t comes before a take at the same t).
    """
    held, peak = [0] * S, [0] * S
    level = [0.0] * P
    top = [0.0] * P
    curves: list[list[tuple[float, int]]] = [[(0.0, 0)] for _ in range(P)]
    for d, s, _, k, t0, t1 in compute:
        if k == _F:
            held[s] += 1
            peak[s] = max(peak[s], held[s])
            if act is None:
                continue
            t, level[d] = t0, level[d] + act[s]
            top[d] = max(top[d], level[d])
        elif k == release:
            held[s] -= 1
            if act is None:
                continue
            t, level[d] = t1, level[d] - act[s]
        else:
            continue
        curve = curves[d]
        point = (t, round(level[d]) if level[d] > 0 else 0)
        if curve[-1][0] == t and len(curve) > 1:  # keep the (0, 0) start
            curve[-1] = point
        else:
            curve.append(point)
    if act is None:
        return peak, [], []
    return peak, curves, [round(x) for x in top]


def _per_stage(values, n: int, what: str) -> list[float]:
    if values is None or len(values) != n:
        got = "nothing" if values is None else f"{len(values)} values"
        raise PipeplanError(f"{what}: need {n} values, got {got}")
    out = []
    for i, x in enumerate(values):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not (0.0 <= x < float("inf")):
            raise PipeplanError(f"{what}[{i}] must be a finite number >= 0, got {x!r}")
        out.append(float(x))
    return out


def _split_backward(bwd: list[float], b_in, b_w, S: int) -> tuple[list[float], list[float]]:
    if b_in is None and b_w is None:  # the cost model's default split, for stages that hold weights
        halves = [split_backward_ms(x) for x in bwd]
        return [b for b, _ in halves], [w for _, w in halves]
    if b_in is None:
        b_w = _per_stage(b_w, S, "bwd_weight_ms")
        return [max(x - w, 0.0) for x, w in zip(bwd, b_w)], b_w
    b_in = _per_stage(b_in, S, "bwd_input_ms")
    if b_w is None:
        return b_in, [max(x - b, 0.0) for x, b in zip(bwd, b_in)]
    return b_in, _per_stage(b_w, S, "bwd_weight_ms")


def simulate(plan: Plan, *, schedule: str | None = None, num_microbatches: int | None = None,
             makespan_only: bool = False) -> Timeline | tuple[float, float]:
    """Simulate a Plan's step, optionally with another schedule or micro-batch count.

    Another schedule must place stages on devices the same way (1F1B, GPipe and
    ZBH1 are interchangeable; Interleaved1F1B keeps the plan's chunk count; ZBV
    only with ZBV). Activation bytes per micro-batch per stage are
    (memory.activations + memory.relay) / in_flight: exact without
    recomputation (docs/schedules.md, "Simulating a plan").
    """
    if not plan.stages:
        why = plan.diagnosis.message if plan.diagnosis else "it has no stages"
        raise PipeplanError(f"this plan has nothing to simulate: {why}")
    cfg = plan.config
    planned_v = chunks_per_device(cfg.schedule, cfg.virtual_stages)
    name = canonical_schedule(schedule) if schedule else cfg.schedule
    planned, wanted = schedule_spec(cfg.schedule), schedule_spec(name)
    v = chunks_per_device(name, planned_v)
    if v != planned_v or wanted.placement != planned.placement:
        raise PipeplanError(
            f"the plan places its stages for {cfg.schedule} ({planned_v} per device"
            f"{', V placement' if planned.placement == 'v' else ''}); {name} needs {v} per device"
            f"{' in V placement' if wanted.placement == 'v' else ''}. Re-plan with --schedule {name}")
    S = len(plan.stages)
    if S % v:
        raise PipeplanError(f"the plan has {S} stages, not a multiple of {v} chunks per device")
    P = S // v
    M = num_microbatches if num_microbatches is not None else cfg.num_microbatches
    if M is None:
        raise PipeplanError("the plan's config has no num_microbatches; pass --microbatches")
    if isinstance(M, int) and M > MAX_MICROBATCHES:
        raise PipeplanError(f"{M} micro-batches is more than pipeplan simulates (at most {MAX_MICROBATCHES})")
    _check_placement(plan, stage_to_device(P, name, v))
    act = [(st.memory.activations + st.memory.relay) / st.in_flight if st.in_flight > 0 else 0.0
           for st in plan.stages]
    return simulate_times(
        [st.fwd_ms for st in plan.stages], [st.bwd_ms for st in plan.stages],
        [st.comm_out_ms for st in plan.stages[:-1]],
        schedule=name, num_devices=P, num_microbatches=M, virtual_stages=v,
        bwd_input_ms=_split_or_none([st.bwd_input_ms for st in plan.stages]),
        bwd_weight_ms=_split_or_none([st.bwd_weight_ms for st in plan.stages]),
        activation_bytes=act, optimizer_ms=[st.optimizer_ms + st.dp_sync_ms for st in plan.stages],
        sync_ms=step_end_ms(plan.cluster, [st.device for st in plan.stages])
        if any(st.optimizer_ms + st.dp_sync_ms > 0 for st in plan.stages) else 0.0, makespan_only=makespan_only)


def _check_placement(plan: Plan, device_of: list[int]) -> None:
    """Every pipeline rank must map to one cluster device across its chunks."""
    rank_device: dict[int, int] = {}
    for st, rank in zip(plan.stages, device_of):
        if rank_device.setdefault(rank, st.device) != st.device:
            raise PipeplanError(f"plan stage {st.index} is on device {st.device}, but {plan.config.schedule} "
                                f"puts it on the same rank as device {rank_device[rank]}; the plan's "
                                "stage-to-device map does not match the schedule's placement")


def _split_or_none(values: list[float]) -> list[float] | None:
    """A plan without a measured B/W split stores zeros: use the documented default instead."""
    return None if all(x == 0 for x in values) else values
