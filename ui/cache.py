"""Cached library calls for the app.

Keys are plain values (strings, ints, JSON text of the contracts), so a rerun
with the same inputs returns at once: changing one slider re-solves only the
plan, and a profile is built once per model and shape. Arguments with a leading
underscore are not hashed; their identity is carried by the key next to them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import streamlit as st

from planner.contracts.cluster import Cluster
from planner.contracts.config import TrainConfig
from planner.contracts.plan import Plan
from planner.contracts.timeline import Timeline
from profiler.profile import Profile
from ui.uploads import ModelRequest, hf_length_profiler, profile_from_upload

ProgressFn = Callable[[str, float], None]
"""progress(message, fraction done): the profiler's progress callback."""


class _ProfileCache:
    """A small thread-safe LRU of sample profiles.

    Not st.cache_data: profiling reports progress to a bar on the page, and
    st.cache_data refuses (and would replay) element calls made inside a cached
    function on blocks created outside it.
    """

    def __init__(self, max_entries: int) -> None:
        self._entries: OrderedDict[tuple, Profile] = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def get(self, key: tuple) -> Profile | None:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        return None

    def put(self, key: tuple, profile: Profile) -> None:
        with self._lock:
            self._entries[key] = profile
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_sample_profiles = _ProfileCache(max_entries=16)


def cached_sample_profile(spec: str, batch_size: int, seq_len: int | None, estimate_for: str | None,
                          measure: bool) -> Profile | None:
    """The profile if it was built before, without building it."""
    return _sample_profiles.get((spec, batch_size, seq_len, estimate_for, measure))


def sample_profile(spec: str, batch_size: int, seq_len: int | None, estimate_for: str | None,
                   measure: bool, progress: ProgressFn | None = None) -> Profile:
    """load_profile for a sample model, built once per (spec, shape, timing source)."""
    key = (spec, batch_size, seq_len, estimate_for, measure)
    profile = _sample_profiles.get(key)
    if profile is None:
        from profiler import load_profile

        profile = load_profile(spec, batch_size=batch_size, seq_len=seq_len,
                               estimate_for=None if measure else estimate_for,
                               measure="cpu" if measure else None, progress=progress)
        _sample_profiles.put(key, profile)
    return profile


def clear() -> None:
    """Forget every cached profile, plan, timeline and export (tests start from a cold app)."""
    _sample_profiles.clear()
    _upload_profiles.clear()
    with _hf_profilers_lock:
        _hf_profilers.clear()
    st.cache_data.clear()


_upload_profiles = _ProfileCache(max_entries=16)
MAX_KEPT_TRACES = 4
_hf_profilers: OrderedDict[tuple, object] = OrderedDict()
"""(file name, digest, batch size, GPU) -> its HfLengthProfiler, which keeps the model's first trace."""
_hf_profilers_lock = threading.Lock()


def _hf_length_profiler(name: str, digest: str, data: bytes, request: ModelRequest):
    key = (name, digest, request.batch_size, request.estimate_for)
    with _hf_profilers_lock:
        profiler = _hf_profilers.get(key)
        if profiler is None:
            profiler = _hf_profilers[key] = hf_length_profiler(name, data, request)
        _hf_profilers.move_to_end(key)
        while len(_hf_profilers) > MAX_KEPT_TRACES:
            _hf_profilers.popitem(last=False)
    return profiler


def _upload_key(kind: str, name: str, data: bytes, request: ModelRequest, allow_code: bool) -> tuple:
    import hashlib

    return kind, name, hashlib.sha256(data).hexdigest(), request, allow_code


def cached_uploaded_profile(kind: str, name: str, data: bytes, request: ModelRequest,
                            allow_code: bool) -> Profile | None:
    """The upload's profile if it was built before, without building it."""
    return _upload_profiles.get(_upload_key(kind, name, data, request, allow_code))


def uploaded_profile(kind: str, name: str, data: bytes, request: ModelRequest, allow_code: bool) -> Profile:
    """profile_from_upload, built once per (file, request). A profile made at the model's default length
    is also kept under that length, so typing the default back in (4096 after 2048) is a cache hit."""
    import dataclasses

    key = _upload_key(kind, name, data, request, allow_code)
    digest = key[2]
    profile = _upload_profiles.get(key)
    if profile is not None:
        return profile
    if kind == "hf_config":  # a new sequence length: analysed on the trace kept from the first one
        profile = _hf_length_profiler(name, digest, data, request).profile(request.seq_len)
    else:
        profile = profile_from_upload(kind, name, data, request, allow_code=allow_code)
    _upload_profiles.put(key, profile)
    if request.seq_len is None and profile.model.seq_len:
        at_default = dataclasses.replace(request, seq_len=profile.model.seq_len)
        _upload_profiles.put((kind, name, digest, at_default, allow_code), profile)
    return profile


@st.cache_data(max_entries=64, show_spinner=False)
def plan_for(_profile: Profile, profile_key: str, cluster_json: str, config_json: str) -> Plan:
    """solve() for one (profile, cluster, config); the JSON texts are the cache key."""
    from planner.solvers.solve import solve

    return solve(_profile, Cluster.from_json(cluster_json), TrainConfig.from_json(config_json))


@st.cache_data(max_entries=16, show_spinner=False)
def parallel_search_for(_profile: Profile, profile_key: str, cluster_json: str, base_json: str, global_batch: int,
                        tp: int | None, dp: int | None, dp_sharding: str | None):
    """search_parallel for one (profile, cluster, base config, batch, fixed degrees): the ranked PP x DP x TP
    configurations, as `pipeplan plan --parallel auto` (or --tp/--dp) ranks them."""
    from planner.solvers.hybrid import search_parallel
    from ui.hybrid_view import SEARCH_SOLVE_LIMIT_S

    base = TrainConfig.from_json(base_json)
    fixed = tp is not None or dp is not None
    return search_parallel(_profile, Cluster.from_json(cluster_json), global_batch, base=base, tp=tp, dp=dp,
                           dp_sharding=dp_sharding if fixed else None,
                           micro_batch_sizes=[_profile.model.micro_batch_size] if fixed else None,
                           time_limit_s=min(base.time_limit_s, SEARCH_SOLVE_LIMIT_S))


@st.cache_data(max_entries=32, show_spinner=False)
def timeline_for(_plan: Plan, plan_json: str) -> Timeline:
    from planner.pipeline.simulator import simulate

    return simulate(_plan)


@st.cache_data(max_entries=8, show_spinner=False)
def export_zip(_plan: Plan, plan_json: str, model_source: str | None, source_label: str | None = None,
               weights: str | None = None, _profile: Profile | None = None) -> bytes:
    """The job's zip; the plan's profile (its fingerprint is in plan_json) gives a TP job its TP plan."""
    from planner.export import export_zip_bytes

    return export_zip_bytes(_plan, model_source=model_source, source_label=source_label, weights=weights,
                            profile=_profile)
