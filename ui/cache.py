"""Cached library calls for the app.

Keys are plain values (strings, ints, JSON text of the contracts), so a rerun
with the same inputs returns at once: changing one slider re-solves only the
plan, and a profile is built once per model and shape. Arguments with a leading
underscore are not hashed; their identity is carried by the key next to them.
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from planner.cluster import Cluster
from planner.config import TrainConfig
from planner.plan import Plan
from planner.timeline import Timeline
from profiler.profile import Profile
from ui.uploads import ModelRequest, profile_from_upload

ProgressFn = Callable[[float, str], None]


@st.cache_data(max_entries=16, show_spinner=False)
def sample_profile(spec: str, batch_size: int, seq_len: int | None, estimate_for: str | None,
                   measure: bool, _progress: ProgressFn | None = None) -> Profile:
    from profiler import load_profile

    return load_profile(spec, batch_size=batch_size, seq_len=seq_len,
                        estimate_for=None if measure else estimate_for,
                        measure=measure or None, progress=_progress)


@st.cache_data(max_entries=8, show_spinner=False)
def uploaded_profile(kind: str, name: str, data: bytes, request: ModelRequest, allow_code: bool) -> Profile:
    return profile_from_upload(kind, name, data, request, allow_code=allow_code)


@st.cache_data(max_entries=64, show_spinner=False)
def plan_for(_profile: Profile, profile_key: str, cluster_json: str, config_json: str) -> Plan:
    """solve() for one (profile, cluster, config); the JSON texts are the cache key."""
    from planner.solve import solve

    return solve(_profile, Cluster.from_json(cluster_json), TrainConfig.from_json(config_json))


@st.cache_data(max_entries=32, show_spinner=False)
def timeline_for(_plan: Plan, plan_json: str) -> Timeline:
    from planner.simulator import simulate

    return simulate(_plan)


@st.cache_data(max_entries=8, show_spinner=False)
def export_zip(_plan: Plan, plan_json: str, model_source: str | None) -> bytes:
    from planner.export import export_zip_bytes

    return export_zip_bytes(_plan, model_source=model_source)
