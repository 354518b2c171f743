"""The app's Inference mode (issue 20): settings in tab 3 and the inference plan in section 4.

Every number comes from planner.costmodel.inference (via planner.solvers.inference) and the forward-only
simulator planner.pipeline.inference_sim.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.errors import PipeplanError
from planner.contracts.cluster import Cluster
from planner.contracts.config import TrainConfig
from planner.costmodel.inference import OBJECTIVES, WEIGHT_DTYPES, InferenceConfig, InferencePlan
from profiler.gpus import GiB
from profiler.profile import Profile

MODES = ("Training", "Inference")


def mode_switch() -> str:
    return st.radio("Mode", MODES, horizontal=True, key="pipeplan_mode",
                    help="Inference: forward only, no backward or optimizer; plan for throughput or latency")


def inference_settings(micro_batch_size: int) -> InferenceConfig | None:
    """Tab 3 in Inference mode."""
    c = st.columns(4)
    objective = c[0].selectbox("Objective", OBJECTIVES, key="inf_objective",
                               help="throughput: samples/s of a stream (slowest stage + its transfers); "
                                    "latency: ms for one request through all stages")
    budget = c[1].number_input("Latency budget, ms (0: none)", min_value=0.0, value=0.0, key="inf_budget")
    weights = c[2].selectbox("Weights dtype", WEIGHT_DTYPES, key="inf_weights",
                             help="int8 only where you quantise the weights yourself")
    reserve = c[3].number_input("Reserve per device, GiB", min_value=0.0, value=0.0, key="inf_reserve")
    st.caption(f"One request = one micro-batch of {micro_batch_size} (the profile's). Memory per device: weights "
               "in the serving dtype + the inputs and outputs a stage holds until sent; no saved activations.")
    try:
        return InferenceConfig(objective=objective, latency_budget_ms=budget or None, weight_dtype=weights,
                               micro_batch_size=micro_batch_size, reserve_bytes=int(reserve * GiB))
    except PipeplanError as exc:
        st.error(str(exc))
        return None


def stage_table(plan: InferencePlan, cluster: Cluster) -> pd.DataFrame:
    return pd.DataFrame([{
        "stage": s.index, "device": cluster.devices[s.device].name,
        "layers": f"{s.nodes[0]} .. {s.nodes[-1]} ({len(s.nodes)})" if len(s.nodes) > 1 else s.nodes[0],
        "forward ms": round(s.compute_ms, 3), "recv ms": round(s.recv_ms, 3), "send ms": round(s.send_ms, 3),
        "period ms": round(s.period_ms, 3), "weights GiB": round(s.memory.weights / GiB, 3),
        "live GiB": round(s.memory.live / GiB, 3), "work GiB": round(s.memory.work / GiB, 3),
        "memory GiB": round(s.memory.total / GiB, 3), "limit GiB": round(s.memory_limit / GiB, 3),
        "used %": round(100 * s.memory.total / s.memory_limit, 1)} for s in plan.stages])


def inference_section(profile: Profile, cluster: Cluster, train_config: TrainConfig) -> InferencePlan | None:
    """The plan of a TrainConfig in mode "inference" (planner.solvers.solve dispatches on the mode)."""
    from planner.pipeline.inference_sim import simulate_inference
    from planner.solvers.solve import solve

    st.header("4. Inference plan")
    config = train_config.inference
    try:
        plan = solve(profile, cluster, train_config)
    except PipeplanError as exc:
        st.error(f"No inference plan: {exc}")
        return None
    st.caption(plan.solver_summary().capitalize() + ".")
    cols = st.columns(4)
    cols[0].metric("Throughput, samples/s", f"{plan.throughput_sps:,.2f}")
    cols[1].metric("Latency per request", f"{plan.latency_ms:,.1f} ms",
                   help=None if config.latency_budget_ms is None else f"budget {config.latency_budget_ms:g} ms")
    cols[2].metric("Stages", f"{len(plan.stages)} of {cluster.num_devices} devices")
    full = max(plan.stages, key=lambda s: s.memory.total / s.memory_limit)
    cols[3].metric("Fullest device memory", f"{100 * full.memory.total / full.memory_limit:.1f}%")
    st.dataframe(stage_table(plan, cluster), hide_index=True, use_container_width=True)
    st.bar_chart(pd.DataFrame({"memory GiB": [s.memory.total / GiB for s in plan.stages],
                               "limit GiB": [s.memory_limit / GiB for s in plan.stages]},
                              index=[cluster.devices[s.device].name for s in plan.stages]), stack=False)
    try:
        from ui.timeline_plot import timeline_figure

        st.plotly_chart(timeline_figure(simulate_inference(plan, 2 * len(plan.stages) + 2)),
                        use_container_width=True)
        st.caption("Forward-only stream: each stage runs recv -> forward -> send per request.")
    except Exception as exc:  # noqa: BLE001  (the drawing is an extra; the numbers above stand without it)
        st.caption(f"(timeline not drawn: {exc})")
    st.download_button("Download the inference plan (JSON)", plan.to_json(indent=2), "inference.json",
                       mime="application/json")
    return plan
