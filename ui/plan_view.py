"""Section 4: the plan: headline metrics, timeline, memory, compute, layers, comparisons, sweep."""

from __future__ import annotations

import re
import time

import streamlit as st

from core.errors import PipeplanError
from planner.contracts.cluster import Cluster
from planner.contracts.config import TrainConfig
from planner.contracts.plan import Diagnosis, Plan
from profiler.gpus import GiB
from profiler.profile import Profile
from ui import cache, charts
from ui.compare_view import ClusterForCount, schedule_comparison, sweep
from ui.pinned import pinned_section
from ui.plan_facts import device_memory, device_use, headline, step_versus

MAX_TIMELINE_OPS = 2_500
"""Past this many bars (F/B/W and transfers) the timeline shows a window of micro-batches with a slider.
Measured in the browser test on 2 shared cores: 1,024 micro-batches on 4 devices drew ~20k bars in
13-15 s; a window of 2,500 bars keeps the page at a few seconds (bench/results/app_timings.json)."""


def solve_plan(profile: Profile, cluster: Cluster, config: TrainConfig) -> Plan | None:
    """The cached plan, with a status box while solving; st.error (and None) on bad input."""
    started = time.perf_counter()
    error = None
    with st.status("Solving the stage cuts…", expanded=False) as status:
        try:
            plan = cache.plan_for(profile, profile.fingerprint(), cluster.to_json(), config.to_json())
        except PipeplanError as exc:  # never leave the box spinning: it ends in the error state
            error = exc
            status.update(label="Cannot plan with these settings (see below)", state="error")
        else:
            solver = plan.solver
            if not plan.feasible:  # the diagnosis re-solves many variants: say how long all of it took
                status.update(label=f"No plan fits: diagnosed in {time.perf_counter() - started:.1f} s",
                              state="error")
            else:
                status.update(label=f"Solved with {solver.backend}: {solver.status} in {solver.seconds:.2f} s"
                              if solver else "Solved", state="complete")
    if error is not None:
        st.error(f"Cannot plan: {in_app_terms(str(error))}")
        return None
    return plan


CONTROL_OF_FLAG = {"--recompute": "Recompute activations", "--precision": "Precision", "--optimizer": "Optimizer",
                   "--schedule": "Schedule", "--microbatches": "Micro-batches (M)",
                   "--global-batch": "Global batch (samples per step)", "--virtual-stages": "Chunks per device",
                   "--batch-size": "Micro-batch size", "--devices": "Devices", "--gpu": "GPU preset",
                   "--reserve": "Reserve per device, GiB", "--time-limit": "Solver time limit, s",
                   "--parallel": "Parallelism"}
"""The app's control for each CLI flag a diagnosis may name (the labels of ui/training_view.py,
ui/model_view.py and ui/cluster_view.py); tests/test_app_units.py runs every suggestion the diagnosis
writes through in_app_terms."""


def in_app_terms(suggestion: str) -> str:
    """A diagnosis suggestion with its CLI flag, "(--recompute on)", said as the app's control:
    "(set “Recompute activations” to on)"."""
    def control(match: re.Match) -> str:
        flag, value = match.group(1), match.group(2)
        value = "bf16_mixed" if flag == "--precision" and value == "bf16" else value
        value = "automatic (PP × DP × TP)" if flag == "--parallel" and value == "auto" else value
        return f"(set “{CONTROL_OF_FLAG[flag]}” to {value})" if flag in CONTROL_OF_FLAG else match.group(0)

    text = re.sub(r"\((--[a-z-]+) ([^)\s]+)\)", control, suggestion)
    if text.startswith("use micro-batches of 1 sample"):  # said without a flag: name the control too
        text = text.replace("use micro-batches of 1 sample", "use micro-batches of 1 sample (set “Micro-batch "
                            "size” to 1 in tab 1)", 1)
    return text


def show_diagnosis(diagnosis: Diagnosis | None) -> None:
    if diagnosis is None:
        st.error("No plan fits this cluster, and the solver gave no diagnosis.")
        return
    lines = [f"**No plan fits.** {diagnosis.message}"]
    lines += [f"- {p}" for p in diagnosis.problems]
    suggestions = [in_app_terms(s) for s in diagnosis.suggestions]
    if suggestions:
        lines.append("\n**What would make it fit:**")
        lines += [f"- {s}" for s in suggestions]
    if diagnosis.min_devices:
        lines.append(f"\nSmallest device count that fits: **{diagnosis.min_devices}**.")
    if diagnosis.min_memory_bytes:
        lines.append(f"\nSmallest memory per device that fits: **{diagnosis.min_memory_bytes / GiB:.1f} GiB**.")
    st.error("\n".join(lines))


def headline_metrics(plan: Plan) -> None:
    h = headline(plan)
    cols = st.columns(5)
    cols[0].metric("Predicted step time", f"{h.step_time_ms:.1f} ms")
    cols[1].metric("Throughput, samples/s", f"{h.throughput_samples_per_s:,.1f}")
    cols[2].metric("Pipeline bubble", f"{100 * h.bubble_fraction:.1f}%")
    cols[3].metric("Fullest device memory", f"{100 * h.fullest.fraction:.1f}%",
                   help=f"{h.fullest.name}: {h.fullest.memory.total / GiB:.2f} of {h.fullest.limit_bytes / GiB:.1f} GiB")
    speedup = h.speedup_over_best_baseline
    cols[4].metric("Speed-up over best baseline", f"{speedup:.2f}×" if speedup else "no baseline fits",
                   help=f"best baseline: {h.best_baseline} at {h.best_baseline_ms:.1f} ms" if h.best_baseline else
                   "No baseline partition fits in memory")
    s = plan.solver
    if s:
        gap = f", proven gap {100 * s.gap:.2f}%" if s.gap is not None else ""
        st.caption(f"{plan.config.schedule}, {plan.config.num_microbatches} micro-batches of "
                   f"{plan.config.micro_batch_size}, {len(plan.stages)} stages on {plan.cluster.num_devices} devices "
                   f"· solver {s.backend}: {s.status}{gap}, {s.seconds:.2f} s")
        if s.note:
            st.caption(f"Note: {s.note}")


def timeline_tab(plan: Plan) -> None:
    from ui.timeline_plot import choose_window, memory_figure, timeline_figure

    timeline = cache.timeline_for(plan, plan.to_json())
    lo, hi = choose_window(timeline, MAX_TIMELINE_OPS, None)
    window = None
    if (lo, hi) != (0, timeline.num_microbatches):
        # Too many ops to draw responsively: let the user slide a window of the same width.
        width = hi - lo
        start = st.slider("First micro-batch shown", 0, timeline.num_microbatches - width, 0, key="mb_window")
        window = (start, start + width)
    st.plotly_chart(timeline_figure(timeline, max_ops=MAX_TIMELINE_OPS, microbatch_window=window),
                    key="timeline_chart")
    st.caption(f"Simulated makespan {timeline.makespan_ms:.1f} ms, bubble {100 * timeline.bubble_fraction:.1f}% "
               "· F forward, B backward, W weight gradient; the number on each bar is the micro-batch.")
    st.dataframe([{"device": u.name, "busy ms": round(u.busy_ms, 2), "idle ms": round(u.idle_ms, 2),
                   "utilisation": f"{100 * u.utilisation:.1f}%"} for u in device_use(plan, timeline)],
                 hide_index=True, key="device_use_table")
    st.plotly_chart(memory_figure(timeline), key="memory_time_chart")


def layers_tab(profile: Profile, plan: Plan) -> None:
    st.plotly_chart(charts.layer_strip_figure(profile, plan), key="layers_chart")
    names = {n.id: n.name for n in profile.nodes}
    st.dataframe([{"stage": s.index, "device": plan.cluster.devices[s.device].name, "layers": len(s.node_ids),
                   "first": names.get(s.node_ids[0], s.node_ids[0]) if s.node_ids else "",
                   "last": names.get(s.node_ids[-1], s.node_ids[-1]) if s.node_ids else "",
                   "params": s.param_count, "fwd+bwd ms": round(s.compute_ms, 3),
                   "optimizer ms": round(s.optimizer_ms, 3),
                   "sends MB": round(s.comm_out_bytes / 2**20, 3), "recompute": s.recompute,
                   "layer ids": ", ".join(s.node_ids)} for s in plan.stages], hide_index=True)


def versus_plan(baseline_ms: float | None, plan_ms: float) -> str:
    """A baseline's step against the plan's: "1.24× slower", "same" within 0.5%, or "does not fit"."""
    return "does not fit" if baseline_ms is None else step_versus(baseline_ms, plan_ms)


def baselines_table(plan: Plan) -> None:
    rows = [{"partition": "pipeplan (this plan)", "step ms": round(plan.step_time_ms, 2), "vs plan": "1.00×"}]
    for name, ms in sorted(plan.baselines.items(), key=lambda kv: (kv[1] is None, kv[1] or 0)):
        rows.append({"partition": name, "step ms": round(ms, 2) if ms is not None else None,
                     "vs plan": versus_plan(ms, plan.step_time_ms)})
    st.dataframe(rows, hide_index=True)


def plan_section(profile: Profile, cluster: Cluster, config: TrainConfig,
                 cluster_for_count: ClusterForCount) -> Plan | None:
    """Solve and show the plan. Returns the plan when it is feasible (for the export), else None."""
    st.header("4. Plan")
    unscaled = cluster.unscaled_devices(profile)
    if unscaled:  # never mix measured times with another device's speed silently
        names = ", ".join(sorted({cluster.devices[d].name for d in unscaled}))
        st.warning(f"The layer times were measured on {profile.provenance.device}, whose peak TFLOP/s pipeplan "
                   f"does not know, so {names} are planned at {profile.provenance.device} speed: the step times "
                   "below are that device's, not theirs. For a GPU estimate, profile with the estimate for the "
                   "GPU (tab 1), or measure on that GPU.")
    plan = solve_plan(profile, cluster, config)
    if plan is None:
        return None
    if not plan.feasible:
        show_diagnosis(plan.diagnosis)
        return None
    headline_metrics(plan)
    if plan.config.micro_batch_size != profile.model.micro_batch_size:
        st.info(f"This plan runs micro-batches of **{plan.config.micro_batch_size}**, not the "
                f"{profile.model.micro_batch_size} set in tab 1: automatic micro-batches found "
                f"{plan.config.num_microbatches} × {plan.config.micro_batch_size} fastest for the global batch, and "
                "every time and byte shown is scaled to that size. The export uses it too.")
    pinned_section(plan)
    tabs = st.tabs(["Timeline", "Memory", "Compute", "Layers and cuts", "Schedules and baselines", "Sweep"])
    with tabs[0]:
        timeline_tab(plan)
    with tabs[1]:
        st.plotly_chart(charts.memory_per_device_figure(plan), key="memory_chart")
        st.dataframe([{"device": m.name, "stages": ", ".join(map(str, m.stages)),
                       **{k: round(v / GiB, 3) for k, v in m.memory.to_dict().items()},
                       "limit": round(m.limit_bytes / GiB, 3), "used %": round(100 * m.fraction, 1)}
                      for m in device_memory(plan)], hide_index=True)
        st.caption("GiB per device at its peak. Activations are per micro-batch × micro-batches in flight "
                   "for the schedule.")
    with tabs[2]:
        st.plotly_chart(charts.compute_per_stage_figure(plan), key="compute_chart")
    with tabs[3]:
        layers_tab(profile, plan)
    with tabs[4]:
        baselines_table(plan)
        schedule_comparison(profile, cluster, config)
    with tabs[5]:
        sweep(profile, cluster_for_count, cluster.num_devices, config)
    return plan
