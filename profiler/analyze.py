"""Run the layer programs once under FakeTensorMode and measure what each costs.

No memory is used: every tensor is a FakeTensor on "cpu" (so SDPA dispatches
to the flash kernel and autograd saves what a flash kernel saves, not the
T x T matrix a meta-device run would keep). Per layer this records:

- forward and backward FLOPs and bytes moved (profiler.flops.OpCostMode);
- roofline forward, backward and input-grad-only backward time for a preset;
- saved-activation bytes: every tensor autograd packs during the layer's
  forward (saved_tensors_hooks), one count per storage, parameters excluded.
  A storage saved by several layers is counted once, in the first;
- output bytes, and the bytes on every edge between layers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._pytree import tree_flatten, tree_map

from profiler.flops import OpCostMode, OpTotals, tensor_bytes
from profiler.layers import LayerProgram, resolve_attr
from profiler.tp import RegionRun, TpCost

Progress = Callable[[str, float], None]


@dataclass
class LayerCost:
    fwd: OpTotals = field(default_factory=OpTotals)
    bwd: OpTotals = field(default_factory=OpTotals)
    bwd_input: OpTotals | None = None
    """The input-gradient-only backward (zero-bubble B); None when the layer has no float inputs."""
    activation_bytes: int = 0
    output_bytes: int = 0
    saved_inputs: list[bool] = field(default_factory=list)
    """Per input (prog.input_names): does this layer save (a view of) it for backward?"""
    saved_outputs: list[bool] = field(default_factory=list)
    """Per output (prog.output_names): does this layer save it for backward?"""
    fwd_peak_bytes: int = 0
    """Peak bytes the layer's forward holds without autograd, its inputs and weights left out: every
    intermediate alive at once, its outputs included (forward_peak_bytes)."""
    tp: TpCost | None = None
    """What tensor parallelism splits in this layer (profiler.tp); None when the layer has no TP plan."""


@dataclass
class Analysis:
    costs: dict[str, LayerCost]
    edges: dict[tuple[str, str], list]
    """(src, dst) -> [bytes, requires_grad, saved_by_src, saved_by_dst] (ProfileEdge's fields)."""
    input_bytes: int


def storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def _keys(value) -> set[int]:
    """Storage keys of the tensors in a (nested) value."""
    return {storage_key(t) for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)}


def _fake_converter(mode: FakeTensorMode) -> Callable[[torch.Tensor], torch.Tensor]:
    memo: dict[int, torch.Tensor] = {}

    def convert(t):
        if not isinstance(t, torch.Tensor) or isinstance(t, FakeTensor):
            return t
        if id(t) in memo:
            return memo[id(t)]
        plain = t.detach()
        if plain.device.type == "meta":
            fake = mode.fake_tensor_converter.from_meta_and_device(mode, plain, torch.device("cpu"))
        else:
            fake = mode.from_tensor(plain)
        if t.requires_grad:
            fake.requires_grad_(True)
        memo[id(t)] = fake
        return fake
    return convert


@contextlib.contextmanager
def swapped_module_tensors(modules: list[nn.Module], convert: Callable) -> Iterator[None]:
    """Temporarily replace the parameters and buffers of `modules` (fx call_module targets)."""
    undo = []
    for root in modules:
        for m in root.modules():
            for store in (m._parameters, m._buffers):
                for name, t in list(store.items()):
                    if t is not None:
                        undo.append((store, name, t))
                        store[name] = convert(t)
    try:
        yield
    finally:
        for store, name, t in reversed(undo):
            store[name] = t


def detach_input(x):
    """A layer's received value: cut from the producer's autograd graph, same requires_grad."""
    if isinstance(x, torch.Tensor):
        return x.detach().requires_grad_(x.requires_grad and x.is_floating_point())
    return x


def grad_leaves(ins: list, attrs: list, modules: list[nn.Module]) -> tuple[list, list]:
    """(float inputs that need grad, parameters that need grad) of one layer call."""
    leaves_in = [x for x in tree_flatten(ins)[0] if isinstance(x, torch.Tensor) and x.requires_grad]
    params = [a for a in attrs if isinstance(a, torch.Tensor) and a.requires_grad]
    for m in modules:
        params += [p for p in m.parameters() if p.requires_grad]
    return leaves_in, params


def grad_targets(outs) -> tuple[list, list]:
    """Outputs that carry gradient, each with an all-ones incoming gradient."""
    tensors = [o for o in tree_flatten(outs)[0] if isinstance(o, torch.Tensor) and o.requires_grad]
    return tensors, [torch.ones_like(o) for o in tensors]


def structure_key(prog: LayerProgram, ins: list, attrs: list) -> tuple:
    """Two layers with equal keys run the same ops on the same shapes (repeated transformer blocks)."""
    index: dict[object, int] = {}
    ops = []

    def norm(a):
        if isinstance(a, torch.fx.Node):
            return ("node", index[a])
        if isinstance(a, (list, tuple)):
            return tuple(norm(x) for x in a)
        return repr(a)

    for i, node in enumerate(prog.module.graph.nodes):
        index[node] = i
        target = str(node.target) if node.op in ("call_function", "call_method") else node.op
        ops.append((node.op, target, norm(node.args), tuple((k, norm(v)) for k, v in node.kwargs.items())))
    metas = tuple((tuple(t.shape), t.dtype, t.requires_grad) if isinstance(t, torch.Tensor) else repr(t)
                  for t in tree_flatten((ins, attrs))[0])
    return tuple(ops), metas, tuple(prog.call_modules and ["fx"])


def _copy_cost(cost: LayerCost) -> LayerCost:
    def c(t: OpTotals | None) -> OpTotals | None:
        return None if t is None else OpTotals(flops=t.flops, bytes=t.bytes, ms=t.ms)
    tp = None if cost.tp is None else TpCost(**vars(cost.tp))
    return LayerCost(fwd=c(cost.fwd), bwd=c(cost.bwd), bwd_input=c(cost.bwd_input),
                     activation_bytes=cost.activation_bytes, output_bytes=cost.output_bytes,
                     saved_inputs=list(cost.saved_inputs), saved_outputs=list(cost.saved_outputs),
                     fwd_peak_bytes=cost.fwd_peak_bytes, tp=tp)


def forward_peak_bytes(prog: LayerProgram, ins: list, attrs: list, modules: list[nn.Module]) -> int:
    """The layer's forward once more, under no_grad and core.live_bytes.LiveBytesMeter: the peak bytes of
    the tensors it creates (intermediates and outputs) alive at once; what an inference stage needs on
    top of the tensors it already holds (planner.costmodel.inference, `work`)."""
    from core.live_bytes import LiveBytesMeter

    held = [t for t in tree_flatten([ins, attrs])[0] if isinstance(t, torch.Tensor)]
    held += [t for m in modules for t in [*m.parameters(), *m.buffers()]]
    with torch.no_grad(), LiveBytesMeter(exclude=held) as meter:
        outs = prog.module(*ins, *attrs)
        del outs
    return meter.peak


def model_outputs(root: nn.Module) -> list[str]:
    """Names of the graph nodes the model returns (flattened)."""
    out = next(n for n in reversed(root.graph.nodes) if n.op == "output")
    return [a.name for a in tree_flatten(out.args)[0] if hasattr(a, "name")]


def loss_closure(root: nn.Module, loss_fn: Callable | None, target, convert: Callable = lambda t: t):
    """(output names, fn(env) -> loss) running loss_fn on the model output, or None without a loss."""
    if loss_fn is None or target is None:
        return None
    names = model_outputs(root)

    def run(env: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
        outs = [tree_map(detach_input, env[n]) for n in names]
        leaves = [t for t in tree_flatten(outs)[0] if isinstance(t, torch.Tensor) and t.requires_grad]
        value = outs[0] if len(outs) == 1 else tuple(outs)
        return loss_fn(value, tree_map(convert, target)), leaves
    return names, run


def _add_edges(edges: dict, prog: LayerProgram, ins: list, node_layer: dict[str, str],
               model_inputs: set[str], first_layer: str, saved_inputs: list[bool],
               saved_by_producer: set[int], size_nodes: frozenset[str]) -> None:
    """Edges into `prog` from the layers producing its inputs. A model input read by a layer other
    than the first becomes an edge from the first layer: inputs enter the pipeline at stage 0 and
    are relayed to the stage that reads them, so they cost bytes, messages and memory like any
    tensor sent forward (DLRM's sparse ids read by its embedding tables).
    Each edge is [bytes, requires_grad, saved by its producer, saved by prog] (ProfileEdge's fields):
    "saved by its producer" only when every tensor of it is (storage keys in saved_by_producer), "saved
    by prog" when any is (saved_inputs): both err towards more memory. A size (size_nodes, a trace with
    symbolic sizes) is no edge: a static trace has it as a constant."""
    for name, value, saved in zip(prog.input_names, ins, saved_inputs):
        if name in size_nodes:
            continue
        src = node_layer.get(name)
        if src is None and name in model_inputs:
            src = first_layer
        if src is None or src == prog.id:
            continue
        tensors = [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]
        entry = edges.setdefault((src, prog.id), [0, False, True, False])
        entry[0] += sum(tensor_bytes(t) for t in tensors)
        entry[1] = entry[1] or any(t.requires_grad for t in tensors)
        entry[2] = entry[2] and bool(tensors) and all(storage_key(t) in saved_by_producer for t in tensors) \
            and name not in model_inputs
        entry[3] = entry[3] or saved


def analyze(programs: list[LayerProgram], root: nn.Module, placeholders: list[str], inputs: tuple,
            node_layer: dict[str, str], *, op_time: Callable[[float, float], float] | None = None,
            loss_fn: Callable | None = None, target=None, progress: Progress | None = None,
            tp_plans: dict[str, dict[str, str]] | None = None, size_nodes: frozenset[str] = frozenset()) -> Analysis:
    """Cost, memory and edges of every layer; `placeholders` are the graph's input names. `tp_plans`:
    layer id -> its TP plan (profiler.tp.layer_tp_plan); planned layers also get their TP facts.
    `size_nodes`: TracedModel.size_nodes."""
    fake_mode = FakeTensorMode(allow_non_fake_inputs=False)
    convert = _fake_converter(fake_mode)
    flat_inputs = tree_flatten(inputs)[0]
    target = tree_map(convert, target)
    env: dict[str, object] = {name: convert(x) for name, x in zip(placeholders, flat_inputs)}
    input_bytes = sum(tensor_bytes(x) for x in flat_inputs if isinstance(x, torch.Tensor))
    model_inputs = set(placeholders)
    attr_cache: dict[str, object] = {}
    call_modules = sorted({t for p in programs for t in p.call_modules})
    modules = [root.get_submodule(t) for t in call_modules]
    costs: dict[str, LayerCost] = {}
    edges: dict[tuple[str, str], list] = {}
    keep_alive: list[torch.Tensor] = []  # saved tensors stay referenced so storage keys stay unique
    seen: set[int] = set()
    mode = OpCostMode(op_time)
    previous_key, previous_cost = None, None
    saved_by_producer: set[int] = set()  # storages a layer returned and saved itself (ReLU's output)
    for prog in programs:  # convert outside the fake mode: it refuses real tensors
        for attr_name in prog.attr_targets:
            if attr_name not in attr_cache:
                attr_cache[attr_name] = tree_map(convert, resolve_attr(root, attr_name))
    with swapped_module_tensors(modules, convert), fake_mode:
        for p in modules:
            seen.update(storage_key(t) for t in [*p.parameters(), *p.buffers()])
        for value in attr_cache.values():  # weights and buffers are not activations
            seen.update(storage_key(t) for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor))
        for i, prog in enumerate(programs):
            if progress:
                progress(f"analysing {prog.id}", i / max(len(programs), 1))
            ins = [tree_map(detach_input, env[n]) for n in prog.input_names]
            attrs = [attr_cache[t] for t in prog.attr_targets]
            own_modules = [root.get_submodule(t) for t in prog.call_modules]
            plan = (tp_plans or {}).get(prog.id) or {}
            key = structure_key(prog, ins, attrs) if not prog.call_modules else None
            if key is not None:
                key = (key, tuple(sorted(plan.items())))
            if key is not None and key == previous_key:
                # Same ops on the same shapes as the layer before (block k of a stack): its costs
                # are identical, so only the forward runs, to hand real outputs on.
                outs = prog.module(*ins, *attrs)
                cost = _copy_cost(previous_cost)
                for name, value, saved in zip(prog.output_names, outs, cost.saved_outputs):
                    env[name] = value
                    if saved:
                        saved_by_producer.update(_keys(value))
                keep_alive.extend(t for t in tree_flatten(list(outs))[0] if isinstance(t, torch.Tensor))
                costs[prog.id] = cost
                _add_edges(edges, prog, ins, node_layer, model_inputs, programs[0].id, cost.saved_inputs,
                           saved_by_producer, size_nodes)
                continue
            cost = LayerCost()
            packed: list[torch.Tensor] = []
            region = RegionRun(prog.module, prog.id, plan, mode) if plan else None

            def pack(t: torch.Tensor) -> torch.Tensor:
                packed.append(t)  # noqa: B023 - used only within this iteration
                if region is not None:  # noqa: B023
                    region.on_pack()  # noqa: B023
                return t

            mode.totals = cost.fwd
            outs = None
            if region is not None:
                try:
                    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), mode:
                        outs = tuple(region.run(*ins, *attrs))
                except Exception:  # noqa: BLE001 - the TP facts are optional: profile the layer without them
                    region, packed[:], cost.fwd = None, [], OpTotals()
                    mode.totals = cost.fwd
            if outs is None:
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), mode:
                    outs = prog.module(*ins, *attrs)
            if region is not None and region.valid:
                cost.tp = region.cost
            for index, t in enumerate(packed):
                storage = storage_key(t)
                if storage not in seen:
                    seen.add(storage)
                    cost.activation_bytes += t.untyped_storage().nbytes()
                    if cost.tp is not None and region.is_split(t, index):
                        cost.tp.split_activation_bytes += t.untyped_storage().nbytes()
            keep_alive.extend(packed)
            packed_keys = {storage_key(t) for t in packed}
            cost.saved_inputs = [bool(_keys(v) & packed_keys) for v in ins]
            cost.saved_outputs = [bool(_keys(v) & packed_keys) for v in outs]
            leaves_in, params = grad_leaves(ins, attrs, own_modules)
            targets, grads = grad_targets(outs)
            if targets and (leaves_in or params):
                if leaves_in:
                    cost.bwd_input = OpTotals()
                    mode.totals = cost.bwd_input
                    with mode:
                        torch.autograd.grad(targets, leaves_in, grads, retain_graph=True, allow_unused=True)
                mode.totals = cost.bwd
                with mode:
                    torch.autograd.grad(targets, leaves_in + params, grads, allow_unused=True)
            out_storages: dict[int, int] = {}
            for name, value, saved in zip(prog.output_names, outs, cost.saved_outputs):
                env[name] = value
                if saved:
                    saved_by_producer.update(_keys(value))
                for t in tree_flatten(value)[0]:
                    if isinstance(t, torch.Tensor):
                        out_storages[storage_key(t)] = tensor_bytes(t)
            keep_alive.extend(t for t in tree_flatten(list(outs))[0] if isinstance(t, torch.Tensor))
            cost.output_bytes = sum(out_storages.values())
            cost.fwd_peak_bytes = forward_peak_bytes(prog, ins, attrs, own_modules)
            costs[prog.id] = cost
            previous_key, previous_cost = key, cost
            _add_edges(edges, prog, ins, node_layer, model_inputs, programs[0].id, cost.saved_inputs,
                       saved_by_producer, size_nodes)
        loss = loss_closure(root, loss_fn, target)
        if loss is not None:  # the last stage computes the loss: charge it to the output's layer
            names, run = loss
            cost = costs[node_layer[names[-1]]]
            packed = []
            mode.totals = cost.fwd
            with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t), mode:
                value, leaves = run(env)
            for t in packed:
                if storage_key(t) not in seen:
                    seen.add(storage_key(t))
                    cost.activation_bytes += t.untyped_storage().nbytes()
            keep_alive.extend(packed)
            if leaves and value.requires_grad:
                mode.totals = extra = OpTotals()
                with mode:
                    torch.autograd.grad(value, leaves, allow_unused=True)
                cost.bwd.add(extra)
                if cost.bwd_input is not None:  # the loss's backward is input-gradient work
                    cost.bwd_input.add(extra)
    return Analysis(costs=costs, edges=edges, input_bytes=input_bytes)
