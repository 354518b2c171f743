"""The app's settings in the page URL (st.query_params): a plan can be shared as a link and survives a
reload. Uploaded files cannot travel in a URL; the page says so.

Only widget values go in, each checked before it is handed to a widget: a link someone edited by hand
never breaks the page (a bad value is dropped and the widget keeps its default).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

import sample_models
from planner.contracts.config import DP_SHARDING, OPTIMIZERS, PRECISIONS, RECOMPUTE, SCHEDULES
from profiler.gpus import GPU_PRESETS
from ui.hybrid_view import MODES as PARALLEL_MODES
from ui.model_view import ARCHITECTURE, HF, PROFILE_JSON, SAMPLE
from ui.training_view import AUTO, FIXED


def _int_in(lo: int, hi: int) -> Callable[[str], int | None]:
    def parse(text: str) -> int | None:
        try:
            value = int(text)
        except ValueError:
            return None
        return value if lo <= value <= hi else None
    return parse


def _architecture(text: str) -> str | None:
    from profiler.hf_tasks import architectures

    return text if text in architectures() else None


def _one_of(options) -> Callable[[str], str | None]:
    allowed = tuple(options)
    return lambda text: text if text in allowed else None


URL_SETTINGS: dict[str, Callable[[str], Any]] = {
    # never the .py source: code runs only when allowed
    "model_source": _one_of((SAMPLE, ARCHITECTURE, HF, PROFILE_JSON)),
    "architecture": _architecture,
    "sample_model": _one_of(sample_models.REGISTRY),
    "estimate_for": _one_of(GPU_PRESETS),
    "micro_batch_size": _int_in(1, 4096),
    "n_devices": _int_in(1, 512),
    "preset": _one_of(GPU_PRESETS),
    "devices_per_node": _int_in(1, 64),
    "mb_mode": _one_of((FIXED, AUTO)),
    "num_microbatches": _int_in(1, 4096),
    "global_batch": _int_in(1, 1 << 20),
    "schedule": _one_of(SCHEDULES),
    "virtual": _int_in(2, 16),
    "optimizer": _one_of(OPTIMIZERS),
    "precision": _one_of(PRECISIONS),
    "recompute": _one_of(RECOMPUTE),
    "parallelism": _one_of(PARALLEL_MODES),
    "hybrid_batch": _int_in(1, 1 << 20),
    "hybrid_tp": _int_in(1, 64),
    "hybrid_dp": _int_in(1, 4096),
    "hybrid_sharding": _one_of(DP_SHARDING),
}
"""Widget key -> parser of its URL text (None: not a valid value for that widget)."""


def size_key(model: str) -> str:
    return f"sample_size_{model}"


def restore_from_url() -> None:
    """Once per session, before any widget is drawn: the settings the URL carries become the widgets'
    starting values."""
    if st.session_state.get("kept:url_restored"):
        return
    st.session_state["kept:url_restored"] = True
    params = st.query_params
    for key, parse in URL_SETTINGS.items():
        if key in params and (value := parse(params[key])) is not None:
            st.session_state[key] = value
    model = st.session_state.get("sample_model")
    if model and "size" in params:
        try:
            st.session_state[size_key(model)] = sample_models.get_model(model).canonical_size(params["size"])
        except ValueError:
            pass


def save_to_url() -> None:
    """After the widgets: the URL holds the settings now shown (only those that differ from the URL)."""
    wanted = {key: str(st.session_state[key]) for key in URL_SETTINGS if key in st.session_state}
    model = st.session_state.get("sample_model")
    if model and size_key(model) in st.session_state:
        wanted["size"] = str(st.session_state[size_key(model)])
    if {k: st.query_params.get(k) for k in wanted} != wanted:
        st.query_params.from_dict(wanted)
