"""Sample models for pipeplan: readable single-device PyTorch definitions, one per file.

    from sample_models import build, get_model
    spec = get_model("gpt")
    model = build("gpt", "tiny")                        # CPU, weights from init_parameters(seed=0)
    inputs, target = spec.make_batch(spec.sizes["tiny"], batch_size=4)
    loss = spec.loss_fn(model(*inputs), target)
    big = build("llama", "70B", device="meta")          # no memory, ~1 s

Contract every model keeps, so it can be traced (`torch.export.export(..., strict=False)`,
on meta) and split into pipeline stages by FQN:
- forward takes only tensors, all batched on dim 0, and returns one tensor (never the loss);
- repeated layers live in a ModuleDict keyed by str(i) (or a ModuleList), so `layers.3`
  names the same module in the whole model and in any stage;
- no buffers holding computed values (masks, RoPE tables are computed in forward);
  BatchNorm running statistics (resnet) are the only buffers;
- no torch.distributed imports, no data-dependent control flow.
"""

from __future__ import annotations

import torch
from torch import nn

from . import dlrm, gpt, llama, mlp, resnet, unet3d, vit
from .init import init_buffers, init_parameters, materialize, tied_parameter_aliases
from .spec import SampleModel

__all__ = [
    "REGISTRY",
    "SampleModel",
    "build",
    "count_parameters",
    "get_model",
    "init_buffers",
    "init_parameters",
    "materialize",
    "tied_parameter_aliases",
]

REGISTRY: dict[str, SampleModel] = {m.SAMPLE.name: m.SAMPLE for m in (gpt, llama, vit, resnet, unet3d, dlrm, mlp)}


def get_model(name: str) -> SampleModel:
    """The registry record for `name` (any case); ValueError naming the valid models if unknown."""
    for key, spec in REGISTRY.items():
        if key == str(name).strip().lower():
            return spec
    raise ValueError(f"unknown sample model {name!r}; valid models: {', '.join(REGISTRY)}")


def build(name: str, size: str = "tiny", *, device: torch.device | str = "cpu", seed: int | None = 0) -> nn.Module:
    """Build model `name` at `size` on `device`.

    device "meta": parameters without storage (for tracing, counting, planning).
    Otherwise the model is built on meta and materialised on `device` with
    `init_parameters(seed)` (values depend only on seed and FQN; tied weights stay
    tied); seed=None instead builds directly on `device` with PyTorch's default init.
    Unknown size -> ValueError naming the valid sizes.
    """
    spec = get_model(name)
    config = spec.config(size)
    device = torch.device(device)
    if device.type == "meta" or seed is None:
        with torch.device(device):
            return spec.factory(config)
    with torch.device("meta"):
        model = spec.factory(config)
    return materialize(model, device, seed)


def count_parameters(module: nn.Module) -> int:
    """Number of parameter elements, each tied/shared parameter counted once. Works on meta."""
    return sum(p.numel() for p in module.parameters())
