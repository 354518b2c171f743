"""The `SampleModel` record: how the registry describes one sample model.

A record bundles everything a caller needs to use a model without knowing its
code: the sizes it comes in, how to build it, how to make a batch for it and
how to score its output. Model files (`gpt.py`, `llama.py`, ...) each define
one record named `SAMPLE`; `sample_models/__init__.py` collects them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["SampleModel", "randint", "randn", "resolve_generator"]

# make_batch(config, batch_size, shape=None, *, generator=None, device="cpu")
#   -> (inputs tuple, target)
MakeBatch = Callable[..., tuple[tuple[torch.Tensor, ...], torch.Tensor]]


@dataclass(frozen=True)
class SampleModel:
    name: str
    """Registry key, e.g. "gpt"."""
    description: str
    """One line saying what the model is."""
    sizes: dict[str, Any]
    """Size name -> config dataclass instance, small to large; "tiny" is always first."""
    factory: Callable[[Any], nn.Module]
    """config -> module. The caller picks the device with a `torch.device` context."""
    make_batch: MakeBatch
    """make_batch(config, batch_size, shape=None, *, generator=None, device="cpu") -> (inputs, target).
    Every tensor is batched on dim 0. Deterministic given the generator (None means
    a fresh generator seeded with 0). On device "meta" returns meta tensors."""
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    """loss_fn(output, target) -> scalar, mean-reduced over the batch."""
    shape_kind: str
    """What `shape` means in make_batch: "seq_len" | "image_size" | "volume_size" | "none"."""
    default_shape: int | None
    """The shape make_batch uses for the "tiny" size when `shape` is None."""
    documented_params: dict[str, int]
    """Size name -> parameter count (unique parameters, tied counted once)."""
    shape_of: Callable[[Any], int | None] = field(default=lambda config: None, repr=False)
    """config -> the shape make_batch uses for that config when `shape` is None."""

    def canonical_size(self, size: str) -> str:
        """The size's registered spelling, matched without case ("124m" -> "124M", "b/16" -> "B/16");
        ValueError naming the valid sizes if there is none."""
        for name in self.sizes:
            if name.lower() == str(size).strip().lower():
                return name
        raise ValueError(f"unknown size {size!r} for model {self.name!r}; valid sizes: {', '.join(self.sizes)}")

    def config(self, size: str) -> Any:
        """The config for `size` (any case); ValueError naming the valid sizes if unknown."""
        return self.sizes[self.canonical_size(size)]

    def default_shape_for(self, size: str) -> int | None:
        """The shape make_batch uses for `size` when `shape` is None."""
        return self.shape_of(self.config(size))


def resolve_generator(generator: torch.Generator | None) -> torch.Generator:
    """`generator`, or a fresh CPU generator seeded with 0 so that batches are repeatable."""
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    return generator


# Batch tensors are drawn on the CPU from a CPU generator and then moved, so a
# batch is the same on every device. On "meta" nothing is drawn.


def randint(high: int, size: tuple[int, ...], generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """int64 tensor with values in [0, high)."""
    if torch.device(device).type == "meta":
        return torch.empty(size, dtype=torch.long, device="meta")
    return torch.randint(0, high, size, generator=generator).to(device)


def randn(size: tuple[int, ...], generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """float32 standard-normal tensor."""
    if torch.device(device).type == "meta":
        return torch.empty(size, dtype=torch.float32, device="meta")
    return torch.randn(size, generator=generator).to(device)
