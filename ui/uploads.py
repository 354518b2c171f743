"""Turn an uploaded file into a Profile, safely.

A plain function (no streamlit) so tests can call it directly. The rules:
- size is checked here again, whatever the browser or server enforced;
- JSON only is parsed (HF config.json, Profile JSON): no pickle, no torch.load,
  no trust_remote_code;
- a .py model file is accepted only when the server runs with code execution
  explicitly allowed (PIPEPLAN_ALLOW_CODE=1, set by `pipeplan app --allow-code`).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core.errors import PipeplanError
from core.jsonio import load_json_text
from profiler.profile import Profile

MAX_UPLOAD_BYTES = 5 * 2**20
"""Same cap as server.maxUploadSize in .streamlit/config.toml (5 MB); checked again here."""

UPLOAD_KINDS = ("hf_config", "profile_json", "python")


def code_execution_allowed(environ: dict[str, str] | None = None) -> bool:
    """True only when the server was started with code execution explicitly allowed."""
    env = os.environ if environ is None else environ
    return env.get("PIPEPLAN_ALLOW_CODE", "") == "1"


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """How to profile an uploaded model: the shape and the GPU to estimate times for."""

    batch_size: int
    seq_len: int | None = None
    estimate_for: str | None = "A100-80GB"
    factory: str = "make_model"
    """Name of the factory function in an uploaded .py file."""


def check_upload_size(name: str, data: bytes, limit: int = MAX_UPLOAD_BYTES) -> None:
    if len(data) > limit:
        raise PipeplanError(f"{name} is {len(data) / 2**20:.1f} MB; uploads are limited to {limit / 2**20:.0f} MB")
    if not data:
        raise PipeplanError(f"{name} is empty")


def profile_from_upload(kind: str, name: str, data: bytes, request: ModelRequest, *,
                        allow_code: bool = False) -> Profile:
    """The Profile for one uploaded file; PipeplanError with a clear message on bad input."""
    if kind not in UPLOAD_KINDS:
        raise PipeplanError(f"unknown upload kind {kind!r}; choose one of {', '.join(UPLOAD_KINDS)}")
    check_upload_size(name, data)
    if kind == "profile_json":
        return Profile.from_json(data)
    if kind == "hf_config":
        from profiler import profile_hf_config

        return profile_hf_config(_hf_config(data), batch_size=request.batch_size, seq_len=request.seq_len,
                                 estimate_for=request.estimate_for, source=f"hf:{name}")
    # kind == "python"
    if not allow_code:
        raise PipeplanError("Python model files run code; this server does not allow it. "
                            "Start it with `pipeplan app --allow-code` on your own machine to enable .py uploads")
    if not name.endswith(".py"):
        raise PipeplanError(f"{name} is not a .py file")
    if not request.factory.isidentifier():
        raise PipeplanError(f"factory {request.factory!r} must be a Python function name")
    from profiler import load_profile

    with tempfile.TemporaryDirectory(prefix="pipeplan-upload-") as tmp:
        path = Path(tmp) / "uploaded_model.py"
        path.write_bytes(data)
        return load_profile(f"file:{path}:{request.factory}", batch_size=request.batch_size,
                            seq_len=request.seq_len, estimate_for=request.estimate_for, allow_code=True)



def _hf_config(data: bytes) -> dict:
    config = load_json_text(data, "HF config.json")
    if not isinstance(config, dict):
        raise PipeplanError("HF config.json must be a JSON object (the model's config.json from the Hub)")
    return config


def hf_length_profiler(name: str, data: bytes, request: ModelRequest):
    """An uploaded config.json's profiler (profiler.hf.HfLengthProfiler, for `request`'s batch and GPU): kept,
    it profiles the next sequence length from its first trace. A one-off profile is profile_from_upload's
    (a static trace, cheaper than the first symbolic one)."""
    check_upload_size(name, data)
    from profiler.hf import HfLengthProfiler

    return HfLengthProfiler(_hf_config(data), batch_size=request.batch_size, estimate_for=request.estimate_for,
                            source=f"hf:{name}")


def saved_hf_config(data: bytes) -> Path:
    """Keep an uploaded HF config.json on disk (named by its hash) so the exporter can copy it
    into the job's model/ folder, as `pipeplan export --model-source hf:PATH` does."""
    import hashlib

    check_upload_size("config.json", data)
    folder = Path(tempfile.gettempdir()) / f"pipeplan-hf-{hashlib.sha256(data).hexdigest()[:16]}"
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / "config.json"
    if not path.exists():
        path.write_bytes(data)
    return path
