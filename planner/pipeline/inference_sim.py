"""Forward-only timelines of an InferencePlan (issue 20): a steady stream of micro-batches, or one request.

The runtime model is the exported job's loop (planner/export/runtime/inference_runtime.py): every stage
runs recv -> forward -> send per micro-batch, and a send is a rendezvous: it starts when the sender has
finished the forward and the receiver is free (done with its previous micro-batch's send), and holds
both until the bytes are across. Times come from the plan's stages (planner.costmodel.inference), so the
simulated steady-state period equals InferencePlan.period_ms and one request's makespan its latency_ms.
The result is the Timeline contract (ops F, send, recv), drawn by ui.timeline_plot like training's.
"""

from __future__ import annotations

from planner.contracts.timeline import Event, Timeline
from planner.costmodel.inference import InferencePlan


def _live(stage, in_flight: int) -> int:
    """A stage's held bytes for one micro-batch (InferenceMemory.live is in_flight of them)."""
    return round(stage.memory.live / in_flight)


def simulate_inference(plan: InferencePlan, num_microbatches: int = 1) -> Timeline:
    """num_microbatches = 1: a single request (makespan = latency); more: a stream."""
    S, M, k = len(plan.stages), num_microbatches, plan.config.in_flight
    free = [0.0] * S
    f_end = [[0.0] * M for _ in range(S)]
    events: list[Event] = []
    held: list[list[tuple[float, int]]] = [[] for _ in range(S)]  # (time, +/- bytes) per stage
    for m in range(M):
        for s, st in enumerate(plan.stages):
            if s == 0:
                start = free[0]
                held[0].append((start, st.in_bytes))
            else:
                prev = plan.stages[s - 1]
                t0 = max(f_end[s - 1][m], free[s])
                t1 = t0 + st.recv_ms
                events.append(Event(device=prev.device, stage=s - 1, microbatch=m, op="send", start_ms=t0,
                                    end_ms=t1, peer_stage=s))
                events.append(Event(device=st.device, stage=s, microbatch=m, op="recv", start_ms=t0,
                                    end_ms=t1, peer_stage=s - 1))
                free[s - 1] = t1
                held[s - 1].append((t1, -_live(prev, k)))  # sent: input and output released
                held[s].append((t0, st.in_bytes))
                start = t1
            end = start + st.compute_ms
            events.append(Event(device=st.device, stage=s, microbatch=m, op="F", start_ms=start, end_ms=end))
            held[s].append((end, _live(st, k) - st.in_bytes))  # outputs (relayed tensors once)
            f_end[s][m] = end
            free[s] = end
        last = plan.stages[-1]
        held[S - 1].append((free[S - 1], -_live(last, k)))
    makespan = max(e.end_ms for e in events)
    busy = [0.0] * S
    for e in events:
        if e.op == "F":
            busy[e.stage] += e.end_ms - e.start_ms
    bubble = [1.0 - b / makespan if makespan > 0 else 0.0 for b in busy]
    memory_ms, peaks = [], []
    for s in range(S):
        steps, cur, peak = [(0.0, 0)], 0, 0
        for t, d in sorted(held[s], key=lambda x: x[0]):  # stable: at one instant, in causal order
            cur += d
            peak = max(peak, cur)
            steps.append((t, cur))
        memory_ms.append(steps)
        peaks.append(peak)
    return Timeline(schedule="inference-stream" if M > 1 else "inference-request", num_devices=S,
                    num_microbatches=M, events=events, makespan_ms=makespan,
                    bubble_fraction=sum(bubble) / S, bubble_per_device=bubble, memory_ms=memory_ms,
                    peak_memory_bytes=peaks, stage_device=[s.device for s in plan.stages],
                    peak_in_flight=[1] * S)


def steady_state_period_ms(plan: InferencePlan, num_microbatches: int = 32) -> float:
    """The simulated time between micro-batches leaving the last stage, once the stream is full."""
    tl = simulate_inference(plan, num_microbatches)
    ends = sorted(e.end_ms for e in tl.events if e.op == "F" and e.stage == len(plan.stages) - 1)
    half = len(ends) // 2
    return (ends[-1] - ends[half]) / (len(ends) - 1 - half)
