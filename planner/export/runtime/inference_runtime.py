"""Plan-independent helpers of the exported inference job (infer.py), copied verbatim next to it.

Imports only the standard library, torch and safetensors (as pipeline_runtime does). Weights enter
only as safetensors (pipeline_runtime.WeightsFile / match_weights / load_weights) or as a torch.save
state dict read with torch.load(weights_only=True); nothing is ever unpickled.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


class HeldMeter:
    """Exact count of the activation bytes a stage holds: its received inputs and its outputs until they
    are sent, each storage counted once (a relayed tensor is the same storage in and out)."""

    def __init__(self) -> None:
        self.peak = 0

    def hold(self, *groups) -> int:
        seen, total = set(), 0
        for g in groups:
            for t in g:
                key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
                if key not in seen:
                    seen.add(key)
                    total += t.numel() * t.element_size()
        self.peak = max(self.peak, total)
        return total


def as_tuple(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def recv_buffers(metas: tuple, device: torch.device) -> tuple:
    return tuple(torch.empty(m.shape, dtype=m.dtype, device=device) for m in metas)


def recv_all(bufs: tuple, src: int) -> None:
    for b in bufs:
        dist.recv(b, src=src)


def send_all(tensors: tuple, dst: int) -> None:
    for t in tensors:
        dist.send(t.contiguous(), dst=dst)


def load_state_dict_weights_only(path: str | Path, params: dict[str, list[torch.Tensor]]) -> int:
    """Copy a torch.save state dict into this rank's parameters (by FQN), read with weights_only=True:
    plain tensors and containers only, never arbitrary objects. Returns the tensors copied."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise TypeError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    missing = [f for f in params if f not in state]
    if missing:
        raise ValueError(f"{path}: no tensor for {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    n = 0
    with torch.no_grad():
        for f, copies in params.items():
            src = state[f]
            for p in copies:
                if tuple(src.shape) != tuple(p.shape):
                    raise ValueError(f"{path}: {f} has shape {list(src.shape)}, the model {list(p.shape)}")
                p.copy_(src.to(p.dtype))
                n += 1
    return n


def is_pickle_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in PICKLE_SUFFIXES
