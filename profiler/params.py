"""Which layer owns which parameter, and which parameters are shared.

Every unique parameter (tied ones once, under the first FQN
`named_parameters()` yields) is owned by exactly one layer: the layer of its
module path, so Σ layer param bytes == the model's unique param bytes exactly.
A parameter whose module is not a layer (a root-level nn.Parameter, a
wrapper's) goes to the first layer that reads it; an unused one to the first
layer. A parameter read by several layers, or registered under aliases that
fall in different layers (tied embeddings), is listed in `shared_params` of
every layer that uses it: the exporter must synchronise its gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from profiler.layers import LayerProgram, resolve_attr
from profiler.trace import ModuleTree, TracedModel, layer_for_path


@dataclass
class LayerParams:
    count: int = 0
    bytes: int = 0
    shared: list[str] = field(default_factory=list)
    owned: list[str] = field(default_factory=list)
    """FQNs of the parameters counted in `count` (what this layer's optimizer step updates)."""


def _module_of(fqn: str) -> str:
    return fqn.rsplit(".", 1)[0] if "." in fqn else ""


def layer_params(model: nn.Module, root: nn.Module, traced: TracedModel,
                 programs: list[LayerProgram]) -> dict[str, LayerParams]:
    """layer id -> owned parameter count/bytes and shared parameter FQNs."""
    tree = ModuleTree(model)
    layers = set(traced.layers)
    canonical: dict[int, str] = {}
    for fqn, p in model.named_parameters():
        canonical.setdefault(id(p), fqn)
    users: dict[int, set[str]] = {pid: set() for pid in canonical}
    for prog in programs:
        for target in prog.attr_targets:
            obj = resolve_attr(root, target)
            if id(obj) in users:
                users[id(obj)].add(prog.id)
        for target in prog.call_modules:
            for p in root.get_submodule(target).parameters():
                if id(p) in users:
                    users[id(p)].add(prog.id)

    def as_layer(lay: str | None) -> str | None:
        lay = traced.merged.get(lay, lay) if lay is not None else None
        return lay if lay in layers else None

    alias_layers: dict[int, set[str]] = {pid: set() for pid in canonical}
    for fqn, p in model.named_parameters(remove_duplicate=False):
        lay = as_layer(layer_for_path(_module_of(fqn), tree, traced.granularity))
        if lay is not None:
            alias_layers[id(p)].add(lay)
    result = {lay: LayerParams() for lay in traced.layers}
    order = {lay: i for i, lay in enumerate(traced.layers)}
    for fqn, p in model.named_parameters():
        owner = as_layer(layer_for_path(_module_of(fqn), tree, traced.granularity))
        if owner is None:
            owner = min(users[id(p)], key=order.__getitem__) if users[id(p)] else traced.layers[0]
        result[owner].count += p.numel()
        result[owner].bytes += p.numel() * p.element_size()
        result[owner].owned.append(fqn)
        touching = users[id(p)] | alias_layers[id(p)] | {owner}
        if len(touching) > 1:
            for lay in sorted(touching, key=order.__getitem__):
                result[lay].shared.append(fqn)
    return result
