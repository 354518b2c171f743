"""Per-op FLOPs and bytes moved, counted with torch's own FLOP formulas.

`OpCostMode` is a TorchDispatchMode that sees every aten op a layer runs
(forward, and backward when autograd runs inside it) and records, per op:
FLOPs from `torch.utils.flop_counter`'s registry (the very formulas
`FlopCounterMode` uses, so Σ over layers equals FlopCounterMode's total), and
the bytes the op reads and writes (tensor arguments + outputs; views move
nothing). A roofline turns each op into time, so matmuls are compute bound and
elementwise ops memory bound, op by op.

Importing this module registers the FLOP formulas torch 2.13 lacks for CPU
scaled-dot-product attention (shared notes §4): without them FlopCounterMode
counts 0 FLOPs for SDPA on CPU and on FakeTensor(cpu).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import (
    flop_registry,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

aten = torch.ops.aten


def _register_cpu_sdpa() -> None:
    fwd = aten._scaled_dot_product_flash_attention_for_cpu
    bwd = aten._scaled_dot_product_flash_attention_for_cpu_backward
    if fwd in flop_registry or fwd.default in flop_registry:
        return  # a future torch registered it itself

    @register_flop_formula(fwd)
    def _sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    @register_flop_formula(bwd)
    def _sdpa_cpu_bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


_register_cpu_sdpa()

# Ops that only look at metadata: FlopCounterMode skips them too.
_METADATA_OPS = {
    aten.sym_is_contiguous.default, aten.is_contiguous.default, aten.is_contiguous.memory_format,
    aten.is_strides_like_format.default, aten.is_non_overlapping_and_dense.default, aten.size.default,
    aten.sym_size.default, aten.stride.default, aten.sym_stride.default, aten.storage_offset.default,
    aten.sym_storage_offset.default, aten.numel.default, aten.sym_numel.default, aten.dim.default,
    torch.ops.prim.layout.default, torch.ops.prim.device.default,
}


def op_flops(func, args, kwargs, out) -> int:
    """FLOPs of one aten op by torch's registry (0 for ops without a formula)."""
    formula = flop_registry.get(func) or flop_registry.get(func.overloadpacket)
    if formula is None:
        return 0
    return int(formula(*args, **kwargs, out_val=out))


def _moves_no_data(func) -> bool:
    """Views, aliases and metadata ops read and write no memory."""
    if func in _METADATA_OPS:
        return True
    schema = func._schema
    return bool(schema.returns) and all(r.alias_info is not None and not r.alias_info.is_write
                                        for r in schema.returns)


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass
class OpTotals:
    """What a run of ops added up to."""

    flops: int = 0
    bytes: int = 0
    ms: float = 0.0
    """Σ per-op roofline time (only when the mode was given an `op_time`)."""

    def add(self, other: OpTotals) -> None:
        self.flops += other.flops
        self.bytes += other.bytes
        self.ms += other.ms


class OpCostMode(TorchDispatchMode):
    """Adds up FLOPs and bytes (and optionally roofline ms) of every aten op run inside it.

    `op_time(flops, bytes) -> ms` is the roofline; `totals` is replaced by the
    caller between phases (forward, backward) to split the counts.
    """

    def __init__(self, op_time: Callable[[float, float], float] | None = None) -> None:
        super().__init__()
        self.op_time = op_time
        self.totals = OpTotals()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _METADATA_OPS:
            return func(*args, **kwargs)
        # Composite ops without a formula: count their parts (as FlopCounterMode does).
        if flop_registry.get(func) is None and flop_registry.get(func.overloadpacket) is None:
            with self:
                r = func.decompose(*args, **kwargs)
            if r is not NotImplemented:
                return r
        out = func(*args, **kwargs)
        flops = op_flops(func, args, kwargs, out)
        nbytes = 0
        if not _moves_no_data(func):
            leaves = tree_flatten((args, kwargs))[0] + tree_flatten(out)[0]
            nbytes = sum(tensor_bytes(t) for t in leaves if isinstance(t, torch.Tensor))
        self.totals.flops += flops
        self.totals.bytes += nbytes
        if self.op_time is not None and (flops or nbytes):
            self.totals.ms += self.op_time(flops, nbytes)
        return out
