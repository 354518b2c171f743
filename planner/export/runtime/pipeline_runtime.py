"""The plan-independent half of an exported pipeplan training job (copied next to train.py).

train.py holds what the plan decides (SETTINGS: stages, schedule, micro-batches, optimizer,
precision), the data (get_batch) and the two training loops; this module holds the machinery they
share, with everything plan-specific passed in as arguments. It needs only torch (no pipeplan),
and is the same file in every job.

How the model is split:
1. build the model on the meta device and trace it with torch.export(strict=False) (trace_model);
2. give every graph op a stage (assign_stages): ops inside a plan layer (module path prefix, e.g.
   "layers.3") go to that layer's stage; ops outside every layer go to the stage of their first
   consumer (never earlier than their inputs);
3. cut the graph with split_module and wrap each piece in a chain-contract module
   (split_into_stages, StageModule): stage k receives every tensor live across boundary k-1 and
   returns every tensor live across boundary k, so skip connections are relayed stage by stage
   (the torch runtime only talks to adjacent stages). Parameters are never shipped: each stage
   owns the ones it uses;
4. each rank materialises only its own stages' parameters, initialised per FQN exactly as the
   unsplit model is (materialize, with model/init.py's rule), and runs PipelineStage in static
   mode with the shapes taken from a meta run of the split model (stage_shapes). A stage the plan
   recomputes runs its whole forward under activation checkpointing (StageModule).

Then, per step: tied-gradient sum and data-parallel average (sync_gradients), clipping by the
global norm over all stages (clip_by_global_norm), one JSON line (log_step), and checkpoints by
parameter FQN (save_checkpoint, finish_checkpoint, load_checkpoint).

Pretrained weights (safetensors only, never a pickle): WeightsFile reads every file's header and
match_weights checks the whole checkpoint against the model before any process group; load_weights
then opens only the files holding this rank's tensors and copies them one at a time into its
materialised parameters. save_weights_file / save_weights_index write a Hugging Face-style
folder (a shard per writing rank, the index, config.json).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.fx.passes.split_module import split_module
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.checkpoint import checkpoint

__all__ = [
    "JobError",
    "StageModule",
    "StepMeter",
    "WeightsFile",
    "all_reduce_mean",
    "apply_tensor_parallel",
    "assign_stages",
    "check_batch",
    "checkpoint_keys",
    "clip_by_global_norm",
    "enable_dtensor_graphs",
    "finish_checkpoint",
    "global_rank",
    "layer_of",
    "load_checkpoint",
    "load_weights",
    "local",
    "log_step",
    "match_weights",
    "materialize",
    "max_mem_bytes",
    "mesh_coords",
    "micro_batches",
    "mixed_precision",
    "module_path",
    "normalize_tp_grads",
    "pick_device",
    "pickle_refusal",
    "retarget_devices",
    "save_checkpoint",
    "save_weights_file",
    "save_weights_index",
    "shard_name",
    "split_into_stages",
    "stage_shapes",
    "state_bytes",
    "sync_gradients",
    "tp_reshape",
    "tp_shard_dims",
    "trace_model",
    "upcast",
    "weights_digest",
    "weights_report",
    "zero1_owners",
    "zero1_sync_params",
]


class JobError(Exception):
    """Bad input or setup; printed as one line before any process group exists."""


# --------------------------------------------------------------------------- data
def check_batch(inputs: tuple, target: torch.Tensor, example: tuple, batched: list[bool], num_microbatches: int) -> None:
    """Fail with a clear message when the data does not have the shape the plan was traced at.
    (Otherwise gloo aborts mid-step with "Received data size doesn't match expected size".)"""
    if len(inputs) != len(example):
        raise JobError(f"get_batch returned {len(inputs)} inputs; the model was traced with {len(example)}")
    for i, (x, ex, is_batched) in enumerate(zip(inputs, example, batched)):
        want = (ex.shape[0] * num_microbatches, *ex.shape[1:]) if is_batched else tuple(ex.shape)
        if tuple(x.shape) != tuple(want) or x.dtype != ex.dtype:
            raise JobError(
                f"get_batch input {i} has shape {tuple(x.shape)} {x.dtype}; the plan was traced at micro-batch shape "
                f"{tuple(ex.shape)} {ex.dtype}, so {num_microbatches} micro-batches need {tuple(want)} {ex.dtype}. "
                "Make get_batch return that shape, or re-profile and re-plan at the new shape and export again")
    if target.shape[0] != inputs[0].shape[0]:
        raise JobError(f"get_batch target has {target.shape[0]} rows but the inputs have {inputs[0].shape[0]}")


def micro_batches(inputs: tuple, target: torch.Tensor, n: int, batched: list[bool]):
    """Split like the pipeline schedule does (tensor_split on dim 0; non-batched inputs replicated)."""
    parts = [torch.tensor_split(x, n) if b else [x] * n for x, b in zip(inputs, batched)]
    return [(tuple(p[i] for p in parts), t) for i, t in enumerate(torch.tensor_split(target, n))]


# --------------------------------------------------------------------------- trace and split
def trace_model(module: nn.Module, example_inputs: tuple) -> torch.fx.GraphModule:
    """The model (built under torch.device("meta")), traced the way pipeplan's profiler traces it."""
    gm = torch.export.export(module, example_inputs, strict=False).module()
    for node in list(gm.graph.nodes):  # export's input-guard check: not part of the computation
        if node.op == "call_module" and not node.users and node.target == "_guards_fn":
            gm.graph.erase_node(node)
    gm.recompile()
    return gm


def module_path(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def layer_of(path: str, layer_ids: list[str]) -> str | None:
    """The plan layer owning a module path: the longest layer id that is the path or a prefix of it."""
    best = None
    for lid in layer_ids:
        if (path == lid or path.startswith(lid + ".")) and (best is None or len(lid) > len(best)):
            best = lid
    return best


def assign_stages(gm: torch.fx.GraphModule, stages: list[list[str]]) -> dict[str, int]:
    """fx node name -> stage index, for every computing node."""
    layer_stage = {lid: s for s, ids in enumerate(stages) for lid in ids}
    layer_ids = list(layer_stage)
    compute = [n for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module")]
    owned: dict[str, int] = {}
    found: set[str] = set()
    for n in compute:
        lid = layer_of(module_path(n), layer_ids)
        if lid is not None:
            owned[n.name] = layer_stage[lid]
            found.add(lid)
    missing = [lid for lid in layer_ids if lid not in found]
    if missing:
        raise JobError(f"plan layers {missing} are not modules of this model (or compute nothing); "
                       "was plan.json made for another model?")
    # Ops outside every layer (root-level adds, masks, the DLRM interaction) follow pipeplan's layer
    # rule (profiler/trace.py, rule 3): they join the latest stage that produced one of their inputs;
    # ops fed only by model inputs or constants join their earliest consumer's stage.
    stage: dict[str, int] = {}
    for n in compute:
        producers = [stage[a.name] for a in n.all_input_nodes if a.name in stage]
        if n.name in owned:
            if producers and owned[n.name] < max(producers):
                raise JobError(f"op {n.name} (module {module_path(n)!r}) is in stage {owned[n.name]} but uses a value "
                               f"from stage {max(producers)}: the plan's stages are not in the model's data-flow order")
            stage[n.name] = owned[n.name]
        elif producers:
            stage[n.name] = max(producers)
    for n in reversed(compute):
        if n.name not in stage:
            consumers = [stage[u.name] for u in n.users if u.name in stage]
            stage[n.name] = min(consumers) if consumers else 0
    return stage


def mixed_precision(device: torch.device, bf16_mixed: bool):
    """The forward context: bf16 autocast for bf16_mixed (weights stay fp32, autocast casts them per op
    and autograd brings their gradients back to fp32), nothing for fp32 or on meta (no autocast there)."""
    if not bf16_mixed or device.type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def upcast(output):
    """Floating outputs that autocast left in bf16, back to fp32: the loss is computed outside autocast on
    fp32 values, in the pipeline (the last stage's outputs are fp32, see StageModule) and unsplit alike."""
    if isinstance(output, torch.Tensor):
        return output.float() if output.dtype == torch.bfloat16 else output
    if isinstance(output, (tuple, list)):
        return type(output)(upcast(o) for o in output)
    return output  # e.g. an HF ModelOutput: its loss_fn upcasts the logits itself


class StageModule(nn.Module):
    """One pipeline stage with a chain contract (see the module docstring).

    `submod` is the split_module piece; it takes parameters as arguments, so this
    wrapper owns them (by canonical FQN) and feeds them in, together with the
    tensors received from the previous stage.

    Under bf16_mixed the stage computes under autocast, but every floating tensor it sends keeps the
    dtype it has without autocast (`out_dtypes`, from the meta run of stage_shapes; fp32 here). Why:
    static PipelineStage fixes in advance the dtype of each tensor crossing a boundary, and autocast
    picks output dtypes op by op and per device type (CPU and CUDA lists differ), so a cut after a
    Linear would send bf16 where the receiver expects fp32 (gloo aborts on the size mismatch; NCCL
    may not notice). Casting up at the boundary keeps the values exactly (bf16 -> fp32 is lossless)
    and is a no-op for the usual boundary, a pre-norm transformer's residual stream, which autocast
    already keeps in fp32. The price: such a bf16 boundary costs fp32 bytes on the wire.

    With `recompute` (the plan's StagePlan.recompute) the whole forward runs under
    torch.utils.checkpoint.checkpoint(use_reentrant=False, preserve_rng_state=True): autograd keeps
    only the stage's inputs per micro-batch and rebuilds that micro-batch's activations during its
    backward, the granularity pipeplan's memory model assumes (planner/costmodel/memory.py). The RNG
    state is restored for the rebuild, so dropout draws the same mask and the math is unchanged.
    Parameters are read from the module, not passed as arguments, so they are not saved twice.
    """

    def __init__(self, index: int, submod: torch.fx.GraphModule, call_args: list[str], bindings: list[tuple[str, int | None]],
                 in_names: list[str], out_names: list[str], param_fqns: dict[str, str], buffer_fqns: dict[str, str],
                 root: nn.Module, bf16_mixed: bool = False, recompute: bool = False) -> None:
        super().__init__()
        self.index = index
        self.submod = submod
        self.call_args, self.bindings = call_args, bindings
        self.in_names, self.out_names = in_names, out_names
        self.param_names = list(param_fqns)  # split-graph value names
        self.param_fqns = [param_fqns[n] for n in self.param_names]  # canonical FQNs in the full model
        self.params = nn.ParameterList([root.get_parameter(f) for f in self.param_fqns])
        self.buffer_names = list(buffer_fqns)
        self.buffer_fqns = [buffer_fqns[n] for n in self.buffer_names]
        for i, f in enumerate(self.buffer_fqns):
            self.register_buffer(f"buf_{i}", root.get_buffer(f), persistent=False)
        self.bf16_mixed = bf16_mixed
        self.recompute = recompute
        self.out_dtypes: list[torch.dtype] | None = None  # set by stage_shapes
        self.tp_mesh = None  # set by apply_tensor_parallel: the graph then runs on DTensors
        self.recompute_context: Callable[[], contextlib.AbstractContextManager] | None = None
        """Set by StepMeter.install: the context the rebuilt forward runs in (it counts that forward's tensors)."""

    def forward(self, *inputs: torch.Tensor):
        device = self.params[0].device if len(self.params) else inputs[0].device
        if self.recompute and device.type != "meta" and torch.is_grad_enabled():
            rebuild = self.recompute_context
            context_fn = (lambda: (contextlib.nullcontext(), rebuild())) if rebuild is not None else None
            return checkpoint(self._forward, *inputs, use_reentrant=False, preserve_rng_state=True,
                              **({"context_fn": context_fn} if context_fn is not None else {}))
        return self._forward(*inputs)

    def _forward(self, *inputs: torch.Tensor):
        if self.tp_mesh is not None:  # tensor parallel: received tensors are replicated on every TP rank
            from torch.distributed.tensor import DTensor, Replicate

            inputs = tuple(DTensor.from_local(x, self.tp_mesh, [Replicate()], run_check=False)
                           if isinstance(x, torch.Tensor) and not isinstance(x, DTensor) else x for x in inputs)
        env = dict(zip(self.in_names, inputs))
        env.update(zip(self.param_names, self.params))
        env.update((n, getattr(self, f"buf_{i}")) for i, n in enumerate(self.buffer_names))
        device = self.params[0].device if len(self.params) else inputs[0].device
        with mixed_precision(device, self.bf16_mixed):
            out = self.submod(*[env[a] for a in self.call_args])
        for name, idx in self.bindings:
            env[name] = out if idx is None else out[idx]
        # contiguous: P2P sends need it, and a boundary may be a view (a transpose, an expanded mask)
        result = tuple(env[n].contiguous() for n in self.out_names)
        if self.tp_mesh is not None:  # what crosses a stage boundary is a plain, replicated tensor
            result = tuple(_replicated_local(t) for t in result)
        if self.out_dtypes is not None:
            result = tuple(t.to(d) if t.is_floating_point() and t.dtype != d else t
                           for t, d in zip(result, self.out_dtypes))
        return result[0] if len(result) == 1 else result


def split_into_stages(gm: torch.fx.GraphModule, stages: list[list[str]], *, bf16_mixed: bool = False,
                      recompute: list[bool] | None = None) -> list[StageModule]:
    """Cut the traced model into len(stages) chain-contract stage modules (still on meta).
    `stages`: the plan layer ids of every stage; `bf16_mixed`: run each stage's forward under bf16 autocast;
    `recompute`: per stage, checkpoint its whole forward (StageModule; default: off everywhere).
    Reorders `gm`'s graph (stage by stage); the stages share its parameters."""
    num_stages = len(stages)
    recompute = list(recompute) if recompute is not None else [False] * num_stages
    if len(recompute) != num_stages:
        raise JobError(f"recompute has {len(recompute)} flags for {num_stages} stages")
    node_stage = assign_stages(gm, stages)
    used = set(node_stage.values())
    empty = [s for s in range(num_stages) if s not in used]
    if empty:
        raise JobError(f"stages {empty} compute nothing; every stage needs at least one layer")
    # Order ops by (stage, original position): still a valid topological order, since no op uses a
    # later stage's value, and split_module then emits the stages in pipeline order.
    position = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    output = next(n for n in gm.graph.nodes if n.op == "output")
    for n in sorted((n for n in gm.graph.nodes if n.name in node_stage),
                    key=lambda n: (node_stage[n.name], position[n.name])):
        output.prepend(n)
    gm.recompile()
    split = split_module(gm, None, lambda n: node_stage[n.name], keep_original_order=True)
    canonical = {id(p): fqn for fqn, p in gm.named_parameters()}
    producer: dict[str, int] = {}
    consumers: dict[str, set[int]] = {}
    order: list[str] = []
    attrs: dict[str, tuple[str, str]] = {}  # value name -> ("param" | "buffer", FQN)
    calls: dict[int, torch.fx.Node] = {}
    placeholders: list[str] = []
    outputs: list[str] = []
    for n in split.graph.nodes:
        if n.op == "placeholder":
            placeholders.append(n.name)
            producer[n.name] = -1
            order.append(n.name)
        elif n.op == "get_attr":
            value = gm
            for part in n.target.split("."):
                value = getattr(value, part)
            if isinstance(value, nn.Parameter):
                attrs[n.name] = ("param", canonical[id(value)])
            elif n.target in dict(gm.named_buffers()):
                attrs[n.name] = ("buffer", n.target)
            else:
                raise JobError(f"traced graph holds a constant tensor {n.target!r}; compute it in forward instead")
        elif n.op == "call_module":
            k = int(n.target.split("_")[-1])
            calls[k] = n
            producer[n.name] = k
            order.append(n.name)
            for a in n.all_input_nodes:
                consumers.setdefault(a.name, set()).add(k)
        elif n.op == "call_function":  # getitem unpacking a stage's tuple output
            producer[n.name] = producer[n.args[0].name]
            order.append(n.name)
        elif n.op == "output":
            outputs = [a.name for a in n.all_input_nodes]
            for a in outputs:
                consumers.setdefault(a, set()).add(num_stages)
    # live(b): produced at or before stage b, still needed after it.
    live = [[v for v in order if v in consumers and producer[v] <= b < max(consumers[v])] for b in range(num_stages)]
    modules = []
    for k in range(num_stages):
        call = calls[k]
        call_args = [a.name for a in call.args]
        bindings = [(u.name, u.args[1]) for u in call.users] if call.users and all(
            u.op == "call_function" and isinstance(u.args[1], int) for u in call.users) else [(call.name, None)]
        in_names = placeholders if k == 0 else live[k - 1]
        out_names = outputs if k == num_stages - 1 else live[k]
        params = {a: attrs[a][1] for a in call_args if a in attrs and attrs[a][0] == "param"}
        buffers = {a: attrs[a][1] for a in call_args if a in attrs and attrs[a][0] == "buffer"}
        modules.append(StageModule(k, getattr(split, call.target), call_args, bindings, in_names, out_names,
                                   params, buffers, gm, bf16_mixed, bool(recompute[k])))
    return modules


def stage_shapes(modules: list[StageModule], example_inputs: tuple) -> list[tuple[tuple, tuple]]:
    """(inputs, outputs) meta tensors of every stage for one micro-batch, from a meta run of the
    split model. requires_grad is what training gives them (static PipelineStage derives its
    gradient metadata from it)."""
    shapes = []
    args = tuple(x.detach() for x in example_inputs)
    for m in modules:
        out = m(*args)
        outs = out if isinstance(out, tuple) else (out,)
        m.out_dtypes = [t.dtype for t in outs]
        meta = lambda ts: tuple(torch.empty_like(t, device="meta").requires_grad_(t.requires_grad) for t in ts)
        shapes.append((meta(args), meta(outs)))
        args = outs
    return shapes


def retarget_devices(module: StageModule, device: torch.device) -> None:
    """A meta trace burns device="meta" into ops such as arange and aten.to; point them at the real device."""
    fix = lambda a: device if isinstance(a, torch.device) and a.type == "meta" else a
    for node in module.submod.graph.nodes:
        node.args = tuple(fix(a) for a in node.args)
        node.kwargs = {k: fix(v) for k, v in node.kwargs.items()}
    module.submod.recompile()


@torch.no_grad()
def materialize(module: StageModule, device: torch.device, seed: int,
                init_parameters: Callable[[Iterable[tuple[str, nn.Parameter]], int], object],
                init_buffers: Callable[[list[tuple[str, torch.Tensor]]], list]) -> dict[str, nn.Parameter]:
    """Real storage for one stage; returns its parameters by FQN. Values come from the same
    per-FQN rule as the unsplit model's (the model package's `init_parameters(named, seed)` and
    `init_buffers(named)`, which returns the buffers it has no value for), so they are identical.
    A tied parameter used by two stages gets one copy per stage, even on the same rank: zero-bubble
    schedules compute weight gradients per stage and would mix up two stages' contributions to one
    shared leaf. The copies get summed gradients and identical updates, so they stay equal."""
    params: dict[str, nn.Parameter] = {}
    for i, fqn in enumerate(module.param_fqns):
        meta = module.params[i]
        params[fqn] = nn.Parameter(torch.empty(meta.shape, dtype=meta.dtype, device=device),
                                   requires_grad=meta.requires_grad)
        module.params[i] = params[fqn]
    for i, fqn in enumerate(module.buffer_fqns):
        buf = getattr(module, f"buf_{i}")
        setattr(module, f"buf_{i}", torch.empty(buf.shape, dtype=buf.dtype, device=device))
        if init_buffers([(fqn, getattr(module, f"buf_{i}"))]):
            raise JobError(f"buffer {fqn} has no known initial value: give it one in model/__init__.py init_buffers")
    init_parameters(params.items(), seed)
    return params


# --------------------------------------------------------------------------- gradients
@torch.no_grad()
def clip_by_global_norm(counted: list[nn.Parameter], all_local: list[nn.Parameter], max_norm: float,
                        group=None, primary_replica: bool = True) -> float:
    """Clip by the norm over ALL stages: squares of `counted` (each parameter once across the
    pipeline) summed over `group`, then every local gradient scaled by the same factor.
    Hybrid jobs pass the whole world as `group` and primary_replica = (dp rank == 0): a sharded
    gradient (DTensor: TP or FSDP) adds its local piece, a replicated one counts once (_counts_here).
    Returns the norm before clipping; max_norm <= 0 only measures it."""
    sq = torch.zeros((), dtype=torch.float64, device=local(all_local[0]).device if all_local else "cpu")
    for p in counted:
        if _counts_here(p.grad, primary_replica):
            sq += local(p.grad).double().pow(2).sum()
    if group is not None:
        dist.all_reduce(sq, group=group)
    norm = float(sq.sqrt())
    coef = max_norm / (norm + 1e-6)
    if max_norm > 0 and coef < 1.0:
        for p in all_local:
            local(p.grad).mul_(coef)
    return norm


def _counts_here(grad: torch.Tensor, primary_replica: bool) -> bool:
    """Whether this rank's piece of `grad` enters the global norm, so that every element is counted
    exactly once over the world: a DTensor's piece counts unless it is a replica (Replicate placement)
    at a non-zero coordinate of that mesh dimension; anything not sharded over "dp" (a plain tensor,
    a tensor-parallel DTensor) counts only on the primary data-parallel replica."""
    from torch.distributed.tensor import DTensor, Replicate

    if not isinstance(grad, DTensor):
        return primary_replica
    mesh = grad.device_mesh
    if "dp" not in (mesh.mesh_dim_names or ()) and not primary_replica:
        return False
    coords = mesh.get_coordinate() or [0] * mesh.ndim
    return all(c == 0 for c, pl in zip(coords, grad.placements) if isinstance(pl, Replicate))


@torch.no_grad()
def all_reduce_mean(grads: list[torch.Tensor], group, size: int) -> None:
    """One flat all-reduce of many gradients (SUM then divide: gloo has no AVG)."""
    grads = [local(g) for g in grads]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    if size != 1:
        flat.div_(size)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


@torch.no_grad()
def sync_gradients(copies: dict[str, list[nn.Parameter]], shared: list[tuple[list[str], object]], dp_group,
                   dp: int) -> None:
    """Make every copy of every parameter hold the full gradient: sum over the stages that use a
    tied parameter (local copies, then the other owner ranks), then average over data-parallel
    replicas. Without the tied sum, training silently diverges."""
    for ps in copies.values():
        for p in ps:
            if p.grad is None:  # unused in this step: a zero gradient keeps collectives aligned
                p.grad = torch.zeros_like(p)
        for p in ps[1:]:
            local(ps[0].grad).add_(local(p.grad))
    for fqns, group in shared:
        all_reduce_mean([copies[f][0].grad for f in fqns], group, 1)
    if dp_group is not None:
        all_reduce_mean([ps[0].grad for ps in copies.values()], dp_group, dp)
    for ps in copies.values():
        for p in ps[1:]:
            local(p.grad).copy_(local(ps[0].grad))


# --------------------------------------------------------------------------- hybrid parallelism (PP x DP x TP)
# Rank layout: mesh dims ("pp", "dp", "tp"), tp fastest: global rank = (pp_rank * dp + dp_rank) * tp + tp_rank.
# Tensor parallelism runs the traced stage graph on DTensors: a parameter that the plan splits is a
# DTensor sharded over the "tp" mesh with the placements torch's ColwiseParallel / RowwiseParallel give it
# (Linear colwise: weight and bias Shard(0); rowwise: weight Shard(1), bias Replicate; Embedding colwise:
# Shard(1), rowwise: Shard(0)), every other parameter a replicated DTensor, and every op of the graph
# propagates shardings (DTensor's rules: the attention after a colwise projection runs on the local
# heads, the rowwise projection's partial sums are all-reduced). Views keep the model's global shapes,
# so the model code needs no "local heads" rewrite. Stage inputs enter as replicated DTensors and
# outputs leave as plain replicated tensors, so pipeline stages exchange ordinary tensors.
def global_rank(pp_rank: int, dp_rank: int, tp_rank: int, dp: int, tp: int) -> int:
    return (pp_rank * dp + dp_rank) * tp + tp_rank


def mesh_coords(rank: int, dp: int, tp: int) -> tuple[int, int, int]:
    """(pp_rank, dp_rank, tp_rank) of a global rank (the inverse of global_rank)."""
    rest, tp_rank = divmod(rank, tp)
    pp_rank, dp_rank = divmod(rest, dp)
    return pp_rank, dp_rank, tp_rank


def local(t):
    """A DTensor's local piece (shares its storage), or the tensor itself."""
    inner = getattr(t, "_local_tensor", None)
    return t if inner is None else inner


def _replicated_local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor, Replicate

    if not isinstance(t, DTensor):
        return t
    if any(not isinstance(pl, Replicate) for pl in t.placements):
        t = t.redistribute(t.device_mesh, [Replicate()] * t.device_mesh.ndim)
    return t.to_local()


def tp_shard_dims(model: nn.Module, tp_plan: dict[str, str]) -> dict[str, int | None]:
    """Canonical parameter FQN -> the dimension TP shards it on (None: replicated), for every
    parameter of `model` (the unsplit model on meta). tp_plan: module path -> "colwise" | "rowwise"
    (the plan's per-layer TP facts). A parameter shared by two modules (tied) must get one
    placement; a planned module that is not an nn.Linear or nn.Embedding is refused."""
    canonical: dict[int, str] = {}
    for name, p in model.named_parameters():
        canonical.setdefault(id(p), name)
    dims: dict[str, int | None] = dict.fromkeys(canonical.values())
    chosen: dict[str, str] = {}
    for path, style in sorted(tp_plan.items()):
        try:
            mod = model.get_submodule(path)
        except AttributeError:
            raise JobError(f"the TP plan names module {path!r}, which this model does not have") from None
        if style not in ("colwise", "rowwise"):
            raise JobError(f"TP style {style!r} for {path}: the job applies colwise and rowwise")
        if isinstance(mod, nn.Linear):
            want = {"weight": 0 if style == "colwise" else 1, "bias": 0 if style == "colwise" else None}
        elif isinstance(mod, nn.Embedding):
            want = {"weight": 1 if style == "colwise" else 0}
        else:
            raise JobError(f"the TP plan splits {path} ({type(mod).__name__}) {style}; the job splits only "
                           "nn.Linear and nn.Embedding modules")
        for leaf, dim in want.items():
            p = getattr(mod, leaf, None)
            if not isinstance(p, nn.Parameter):
                continue
            fqn = canonical[id(p)]
            key = f"{path}.{leaf} {style}"
            if fqn in chosen and dims[fqn] != dim:
                raise JobError(f"tied parameter {fqn} gets two TP placements ({chosen[fqn]} and {key}): give both "
                               "modules the same TP style, or replicate them")
            dims[fqn], chosen[fqn] = dim, key
    return dims


_DTENSOR_GRAPHS = False
_IMPLICIT = None


def enable_dtensor_graphs() -> None:
    """Once per process, before a TP stage runs: let DTensor ops take the plain tensors a traced graph
    builds itself (masks, RoPE tables, buffers) as replicated (implicit replication, for the whole
    process: backward ops meet them too), and give the CPU flash-attention kernel, which DTensor has no
    rule for in torch 2.13, the rule of its CUDA siblings (heads-sharded, or replicated)."""
    global _DTENSOR_GRAPHS
    if _DTENSOR_GRAPHS:
        return
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.experimental import implicit_replication, register_sharding

    global _IMPLICIT
    _IMPLICIT = implicit_replication()  # held, never exited: the setting lasts for the process
    _IMPLICIT.__enter__()
    aten = torch.ops.aten
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        R, S = Replicate(), Shard(1)  # (batch, heads, seq, head_dim): shard the heads

        def _sdpa_cpu(q, k, v, dropout_p=0.0, is_causal=False, *, attn_mask=None, scale=None):
            m = attn_mask is not None
            return [([R, R], [R, R, R, None, None] + [R] * m), ([S, S], [S, S, S, None, None] + [S] * m)]

        def _sdpa_cpu_backward(grad_out, q, k, v, out, lse, dropout_p, is_causal, *, attn_mask=None, scale=None):
            m = attn_mask is not None
            return [([R, R, R], [R] * 6 + [None, None] + [R] * m), ([S, S, S], [S] * 6 + [None, None] + [S] * m)]

        register_sharding(aten._scaled_dot_product_flash_attention_for_cpu.default)(_sdpa_cpu)
        register_sharding(aten._scaled_dot_product_flash_attention_for_cpu_backward.default)(_sdpa_cpu_backward)
    _DTENSOR_GRAPHS = True


@torch.no_grad()
def apply_tensor_parallel(module: StageModule, shard_dims: dict[str, int | None], mesh) -> dict[str, nn.Parameter]:
    """Turn a materialised stage into a tensor-parallel one on the 1-D `mesh` ("tp"): each parameter
    becomes a DTensor parameter (sharded on shard_dims[fqn], else replicated), cut from the full
    tensor every TP rank initialised identically (no communication). Returns the new FQN -> parameter."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    enable_dtensor_graphs()
    # export's dtype/device asserts (from .to() calls) have no DTensor rule: checks only, dropped here
    check = getattr(torch.ops.aten, "_assert_tensor_metadata", None)
    asserts = [n for n in module.submod.graph.nodes
               if n.op == "call_function" and check is not None and n.target == check.default and not n.users]
    for n in asserts:
        module.submod.graph.erase_node(n)
    # Every view and reshape becomes tp_reshape (below).
    aten = torch.ops.aten
    expanded = [n for n in module.submod.graph.nodes if n.op == "call_function"
                and n.target in (aten.reshape.default, aten.view.default) and isinstance(n.args[0], torch.fx.Node)]
    for n in expanded:
        n.target = tp_reshape
    if asserts or expanded:
        module.submod.recompile()
    params: dict[str, nn.Parameter] = {}
    for i, fqn in enumerate(module.param_fqns):
        p = module.params[i]
        dim = shard_dims.get(fqn)
        placement = Replicate() if dim is None else Shard(dim)
        params[fqn] = nn.Parameter(distribute_tensor(p.detach(), mesh, [placement], src_data_rank=None),
                                   requires_grad=p.requires_grad)
        module.params[i] = params[fqn]
    module.tp_mesh = mesh
    return params


def tp_reshape(x: torch.Tensor, shape) -> torch.Tensor:
    """A traced graph's view or reshape, on a DTensor of a tensor-parallel stage. DTensor decides
    view-or-copy from the GLOBAL tensor's strides, then views the local piece, whose strides may differ
    (an expanded repeat_kv, an attention output redistributed to Replicate): "view size is not
    compatible"; so the input is first copied contiguous (what reshape often does anyway). And a
    reshape that would split a sharded dimension unevenly (a fused q|k|v projection viewed as
    (B, T, 3, heads, hd) with its features sharded) is refused by DTensor: the input is then
    replicated first (an all-gather over tp), which keeps the math and costs communication."""
    from torch.distributed.tensor import DTensor, Replicate

    x = torch.ops.aten.clone.default(x, memory_format=torch.contiguous_format)
    if not isinstance(x, DTensor) or all(isinstance(pl, Replicate) for pl in x.placements):
        return torch.ops.aten.reshape.default(x, shape)
    try:
        return torch.ops.aten.reshape.default(x, shape)
    except RuntimeError:  # raised by DTensor's sharding propagation, before any communication
        x = x.redistribute(x.device_mesh, [Replicate()] * x.device_mesh.ndim)
        return torch.ops.aten.reshape.default(x, shape)


def normalize_tp_grads(params: Iterable[nn.Parameter]) -> None:
    """Bring every DTensor gradient to its parameter's placements (DTensor's rules may leave a sharded
    weight's gradient replicated, or a replicated one partial: a reduce over "tp" then), so that the
    local pieces line up with the parameters' for the sums, clipping and the optimizer."""
    from torch.distributed.tensor import DTensor

    for p in params:
        g = p.grad
        if isinstance(g, DTensor) and tuple(g.placements) != tuple(p.placements):
            p.grad = g.redistribute(p.device_mesh, p.placements)


def zero1_owners(copies: dict[str, list[nn.Parameter]], dp: int) -> dict[str, int]:
    """ZeRO-1: the data-parallel rank that holds each parameter's optimizer state and steps it
    (greedy by size, largest first, so the replicas hold about equal shares; deterministic)."""
    load = [0] * dp
    owner: dict[str, int] = {}
    for f in sorted(copies, key=lambda f: (-local(copies[f][0]).numel(), f)):
        r = min(range(dp), key=lambda i: (load[i], i))
        owner[f] = r
        load[r] += local(copies[f][0]).numel()
    return owner


@torch.no_grad()
def zero1_sync_params(copies: dict[str, list[nn.Parameter]], owner: dict[str, int], dp_group) -> None:
    """ZeRO-1 after the optimizer step: every parameter's owner broadcasts its updated value to the
    other replicas (one flat broadcast per owner)."""
    for r in sorted(set(owner.values())):
        fqns = sorted(f for f, o in owner.items() if o == r)
        flat = torch.cat([local(copies[f][0]).reshape(-1) for f in fqns])
        dist.broadcast(flat, src=dist.get_global_rank(dp_group, r), group=dp_group)
        offset = 0
        for f in fqns:
            n = local(copies[f][0]).numel()
            for p in copies[f]:
                local(p).copy_(flat[offset:offset + n].view_as(local(p)))
            offset += n


# --------------------------------------------------------------------------- devices and logging
def pick_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def max_mem_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB -> bytes


def log_step(step: int, loss: float, seconds: float, samples: int, device: torch.device,
             extra: dict | None = None) -> None:
    line = {"step": step, "loss": loss, "step_time_s": round(seconds, 6),
            "samples_per_s": round(samples / seconds, 3), "max_mem_bytes": max_mem_bytes(device)}
    print(json.dumps({**line, **(extra or {})}), flush=True)


# --------------------------------------------------------------------------- measuring (StepMeter)
def _unpack_held(h):
    """saved_tensors_hooks' unpack for the live-bytes counter: the tensor a _Held wraps."""
    return h.tensor if isinstance(h, _Held) else h


class _Held:
    """One saved tensor counted by StepMeter: holds it for autograd; its bytes leave the count when
    autograd drops it (after the micro-batch's backward). Views of one storage are counted once."""

    __slots__ = ("key", "meter", "stage", "tensor")

    def __init__(self, meter: StepMeter, tensor: torch.Tensor, key: int | tuple[int, int], stage: int) -> None:
        self.meter, self.tensor, self.key, self.stage = meter, tensor, key, stage

    def __del__(self) -> None:
        self.meter._release(self.key, self.stage)


class _RebuildCounter(TorchDispatchMode):
    """StepMeter's count of a recomputed stage's rebuilt forward (torch.utils.checkpoint packs what it
    saves under its own hooks, out of the saved-tensor counter's sight): every new storage an op makes
    counts for the stage while a Python tensor on it lives; views of an already counted storage add a
    reference; views of anything else (the stage's inputs, which the meter holds as such) do not count.
    A tensor-parallel stage's DTensors have no storage to read: their rebuilt micro-batch is not counted."""

    def __init__(self, meter: StepMeter, stage: int) -> None:
        super().__init__()
        self.meter, self.stage = meter, stage

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {_storage_ptr(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.meter._count_rebuilt(t, self.stage, given)
        return out


def _storage_ptr(t: torch.Tensor) -> int:
    """The data pointer of a tensor's storage; 0 where it has none to read (a DTensor, a meta or fake tensor:
    the meter leaves those out)."""
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return 0


class StepMeter:
    """What a rank measures per step, at a few microseconds per action (issue 19, item 2):

    - forward / backward (B and W) seconds per local stage: perf_counter around the stage's
      forward_one_chunk / backward_one_chunk / backward_weight_one_chunk (on CUDA after a synchronize
      of the stage's stream, so kernel time is in the action that launched it);
    - seconds blocked in p2p waits (torch's schedules wait on every batch of receives, and on sends
      at the end, through schedules._wait_batch_p2p, which is wrapped);
    - live bytes, exactly, on CPU: the bytes of every tensor autograd saves for backward
      (torch.autograd.graph.saved_tensors_hooks; one count per storage, parameters excluded) and of
      every stage output PipelineStage caches until the micro-batch's backward, per stage and in
      total, at their peak; a recomputed stage holds its inputs per micro-batch (counted
      from its forward to its backward). The rank's peak = parameters + gradients + optimizer state
      (their tensors' bytes) + that peak. On CUDA torch.cuda.max_memory_allocated.
    With `profile` on, every action is also recorded as (kind, stage, micro-batch, ms)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.param_keys: set[int] = set()
        self.input_keys: set[int] = set()
        self.profile = False
        self._counts: dict[int, list] = {}  # storage key -> [refs, bytes]
        self.live = 0
        self.stage_live: dict[int, int] = {}
        self.current = -1
        self._held_inputs: dict[tuple[int, int], int] = {}
        self._held_outputs: dict[tuple[int, int], list[tuple[int, int]]] = {}  # (stage, mb) -> [(key, bytes)]
        self._output_keys: dict[int, int] = {}  # storage key -> references from _held_outputs
        self.reset()

    def reset(self, count_memory: bool = True) -> None:
        """Start a step. count_memory: count live bytes this step (the saved-tensor hooks cost a few
        microseconds per saved tensor); without it the previous counted step's peaks are kept: a static
        schedule holds the same tensors every step."""
        self.count_memory = count_memory
        self.fwd: dict[int, float] = {}
        self.bwd: dict[int, float] = {}
        self.n_fwd: dict[int, int] = {}
        self.n_bwd: dict[int, int] = {}
        self.wait_s = 0.0
        if count_memory or not hasattr(self, "peak_live"):
            self.peak_live = self.live
            self.stage_peak: dict[int, int] = dict(self.stage_live)
        self.actions: list[tuple[str, int, int, float]] = []
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    # -- live bytes
    def _add(self, stage: int, n: int) -> None:
        self.live += n
        self.stage_live[stage] = self.stage_live.get(stage, 0) + n
        self.peak_live = max(self.peak_live, self.live)
        if self.stage_live[stage] > self.stage_peak.get(stage, 0):
            self.stage_peak[stage] = self.stage_live[stage]

    def _release(self, key, stage: int) -> None:
        entry = self._counts.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            del self._counts[key]
            self.live -= entry[1]
            self.stage_live[stage] = self.stage_live.get(stage, 0) - entry[1]

    def _pack(self, t: torch.Tensor):
        if self.cuda or t.device.type == "meta":
            return t
        try:
            storage = t.untyped_storage()
            key = storage.data_ptr()
        except (RuntimeError, NotImplementedError):
            return t
        if key in self.param_keys or key == 0 or key in self._output_keys:
            return t
        nbytes = storage.nbytes()
        if key in self.input_keys:  # a micro-batch of the step's input batch: a view of the whole batch,
            # which the job holds anyway; the stage keeps (and the plan counts) the micro-batch's slice
            key, nbytes = (key, t.storage_offset()), t.numel() * t.element_size()
        entry = self._counts.get(key)
        if entry is None:
            self._counts[key] = [1, nbytes]
            self._add(self.current, nbytes)
        else:
            entry[0] += 1
        return _Held(self, t, key, self.current)

    def rebuild_context(self) -> contextlib.AbstractContextManager:
        """The context a recomputed stage's rebuilt forward runs in (StageModule.recompute_context): on a
        counted CPU step it counts that forward's tensors for the stage (_RebuildCounter)."""
        if self.cuda or not self.count_memory:
            return contextlib.nullcontext()
        return _RebuildCounter(self, self.current)

    def _count_rebuilt(self, t: torch.Tensor, stage: int, given: set[int]) -> None:
        key = _storage_ptr(t)
        if key == 0 or key in self.param_keys or key in self._output_keys:
            return
        entry = self._counts.get(key)
        if entry is None:
            if key in given:  # a view of an input the meter does not count as a new tensor
                return
            nbytes = t.untyped_storage().nbytes()
            self._counts[key] = entry = [0, nbytes]
            self._add(stage, nbytes)
        entry[0] += 1
        weakref.finalize(t, self._release, key, stage)

    def saved_tensors(self):
        """The context the schedule's step runs in (counts saved tensors on a counted step)."""
        if not self.count_memory or self.cuda:
            return contextlib.nullcontext()
        return torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack_held)

    def watch_params(self, params: Iterable[torch.Tensor]) -> None:
        self.param_keys = {local(p).untyped_storage().data_ptr() for p in params}

    def watch_inputs(self, tensors: Iterable[torch.Tensor]) -> None:
        """This step's input batch (all micro-batches): the schedule splits it into views, so a saved
        micro-batch input is counted by its own bytes, not by the whole batch's storage."""
        self.input_keys = {t.untyped_storage().data_ptr() for t in tensors if torch.is_tensor(t)}

    # -- timing
    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def install(self, stages: list, schedules_module, input_bytes: dict[int, int] | None = None) -> None:
        """Wrap the local PipelineStages' actions and the schedules' p2p wait (module-level).
        input_bytes: per stage index, the bytes of one micro-batch's inputs (held by a recomputed stage)."""
        meter = self
        for st in stages:
            idx = st.stage_index
            recompute = bool(getattr(st.submod, "recompute", False))
            if recompute:
                st.submod.recompute_context = meter.rebuild_context
            held = (input_bytes or {}).get(idx, 0)

            def timed(fn, kind, idx=idx, recompute=recompute, held=held):
                def run(chunk, *a, **k):
                    prev, meter.current = meter.current, idx
                    meter._sync()
                    t0 = time.perf_counter()
                    if kind == "F" and recompute and not meter.cuda and meter.count_memory:
                        n = held
                        meter._held_inputs[(idx, chunk)] = n
                        meter._add(idx, n)
                    out = None
                    try:
                        out = fn(chunk, *a, **k)
                        return out
                    finally:
                        if kind == "F" and not meter.cuda and meter.count_memory:
                            meter._hold_outputs(idx, chunk, out)
                        meter._sync()
                        dt = time.perf_counter() - t0
                        meter.current = prev
                        if kind == "F":
                            meter.fwd[idx] = meter.fwd.get(idx, 0.0) + dt
                            meter.n_fwd[idx] = meter.n_fwd.get(idx, 0) + 1
                        else:
                            meter.bwd[idx] = meter.bwd.get(idx, 0.0) + dt
                            if kind == "B":
                                meter.n_bwd[idx] = meter.n_bwd.get(idx, 0) + 1
                        if kind == "B":
                            meter._drop_outputs(idx, chunk)
                        if kind != "F" and (idx, chunk) in meter._held_inputs and kind == "B":
                            n = meter._held_inputs.pop((idx, chunk))
                            meter.live -= n
                            meter.stage_live[idx] -= n
                        if meter.profile:
                            meter.actions.append((kind, idx, int(chunk), round(dt * 1e3, 4)))
                return run

            st.forward_one_chunk = timed(st.forward_one_chunk, "F")
            st.backward_one_chunk = timed(st.backward_one_chunk, "B")
            st.backward_weight_one_chunk = timed(st.backward_weight_one_chunk, "W")
        wait = schedules_module._wait_batch_p2p

        def timed_wait(work):
            t0 = time.perf_counter()
            try:
                return wait(work)
            finally:
                meter.wait_s += time.perf_counter() - t0

        schedules_module._wait_batch_p2p = timed_wait

    def _hold_outputs(self, stage: int, chunk: int, out) -> None:
        """The stage's outputs of one micro-batch: PipelineStage keeps them until that micro-batch's
        backward (fwd_cache); counted unless autograd already holds their storage."""
        outs = out if isinstance(out, (tuple, list)) else (out,)
        held = []
        for t in outs:
            if not torch.is_tensor(t) or t.device.type == "meta":
                continue
            s = t.untyped_storage()
            key = s.data_ptr()
            if key == 0 or key in self._counts or key in self.param_keys or key in self._output_keys:
                continue
            self._output_keys[key] = 1
            held.append((key, s.nbytes()))
            self._add(stage, s.nbytes())
        self._held_outputs[(stage, int(chunk))] = held

    def _drop_outputs(self, stage: int, chunk: int) -> None:
        for key, n in self._held_outputs.pop((stage, int(chunk)), []):
            self._output_keys.pop(key, None)
            self.live -= n
            self.stage_live[stage] = self.stage_live.get(stage, 0) - n

    def peak_bytes(self, state_bytes: int) -> int:
        if self.cuda:
            return int(torch.cuda.max_memory_allocated(self.device))
        return int(state_bytes + self.peak_live)


def state_bytes(params: Iterable[torch.Tensor], opt) -> int:
    """Bytes of parameters, their gradients and the optimizer state (each storage once)."""
    seen: dict[int, int] = {}

    def add(t):
        t = local(t)
        if torch.is_tensor(t) and t.device.type != "meta":
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()

    for p in params:
        add(p)
        add(p.grad)
        for v in opt.state.get(p, {}).values():
            add(v)
    return sum(seen.values())


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(ckpt_dir: Path, step: int, groups: dict[str, dict[str, torch.Tensor]], opt, rank: int,
                    write_model: bool) -> None:
    """step_N/<group>.pt: {fqn: tensor} and the optimizer state of those parameters by FQN (so a
    checkpoint does not depend on how parameters are numbered on a rank); rank_R.pt: RNG states."""
    d = ckpt_dir / f"step_{step:06d}"
    d.mkdir(parents=True, exist_ok=True)
    if write_model:
        for name, tensors in groups.items():
            state = {f: {k: local(v) for k, v in opt.state[t].items()} for f, t in tensors.items() if t in opt.state}
            torch.save({"step": step, "tensors": {f: local(t).detach() for f, t in tensors.items()}, "optim": state},
                       d / f"{name}.pt")
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    torch.save({"step": step, "rng": rng}, d / f"rank_{rank}.pt")


def _like_param(v, p):
    """A saved optimizer-state value back in its parameter's form: a local piece the shape of a DTensor
    parameter's becomes a DTensor with the parameter's mesh and placements."""
    if not torch.is_tensor(v):
        return v
    v = v.to(local(p).device)
    if local(p) is not p and v.shape == local(p).shape and v.dim() > 0:
        from torch.distributed.tensor import DTensor

        return DTensor.from_local(v, p.device_mesh, p.placements, run_check=False)
    return v


def finish_checkpoint(ckpt_dir: Path, step: int) -> None:
    """Point `latest` at `step` (atomically), once every rank's files are written."""
    (ckpt_dir / "latest.tmp").write_text(str(step))
    os.replace(ckpt_dir / "latest.tmp", ckpt_dir / "latest")


@torch.no_grad()
def load_checkpoint(ckpt_dir: Path, groups: dict[str, dict[str, torch.Tensor]], opt, rank: int) -> int:
    """Restore what save_checkpoint wrote; returns the step it was taken at."""
    latest = ckpt_dir / "latest"
    if not latest.exists():
        raise JobError(f"--resume: no checkpoint in {ckpt_dir} (no 'latest' file); train with --checkpoint-every first")
    step = int(latest.read_text())
    d = ckpt_dir / f"step_{step:06d}"
    for name, tensors in groups.items():
        saved = torch.load(d / f"{name}.pt", map_location="cpu", weights_only=True)
        for f, t in tensors.items():
            local(t).copy_(saved["tensors"][f])
            if f in saved["optim"]:
                opt.state[t] = {k: _like_param(v, t) for k, v in saved["optim"][f].items()}
    rng = torch.load(d / f"rank_{rank}.pt", map_location="cpu", weights_only=True)["rng"]
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return step


# --------------------------------------------------------------------------- weights (safetensors only)
# Pretrained weights enter a job only as safetensors, read by name; nothing is ever unpickled.
# Every rank reads the header of every file (names, dtypes, shapes: a few KB) and checks the WHOLE
# checkpoint against the model before training, so all ranks stop with the same message; then it
# opens with safetensors.safe_open only the files holding its own stages' tensors and copies them,
# one tensor at a time, into its already-materialised parameters (peak: the stage's parameters plus
# the largest single tensor read).
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool, "F8_E4M3": getattr(torch, "float8_e4m3fn", None),
              "F8_E5M2": getattr(torch, "float8_e5m2", None)}
MAX_HEADER_BYTES = 100 * 2**20


def pickle_refusal(path: str | Path) -> str:
    """The one-line refusal for a pickle checkpoint (.bin, .pt, ...), with a command that converts it.
    The conversion runs in the user's own process, by their choice: the job never unpickles."""
    p = Path(path)
    if p.is_dir() or p.name.startswith("pytorch_model"):
        folder = p if p.is_dir() else p.parent
        cmd = (f"python -c \"from transformers import AutoModelForCausalLM as M; "
               f"M.from_pretrained('{folder}').save_pretrained('{folder}-safetensors', safe_serialization=True)\"")
    else:
        cmd = (f"python -c \"import torch; from safetensors.torch import save_file; "
               f"save_file({{k: v.contiguous() for k, v in torch.load('{p}', weights_only=True).items()}}, "
               f"'{p.with_suffix('.safetensors')}')\"")
    return (f"--weights {path}: pickle checkpoints (.bin/.pt) are refused, because loading one runs code from the "
            f"file; convert it to safetensors yourself, then pass the result: {cmd}")


class WeightsFile:
    """A safetensors checkpoint resolved from --weights: a Hugging Face folder (model.safetensors, or
    model-0000x-of-0000y.safetensors with model.safetensors.index.json) or one .safetensors file.
    Only headers are read here: `entries[key] = (file, dtype, shape, nbytes)`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.files_opened: list[str] = []  # by safe_open, in load_weights
        self.bytes_read = 0  # tensor bytes read by load_weights
        self.header_bytes = 0
        self.entries: dict[str, tuple[Path, torch.dtype | None, tuple[int, ...], int]] = {}
        self._indexed: dict[Path, set[str]] = {}  # file -> keys the index puts there
        for f in self._files():
            for key, (dtype, shape, nbytes) in self._header(f).items():
                if key in self.entries:
                    raise JobError(f"--weights {self.path}: tensor {key} is in both {self.entries[key][0].name} and {f.name}")
                self.entries[key] = (f, dtype, shape, nbytes)
        self.total_bytes = sum(e[3] for e in self.entries.values())  # every tensor's bytes

    def _files(self) -> list[Path]:
        p = self.path
        if p.suffix.lower() in PICKLE_SUFFIXES:
            raise JobError(pickle_refusal(p))
        if p.is_file():
            if p.name == INDEX_FILE:
                p = p.parent
            elif p.suffix != ".safetensors":
                raise JobError(f"--weights {p}: not a .safetensors file; give a safetensors file or a Hugging Face "
                               "checkpoint folder")
            else:
                return [p]
        if not p.is_dir():
            raise JobError(f"--weights {p} does not exist; give a safetensors file or a Hugging Face checkpoint folder")
        index = p / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                shards = sorted(set(weight_map.values()))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise JobError(f"--weights {index}: not a safetensors index (a JSON object with a weight_map)") from None
            bad = [s for s in shards if not isinstance(s, str) or Path(s).name != s or not s.endswith(".safetensors")]
            if bad:
                raise JobError(f"--weights {index}: the weight_map names files that are not .safetensors files in "
                               f"that folder: {bad[:3]}")
            missing = [s for s in shards if not (p / s).is_file()]
            if missing:
                raise JobError(f"--weights {p}: the index names shard(s) that are not there: {', '.join(missing[:5])}")
            for s in shards:  # the index and the shards must agree (checked in _header)
                self._indexed[p / s] = {k for k, v in weight_map.items() if v == s}
            return [p / s for s in shards]
        if (p / SINGLE_FILE).is_file():
            return [p / SINGLE_FILE]
        pickles = sorted(x.name for x in p.iterdir() if x.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise JobError(pickle_refusal(p))
        found = sorted(x.name for x in p.glob("*.safetensors"))
        if len(found) == 1:
            return [p / found[0]]
        raise JobError(f"--weights {p}: no {SINGLE_FILE} or {INDEX_FILE} in this folder"
                       + (f" (it holds {len(found)} .safetensors files but no index)" if found else ""))

    def _header(self, f: Path) -> dict[str, tuple[torch.dtype | None, tuple[int, ...], int]]:
        """Names, dtypes and shapes from a safetensors header (8-byte length, then JSON), without
        reading any tensor data."""
        try:
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                if not 2 <= n <= MAX_HEADER_BYTES:
                    raise ValueError
                header = json.loads(fh.read(n))
            self.header_bytes += 8 + n
            out, data_end = {}, 0
            for key, info in dict(header).items():
                if key == "__metadata__":
                    continue
                begin, end = info["data_offsets"]
                out[key] = (_ST_DTYPES.get(info["dtype"]), tuple(int(s) for s in info["shape"]), int(end) - int(begin))
                data_end = max(data_end, int(end))
            size = f.stat().st_size
        except (OSError, ValueError, KeyError, TypeError):
            raise JobError(f"--weights {f}: not a safetensors file (unreadable header)") from None
        if size < 8 + n + data_end:
            raise JobError(f"--weights {f}: truncated ({size} bytes; its header describes {8 + n + data_end})")
        expected = self._indexed.get(f)
        if expected is not None and expected != set(out):
            extra = sorted(expected ^ set(out))
            raise JobError(f"--weights {f.parent}: {INDEX_FILE} and {f.name} disagree about tensors {extra[:5]}")
        return out


def checkpoint_keys(model: nn.Module) -> dict[str, list[str]]:
    """Canonical parameter FQN -> the checkpoint keys it may be stored under, from the model the job
    builds (on meta). The canonical FQN is the first name named_parameters() gives (a tied parameter
    appears once, under its owner: GPT-2's transformer.wte.weight, not lm_head.weight). Also accepted:
    every alias of a tied parameter (a checkpoint may hold lm_head.weight too), and, for a Hugging
    Face model, every name without the base model's prefix (`model.`, `transformer.`), which is how a
    checkpoint of the bare base model (LlamaModel, GPT2Model) names its tensors."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    prefix = getattr(model, "base_model_prefix", "") or ""
    keys: dict[str, list[str]] = {}
    for names in groups.values():
        alts = list(names)
        if prefix:
            alts += [n[len(prefix) + 1:] for n in names if n.startswith(prefix + ".")]
        keys[names[0]] = list(dict.fromkeys(alts))
    return keys


def _ignored_keys(model: nn.Module) -> tuple[set[str], list[str]]:
    """Checkpoint keys that are not parameters but are no error: the model's buffers (RoPE inv_freq,
    GPT-2's attn.bias mask; the job recomputes them) and the model's own ignore patterns (HF's
    _keys_to_ignore_on_load_unexpected)."""
    import re

    prefix = getattr(model, "base_model_prefix", "") or ""
    names = {n for n, _ in model.named_buffers(remove_duplicate=False)}
    names |= {n[len(prefix) + 1:] for n in names if prefix and n.startswith(prefix + ".")}
    patterns = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])]
    return names, patterns


def _kind(dtype: torch.dtype | None) -> str:
    if dtype is None:
        return "unknown"
    return "float" if dtype.is_floating_point else ("bool" if dtype == torch.bool else "int")


def match_weights(source: WeightsFile, model: nn.Module) -> dict[str, str]:
    """Canonical FQN -> checkpoint key for every parameter of `model` (the unsplit model on meta),
    after checking names, shapes and dtypes of the whole checkpoint. Raises JobError listing every
    missing, unexpected and mismatched tensor. A floating-point tensor may have another floating
    dtype (a bf16 checkpoint for fp32 master weights): it is converted on copy; a float/int/bool
    kind mismatch is an error."""
    params = dict(model.named_parameters())
    keys = checkpoint_keys(model)
    chosen: dict[str, str] = {}
    used: set[str] = set()
    missing, mismatched = [], []
    for fqn, alts in keys.items():
        present = [k for k in alts if k in source.entries]
        if not present:
            missing.append(fqn)
            continue
        used.update(present)
        p = params[fqn]
        for k in present:
            _, dtype, shape, _ = source.entries[k]
            if shape != tuple(p.shape) or _kind(dtype) != _kind(p.dtype):
                mismatched.append(f"{k} {list(shape)} {str(dtype).replace('torch.', '')} "
                                  f"(model: {list(p.shape)} {str(p.dtype).replace('torch.', '')})")
        chosen[fqn] = present[0]
    names, patterns = _ignored_keys(model)
    unexpected = sorted(k for k in source.entries
                        if k not in used and k not in names and not any(r.search(k) for r in patterns))
    if missing or unexpected or mismatched:
        show = lambda xs: ", ".join(xs[:8]) + (f", ... ({len(xs)} in all)" if len(xs) > 8 else "")
        parts = ([f"missing {len(missing)}: {show(missing)}"] if missing else []) + \
                ([f"unexpected {len(unexpected)}: {show(unexpected)}"] if unexpected else []) + \
                ([f"mismatched {len(mismatched)}: {show(mismatched)}"] if mismatched else [])
        raise JobError(f"--weights {source.path} does not fit this model: {'; '.join(parts)}")
    return chosen


@torch.no_grad()
def load_weights(source: WeightsFile, chosen: dict[str, str], params: dict[str, list[torch.Tensor]]) -> None:
    """Copy checkpoint tensors into materialised parameters: params[fqn] lists this rank's copies of
    one parameter (one per local stage using it; a tied parameter on two ranks is read by each, the
    same bytes, so the copies agree with no collective). Opens only the files that hold these
    tensors (safe_open: memory-mapped, lazy) and reads each tensor once, straight into its copies."""
    from safetensors import safe_open

    unknown = sorted(f for f in params if f not in chosen)
    if unknown:  # the split model names a parameter the unsplit model does not: not expected to happen
        raise JobError(f"--weights: parameters {unknown[:5]} of this rank's stages have no checkpoint key")
    by_file: dict[Path, list[str]] = {}
    for fqn in params:
        by_file.setdefault(source.entries[chosen[fqn]][0], []).append(fqn)
    for f in sorted(by_file):
        with safe_open(str(f), framework="pt", device="cpu") as st:
            source.files_opened.append(f.name)
            for fqn in by_file[f]:
                key = chosen[fqn]
                t = st.get_tensor(key)  # one tensor in memory at a time
                source.bytes_read += t.numel() * t.element_size()
                for p in params[fqn]:
                    p.copy_(t)
                del t


def weights_report(source: WeightsFile, rank: int, tensors: int) -> str:
    return (f"rank {rank}: loaded {tensors} tensors, {source.bytes_read:,} of {source.total_bytes:,} bytes, from "
            f"{len(source.files_opened)} of {len({e[0] for e in source.entries.values()})} file(s) of {source.path}")


def weights_digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's bytes (CPU, contiguous): a per-parameter fingerprint for --check-weights."""
    import hashlib

    t = t.detach().to("cpu").contiguous().reshape(-1)
    return hashlib.sha256(t.view(torch.uint8).numpy().tobytes()).hexdigest()


# --------------------------------------------------------------------------- saving (Hugging Face layout)
def shard_name(i: int, n: int) -> str:
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


@torch.no_grad()
def save_weights_file(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """One safetensors file {key: tensor} (metadata format "pt", which transformers expects), atomically."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = {k: t.detach().to("cpu").contiguous() for k, t in sorted(tensors.items())}
    _write_atomic(path, lambda tmp: save_file(cpu, str(tmp), metadata={"format": "pt"}))


def save_weights_index(out_dir: Path, weight_map: dict[str, str] | None, total_size: int, config: Path | None) -> None:
    """Finish a save: model.safetensors.index.json ({"metadata": {"total_size"}, "weight_map"}), or
    none when weight_map is None (a single model.safetensors); the model's config.json if it has one
    (a Hugging Face model); and removal of the files of an earlier save into the same folder that
    this one does not name (so the folder always describes one model)."""
    import shutil

    out_dir.mkdir(parents=True, exist_ok=True)
    if weight_map is not None:
        text = json.dumps({"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))},
                          indent=2) + "\n"
        _write_atomic(out_dir / INDEX_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        keep = set(weight_map.values())
    else:
        (out_dir / INDEX_FILE).unlink(missing_ok=True)
        keep = {SINGLE_FILE}
    if config is not None and config.is_file():
        _write_atomic(out_dir / "config.json", lambda tmp: shutil.copyfile(config, tmp))
    for f in out_dir.glob("model*.safetensors"):
        if f.name not in keep:
            f.unlink()
