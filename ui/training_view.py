"""Section 3: how the pipeline trains (the TrainConfig)."""

from __future__ import annotations

import streamlit as st

from core.errors import PipeplanError
from planner.contracts.config import DEFAULT_RESERVE_BYTES, OPTIMIZERS, PRECISIONS, RECOMPUTE, SCHEDULES, TrainConfig
from planner.pipeline.schedules import schedule_spec
from profiler.gpus import GiB

AUTO, FIXED = "automatic", "fixed"
RECOMPUTE_LABELS = {"off": "off", "on": "on (every stage)", "auto": "auto (solver picks per stage)"}


def training_section(micro_batch_size: int) -> TrainConfig | None:
    """The TrainConfig from the widgets, or None after showing st.error for a bad combination."""
    c = st.columns(4)
    mode = c[0].radio("Micro-batches per step", [FIXED, AUTO], horizontal=True, key="mb_mode",
                      help="automatic: pipeplan picks the fastest count that divides the global batch")
    if mode == AUTO:
        global_batch = int(c[1].number_input("Global batch (samples per step)", min_value=1, max_value=1 << 20,
                                             value=16 * micro_batch_size, step=micro_batch_size,
                                             key="global_batch"))
        num_microbatches = None
    else:
        num_microbatches = int(c[1].number_input("Micro-batches (M)", min_value=1, max_value=4096, value=8,
                                                 step=1, key="num_microbatches"))
        global_batch = None
        c[1].caption(f"global batch = {num_microbatches} × {micro_batch_size} = "
                     f"{TrainConfig(num_microbatches=num_microbatches, micro_batch_size=micro_batch_size).samples_per_step}")
    schedule = c[2].selectbox("Schedule", SCHEDULES, index=SCHEDULES.index("1F1B"), key="schedule")
    virtual = 1
    if schedule_spec(schedule).chunks_per_device is None:
        virtual = int(c[3].number_input("Chunks per device", min_value=2, max_value=16, value=2, key="virtual"))
    d = st.columns(5)
    optimizer = d[0].selectbox("Optimizer", OPTIMIZERS, key="optimizer")
    precision = d[1].selectbox("Precision", PRECISIONS, index=PRECISIONS.index("bf16_mixed"), key="precision")
    recompute = d[2].selectbox("Recompute activations", RECOMPUTE, format_func=RECOMPUTE_LABELS.get,
                               key="recompute")
    reserve_gib = d[3].number_input("Reserve per device, GiB", min_value=0.0, max_value=1024.0,
                                    value=DEFAULT_RESERVE_BYTES / GiB, step=0.5, key="reserve_gib",
                                    help="Held back for CUDA context, NCCL buffers and fragmentation")
    time_limit = d[4].slider("Solver time limit, s", min_value=1, max_value=120, value=10, key="time_limit")
    try:
        return TrainConfig(schedule=schedule, num_microbatches=num_microbatches, global_batch=global_batch,
                           micro_batch_size=micro_batch_size, virtual_stages=virtual, optimizer=optimizer,
                           precision=precision, recompute=recompute, reserve_bytes=int(reserve_gib * GiB),
                           time_limit_s=float(time_limit))
    except PipeplanError as exc:
        st.error(f"Training settings: {exc}")
        return None
