"""Plans side by side: pin the current plan, change something, compare step time, memory, bubble and the
timelines. The pinned plan is kept as its JSON in the session (it survives any change of the inputs)."""

from __future__ import annotations

import streamlit as st

from planner.contracts.plan import Plan
from ui import cache
from ui.plan_facts import headline, step_versus

PINNED_KEY = "kept:pinned_plan"


def comparison_rows(pinned: Plan, current: Plan) -> list[dict]:
    """One row per plan: what it is and its headline numbers, the current one against the pinned one."""
    rows = []
    for label, plan in (("pinned", pinned), ("current", current)):
        h, c = headline(plan), plan.config
        rows.append({"": label, "model": plan.model.name, "devices": plan.cluster.num_devices,
                     "schedule": c.schedule + (f" v={c.virtual_stages}" if c.virtual_stages > 1 else ""),
                     "micro-batches": f"{c.num_microbatches} × {c.micro_batch_size}",
                     "step ms": round(h.step_time_ms, 2), "samples/s": round(h.throughput_samples_per_s, 1),
                     "bubble %": round(100 * h.bubble_fraction, 1),
                     "fullest memory %": round(100 * h.fullest.fraction, 1)})
    rows[1]["vs pinned"] = step_versus(current.step_time_ms, pinned.step_time_ms)
    rows[0]["vs pinned"] = ""
    return rows


def pinned_section(plan: Plan) -> None:
    """The pin button, and when a plan is pinned: both plans' numbers and the pinned plan's timeline."""
    from ui.timeline_plot import timeline_figure

    cols = st.columns([1, 1, 4])
    if cols[0].button("Pin this plan", key="pin_plan", help="Keep this plan to compare it with the next ones"):
        st.session_state[PINNED_KEY] = plan.to_json()
    held = st.session_state.get(PINNED_KEY)
    if held is None:
        cols[2].caption("Pin a plan, change a setting, and see both side by side.")
        return
    if cols[1].button("Unpin", key="unpin_plan"):
        del st.session_state[PINNED_KEY]
        return
    pinned = Plan.from_json(held)
    st.dataframe(comparison_rows(pinned, plan), hide_index=True, key="pinned_table")
    with st.expander("Pinned plan's timeline"):
        timeline = cache.timeline_for(pinned, held)
        from ui.plan_view import MAX_TIMELINE_OPS

        st.plotly_chart(timeline_figure(timeline, max_ops=MAX_TIMELINE_OPS), key="pinned_timeline_chart")
