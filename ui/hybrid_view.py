"""The parallelism choice (tab 3) and the ranked PP x DP x TP configurations (section 4).

"Pipeline only" plans as before. "Automatic" and "Fixed degrees" both run the library's search
(planner.solvers.hybrid.search_parallel, the same call as `pipeplan plan --parallel auto` or
`--tp/--dp`); the user picks one ranked configuration and the plan section below shows its timeline,
memory and export.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import streamlit as st

from core.errors import PipeplanError
from planner.contracts.cluster import Cluster
from planner.contracts.config import DP_SHARDING, TrainConfig
from planner.solvers.hybrid import ParallelCandidate, ParallelSearch
from profiler.gpus import GiB
from profiler.profile import Profile
from ui import cache

PIPELINE_ONLY, AUTOMATIC, FIXED = "pipeline only", "automatic (PP × DP × TP)", "fixed degrees"
MODES = (PIPELINE_ONLY, AUTOMATIC, FIXED)
SHARDING_LABELS = {"ddp": "ddp (replicate)", "zero1": "zero1 (shard optimizer state)",
                   "fsdp": "fsdp (shard parameters, gradients, optimizer)"}
SEARCH_SOLVE_LIMIT_S = 2.0
"""Per-candidate solver limit in the search (the CLI's --parallel uses the same cap)."""


@dataclass(frozen=True, slots=True)
class ParallelSettings:
    mode: str
    global_batch: int
    """Samples per optimizer step, all data-parallel replicas together (hybrid modes only)."""
    tp: int | None = None
    dp: int | None = None
    dp_sharding: str | None = None

    @property
    def hybrid(self) -> bool:
        return self.mode != PIPELINE_ONLY


def parallelism_section(micro_batch_size: int) -> ParallelSettings:
    """The Parallelism row of tab 3."""
    c = st.columns(5)
    mode = c[0].radio("Parallelism", MODES, key="parallelism",
                      help="Pipeline only: every device is one pipeline stage. Automatic: pipeplan ranks every "
                           "pipeline × data × tensor parallel split of the devices. Fixed: you give TP and DP.")
    if mode == PIPELINE_ONLY:
        return ParallelSettings(mode=mode, global_batch=0)
    global_batch = int(c[1].number_input("Global batch, all replicas", min_value=1, max_value=1 << 20,
                                         value=64 * micro_batch_size, step=micro_batch_size, key="hybrid_batch",
                                         help="Samples per optimizer step over all data-parallel replicas; the "
                                              "search picks the micro-batches (the count set above is not used)"))
    if mode == AUTOMATIC:
        c[2].caption("The search also picks the micro-batch size and count, and the sharding.")
        return ParallelSettings(mode=mode, global_batch=global_batch)
    tp = int(c[2].number_input("Tensor parallel (TP)", min_value=1, max_value=64, value=2, key="hybrid_tp",
                               help="GPUs of one node that split each layer with a TP plan; divides the GPUs "
                                    "per node"))
    dp = int(c[3].number_input("Data parallel (DP)", min_value=1, max_value=4096, value=1, key="hybrid_dp",
                               help="Pipeline replicas; pipeline stages = devices / (TP × DP)"))
    sharding = c[4].selectbox("DP sharding", DP_SHARDING, format_func=SHARDING_LABELS.get, key="hybrid_sharding")
    return ParallelSettings(mode=mode, global_batch=global_batch, tp=tp, dp=dp, dp_sharding=sharding)


def search_base(config: TrainConfig) -> TrainConfig:
    """The training tab's config as the search's base: each candidate sets its own micro-batches."""
    return dataclasses.replace(config, num_microbatches=1, global_batch=None)


def ranked_rows(result: ParallelSearch) -> list[dict]:
    """The ranked table: one row per configuration, best first."""
    rows = []
    for i, c in enumerate(result.ranked, 1):
        rows.append({"#": i, "pp": c.pp, "dp": c.dp, "tp": c.tp, "sharding": c.dp_sharding if c.dp > 1 else "—",
                     "micro-batches": f"{c.num_microbatches} × {c.micro_batch_size}",
                     "schedule": c.schedule + (f" v{c.virtual_stages}" if c.virtual_stages > 1 else ""),
                     "step ms": round(c.step_time_ms, 2), "samples/s": round(c.samples_per_s, 2),
                     "tokens/s": round(c.tokens_per_s) if c.tokens_per_s is not None else None,
                     "MFU %": round(100 * c.mfu, 1) if c.mfu is not None else None,
                     "memory GiB": round(c.memory_per_device_bytes / GiB, 1),
                     "limit GiB": round(c.memory_limit_bytes / GiB, 1), "status": c.status})
    return rows


def search_summary(result: ParallelSearch) -> str:
    left = f", {result.unsearched} left by the time budget" if result.unsearched else ""
    return (f"{result.devices} GPUs ({result.gpus_per_node} per node), global batch {result.global_batch}: "
            f"{result.candidates} configurations, {result.solved} solved, {result.pruned} pruned by their bound, "
            f"{result.no_fit} cannot fit{left} · {result.seconds:.1f} s")


def parallel_search_section(profile: Profile, cluster: Cluster, config: TrainConfig,
                            settings: ParallelSettings) -> TrainConfig | None:
    """Search, show the ranked configurations, and return the picked one's TrainConfig (None: nothing fits,
    or the settings were refused; both said on the page)."""
    from ui.plan_view import show_diagnosis

    st.header("4. Parallelism")
    started = time.perf_counter()
    error = None
    with st.status("Searching pipeline × data × tensor parallel splits…", expanded=False) as status:
        try:
            result = cache.parallel_search_for(profile, profile.fingerprint(), cluster.to_json(),
                                               search_base(config).to_json(), settings.global_batch, settings.tp,
                                               settings.dp, settings.dp_sharding)
        except PipeplanError as exc:  # never leave the box spinning
            error = exc
            status.update(label="Cannot search with these settings (see below)", state="error")
        else:
            label = (f"Ranked {len(result.ranked)} configurations in {time.perf_counter() - started:.1f} s"
                     if result.ranked else "No configuration fits")
            status.update(label=label, state="complete" if result.ranked else "error")
    if error is not None:
        st.error(f"Cannot plan: {error}")
        return None
    st.caption(search_summary(result))
    if not result.ranked:
        show_diagnosis(result.diagnosis)
        return None
    st.dataframe(ranked_rows(result), hide_index=True, key="ranked_configs")
    for note in result.notes:
        st.caption(note)
    labels = [f"#{i} {c.label}" for i, c in enumerate(result.ranked, 1)]
    picked = st.selectbox("Configuration shown below", range(len(labels)), format_func=labels.__getitem__,
                          key="picked_config", help="Its timeline, memory and export follow; #1 is the fastest")
    if picked is None or picked >= len(result.ranked):
        picked = 0
    candidate: ParallelCandidate = result.ranked[picked]
    return candidate.config(search_base(config))
