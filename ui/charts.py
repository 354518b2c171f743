"""Plotly figures of a Plan (the timeline figures live in ui.timeline_plot).

Colours are the Okabe-Ito palette (safe for the common colour-vision
deficiencies) and every coloured mark also carries a text label or a legend
name, so nothing is told by colour alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from planner.contracts.plan import Plan
from planner.pipeline.schedules import schedule_spec
from profiler.gpus import GiB
from profiler.profile import Profile
from ui.plan_facts import MEMORY_PARTS, device_memory, layer_ms_on_device

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
MEMORY_COLOURS = dict(zip(MEMORY_PARTS, ("#0072B2", "#56B4E9", "#009E73", "#E69F00", "#CC79A7", "#999999")))
MEMORY_LABELS = {"params": "parameters", "grads": "gradients", "optimizer": "optimizer state",
                 "activations": "activations", "relay": "relayed tensors", "reserve": "reserve"}
LIMIT_COLOUR = "#D55E00"


def stage_colour(stage: int) -> str:
    return OKABE_ITO[stage % len(OKABE_ITO)]


CUT_LINE_COLOUR = "#888888"
"""Mid grey: visible on the light and the dark theme alike (black vanished on dark)."""


def _legend_top(fig: go.Figure, title: str, height: int = 380) -> go.Figure:
    # A horizontal legend at the default spot overlaps the x tick labels: put it above.
    fig.update_layout(title=title, height=height, margin={"l": 10, "r": 10, "t": 70, "b": 10},
                      legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0})
    return fig


def memory_per_device_figure(plan: Plan) -> go.Figure:
    """Stacked bars (params, grads, optimizer, activations, relay, reserve) per device, with its limit."""
    mems = device_memory(plan)
    labels = [f"{m.name} (stage{'s' if len(m.stages) > 1 else ''} {', '.join(map(str, m.stages))})" for m in mems]
    fig = go.Figure()
    for part in MEMORY_PARTS:
        values = [getattr(m.memory, part) / GiB for m in mems]
        fig.add_bar(x=labels, y=values, name=MEMORY_LABELS[part], marker_color=MEMORY_COLOURS[part],
                    hovertemplate="%{x}<br>" + MEMORY_LABELS[part] + ": %{y:.2f} GiB<extra></extra>")
    fig.add_scatter(x=labels, y=[m.limit_bytes / GiB for m in mems], mode="markers+text", name="device limit",
                    marker={"symbol": "line-ew-open", "size": 40, "line": {"width": 3, "color": LIMIT_COLOUR}},
                    text=[f"limit {m.limit_bytes / GiB:.0f} GiB · {100 * m.fraction:.0f}% used" for m in mems],
                    textposition="top center", hovertemplate="%{x}<br>limit %{y:.2f} GiB<extra></extra>")
    fig.update_layout(barmode="stack", yaxis_title="GiB")
    return _legend_top(fig, "Memory per device at its peak, against its limit")


def compute_per_stage_figure(plan: Plan) -> go.Figure:
    """Per stage and micro-batch: forward, backward (input grad), weight grad and send time."""
    labels = [f"stage {s.index} ({plan.cluster.devices[s.device].name})" for s in plan.stages]
    zero_bubble = any(s.bwd_weight_ms for s in plan.stages) and schedule_spec(plan.config.schedule).split_backward
    parts = [("forward F", [s.fwd_ms for s in plan.stages], OKABE_ITO[0])]
    if zero_bubble:
        parts += [("backward B (input grad)", [s.bwd_input_ms for s in plan.stages], OKABE_ITO[1]),
                  ("backward W (weight grad)", [s.bwd_weight_ms for s in plan.stages], OKABE_ITO[2])]
    else:
        parts += [("backward", [s.bwd_ms for s in plan.stages], OKABE_ITO[1])]
    parts += [("send to next stage", [s.comm_out_ms for s in plan.stages], OKABE_ITO[3])]
    fig = go.Figure()
    for name, values, colour in parts:
        fig.add_bar(x=labels, y=values, name=name, marker_color=colour,
                    text=[f"{v:.2f}" for v in values], textposition="inside",
                    hovertemplate="%{x}<br>" + name + ": %{y:.3f} ms<extra></extra>")
    fig.update_layout(barmode="stack", yaxis_title="ms per micro-batch")
    return _legend_top(fig, "Compute and communication per stage, per micro-batch")


def layer_strip_figure(profile: Profile, plan: Plan) -> go.Figure:
    """Every layer in pipeline order as a bar (its forward+backward time on the device of its stage,
    by the plan's cost model: plan_facts.layer_ms_on_device), coloured and labelled by the stage that
    holds it, with a dashed line at each cut."""
    stage_of = plan.node_to_stage
    nodes = profile.nodes
    ms = layer_ms_on_device(profile, plan)
    fig = go.Figure()
    for s in plan.stages:
        idx = [i for i, n in enumerate(nodes) if stage_of.get(n.id) == s.index]
        fig.add_bar(x=idx, y=[ms[nodes[i].id] for i in idx], name=f"stage {s.index}",
                    marker_color=stage_colour(s.index), text=[f"S{s.index}"] * len(idx), textposition="inside",
                    customdata=[[nodes[i].id, nodes[i].kind, nodes[i].param_count] for i in idx],
                    hovertemplate="%{customdata[0]} (%{customdata[1]})<br>%{y:.3f} ms fwd+bwd<br>"
                                  "%{customdata[2]:,} params<extra>stage " + str(s.index) + "</extra>")
    for s in plan.stages[:-1]:
        last = max(i for i, n in enumerate(nodes) if stage_of.get(n.id) == s.index)
        fig.add_vline(x=last + 0.5, line_dash="dash", line_color=CUT_LINE_COLOUR, line_width=2,
                      annotation_text=f"cut {s.index}|{s.index + 1}", annotation_position="top")
    fig.update_layout(xaxis_title="layer (pipeline order)", yaxis_title="ms per micro-batch on its device",
                      bargap=0.1)
    fig.update_xaxes(tickvals=list(range(len(nodes))), ticktext=[n.id for n in nodes],
                     tickangle=-60 if len(nodes) <= 80 else 0, showticklabels=len(nodes) <= 80)
    return _legend_top(fig, "Layers and cut points", height=420)


def sweep_figure(xs: Sequence[int], step_ms: Sequence[float | None], x_title: str, current: int) -> go.Figure:
    """Predicted step time against device or micro-batch count; gaps where no plan fits."""
    fig = go.Figure()
    fig.add_scatter(x=list(xs), y=list(step_ms), mode="lines+markers+text", name="step time",
                    marker={"color": OKABE_ITO[0]}, text=[f"{v:.0f}" if v else "no fit" for v in step_ms],
                    textposition="top center", hovertemplate=x_title + " %{x}: %{y:.1f} ms<extra></extra>")
    missing = [x for x, v in zip(xs, step_ms) if v is None]
    if missing:  # a gap in the line says nothing: mark every count where no plan fits
        fitting = [v for v in step_ms if v is not None]
        fig.add_scatter(x=missing, y=[min(fitting) if fitting else 0.0] * len(missing), mode="markers+text",
                        name="does not fit", marker={"symbol": "x", "size": 12, "color": OKABE_ITO[5]},
                        text=["does not fit"] * len(missing), textposition="bottom center",
                        hovertemplate=x_title + " %{x}: no plan fits<extra></extra>")
    fig.add_vline(x=current, line_dash="dot", annotation_text="current")
    fig.update_layout(xaxis_title=x_title, yaxis_title="predicted step time, ms")
    return _legend_top(fig, f"Step time against {x_title}")
