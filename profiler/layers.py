"""Cut a traced graph into one small fx program per layer.

Each `LayerProgram` takes the values it receives from other layers (or model
inputs), then the parameters/buffers/constants it reads (`get_attr` targets,
passed in explicitly so the caller chooses real, meta or fake tensors), and
returns the values other layers (or the model output) use. Running the
programs in order reproduces the model's forward; running each one's backward
on its own gives per-layer backward cost, exactly as a pipeline stage would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from profiler.trace import TracedModel


@dataclass
class LayerProgram:
    id: str
    module: fx.GraphModule
    input_names: list[str]
    """Source fx node names (in the traced graph) of the values received, in argument order."""
    attr_targets: list[str]
    """get_attr targets (parameters, buffers, constants) passed after the inputs."""
    output_names: list[str]
    """Traced-graph node names of the values this layer hands on."""
    call_modules: list[str]
    """Submodules the program calls (fx fallback graphs); their parameters belong to this layer."""


def retarget_devices(graph: fx.Graph, device: torch.device) -> None:
    """Rewrite `device=` arguments burned into the graph (export on meta writes device='meta')."""
    def fix(a):
        return device if isinstance(a, torch.device) and a != device else a

    for node in graph.nodes:
        if node.op == "call_function":
            node.args = tuple(fix(a) for a in node.args)
            node.kwargs = {k: fix(v) for k, v in node.kwargs.items()}


def build_programs(traced: TracedModel, device: torch.device | None = None) -> list[LayerProgram]:
    """One LayerProgram per layer of `traced`, in layer order."""
    gm = traced.graph_module
    by_layer: dict[str, list[fx.Node]] = {lay: [] for lay in traced.layers}
    for node in gm.graph.nodes:
        lay = traced.node_layer.get(node.name)
        if lay is not None:
            by_layer[lay].append(node)
    programs = []
    for lay in traced.layers:
        programs.append(_program(gm, lay, by_layer[lay], traced.node_layer, device))
    return programs


def _program(gm: fx.GraphModule, lay: str, nodes: list[fx.Node], node_layer: dict[str, str],
             device: torch.device | None) -> LayerProgram:
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    inputs: list[fx.Node] = []
    attrs: list[fx.Node] = []
    mine = set(nodes)
    for node in nodes:  # collect outside values first so placeholders come before ops
        for a in node.all_input_nodes:
            if a in mine or a in inputs or a in attrs:
                continue
            (attrs if a.op == "get_attr" else inputs).append(a)
    for a in inputs:
        env[a] = graph.placeholder(f"in_{a.name}")
        env[a].meta = dict(a.meta)
    for a in attrs:
        env[a] = graph.placeholder(f"attr_{a.name}")
        env[a].meta = dict(a.meta)
    for node in nodes:
        env[node] = graph.node_copy(node, lambda a: env[a])
    outputs = [n for n in nodes if any(u not in mine for u in n.users)]
    graph.output(tuple(env[n] for n in outputs))
    if device is not None:
        retarget_devices(graph, device)
    module = fx.GraphModule(gm, graph, class_name=f"Layer_{lay.replace('.', '_')}")
    return LayerProgram(
        id=lay,
        module=module,
        input_names=[a.name for a in inputs],
        attr_targets=[str(a.target) for a in attrs],
        output_names=[n.name for n in outputs],
        call_modules=sorted({str(n.target) for n in nodes if n.op == "call_module"}),
    )


def resolve_attr(root: torch.nn.Module, target: str):
    """The object a get_attr target names on `root` (parameter, buffer or constant)."""
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
