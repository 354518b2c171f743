"""Schedule comparison and sweeps: many cached solves, run on a button press with a progress bar."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import streamlit as st

from core.errors import PipeplanError
from planner.contracts.cluster import Cluster
from planner.contracts.config import SCHEDULES, TrainConfig
from planner.contracts.plan import Plan
from planner.pipeline.schedules import schedule_spec
from profiler.profile import Profile
from ui import cache, charts
from ui.plan_facts import headline

ClusterForCount = Callable[[int], Cluster]


def _solve(profile: Profile, cluster: Cluster, config: TrainConfig) -> Plan | None:
    try:
        return cache.plan_for(profile, profile.fingerprint(), cluster.to_json(), config.to_json())
    except PipeplanError:
        return None


def _row(label: str, plan: Plan | None) -> dict:
    if plan is None or not plan.feasible:
        return {"": label, "fits": False, "step ms": None, "bubble %": None, "fullest memory %": None}
    h = headline(plan)
    return {"": label, "fits": True, "step ms": round(h.step_time_ms, 2),
            "bubble %": round(100 * h.bubble_fraction, 1), "fullest memory %": round(100 * h.fullest.fraction, 1)}


def schedule_configs(config: TrainConfig) -> list[TrainConfig]:
    """The current config under every schedule (at least 2 chunks per device where the schedule takes a
    chunk count: Interleaved1F1B)."""
    out = []
    for schedule in SCHEDULES:
        spec = schedule_spec(schedule)
        virtual = max(2, config.virtual_stages) if spec.chunks_per_device is None else 1
        # a schedule that cannot recompute is compared with recompute auto (which keeps it off there)
        recompute = "auto" if config.recompute == "on" and not spec.supports_recompute else config.recompute
        out.append(dataclasses.replace(config, schedule=schedule, virtual_stages=virtual, recompute=recompute))
    return out


def use_schedule(schedule: str) -> None:
    """Button callback (runs before the page is drawn again, when widget state may still be set): the
    schedule selector, and its chunk count where it takes one, as the comparison solved it."""
    st.session_state["schedule"] = schedule
    if schedule_spec(schedule).chunks_per_device is None:
        st.session_state["virtual"] = max(2, int(st.session_state.get("virtual", 2)))


def schedule_comparison(profile: Profile, cluster: Cluster, config: TrainConfig) -> None:
    st.subheader("Schedules")
    key = ("schedules", profile.fingerprint(), cluster.to_json(), config.to_json())
    if st.button("Compare all schedules", key="compare_schedules"):
        bar = st.progress(0.0, text="Solving…")
        rows = []
        configs = schedule_configs(config)
        for i, c in enumerate(configs):
            bar.progress(i / len(configs), text=f"Solving {c.schedule}…")
            rows.append(_row(c.schedule, _solve(profile, cluster, c)))
        bar.progress(1.0, text="Done")
        st.session_state[key] = rows
    if key in st.session_state:
        rows = st.session_state[key]
        st.dataframe(rows, hide_index=True)
        fitting = [r for r in rows if r["fits"]]
        best = min(fitting, key=lambda r: r["step ms"])[""] if fitting else None
        if best is not None and best != config.schedule:
            st.button(f"Use {best} (fastest here)", key="use_best_schedule", on_click=use_schedule, args=(best,),
                      help="Sets the schedule in tab 3; the plan above is solved again")
    else:
        st.caption("Solves this model and cluster under each schedule (one solve each).")


def sweep(profile: Profile, cluster_for_count: ClusterForCount, current_devices: int, config: TrainConfig) -> None:
    c = st.columns(3)
    what = c[0].radio("Sweep", ["device count", "micro-batch count"], key="sweep_kind", horizontal=True)
    if what == "device count":
        top = int(c[1].number_input("Up to devices", min_value=1, max_value=64,
                                    value=min(64, max(8, 2 * current_devices)), key="sweep_max_devices"))
        xs = list(range(1, top + 1))
        current = current_devices
        point = lambda x: (cluster_for_count(x), config)
    else:
        top = int(c[1].number_input("Up to micro-batches", min_value=1, max_value=1024, value=64,
                                    key="sweep_max_mb"))
        xs = [m for m in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024) if m <= top]
        current = config.num_microbatches or 0
        point = lambda x: (cluster_for_count(current_devices),
                           dataclasses.replace(config, num_microbatches=x, global_batch=None))
    key = ("sweep", what, tuple(xs), profile.fingerprint(), cluster_for_count(current_devices).to_json(),
           config.to_json())
    if c[2].button("Run sweep", key="run_sweep"):
        bar = st.progress(0.0, text="Sweeping…")
        step_ms = []
        for i, x in enumerate(xs):
            bar.progress(i / len(xs), text=f"Solving {what} = {x} ({i + 1}/{len(xs)})…")
            try:
                cluster, cfg = point(x)
            except PipeplanError:
                step_ms.append(None)
                continue
            plan = _solve(profile, cluster, cfg)
            step_ms.append(plan.step_time_ms if plan is not None and plan.feasible else None)
        bar.progress(1.0, text="Done")
        st.session_state[key] = step_ms
    if key in st.session_state:
        st.plotly_chart(charts.sweep_figure(xs, st.session_state[key], what, current), key="sweep_chart")
    else:
        st.caption("One solve per point; points already solved come from the cache.")
