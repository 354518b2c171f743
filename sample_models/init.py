"""Deterministic, per-FQN parameter initialisation.

Every parameter is filled from its own generator, seeded from (seed, FQN). A
pipeline stage that materialises only its own parameters, under the same FQNs
as in the full model, therefore gets exactly the values the full model gets,
without building the rest of the model:

    model = build("llama", "7B", device="meta")
    stage = model.layers["3"]
    stage.to_empty(device="cuda")
    init_parameters([(f"layers.3.{n}", p) for n, p in stage.named_parameters()], seed=0)
    # or, equivalently: materialize(stage, "cuda", seed=0, prefix="layers.3.")

The rule reads only a parameter's name and shape, so it applies to any model
(HF transformers included), not just the sample models:

| parameter                                   | value                          |
|---------------------------------------------|--------------------------------|
| 0-/1-D, name ends in "bias" or "beta"       | 0                              |
| 0-/1-D, name ends in "weight"/"gamma"/"scale", or a norm name ("norm", "ln", "bn", "gn") | 1 |
| other 0-/1-D                                | 0                              |
| >=3-D whose name ends in "weight" (conv)    | normal(0, 1/sqrt(fan_in)), fan_in = shape[1] * prod(shape[2:]) |
| other >=2-D (Linear, Embedding, cls/pos tokens) | normal(0, 0.02) (GPT-2 paper, as in nanoGPT) |

Values are drawn in float32 on the CPU and then copied, so they are the same on
every device and are only rounded for lower-precision dtypes.

Tied parameters appear once in `named_parameters()`, under the FQN of their
first occurrence (e.g. `wte.weight`, not `lm_head.weight`). A stage that holds
only the second alias must pass `aliases=tied_parameter_aliases(full_meta_model)`
to get the same values.
"""

from __future__ import annotations

import hashlib
import math
import re
import warnings
from collections.abc import Iterable, Mapping

import torch
from torch import nn

__all__ = ["fqn_seed", "init_buffers", "init_parameters", "materialize", "tied_parameter_aliases"]

LINEAR_STD = 0.02  # GPT-2 paper / nanoGPT `_init_weights`: normal(0, 0.02) for Linear and Embedding
_NORM_TOKEN = re.compile(r"(^|[._])(ln|bn|gn)(_?\d*)?([._]|$)")


def fqn_seed(seed: int, fqn: str) -> int:
    """A 63-bit generator seed from (seed, FQN), stable across processes and Python versions."""
    digest = hashlib.blake2b(f"{seed}:{fqn}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _is_norm_name(fqn: str) -> bool:
    lower = fqn.lower()
    return "norm" in lower or _NORM_TOKEN.search(lower) is not None


def _init_value(fqn: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """The float32 CPU tensor that the rule (module docstring) gives `fqn`."""
    leaf = fqn.rsplit(".", 1)[-1].lower()
    if len(shape) <= 1:
        if leaf.endswith("bias") or leaf == "beta":
            return torch.zeros(shape)
        if leaf.endswith("weight") or leaf in ("gamma", "scale") or _is_norm_name(fqn):
            return torch.ones(shape)
        return torch.zeros(shape)
    if len(shape) >= 3 and leaf.endswith("weight"):
        fan_in = shape[1] * math.prod(shape[2:])
        std = 1.0 / math.sqrt(max(fan_in, 1))
    else:
        std = LINEAR_STD
    return torch.empty(shape).normal_(0.0, std, generator=generator)


@torch.no_grad()
def init_parameters(
    named_parameters: Iterable[tuple[str, torch.Tensor]],
    seed: int,
    *,
    aliases: Mapping[str, str] | None = None,
) -> None:
    """Fill each (FQN, parameter) in place, deterministically per FQN (see module docstring).

    FQNs must be those of the full model (prefix a submodule's names yourself).
    `aliases` maps an FQN to the FQN whose values it should get (tied weights).
    Meta parameters are skipped: there is nothing to write.
    """
    aliases = aliases or {}
    for fqn, param in named_parameters:
        if param.is_meta:
            continue
        key = aliases.get(fqn, fqn)
        generator = torch.Generator().manual_seed(fqn_seed(seed, key))
        param.copy_(_init_value(key, param.shape, generator))


@torch.no_grad()
def init_buffers(named_buffers: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Reset BatchNorm state: running_mean 0, running_var 1, num_batches_tracked 0.

    Returns the FQNs of (non-meta) buffers it does not know; they are left as they are.
    """
    unknown = []
    for fqn, buf in named_buffers:
        if buf.is_meta:
            continue
        leaf = fqn.rsplit(".", 1)[-1]
        if leaf in ("running_mean", "num_batches_tracked"):
            buf.zero_()
        elif leaf == "running_var":
            buf.fill_(1)
        else:
            unknown.append(fqn)
    return unknown


def tied_parameter_aliases(module: nn.Module) -> dict[str, str]:
    """alias FQN -> canonical FQN for parameters registered under several names.

    The canonical FQN is the one `named_parameters()` reports (first occurrence).
    Works on meta modules.
    """
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for fqn, param in module.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[fqn] = first[id(param)]
        else:
            first[id(param)] = fqn
    return aliases


def materialize(module: nn.Module, device: torch.device | str, seed: int, *, prefix: str = "") -> nn.Module:
    """Move a (meta) module to `device` with `to_empty`, keep its tied parameters tied, and
    initialise parameters and buffers. `prefix` is the module's FQN in the full model
    (e.g. "layers.3."), so values match the full model's. Returns the module.

    Buffers other than BatchNorm statistics cannot be recovered (their values were never
    computed on meta): they are left uninitialised, with a warning naming them."""
    aliases = tied_parameter_aliases(module)
    module.to_empty(device=device)
    # to_empty replaces each module's Parameter separately, which unties tied weights.
    for alias, canonical in aliases.items():
        owner_name, _, leaf = alias.rpartition(".")
        setattr(module.get_submodule(owner_name), leaf, module.get_parameter(canonical))
    init_parameters(((prefix + n, p) for n, p in module.named_parameters()), seed)
    unknown = init_buffers((prefix + n, b) for n, b in module.named_buffers())
    if unknown:
        # e.g. HF Llama's rotary_emb.inv_freq: computed in __init__, lost by to_empty.
        warnings.warn(
            f"materialize: buffers left uninitialised after to_empty (recompute them yourself): {unknown}",
            stacklevel=2,
        )
    return module
