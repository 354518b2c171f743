"""Trace a model into an fx graph and group its nodes into layers.

`trace_model` tries `torch.export.export(strict=False)` first (works for HF
models and mask-building code) and `torch.fx.symbolic_trace` as a fallback
(shared notes §5). When both fail the error names the user source line.

The layer rule (docs/profile-format.md, "Layer ids") lives in `layer_for_path`
and `assign_layers`; the exporter's train.py reuses them so a Profile node id
always names the same graph nodes:

1. An op belongs to the module that ran it (innermost `nn_module_stack` entry).
2. granularity="block": the layer of a module path is found by walking down
   from the root: an element of a ModuleList/ModuleDict/Sequential is a layer
   ("layers.3", "down.1"); a module that holds no ModuleList/ModuleDict below it
   is a layer ("wte", "ln_f", "head", "stem"); a wrapper that does (HF's
   "model", "transformer", "encoder") is descended into, and so is a stage of
   a hierarchical model (a module with a stack of blocks as a direct child,
   `is_stack`): Swin's "encoder.layers.2.blocks.7" and "encoder.layers.2.downsample"
   are layers, not "encoder.layers.2".
   granularity="op": every leaf module (no children) is a layer.
3. Ops of no layer (root-level adds, reshapes, masks, the DLRM interaction; at
   "op" granularity also ops of non-leaf modules) join the *latest* layer that
   produced one of their inputs; ops fed only by model inputs or constants join
   their *earliest* consumer's layer.
4. A module with no parameters or buffers whose calls are interleaved with other layers (T5's one
   dropout, run before and after the blocks) is no layer: rule 3 places its ops.
5. Layers are ordered by first appearance; any other cycle (a module with weights called twice,
   interleaved with others) is merged into its first layer so the graph is a DAG.
"""

from __future__ import annotations

import linecache
import re
import traceback
from dataclasses import dataclass, field

import networkx as nx
import torch
from torch import fx, nn

from core.errors import PipeplanError

GRANULARITIES = ("block", "op")
_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.Sequential)
_REPEATED = (nn.ModuleList, nn.ModuleDict)


@dataclass
class TracedModel:
    """A traced model with every fx node assigned to a layer."""

    graph_module: fx.GraphModule
    method: str
    """"export" or "fx"."""
    node_layer: dict[str, str]
    """fx node name -> layer id, for every call_function/call_method/call_module node."""
    layers: list[str]
    """Layer ids in a topological order of the layer graph."""
    granularity: str = "block"
    merged: dict[str, str] = field(default_factory=dict)
    """Layer ids folded into another to break a cycle: folded id -> surviving id."""
    size_nodes: frozenset[str] = frozenset()
    """Nodes computing a size, not a tensor (a trace with symbolic input sizes: `sym_size`, products of
    sizes). A static trace has these as constants, so they are no data that layers exchange."""


def normalize_module_path(path: str) -> str:
    """"L['self'].layers['0'].attn" (strict export) -> "layers.0.attn"; non-strict paths are unchanged."""
    path = re.sub(r"^L\['self'\]\.?", "", path)
    path = re.sub(r"\[['\"]?([^\]'\"]+)['\"]?\]", r".\1", path)
    path = re.sub(r"\._modules\.", ".", path)
    return path.strip(".")


def is_stack(module: nn.Module) -> bool:
    """A stack of blocks: a ModuleList/ModuleDict/Sequential of modules of one class that have submodules
    of their own (a Sequential(Linear, GELU, Linear) is an MLP; T5's [self-attention, feed-forward] are
    the parts of one block)."""
    if not isinstance(module, _CONTAINERS):
        return False
    kids = list(module.children())
    return bool(kids) and len({type(k) for k in kids}) == 1 and all(any(True for _ in k.children()) for k in kids)


class ModuleTree:
    """What the layer rule needs to know about the module hierarchy."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = dict(model.named_modules(remove_duplicate=False))
        self.wrappers = {p for p, m in self.modules.items()
                         if not isinstance(m, _CONTAINERS) and any(isinstance(c, _REPEATED) for c in m.modules())}
        self.stages = {p for p, m in self.modules.items() if any(is_stack(c) for c in m.children())}
        """Modules with a stack of blocks as a direct child: a hierarchical model's stage (Swin's
        `layers.2` and its 18 `blocks`, ResNet's `stages.1`). Its blocks are the layers, not the stage."""

    def layer_for_path(self, path: str, granularity: str = "block") -> str | None:
        return layer_for_path(path, self, granularity)


def layer_for_path(path: str, tree: ModuleTree, granularity: str = "block") -> str | None:
    """The layer id that owns ops run by module `path`, or None when no layer does (root, wrappers)."""
    if path not in tree.modules or path == "":
        return None
    if granularity == "op":
        module = tree.modules[path]
        return path if not any(True for _ in module.children()) else None
    parts = path.split(".")
    in_stage = False
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        parent = ".".join(parts[:i - 1])
        module = tree.modules.get(prefix)
        if module is None:
            return None
        if isinstance(tree.modules.get(parent), _CONTAINERS):
            if in_stage or prefix not in tree.stages:
                return prefix  # an element of a container: a block, a U-Net level
            in_stage = True  # a stage of blocks: descend to its blocks (once: a block is not split further)
            continue
        if isinstance(module, _CONTAINERS) or prefix in tree.wrappers:
            continue  # descend into containers and wrappers
        return prefix
    return None


def node_module_path(node: fx.Node) -> str:
    """The innermost module that ran `node` ("" for root-level ops)."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return normalize_module_path(str(path))


def assign_layers(gm: fx.GraphModule, tree: ModuleTree, granularity: str = "block") -> tuple[dict[str, str], list[str], dict[str, str]]:
    """Rules 1-5 of the module docstring: (node name -> layer, layer order, merged ids)."""
    if granularity not in GRANULARITIES:
        raise PipeplanError(f"granularity {granularity!r} is not supported; use one of {', '.join(GRANULARITIES)}")
    ops = [n for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module")
           and n.target != "_guards_fn"]
    layer: dict[str, str | None] = {n.name: layer_for_path(node_module_path(n), tree, granularity) for n in ops}
    for lay in _stateless_reused(ops, layer, tree):
        for name, owner in layer.items():
            if owner == lay:
                layer[name] = None
    first_seen: dict[str, int] = {}
    for i, n in enumerate(ops):
        if layer[n.name] is not None:
            first_seen.setdefault(layer[n.name], i)
    if not first_seen:  # a model with no submodules at all: one layer
        return {n.name: "root" for n in ops}, ["root"], {}
    # Rule 3, forward pass: the latest producing layer.
    for n in ops:
        if layer[n.name] is None:
            producers = [layer.get(a.name) for a in n.all_input_nodes if layer.get(a.name)]
            if producers:
                layer[n.name] = max(producers, key=first_seen.__getitem__)
    # Rule 3, backward pass: ops fed only by inputs join their earliest consumer.
    for n in reversed(ops):
        if layer[n.name] is None:
            consumers = [layer.get(u.name) for u in n.users if layer.get(u.name)]
            layer[n.name] = min(consumers, key=first_seen.__getitem__) if consumers else min(first_seen, key=first_seen.get)
    # Rule 5: order by first appearance and fold cycles.
    g = nx.DiGraph()
    g.add_nodes_from(first_seen)
    for n in ops:
        for u in n.users:
            a, b = layer[n.name], layer.get(u.name)
            if b is not None and a != b:
                g.add_edge(a, b)
    merged: dict[str, str] = {}
    for scc in nx.strongly_connected_components(g):
        if len(scc) > 1:
            keep = min(scc, key=first_seen.__getitem__)
            merged.update({s: keep for s in scc if s != keep})
    final = {name: merged.get(lay, lay) for name, lay in layer.items()}
    cond = nx.DiGraph()
    kept = sorted({merged.get(x, x) for x in first_seen}, key=first_seen.__getitem__)
    cond.add_nodes_from(kept)
    cond.add_edges_from((merged.get(a, a), merged.get(b, b)) for a, b in g.edges if merged.get(a, a) != merged.get(b, b))
    order = list(nx.lexicographical_topological_sort(cond, key=first_seen.__getitem__))
    return final, order, merged


def _stateless_reused(ops: list[fx.Node], layer: dict[str, str | None], tree: ModuleTree) -> set[str]:
    """Layers of modules with no parameters or buffers whose ops are interleaved with another layer's: one
    nn.Dropout called before and after a stack of blocks (T5). Rule 4 would fold everything between the
    two calls into one layer; such a module holds nothing a stage must own, so rule 3 places its ops."""
    span: dict[str, list[int]] = {}
    for i, n in enumerate(ops):
        if layer[n.name] is not None:
            span.setdefault(layer[n.name], [i, i])[1] = i
    reused = set()
    for lay, (lo, hi) in span.items():
        module = tree.modules.get(lay)
        if module is None or any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
            continue
        if any(layer[n.name] not in (None, lay) for n in ops[lo:hi + 1]):
            reused.add(lay)
    return reused


def _user_frame(exc: BaseException) -> str:
    """'file.py:12 in forward: x = ...' for the deepest frame outside torch, or ''."""
    frames = traceback.extract_tb(exc.__traceback__)
    torch_dir = torch.__file__.rsplit("/", 2)[0]
    for fr in reversed(frames):
        if not fr.filename.startswith((torch_dir, "<")) and "/profiler/" not in fr.filename:
            code = (fr.line or linecache.getline(fr.filename, fr.lineno)).strip()
            return f"{fr.filename.rsplit('/', 1)[-1]}:{fr.lineno} in {fr.name}: `{code}`"
    return ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


_INT64_MAX = 2**63 - 1


def _full_slices_as_aliases(graph: fx.Graph) -> None:
    """`x[:, 0:]` is `aten.slice(x, 1, 0, INT64_MAX)` in a trace with a symbolic size but `aten.alias(x)` in
    a static one: write the static form, so both traces cost the same ops (a slice's backward is a copy)."""
    for node in graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.aten.slice.Tensor and not node.kwargs \
                and len(node.args) == 4 and node.args[2] == 0 and node.args[3] == _INT64_MAX:
            node.target, node.args = torch.ops.aten.alias.default, (node.args[0],)


def _size_nodes(graph: fx.Graph) -> frozenset[str]:
    return frozenset(n.name for n in graph.nodes
                     if isinstance(n.meta.get("val"), (torch.SymInt, torch.SymFloat, torch.SymBool)))


def trace_graph(model: nn.Module, inputs: tuple, tracer: str = "auto",
                dynamic_shapes: tuple | None = None) -> tuple[fx.GraphModule, str]:
    """(graph module, "export" | "fx"): export(strict=False) first, symbolic_trace as fallback.

    tracer="fx" skips export (for models whose export graph is wrong, and for tests). dynamic_shapes:
    torch.export's, one entry per input; given, only export is tried (a shape-generic graph or an error).
    """
    export_error: BaseException = RuntimeError("skipped (tracer='fx')")
    if dynamic_shapes is not None:
        ep = torch.export.export(model, tuple(inputs), strict=False, dynamic_shapes=dynamic_shapes)
        gm = ep.module()
        gm.meta["range_constraints"] = dict(ep.range_constraints)  # symbol -> the sizes the trace holds for
        _full_slices_as_aliases(gm.graph)
        gm.recompile()
        return gm, "export"
    if tracer != "fx":
        try:
            ep = torch.export.export(model, tuple(inputs), strict=False)
            return ep.module(), "export"
        except Exception as export_exc:  # noqa: BLE001 - any tracer failure: try the next tracer
            export_error = export_exc
    try:
        return fx.symbolic_trace(model), "fx"
    except Exception as fx_exc:  # noqa: BLE001 - both tracers failed: report the user's line
        where = _user_frame(export_error) or _user_frame(fx_exc)
        raise PipeplanError(
            f"cannot trace the model: torch.export failed ({_first_line(export_error)})"
            f"{' at ' + where if where else ''} and fx.symbolic_trace failed ({_first_line(fx_exc)}). "
            "Fix: keep forward free of data-dependent Python control flow (if/for on tensor values, .item(), "
            "numpy/list conversions); return tensors, not custom objects; or profile elsewhere and "
            "load the result with profile:PATH.json") from None


def trace_model(model: nn.Module, inputs: tuple, *, granularity: str = "block", tracer: str = "auto",
                dynamic_shapes: tuple | None = None) -> TracedModel:
    """Trace `model` on `inputs` (meta tensors are fine) and assign every op to a layer."""
    if granularity not in GRANULARITIES:
        raise PipeplanError(f"granularity {granularity!r} is not supported; use one of {', '.join(GRANULARITIES)}")
    gm, method = trace_graph(model, inputs, tracer, dynamic_shapes)
    tree = ModuleTree(model)
    node_layer, order, merged = assign_layers(gm, tree, granularity)
    return TracedModel(graph_module=gm, method=method, node_layer=node_layer, layers=order,
                       granularity=granularity, merged=merged, size_nodes=_size_nodes(gm.graph))
