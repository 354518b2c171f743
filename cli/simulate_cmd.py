"""`pipeplan simulate plan.json`: the step's timeline for a plan: makespan, bubble, peak memory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.errors import PipeplanError
from core.files import check_writable, write_file_atomic
from core.jsonio import read_json_file


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("simulate", help="simulate a plan's pipeline schedule: makespan, bubble, peak memory",
                       description="Simulate one training step of a plan op by op and report its makespan, "
                                   "bubble and activation memory per device.")
    p.add_argument("plan", help="plan JSON written by `pipeplan plan -o plan.json`")
    p.add_argument("--schedule", help="simulate another schedule with the same stage placement "
                                      "(GPipe, 1F1B, ZBH1 are interchangeable)")
    p.add_argument("--microbatches", type=int, help="simulate another micro-batch count")
    p.add_argument("--html", metavar="FILE", help="write the interactive timeline and memory charts "
                                                  "as a standalone HTML file")
    p.add_argument("--timeline-json", metavar="FILE", help="write the full timeline (every event) as JSON")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    p.add_argument("--profile", metavar="PROFILE.json",
                   help="the profile the plan was made from: check the plan against it (fingerprint, every "
                        "layer in exactly one stage, stages in topological order)")
    return p


def summary(timeline, plan) -> dict:
    """What the command prints: per-device numbers traced to the Timeline's fields."""
    names = {}
    for st, dev in zip(plan.stages, timeline.stage_device):
        names.setdefault(dev, plan.cluster.devices[st.device].name)
    busy = [0.0] * timeline.num_devices
    for e in timeline.busy_events():
        busy[e.device] += e.end_ms - e.start_ms
    per_device = []
    for d in range(timeline.num_devices):
        per_device.append({
            "device": d, "name": names.get(d, f"dev {d}"),
            "stages": [s for s, dev in enumerate(timeline.stage_device) if dev == d],
            "busy_ms": busy[d], "bubble": timeline.bubble_per_device[d],
            "peak_activation_bytes": timeline.peak_memory_bytes[d] if timeline.peak_memory_bytes else None,
            "peak_in_flight": [timeline.peak_in_flight[s] for s, dev in enumerate(timeline.stage_device)
                               if dev == d],
        })
    return {"schedule": timeline.schedule, "num_devices": timeline.num_devices,
            "num_microbatches": timeline.num_microbatches, "num_stages": timeline.num_stages,
            "makespan_ms": timeline.makespan_ms, "bubble_fraction": timeline.bubble_fraction,
            "plan_step_time_ms": plan.step_time_ms, "devices": per_device}


def run(args: argparse.Namespace) -> int:
    from planner.contracts.plan import Plan
    from planner.pipeline.simulator import simulate

    path = Path(args.plan)
    if not path.is_file():
        raise PipeplanError(f"plan file {str(path)!r} not found; write one with `pipeplan plan ... -o plan.json`")
    for target, what in ((args.timeline_json, "timeline JSON"), (args.html, "timeline HTML")):
        if target:
            check_writable(target, what)
    plan = Plan.from_json(read_json_file(path, "plan"))
    if args.profile:
        check_plan_against_profile(plan, args.profile)
    timeline = simulate(plan, schedule=args.schedule, num_microbatches=args.microbatches)
    info = summary(timeline, plan)
    if args.timeline_json:
        write_file_atomic(args.timeline_json, timeline.to_json(), "timeline JSON")
    if args.html:
        write_file_atomic(args.html, timeline_html(timeline), "timeline HTML")
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['schedule']}: {info['num_devices']} devices, {info['num_stages']} stages, "
          f"{info['num_microbatches']} micro-batches")
    print(f"makespan {timeline.makespan_ms:.3f} ms   bubble {100 * timeline.bubble_fraction:.1f}%"
          + (f"   (plan's predicted step {plan.step_time_ms:.3f} ms)" if plan.step_time_ms else ""))
    print(f"{'DEV':>3}  {'NAME':<16} {'STAGES':<10} {'BUSY ms':>10} {'BUBBLE':>7} {'PEAK ACTIVATIONS':>17}  IN FLIGHT")
    for row in info["devices"]:
        peak = row["peak_activation_bytes"]
        print(f"{row['device']:>3}  {row['name'][:16]:<16} {','.join(map(str, row['stages'])):<10} "
              f"{row['busy_ms']:>10.3f} {100 * row['bubble']:>6.1f}% {_human_bytes(peak):>17}  "
              f"{','.join(map(str, row['peak_in_flight']))}")
    if args.html:
        print(f"wrote {args.html}")
    return 0


def check_plan_against_profile(plan, profile_path: str):
    """--profile: the plan must come from this profile and cover its layer graph (validate_plan).
    Returns the Profile."""
    from planner.contracts.plan import validate_plan
    from profiler.profile import Profile

    path = Path(profile_path)
    if not path.is_file():
        raise PipeplanError(f"profile file {str(path)!r} not found")
    profile = Profile.from_json(read_json_file(path, "profile"))
    validate_plan(plan, profile)
    return profile


def timeline_html(timeline) -> str:
    """The app's two charts in one standalone page (plotly.js inlined: opens offline)."""
    from ui.timeline_plot import memory_figure, timeline_figure

    parts = [timeline_figure(timeline).to_html(full_html=False, include_plotlyjs=True),
             memory_figure(timeline).to_html(full_html=False, include_plotlyjs=False)]
    return ("<!doctype html><html><head><meta charset='utf-8'><title>pipeplan timeline</title></head><body>"
            + "".join(parts) + "</body></html>")


def _human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"
