"""Plotly figures of a Timeline: the per-device schedule and activation memory over time.

Bars are `go.Bar(orientation="h", base=start, x=duration)`: px.timeline turns
numeric times into dates in plotly 7 and draws an empty chart. One trace per
op kind, so the legend names every colour; each bar also carries its
micro-batch number as text. Colours are Okabe-Ito (colour-blind safe).
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from planner.contracts.timeline import Event, Timeline
from planner.pipeline.schedules import schedule_spec

COLORS = {"F": "#0072B2", "B": "#E69F00", "W": "#009E73", "O": "#56B4E9", "send": "#CC79A7", "idle": "#D9D9D9"}
"""Okabe-Ito blue, orange, bluish green, reddish purple; light grey for idle time."""
CHUNK_PATTERNS = ("", "/", ".", "x", "\\", "+", "-", "|")
"""Bar pattern per chunk (virtual stage) of a device, so interleaved chunks differ without colour."""


def op_labels(timeline: Timeline) -> dict[str, str]:
    split = schedule_spec(timeline.schedule).split_backward
    return {"F": "F forward", "B": "B input grad" if split else "B backward", "W": "W weight grad",
            "O": "optimizer step", "send": "send/recv (async transfer)", "idle": "idle (bubble)"}


def device_label(timeline: Timeline, d: int) -> str:
    stages = [s for s, dev in enumerate(timeline.stage_device) if dev == d]
    return f"dev {d} · stage{'s' if len(stages) > 1 else ''} {','.join(map(str, stages))}"


def choose_window(timeline: Timeline, max_ops: int, microbatch_window: tuple[int, int] | None) -> tuple[int, int]:
    """Micro-batches [lo, hi) to draw: all of them while their bars (F/B/W and the send/recv bars on the
    comm rows: the browser pays for every bar) fit in max_ops."""
    M = timeline.num_microbatches
    if microbatch_window is not None:
        lo, hi = max(0, int(microbatch_window[0])), min(M, int(microbatch_window[1]))
        return (lo, max(hi, lo + 1))
    bars = sum(1 for e in timeline.events if e.op in ("F", "B", "W", "send", "recv"))
    per_mb = max(1, -(-bars // max(M, 1)))
    return (0, M) if per_mb * M <= max_ops else (0, max(1, max_ops // per_mb))


def timeline_figure(timeline: Timeline, *, max_ops: int = 10000,
                    microbatch_window: tuple[int, int] | None = None) -> go.Figure:
    """Devices as rows (device 0 on top), F/B/W bars labelled with their micro-batch, transfers on a
    thin "comm" row under each device, idle gaps in grey. Past max_ops compute ops (or with an explicit
    microbatch_window) only micro-batches [lo, hi) are drawn, with a note saying so."""
    lo, hi = choose_window(timeline, max_ops, microbatch_window)
    windowed = (lo, hi) != (0, timeline.num_microbatches)
    labels = op_labels(timeline)
    P = timeline.num_devices
    has_comm = any(e.op in ("send", "recv") for e in timeline.events)
    rows: list[str] = []
    for d in range(P):
        rows.append(device_label(timeline, d))
        if has_comm:
            rows.append(f"dev {d} comm")
    chunk_of = _chunk_of_stage(timeline)

    shown = [e for e in timeline.events if lo <= e.microbatch < hi and e.op in ("F", "B", "W", "send", "recv")]
    fig = go.Figure()
    for op in ("F", "B", "W"):
        evs = [e for e in shown if e.op == op]
        if evs:
            fig.add_trace(_bars(evs, [rows[_row(e.device, has_comm)] for e in evs], labels[op], COLORS[op],
                                text=[str(e.microbatch) for e in evs],
                                patterns=[CHUNK_PATTERNS[chunk_of[e.stage] % len(CHUNK_PATTERNS)] for e in evs]))
    # the optimizer steps come after the whole drain: a window of micro-batches leaves them out, or the
    # axis would stretch to the end of the step and squeeze the window into its left part
    steps = [] if windowed else [e for e in timeline.events if e.op == "O"]
    if steps:
        fig.add_trace(_bars(steps, [rows[_row(e.device, has_comm)] for e in steps], labels["O"], COLORS["O"],
                            text=["opt"] * len(steps)))
    transfers = [e for e in shown if e.op in ("send", "recv")]
    if transfers:
        # A transfer shows on the sender's comm row (send) and the receiver's (recv).
        fig.add_trace(_bars(transfers, [f"dev {e.device} comm" for e in transfers], labels["send"], COLORS["send"],
                            text=[f"{e.stage}→{e.peer_stage}" if e.op == "send" else f"{e.peer_stage}→{e.stage}"
                                  for e in transfers], width=0.5))
    if not windowed:
        gaps = idle_intervals(timeline)
        idle = [Event(device=d, stage=-1, microbatch=-1, op="idle", start_ms=a, end_ms=b)
                for d, spans in enumerate(gaps) for a, b in spans]
        if idle:
            fig.add_trace(_bars(idle, [rows[_row(e.device, has_comm)] for e in idle], labels["idle"],
                                COLORS["idle"], text=None))
    chunks = sorted({chunk_of[e.stage] for e in shown if e.op in ("F", "B", "W")})
    for c in chunks[1:] if len(chunks) > 1 else []:  # the legend explains the hatching of later chunks
        fig.add_bar(x=[None], y=[None], name=f"chunk {c} (pattern)", showlegend=True,
                    marker={"color": "#bbbbbb", "pattern": {"shape": CHUNK_PATTERNS[c % len(CHUNK_PATTERNS)]}})
    title = (f"{timeline.schedule}: {P} devices, {timeline.num_microbatches} micro-batches · "
             f"makespan {timeline.makespan_ms:.2f} ms · bubble {100 * timeline.bubble_fraction:.1f}%")
    if windowed:  # said in the title, where it is always in view (a note under the axis was cut off)
        total = len(timeline.compute_events())
        title += (f"<br><sup>showing micro-batches {lo}–{hi - 1} of {timeline.num_microbatches} "
                  f"({sum(1 for e in shown if e.op != 'send')} of {total} ops); idle bars and the optimizer step "
                  "hidden; per-device bubble "
                  + ", ".join(f"{100 * b:.1f}%" for b in timeline.bubble_per_device[:8]) + ("…" if P > 8 else "")
                  + "</sup>")
    x_range = None
    if windowed and shown:
        x_range = [min(e.start_ms for e in shown), max(e.end_ms for e in shown)]
    fig.update_layout(
        # the title sits at the top of the figure and the legend just above the plot, with room between
        # them for two legend lines, so the two never overlap however tall the figure
        title={"text": title, "x": 0, "xanchor": "left", "yref": "container", "y": 1.0, "yanchor": "top",
               "pad": {"t": 8}},
        barmode="overlay", bargap=0.15, height=max(260, 60 * len(rows) + 180),
        xaxis={"title": "time (ms)", "type": "linear", "range": x_range},
        yaxis={"categoryorder": "array", "categoryarray": list(reversed(rows)), "type": "category"},
        legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 0, "yref": "paper"},
        margin={"l": 10, "r": 10, "t": 140 if windowed else 120, "b": 40},
    )
    return fig


def idle_intervals(timeline: Timeline) -> list[list[tuple[float, float]]]:
    """Per device, the gaps with no F/B/W or optimizer step running, from 0 to the makespan."""
    spans: list[list[tuple[float, float]]] = [[] for _ in range(timeline.num_devices)]
    for e in timeline.busy_events():
        spans[e.device].append((e.start_ms, e.end_ms))
    gaps: list[list[tuple[float, float]]] = []
    eps = 1e-9 * max(1.0, timeline.makespan_ms)
    for busy in spans:
        busy.sort()
        t, mine = 0.0, []
        for a, b in busy:
            if a > t + eps:
                mine.append((t, a))
            t = max(t, b)
        if timeline.makespan_ms > t + eps:
            mine.append((t, timeline.makespan_ms))
        gaps.append(mine)
    return gaps


def memory_figure(timeline: Timeline) -> go.Figure:
    """Activation bytes held per device over the step (steps at F start and B/W end), peak in the legend."""
    fig = go.Figure()
    if not timeline.memory_ms:
        fig.add_annotation(text="no activation sizes in this timeline", showarrow=False,
                           xref="paper", yref="paper", x=0.5, y=0.5)
        return fig
    peak_all = max(timeline.peak_memory_bytes, default=0)
    unit, scale = _byte_unit(peak_all)
    for d, curve in enumerate(timeline.memory_ms):
        xs = [t for t, _ in curve] + [timeline.makespan_ms]
        ys = [b / scale for _, b in curve] + [curve[-1][1] / scale]
        peak = timeline.peak_memory_bytes[d] / scale if d < len(timeline.peak_memory_bytes) else max(ys)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line_shape="hv",
                                 name=f"{device_label(timeline, d)} (peak {peak:.3g} {unit})",
                                 hovertemplate=f"dev {d}<br>%{{x:.3f}} ms<br>%{{y:.3g}} {unit}<extra></extra>"))
    fig.update_layout(title=f"Activation memory held per device ({timeline.schedule})",
                      xaxis={"title": "time (ms)", "type": "linear"}, yaxis={"title": f"activations ({unit})"},
                      legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
                      height=360, margin={"l": 10, "r": 10, "t": 90, "b": 40})
    return fig


def _bars(events: list[Event], ys: list[str], name: str, color: str, *, text: list[str] | None,
          patterns: list[str] | None = None, width: float | None = None) -> go.Bar:
    marker: dict = {"color": color, "line": {"width": 0.5, "color": "white"}}
    if patterns and any(patterns):
        marker["pattern"] = {"shape": patterns, "fillmode": "overlay", "fgcolor": "rgba(0,0,0,0.35)"}
    # numpy arrays: plotly validates nested Python lists element by element (seconds at 10^4 bars).
    start = np.fromiter((e.start_ms for e in events), dtype=float, count=len(events))
    end = np.fromiter((e.end_ms for e in events), dtype=float, count=len(events))
    stage_mb = np.array([(e.stage, e.microbatch) for e in events], dtype=float).reshape(-1, 2)
    return go.Bar(
        orientation="h", y=ys, base=start, x=end - start,
        name=name, marker=marker, width=width, text=text, textposition="inside" if text else "none",
        insidetextanchor="middle", textfont={"size": 10}, cliponaxis=False,
        customdata=np.column_stack([stage_mb, start, end]),
        hovertemplate=(f"{name}<br>stage %{{customdata[0]}}, micro-batch %{{customdata[1]}}"
                       "<br>%{customdata[2]:.3f} → %{customdata[3]:.3f} ms<extra></extra>"),
    )


def _row(device: int, has_comm: bool) -> int:
    return 2 * device if has_comm else device


def _chunk_of_stage(timeline: Timeline) -> list[int]:
    seen: dict[int, int] = {}
    chunks = []
    for dev in timeline.stage_device:
        chunks.append(seen.get(dev, 0))
        seen[dev] = seen.get(dev, 0) + 1
    return chunks


def _byte_unit(nbytes: float) -> tuple[str, float]:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return unit, float(scale)
    return "B", 1.0
