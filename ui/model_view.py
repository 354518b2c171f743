"""Section 1: pick or upload a model and show its summary."""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

import sample_models
from core.errors import PipeplanError
from core.units import human_count
from profiler.gpus import GPU_PRESETS
from profiler.profile import Profile
from ui import cache
from ui.uploads import MAX_UPLOAD_BYTES, ModelRequest, check_upload_size, code_execution_allowed

SAMPLE, ARCHITECTURE, HF, PROFILE_JSON, PYTHON = ("Sample model", "transformers architecture", "HF config.json",
                                                 "Profile JSON", "Python file (.py)")
DEFAULT_ARCHITECTURE = "llama"
SHAPE_LABELS = {"seq_len": "Sequence length", "image_size": "Image size (pixels)",
                "volume_size": "Volume size (voxels per side)"}
DEFAULT_MODEL, DEFAULT_SIZE, DEFAULT_GPU = "gpt", "350M", "A100-80GB"
"""The opening example: GPT-2 350M (on the mixed cluster of ui.cluster_view.OPENING_KINDS)."""


@dataclass(frozen=True, slots=True)
class ModelChoice:
    """The profiled model and how to reproduce it from the command line."""

    profile: Profile
    cli_source: str
    """MODEL argument for `pipeplan profile` ("sample:gpt:124M", "hf:config.json", "profile:profile.json")."""
    cli_flags: str
    """Shape and timing flags for `pipeplan profile` ("" for a Profile JSON)."""
    export_source: str | None = None
    """Model source the exporter builds the job's model from, when not the profile's own."""
    export_error: str | None = None
    """Why the job cannot be exported (a Profile JSON whose model config was not uploaded)."""
    export_label: str | None = None
    """How the job and the commands name export_source: the uploaded file's own name ("hf:config.json"),
    never the server's temporary path."""


def save_session_config(data: bytes, folder: str | Path) -> Path:
    """Keep an uploaded HF config.json in this session's private folder, so the exporter can copy it."""
    check_upload_size("config.json", data)
    path = Path(folder) / hashlib.sha256(data).hexdigest()[:16] / "config.json"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def profile_export_source(profile_source: str, uploaded_config: Path | None) -> str:
    """The model the exported job builds for an uploaded Profile JSON. Never a server path named in the
    profile: its own source only if it is a sample model, otherwise the config.json the user uploaded."""
    if uploaded_config is not None:
        return f"hf:{uploaded_config}"
    if profile_source.startswith("sample:"):
        return profile_source
    raise PipeplanError(f"this profile was made from {profile_source[:200]!r}; upload the config.json it was made "
                        "from (below the profile) to export a training job")


def _session_dir() -> str:
    folder = st.session_state.get("_pipeplan_session_dir")
    if folder is None or not Path(folder).is_dir():
        folder = st.session_state["_pipeplan_session_dir"] = tempfile.mkdtemp(prefix="pipeplan-session-")
    return folder


def _progress_callback(bar) -> cache.ProgressFn:
    def report(message: str, fraction: float) -> None:
        bar.progress(min(max(float(fraction), 0.0), 1.0), text=str(message))
    return report


def model_section() -> ModelChoice | None:
    sources = [SAMPLE, ARCHITECTURE, HF, PROFILE_JSON] + ([PYTHON] if code_execution_allowed() else [])
    source = st.radio("Model source", sources, horizontal=True, key="model_source")
    if code_execution_allowed():
        from profiler.sandbox import sandbox_notice

        note = sandbox_notice()  # None under bubblewrap
        st.warning("Code execution is allowed on this server (`--allow-code`): an uploaded .py file runs "
                   "Python code. Use this only on your own machine, with files you trust."
                   + (f" Note: {note}." if note else ""))
    timing = st.columns(3)
    gpus = list(GPU_PRESETS)
    estimate_for = timing[0].selectbox("Estimate layer times for", gpus, index=gpus.index(DEFAULT_GPU),
                                       key="estimate_for",
                                       help="Layer times are estimated with a roofline model of this GPU.")
    batch_size = int(timing[1].number_input("Micro-batch size", min_value=1, max_value=4096, value=2, step=1,
                                            key="micro_batch_size"))
    try:
        if source == SAMPLE:
            return _sample_model(batch_size, estimate_for, timing[2])
        if source == ARCHITECTURE:
            return _architecture_model(batch_size, estimate_for, timing[2])
        return _uploaded_model(source, batch_size, estimate_for, timing[2])
    except PipeplanError as exc:
        st.error(f"Cannot load this model: {exc}")
        return None


def kept(key: str, default: Any) -> Any:
    """The value a widget had when it was last shown. Streamlit drops a widget's state in any run that
    does not draw it (the sample picker while an upload source is chosen), so the choice is copied to
    a key of our own (keep) and restored from it."""
    return st.session_state.get(f"kept:{key}", default)


def keep(key: str, value: Any) -> None:
    st.session_state[f"kept:{key}"] = value


def _sample_model(batch_size: int, estimate_for: str, shape_col) -> ModelChoice | None:
    cols = st.columns(3)
    names = list(sample_models.REGISTRY)
    name = cols[0].selectbox("Sample model", names, index=names.index(kept("sample_model", DEFAULT_MODEL)),
                             key="sample_model", format_func=lambda n: f"{n}: {sample_models.REGISTRY[n].description}")
    keep("sample_model", name)
    entry = sample_models.REGISTRY[name]
    sizes = list(entry.sizes)
    size_key = f"sample_size_{name}"
    size = cols[1].selectbox("Size", sizes, index=sizes.index(kept(size_key, DEFAULT_SIZE if DEFAULT_SIZE in sizes
                                                                    else sizes[0])),
                             key=size_key,
                             format_func=lambda s: f"{s} ({human_count(entry.documented_params[s])} params)")
    keep(size_key, size)
    measure = cols[2].toggle("Measure on this machine instead", value=False, key="measure",
                             help="Runs the model on this machine's CPU to time each layer (slow for big models). "
                                  "Off: times are estimated for the GPU chosen above.")
    seq_len = None
    flags = f"--batch-size {batch_size}"
    if entry.shape_kind in SHAPE_LABELS:
        default_shape = entry.default_shape_for(size) or 1
        seq_len = int(shape_col.number_input(SHAPE_LABELS[entry.shape_kind], min_value=1, max_value=1 << 20,
                                             value=int(default_shape), step=1, key=f"shape_{name}_{size}"))
        flags += f" --seq-len {seq_len}"
    flags += " --measure cpu" if measure else f" --estimate-for {estimate_for}"
    spec = f"sample:{name}:{size}"
    profile = cache.cached_sample_profile(spec, batch_size, seq_len, estimate_for, measure)
    if profile is None:  # show progress only when there is work to do
        with st.status(f"Profiling {spec}…", expanded=True) as status:
            bar = st.progress(0.0, text="starting")
            profile = cache.sample_profile(spec, batch_size, seq_len, estimate_for, measure,
                                           progress=_progress_callback(bar))
            status.update(label=f"Profiled {spec}", state="complete", expanded=False)
    model_summary(profile)
    return ModelChoice(profile=profile, cli_source=spec, cli_flags=flags)


def _architecture_model(batch_size: int, estimate_for: str, shape_col) -> ModelChoice | None:
    """Any architecture transformers can build, from its default config (the family's base size): planned
    as if that config.json had been uploaded, and offered for download so the CLI line reproduces it."""
    import json

    from profiler.hf import default_config
    from profiler.hf_tasks import architectures

    types = architectures()
    model_type = st.selectbox(f"Architecture ({len(types)} in transformers)", types,
                              index=types.index(kept("architecture", DEFAULT_ARCHITECTURE)), key="architecture",
                              help="Built from transformers' default config for this model_type, with random "
                                   "weights on the meta device: nothing is downloaded and no remote code runs.")
    keep("architecture", model_type)
    config = json.dumps(default_config(model_type), indent=2, sort_keys=True).encode()
    name = f"{model_type}-config.json"
    st.download_button("Download this config.json", config, file_name=name, mime="application/json",
                       key="architecture_config", help="Edit it (sizes, layers) and upload it as an HF config.json.")
    return _hf_config_model(name, config, batch_size, estimate_for, shape_col)


def _hf_config_model(name: str, data: bytes, batch_size: int, estimate_for: str, shape_col) -> ModelChoice:
    """Profile a config.json's bytes (uploaded, or an architecture's default) and say how to reproduce it."""
    value = shape_col.number_input("Sequence length", min_value=1, max_value=1 << 20, value=None, step=1,
                                   key="upload_seq_len", placeholder="the model's default")
    seq_len = None if value is None else int(value)
    request = ModelRequest(batch_size=batch_size, seq_len=seq_len, estimate_for=estimate_for, factory="make_model")
    profile = cache.cached_uploaded_profile("hf_config", name, data, request, False)
    if profile is None:  # a status box only when there is work to do (each box costs the page 0.05 s)
        with st.status(f"Reading {name}…", expanded=False) as status:
            profile = cache.uploaded_profile("hf_config", name, data, request, False)
            status.update(label=f"Profiled {name}", state="complete")
    model_summary(profile)
    flags = f"--batch-size {batch_size}{f' --seq-len {seq_len}' if seq_len else ''} --estimate-for {estimate_for}"
    return ModelChoice(profile=profile, cli_source=f"hf:{name}", cli_flags=flags,
                       export_source=f"hf:{save_session_config(data, _session_dir())}", export_label=f"hf:{name}")


def _uploaded_model(source: str, batch_size: int, estimate_for: str, shape_col) -> ModelChoice | None:
    kind = {HF: "hf_config", PROFILE_JSON: "profile_json", PYTHON: "python"}[source]
    types = ["py"] if kind == "python" else ["json"]
    seq_len = None
    factory = "make_model"
    if kind == "python":
        value = shape_col.number_input("Sequence length", min_value=1, max_value=1 << 20, value=None, step=1,
                                       key="upload_seq_len", placeholder="the model's default")
        seq_len = None if value is None else int(value)
        factory = st.text_input("Factory function in the file", value="make_model", key="py_factory")
    upload = st.file_uploader(f"Upload {source}", type=types, key=f"upload_{kind}",
                              max_upload_size=MAX_UPLOAD_BYTES // 2**20)
    if upload is None:
        st.info(f"Upload a {source} to plan it, or pick a sample model.")
        return None
    if kind == "hf_config":
        return _hf_config_model(upload.name, upload.getvalue(), batch_size, estimate_for, shape_col)
    request = ModelRequest(batch_size=batch_size, seq_len=seq_len, estimate_for=estimate_for, factory=factory)
    with st.status(f"Reading {upload.name}…", expanded=False) as status:
        profile = cache.uploaded_profile(kind, upload.name, upload.getvalue(), request, code_execution_allowed())
        status.update(label=f"Profiled {upload.name}", state="complete")
    model_summary(profile)
    if kind == "profile_json":
        config = None
        if not profile.model.source.startswith("sample:"):
            cfg_upload = st.file_uploader("HF config.json this profile was made from (for the exported job)",
                                          type=["json"], key="profile_export_config",
                                          max_upload_size=MAX_UPLOAD_BYTES // 2**20)
            config = None if cfg_upload is None else save_session_config(cfg_upload.getvalue(), _session_dir())
        try:
            export_source, export_error = profile_export_source(profile.model.source, config), None
        except PipeplanError as exc:
            export_source, export_error = None, str(exc)
        label = f"hf:{cfg_upload.name}" if config is not None else None
        return ModelChoice(profile=profile, cli_source=f"profile:{upload.name}", cli_flags="",
                           export_source=export_source, export_error=export_error, export_label=label)
    flags = f"--batch-size {batch_size}{f' --seq-len {seq_len}' if seq_len else ''} --estimate-for {estimate_for}"
    return ModelChoice(profile=profile, cli_source=f"file:{upload.name}:{factory}", cli_flags=flags)


def model_summary(profile: Profile) -> None:
    m, p = profile.model, profile.provenance
    cols = st.columns(4)
    cols[0].metric("Parameters", human_count(m.param_count))
    cols[1].metric("Layers", len(profile.nodes))
    cols[2].metric("FLOPs per sample (fwd+bwd)", f"{profile.total_flops / m.micro_batch_size:.3g}")
    cols[3].metric("Layer times estimated for" if p.method == "estimated" else "Layer times measured on", p.device)
    shape = f"seq len {m.seq_len}" if m.seq_len else (f"image size {m.image_size}" if m.image_size else "")
    st.caption(f"{m.name} · {m.dtype} · micro-batch {m.micro_batch_size} {('· ' + shape) if shape else ''} · "
               f"source `{m.source}` · torch {p.torch_version or '?'} · {p.date or ''}")
