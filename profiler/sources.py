"""`load_profile(spec)`: every model source the CLI and the app accept.

    sample:NAME[:SIZE]           a sample model (size defaults to "tiny")
    hf:PATH/config.json          a Hugging Face config (random weights, no download)
    profile:PATH.json            a Profile written by `pipeplan profile`
    file:PATH.py:FACTORY         a user factory, run sandboxed, only with allow_code=True
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from core.errors import PipeplanError
from core.limits import check_shape
from profiler.memcheck import check_fits_for_measuring
from profiler.profile import Profile
from profiler.profile_model import profile_model

Progress = Callable[[str, float], None]
MAX_PROFILE_BYTES = 256 * 2**20
SPEC_FORMS = "sample:NAME[:SIZE], hf:PATH/config.json, profile:PATH.json or file:PATH.py:FACTORY"


def split_spec(spec: str) -> tuple[str, str]:
    if not isinstance(spec, str) or ":" not in spec:
        raise PipeplanError(f"model {spec!r} is not understood; write {SPEC_FORMS}")
    kind, rest = spec.split(":", 1)
    if kind not in ("sample", "hf", "profile", "file") or not rest:
        raise PipeplanError(f"model {spec!r} is not understood; write {SPEC_FORMS}")
    return kind, rest


def read_profile_file(path: str) -> Profile:
    p = Path(path)
    if not p.is_file():
        raise PipeplanError(f"profile file {path!r} does not exist")
    if p.stat().st_size > MAX_PROFILE_BYTES:
        raise PipeplanError(f"profile file {path!r} is larger than {MAX_PROFILE_BYTES >> 20} MiB")
    return Profile.from_json(p.read_bytes())


def _positive(value: int | None, what: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise PipeplanError(f"{what} must be a positive integer, got {value!r}")


def load_profile(spec: str, *, batch_size: int | None = None, seq_len: int | None = None,
                 estimate_for: str | None = None, measure: str | None = None, granularity: str = "block",
                 allow_code: bool = False, progress: Progress | None = None) -> Profile:
    """Build the Profile for `spec` (see the module docstring for the forms).

    batch_size: the micro-batch size (default 1). seq_len: sequence length, or the
    image/volume side for vision models (default: the model's default shape).
    Times are estimated for `estimate_for` (default A100-80GB) unless `measure`
    ("cpu" | "cuda") asks for measured ones.
    """
    _positive(batch_size, "batch size")
    _positive(seq_len, "sequence length")
    check_shape(batch_size, seq_len)
    kind, rest = split_spec(spec)
    if kind == "profile":
        prof = read_profile_file(rest)
        if batch_size is not None and batch_size != prof.model.micro_batch_size:
            raise PipeplanError(f"{rest} was profiled at micro-batch {prof.model.micro_batch_size}, not {batch_size}; "
                                "re-profile the model at the micro-batch size you want")
        return prof
    if kind in ("sample", "hf"):
        try:
            if kind == "sample":
                return _profile_sample(spec, rest, batch_size or 1, seq_len, estimate_for, measure, granularity,
                                       progress)
            from profiler.hf import profile_hf_config
            return profile_hf_config(Path(rest), batch_size=batch_size or 1, seq_len=seq_len,
                                     estimate_for=estimate_for, measure=measure, granularity=granularity,
                                     progress=progress, source=spec)
        except (MemoryError, RuntimeError) as exc:
            # measuring allocates real tensors: the weights were checked against free memory first
            # (check_fits_for_measuring), a huge batch or sequence shows only when its activations are made
            if isinstance(exc, RuntimeError) and "allocate" not in str(exc):
                raise
            raise PipeplanError(f"{spec} ran out of memory while measuring on {measure or 'meta'} at batch size "
                                f"{batch_size or 1}: lower --batch-size / --seq-len, or estimate with "
                                "--estimate-for PRESET") from None
    if not allow_code:
        raise PipeplanError("file: models run your Python code; pass --allow-code (or enable 'allow code' "
                            "in the app) to allow it. It runs in a separate, time- and memory-limited process")
    from profiler.sandbox import profile_file_factory
    return profile_file_factory(rest, batch_size=batch_size or 1, seq_len=seq_len, estimate_for=estimate_for,
                                measure=measure, granularity=granularity, progress=progress)


def _profile_sample(spec: str, rest: str, batch_size: int, seq_len: int | None, estimate_for, measure,
                    granularity: str, progress) -> Profile:
    import sample_models

    name, _, size = rest.partition(":")
    try:
        entry = sample_models.get_model(name)
        name, size = entry.name, entry.canonical_size(size) if size else next(iter(entry.sizes))
        config = entry.config(size)
    except ValueError as exc:
        raise PipeplanError(str(exc)) from None
    shape = seq_len if seq_len is not None else entry.default_shape_for(size)
    device = measure or "meta"
    if measure is not None:
        with torch.device("meta"):
            meta_model = entry.factory(config)
        param_bytes = sum(p.numel() * p.element_size() for p in meta_model.parameters())
        check_fits_for_measuring(2 * param_bytes, measure, f"sample:{name}:{size}")  # weights + grads
    try:
        inputs, target = entry.make_batch(config, batch_size, shape if entry.shape_kind != "none" else None,
                                          device=device)
        model = sample_models.build(name, size, device=device)
    except ValueError as exc:
        raise PipeplanError(f"sample:{name}:{size}: {exc}") from None
    kwargs = {}
    if entry.shape_kind == "seq_len":
        kwargs["seq_len"] = shape
    elif entry.shape_kind in ("image_size", "volume_size"):
        kwargs["image_size"] = shape
    return profile_model(model, inputs, loss_fn=entry.loss_fn, target=target, source=f"sample:{name}:{size}",
                         name=f"{name}-{size}", estimate_for=estimate_for, measure=measure,
                         granularity=granularity, progress=progress, **kwargs)
