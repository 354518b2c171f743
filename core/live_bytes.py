"""LiveBytesMeter: the exact peak of tensor bytes alive while some code runs.

One meter for two places: the profiler runs each layer's forward under it on fake tensors (the layer's
transient peak, ProfileNode.fwd_peak_bytes), and the exported inference job runs each stage under it on
real tensors (the stage's activation peak, checked against the plan). The job holds a verbatim copy of
this file (live_bytes.py), so it imports only torch.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveBytesMeter(TorchDispatchMode):
    """Every tensor storage an op returns (and each one handed to track()) counts from its creation until
    the last Python tensor on it dies, each storage once; storages of `exclude` (parameters, buffers,
    inputs the caller does not want counted) never count. Temporaries an op allocates and frees inside its
    kernel are not seen. Works on real and on fake tensors (storages are told apart by their C++ identity)."""

    def __init__(self, exclude: list[torch.Tensor] = ()) -> None:
        super().__init__()
        self.exclude = {self.key(t) for t in exclude}
        self.alive: dict[int, list[int]] = {}  # storage -> [bytes, live tensors on it]
        self.current = 0
        self.peak = 0

    @staticmethod
    def key(t: torch.Tensor) -> int:
        return t.untyped_storage()._cdata

    def track(self, *tensors: torch.Tensor) -> None:
        for t in tensors:
            key = self.key(t)
            if key in self.exclude:
                continue
            entry = self.alive.get(key)
            if entry is None:
                nbytes = t.untyped_storage().nbytes()
                if nbytes == 0:
                    continue
                entry = self.alive[key] = [nbytes, 0]
                self.current += nbytes
                self.peak = max(self.peak, self.current)
            entry[1] += 1
            weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.alive.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self.alive[key]
            self.current -= entry[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.track(*(t for t in tree_leaves(out) if isinstance(t, torch.Tensor)))
        return out
