"""The layer rule and both tracers (export and the fx fallback)."""

from __future__ import annotations

import networkx as nx
import pytest
import torch
from torch import nn

import sample_models
from profiler.analyze import analyze
from profiler.layers import build_programs
from profiler.trace import ModuleTree, layer_for_path, normalize_module_path, trace_model


class Wrapped(nn.Module):
    """HF-like nesting: a wrapper holding a ModuleList, plus a head outside it."""

    def __init__(self):
        super().__init__()
        self.model = nn.Module()
        self.model.embed = nn.Embedding(10, 8)
        self.model.layers = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(3)])
        self.model.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 10)

    def forward(self, ids):
        x = self.model.embed(ids)
        for layer in self.model.layers:
            x = x + layer(x)
        return self.head(self.model.norm(x))


def test_layer_rule_descends_wrappers_and_stops_at_blocks():
    tree = ModuleTree(Wrapped())
    assert layer_for_path("model.embed", tree) == "model.embed"
    assert layer_for_path("model.layers.1.0", tree) == "model.layers.1"
    assert layer_for_path("model", tree) is None and layer_for_path("", tree) is None
    assert layer_for_path("model.layers.1.0", tree, "op") == "model.layers.1.0"
    assert normalize_module_path("L['self'].model.layers['2'].0") == "model.layers.2.0"


@pytest.mark.parametrize("tracer", ["auto", "fx"])
def test_both_tracers_give_the_same_layers_and_flops(tracer):
    model = Wrapped()
    ids = torch.randint(0, 10, (2, 5))
    traced = trace_model(model, (ids,), tracer=tracer)
    assert traced.method == ("export" if tracer == "auto" else "fx")
    assert traced.layers == ["model.embed", "model.layers.0", "model.layers.1", "model.layers.2", "model.norm", "head"]
    # the residual add (an op of the wrapper) joins the latest producer: the block
    root = traced.graph_module
    placeholders = [n.name for n in root.graph.nodes if n.op == "placeholder"]
    result = analyze(build_programs(traced, torch.device("cpu")), root, placeholders, (ids,), traced.node_layer)
    assert result.costs["head"].fwd.flops == 2 * 2 * 5 * 8 * 10
    assert result.costs["model.layers.0"].fwd.flops == 2 * 2 * 5 * 8 * 8
    assert ("model.embed", "model.layers.0") in result.edges


def test_fx_fallback_profiles_resnet_like_export():
    from profiler.profile_model import profile_model

    spec = sample_models.get_model("resnet")
    model = sample_models.build("resnet", "tiny")
    inputs, target = spec.make_batch(spec.sizes["tiny"], 2)
    traced = trace_model(model, inputs, tracer="fx")
    assert traced.layers == ["stem", "layers.0", "layers.1", "layers.2", "layers.3", "fc"]
    prof = profile_model(model, inputs, loss_fn=spec.loss_fn, target=target, source="s", name="r")
    assert nx.is_directed_acyclic_graph(prof.graph())
