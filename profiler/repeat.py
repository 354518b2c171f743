"""Shortened traces: profile a stack of identical blocks from its first three.

Exporting and analysing an 80-block model costs 80 blocks of tracing, but block
k of a stack of structurally identical blocks costs exactly what block 1 costs.
`shortened` temporarily replaces every such container (a ModuleList, ModuleDict
or Sequential whose elements are layers) by one holding only its first
`KEEP` = 3 elements, so the trace sees block 0 (the first: it may absorb ops fed
only by model inputs), block 1 (a middle block: fed by block 0, feeding block 2)
and block 2 (the last). `expand` then writes the full layer list, costs, edges
and parameters: blocks 1..n-2 copy block 1, block n-1 copies block 2.

The copy is only made when it is provably the full trace's answer; otherwise
`expand` returns None and the caller traces the whole model:

- before tracing (`find_runs`): the container is not the root, has >= 4
  elements, each element is a layer, and every element has the same module
  tree: same classes, training flags, parameter and buffer names, shapes,
  dtypes, requires_grad, equal plain attributes (HF's `layer_idx` KV-cache slot
  excepted), no hooks; no element's parameter is used under another name
  (tied or shared weights);
- after tracing: blocks 1 and 2 run the same ops on the same shapes (the
  analysis's structure key; block 2, the last, may also return an alias of its
  output, which moves no data); the blocks form a pure chain (0 -> 1 -> 2 with
  equal bytes, no edge from block 0 or 1 to anything but the next block, no
  block-to-block skip); every layer outside the run feeding block 1 feeds
  block 2 the same bytes; no layer folded to break a cycle touches the run;
  blocks 1 and 2 share no parameter and own exactly their module's parameters.

Under these conditions the full trace gives every middle block the same
program, inputs and outputs as block 1, which the analysis already reuses
(`analyze`: consecutive identical layers copy the first one's costs), so the
expanded profile equals the full one field by field (tests/test_profiler.py).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from profiler.analyze import Analysis, LayerCost, _copy_cost, structure_key
from profiler.layers import LayerProgram
from profiler.params import LayerParams
from profiler.trace import ModuleTree, TracedModel, layer_for_path

KEEP = 3
MIN_RUN = 4
_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.Sequential)
_POSITION_ATTRS = frozenset({"layer_idx"})
"""Attributes allowed to differ between blocks: HF's index into the KV cache, unused in training."""
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


@dataclass
class Run:
    path: str
    """The container's module path."""
    keys: list[str]
    """Its element names, in order (all of them, not only the kept ones)."""

    def id(self, i: int) -> str:
        return f"{self.path}.{self.keys[i]}"


def _equal(a, b) -> bool:
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and a.device == b.device)
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # noqa: BLE001 - an object without a usable ==: only identity counts
        return False


def _signature_matches(a: nn.Module, b: nn.Module) -> bool:
    """Same module tree, parameters, buffers and plain attributes (see the module docstring)."""
    mods_a = list(a.named_modules(remove_duplicate=False))
    mods_b = list(b.named_modules(remove_duplicate=False))
    if [n for n, _ in mods_a] != [n for n, _ in mods_b]:
        return False
    for (_, x), (_, y) in zip(mods_a, mods_b):
        if type(x) is not type(y) or x.training != y.training:
            return False
        if any(getattr(x, h, None) or getattr(y, h, None) for h in _HOOKS):
            return False
        for store in ("_parameters", "_buffers"):
            sa, sb = getattr(x, store), getattr(y, store)
            if list(sa) != list(sb):
                return False
            for name in sa:
                ta, tb = sa[name], sb[name]
                if (ta is None) != (tb is None):
                    return False
                if ta is not None and (ta.shape != tb.shape or ta.dtype != tb.dtype or ta.device != tb.device
                                       or ta.requires_grad != tb.requires_grad):
                    return False
        if getattr(x, "_non_persistent_buffers_set", set()) != getattr(y, "_non_persistent_buffers_set", set()):
            return False
        da = {k: v for k, v in vars(x).items() if not k.startswith("_")}
        db = {k: v for k, v in vars(y).items() if not k.startswith("_")}
        if set(da) != set(db):
            return False
        if any(k not in _POSITION_ATTRS and not _equal(da[k], db[k]) for k in da):
            return False
    return True


def find_runs(model: nn.Module) -> list[Run]:
    """Containers of >= MIN_RUN identical layer blocks that a shortened trace may stand in for."""
    tree = ModuleTree(model)
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    runs = []
    for path, module in model.named_modules():
        if path == "" or not isinstance(module, _CONTAINERS) or len(module) < MIN_RUN:
            continue
        if any(path.startswith(r.path + ".") for r in runs):
            continue
        keys = list(module._modules)
        elements = [module._modules[k] for k in keys]
        if any(e is None for e in elements) or len({id(e) for e in elements}) != len(elements):
            continue
        if any(layer_for_path(f"{path}.{k}", tree) != f"{path}.{k}" for k in keys):
            continue
        if any(uses[id(p)] != 1 for e in elements for p in e.parameters()):
            continue
        if all(_signature_matches(elements[1], e) for e in elements[:1] + elements[2:]):
            runs.append(Run(path=path, keys=keys))
    return runs


@contextlib.contextmanager
def shortened(model: nn.Module, runs: list[Run]) -> Iterator[None]:
    """Temporarily keep only the first KEEP elements of every run's container."""
    undo = []
    try:
        for run in runs:
            parent_path, _, name = run.path.rpartition(".")
            parent = model.get_submodule(parent_path)
            full = parent._modules[name]
            kept = OrderedDict((k, full._modules[k]) for k in run.keys[:KEEP])
            if isinstance(full, nn.ModuleDict):
                short = nn.ModuleDict(kept)
            elif isinstance(full, nn.Sequential):
                short = nn.Sequential(kept)
            else:
                short = nn.ModuleList(kept.values())
            short.train(full.training)
            undo.append((parent, name, full))
            parent._modules[name] = short
        yield
    finally:
        for parent, name, full in reversed(undo):
            parent._modules[name] = full


def _program_key(prog: LayerProgram, *, without_output_aliases: bool = False) -> tuple:
    """The analysis's structure key, from the traced shapes (export's `val` meta). without_output_aliases:
    as if every `aten.alias` read only by the output were its input (the last block of a stack also runs
    the ops after the stack, and BERT's encoder returns an alias of its last hidden state: no data moves)."""
    if without_output_aliases:
        graph = copy.deepcopy(prog.module.graph)
        for node in list(graph.nodes):
            if node.op == "call_function" and node.target is torch.ops.aten.alias.default \
                    and all(u.op == "output" for u in node.users):
                node.replace_all_uses_with(node.args[0])
                graph.erase_node(node)
        prog = dataclasses.replace(prog, module=torch.fx.GraphModule(prog.module, graph))
    placeholders = [n for n in prog.module.graph.nodes if n.op == "placeholder"]
    metas = [n.meta.get("val") for n in placeholders]
    key = structure_key(prog, metas, [])
    return key[0], key[1], tuple(prog.call_modules)


def expand(runs: list[Run], traced: TracedModel, programs: list[LayerProgram], analysis: Analysis,
           params: dict[str, LayerParams], model: nn.Module,
           ) -> tuple[TracedModel, Analysis, dict[str, LayerParams]] | None:
    """The full model's layers, analysis and parameters from a shortened trace, or None when not provable."""
    layers = list(traced.layers)
    costs: dict[str, LayerCost] = dict(analysis.costs)
    edges = {k: list(v) for k, v in analysis.edges.items()}
    params = dict(params)
    progs = {p.id: p for p in programs}
    for run in runs:
        b0, b1, b2 = (run.id(i) for i in range(KEEP))
        if not {b0, b1, b2} <= set(layers) or any(x in traced.merged or y in (b0, b1, b2)
                                                  for x, y in traced.merged.items()):
            return None
        if b0 in traced.merged.values() or b1 in traced.merged.values() or b2 in traced.merged.values():
            return None
        if _program_key(progs[b1]) != _program_key(progs[b2], without_output_aliases=True):
            return None
        block = {b0, b1, b2}
        e01, e12 = edges.get((b0, b1)), edges.get((b1, b2))
        # block 0 may also hand every later block one tensor it made from the model's inputs (HF's causal
        # mask): block 1 gets it with the hidden state (e01 = e12 + side), block 2 from block 0 directly
        side = edges.get((b0, b2))
        if e01 is None or e12 is None:
            return None
        if side is None and e01 != e12:
            return None
        if side is not None and e01[:2] != [e12[0] + side[0], bool(e12[1] or side[1])]:
            return None
        into1 = {s: v for (s, d), v in edges.items() if d == b1 and s not in block}
        into2 = {s: v for (s, d), v in edges.items() if d == b2 and s not in block}
        if into1 != into2:
            return None
        for (s, d) in edges:
            if s in (b0, b1) and d != {b0: b1, b1: b2}[s] and (s, d) != (b0, b2):
                return None  # a block output used beyond the next block: not a pure chain
        for b, i in ((b1, 1), (b2, 2)):
            own = model.get_submodule(run.path)._modules[run.keys[i]]
            expect = sum(p.numel() for p in own.parameters())
            if params[b].shared or params[b].count != expect:
                return None
        n = len(run.keys)
        ids = [run.id(i) for i in range(n)]
        middle, last = ids[1:n - 1], ids[n - 1]
        pos = layers.index(b1)
        if layers[pos + 1] != b2:
            return None
        layers[pos:pos + 2] = middle + [last]
        cost1, cost2, params1, params2 = costs.pop(b1), costs.pop(b2), params.pop(b1), params.pop(b2)
        for new in middle:
            costs[new] = _copy_cost(cost1)
            params[new] = LayerParams(count=params1.count, bytes=params1.bytes, shared=[])
        costs[last], params[last] = cost2, params2
        new_edges: dict[tuple[str, str], list] = {}
        for (s, d), v in edges.items():
            if (s, d) == (b1, b2):
                continue
            if d == b1 and s not in block:
                for new in middle:
                    new_edges[(s, new)] = list(v)
            elif d == b2 and s not in block:
                new_edges[(s, last)] = list(v)
            elif s == b2:
                new_edges[(last, d)] = list(v)
            elif (s, d) == (b0, b1):
                for a, b in itertools.pairwise(ids):
                    new_edges[(a, b)] = list(v if a == b0 else e12)
            elif (s, d) == (b0, b2):  # the side tensor reaches every block after block 1
                for new in ids[2:]:
                    new_edges[(b0, new)] = list(v)
            else:
                new_edges[(s, d)] = list(v)
        edges = new_edges
    full = TracedModel(graph_module=traced.graph_module, method=traced.method, node_layer={}, layers=layers,
                       granularity=traced.granularity, merged=dict(traced.merged))
    return full, Analysis(costs=costs, edges=edges, input_bytes=analysis.input_bytes), params
