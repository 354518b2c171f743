"""Tensor-parallel (TP) facts of each layer: which Linears TP splits, and what that splits.

A layer's **TP plan** maps submodule paths (relative to the layer's module) to "colwise" or
"rowwise", the two styles torch's `parallelize_module` applies as-is with `ColwiseParallel()` and
`RowwiseParallel()` (Megatron-LM's column- and row-parallel linears, Shoeybi et al. 2019). Sources:

- HF models: `config.base_model_tp_plan` ("layers.*.self_attn.q_proj": "colwise", ...). Only the
  values "colwise" and "rowwise" are used; every other transformers style (colwise_rep,
  colwise_gather_output, rowwise_rep, rowwise_split_input, unit_colwise/unit_rowwise, packed_*,
  embedding_*, sequence_parallel, moe_tp_experts, ep_*, grouped_gemm, mla_kv_a_proj, all_reduce,
  replicated_with_grad_allreduce, local_*, replicate ...) replicates here (MoE experts, packed weights,
  sequence parallelism and the vocab-parallel embedding are not planned yet).
- pipeplan's sample models: `SAMPLE_PLANS` (Llama blocks; the MLP of GPT and ViT blocks, whose fused
  qkv attention replicates). Convs, embeddings, norms, heads,
  the MLP and DLRM samples replicate.
- anything else (GPT-2 and T5 configs have no base_model_tp_plan, `file:` models): replicate.

A plan is kept for a layer only when it names at least one colwise and one rowwise `nn.Linear`
inside the layer (a colwise without its rowwise partner would need an all-gather pipeplan does not model).

The **facts** are measured on the layer's fx program during the profiler's FakeTensor analysis
(`RegionRun`, used by profiler.analyze), with one dataflow rule (docs/hybrid.md):

- *planned nodes*: graph nodes run inside a colwise or rowwise module;
- *the split region*: nodes that are descendants of a colwise module's output (not passing through
  a rowwise module) and ancestors of a rowwise module's input (not passing through a colwise
  module): the attention core (head reshapes, RoPE, scores, softmax, softmax·V) and the MLP
  activation;
- split FLOPs: forward FLOPs of planned nodes and the split region;
- split saved activations: saved tensors (those counted in activation_bytes) whose storage was
  produced by a colwise module or a split-region node; a saved tensor that is no node's output (SDPA's
  logsumexp, a dropout mask) belongs to the node that saved it;
- forward all-reduce bytes: the outputs of each rowwise module;
- backward all-reduce bytes: the inputs of the colwise modules, each distinct input tensor once
  (q, k and v reading one normalised hidden state are one all-reduce: Megatron's `f`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.utils._pytree import tree_flatten

from profiler.flops import tensor_bytes
from profiler.trace import node_module_path

COLWISE, ROWWISE = "colwise", "rowwise"

# pipeplan's own plans for its sample models' repeated blocks: block class -> {relative path: style}.
# GPT and ViT split their MLP only. Their attention has one fused [q; k; v] Linear: split column-wise,
# rank r would hold rows r·3h/tp.. (not its heads' q, k and v), so the job would all-gather the
# projection's output and run the attention replicated anyway (docs/hybrid.md). Planning the attention as
# replicated says exactly what the job does: no split FLOPs there, and no all-gather left uncharged.
SAMPLE_PLANS: dict[str, dict[str, str]] = {
    "sample_models.gpt.Block": {"mlp.c_fc": COLWISE, "mlp.c_proj": ROWWISE},
    "sample_models.llama.TransformerBlock": {
        "attention.wq": COLWISE, "attention.wk": COLWISE, "attention.wv": COLWISE, "attention.wo": ROWWISE,
        "feed_forward.w1": COLWISE, "feed_forward.w3": COLWISE, "feed_forward.w2": ROWWISE},
    "sample_models.vit.Block": {"mlp.fc1": COLWISE, "mlp.fc2": ROWWISE},
}
SAMPLE_MODELS_WITH_PLAN = {"sample_models.gpt": "gpt", "sample_models.llama": "llama", "sample_models.vit": "vit"}

# Attributes that hold a head count (sample models, HF attention modules and configs).
_HEAD_ATTRS = ("n_head", "n_heads", "n_kv_heads", "num_heads", "num_attention_heads", "num_key_value_heads")


def _class_key(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def hf_tp_plan(model: nn.Module) -> dict[str, str] | None:
    """The model's transformers `base_model_tp_plan` (None when it has none)."""
    config = getattr(model, "config", None)
    plan = getattr(config, "base_model_tp_plan", None) if config is not None else None
    return dict(plan) if isinstance(plan, dict) and plan else None


def plan_note(model: nn.Module) -> str:
    """The provenance line saying which TP plan the profile's tp_ facts come from."""
    if hf_tp_plan(model) is not None:
        return "TP plan: transformers base_model_tp_plan"
    sample = SAMPLE_MODELS_WITH_PLAN.get(type(model).__module__)
    if sample is not None:
        return f"TP plan: pipeplan's plan for {sample}"
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "model_type", None):
        return f"no TP plan ({config.model_type} config has no base_model_tp_plan): layers replicate"
    return "no TP plan: layers replicate"


def _hf_patterns(plan: dict[str, str]) -> list[tuple[re.Pattern, str]]:
    out = []
    for key, style in plan.items():
        if style not in (COLWISE, ROWWISE):
            continue  # every other transformers style replicates here (module docstring)
        pattern = re.escape(key).replace(r"\*", r"\d+")
        out.append((re.compile(r"(?:^|\.)" + pattern + "$"), style))
    return out


def layer_tp_plan(model: nn.Module, layer_path: str) -> dict[str, str]:
    """TP plan of the layer whose module is `model.get_submodule(layer_path)`: relative module path ->
    "colwise" | "rowwise". Empty: the layer replicates."""
    if not layer_path or layer_path == "root":
        return {}
    try:
        layer = model.get_submodule(layer_path)
    except AttributeError:
        return {}
    hf = hf_tp_plan(model)
    plan: dict[str, str] = {}
    if hf is not None:
        patterns = _hf_patterns(hf)
        for rel, sub in layer.named_modules():
            if not rel or not isinstance(sub, nn.Linear):
                continue
            full = f"{layer_path}.{rel}"
            style = next((s for p, s in patterns if p.search(full)), None)
            if style is not None:
                plan[rel] = style
    else:
        candidate = SAMPLE_PLANS.get(_class_key(layer), {})
        for rel, style in candidate.items():
            try:
                sub = layer.get_submodule(rel)
            except AttributeError:
                return {}
            if not isinstance(sub, nn.Linear):
                return {}
            plan[rel] = style
    if COLWISE not in plan.values() or ROWWISE not in plan.values():
        return {}
    return plan


def split_param_count(layer: nn.Module, plan: dict[str, str]) -> int:
    """Parameters TP shards: colwise weight and bias, rowwise weight (the rowwise bias replicates)."""
    total = 0
    for rel, style in plan.items():
        sub = layer.get_submodule(rel)
        total += sub.weight.numel()
        if style == COLWISE and sub.bias is not None:
            total += sub.bias.numel()
    return total


def max_degree(model: nn.Module, layer: nn.Module, plan: dict[str, str]) -> int:
    """gcd of the dimensions TP splits (colwise out_features, rowwise in_features, the attention's head
    and key/value-head counts): a TP degree must divide it. 0 without a plan."""
    if not plan:
        return 0
    dims = []
    for rel, style in plan.items():
        sub = layer.get_submodule(rel)
        dims.append(sub.out_features if style == COLWISE else sub.in_features)
    heads = set()
    for m in layer.modules():
        for attr in _HEAD_ATTRS:
            value = getattr(m, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                heads.add(value)
    config = getattr(model, "config", None)
    if config is not None and hf_tp_plan(model) is not None:
        for attr in ("num_attention_heads", "num_key_value_heads"):
            value = getattr(config, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                heads.add(value)
    return math.gcd(*dims, *heads)


def tp_degree_allowed(target, tp: int) -> str | None:
    """None when TP of degree `tp` can split every planned layer of `target` (a Profile or a ProfileNode);
    else the reason. Layers without a plan replicate, so they allow any degree."""
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        return f"tensor-parallel degree must be an integer >= 1, got {tp!r}"
    nodes = getattr(target, "nodes", None)
    for node in (nodes if nodes is not None else [target]):
        limit = node.tp_max_degree
        if tp > 1 and limit and limit % tp:
            return (f"layer {node.id}: tp={tp} must divide {limit} (the gcd of its attention heads and the "
                    "hidden/intermediate sizes TP splits)")
    return None


# -- measuring on the layer's fx program --------------------------------------------------------------


@dataclass
class TpCost:
    """Per micro-batch, forward; what profiler.analyze records per layer (copied with its LayerCost)."""

    split_flops: int = 0
    split_activation_bytes: int = 0
    allreduce_fwd_bytes: int = 0
    allreduce_bwd_bytes: int = 0


def _reachable(starts, neighbours: Callable[[fx.Node], list[fx.Node]], stop) -> set[fx.Node]:
    """The nodes reachable from `starts` through `neighbours`, not walking on from the nodes in `stop`."""
    found: set[fx.Node] = set()
    todo = list(starts)
    while todo:
        n = todo.pop()
        if n in found:
            continue
        found.add(n)
        if n not in stop:
            todo.extend(neighbours(n))
    return found


def _inside(path: str, prefixes: list[str]) -> str | None:
    for p in prefixes:
        if path == p or path.startswith(p + "."):
            return p
    return None


class RegionRun(fx.Interpreter):
    """Runs a layer program node by node (inside the analysis's FakeTensorMode and OpCostMode) and
    attributes FLOPs, saved tensors and collective bytes to the split region (module docstring)."""

    def __init__(self, module: fx.GraphModule, layer_path: str, plan: dict[str, str], mode) -> None:
        super().__init__(module, garbage_collect_values=False)
        self.mode = mode
        self.current: fx.Node | None = None
        col = [f"{layer_path}.{r}" for r, s in plan.items() if s == COLWISE]
        row = [f"{layer_path}.{r}" for r, s in plan.items() if s == ROWWISE]
        nodes = [n for n in module.graph.nodes if n.op not in ("placeholder", "output", "get_attr")]
        owner = {n: node_module_path(n) for n in nodes}
        col_of = {n: m for n in nodes if (m := _inside(owner[n], col))}
        row_of = {n: m for n in nodes if (m := _inside(owner[n], row))}
        desc = _reachable(col_of, lambda n: [u for u in n.users if u.op != "output"], stop=row_of)
        anc = _reachable(row_of, lambda n: [a for a in n.all_input_nodes if a.op not in ("placeholder", "get_attr")],
                         stop=col_of)
        between = (desc & anc) - set(col_of) - set(row_of)
        self.flop_nodes = set(col_of) | set(row_of) | between
        self.split_producers = set(col_of) | between
        self.row_outputs = {n for n, m in row_of.items()
                            if any(u.op == "output" or row_of.get(u) != m for u in n.users)}
        self.col_inputs = {a for n, m in col_of.items() for a in n.all_input_nodes
                           if col_of.get(a) != m and a.op != "get_attr" and not a.name.startswith("attr_")}
        self.cost = TpCost()
        self.producer: dict[int, fx.Node] = {}
        self.saver: list[fx.Node | None] = []
        self.valid = bool(col_of) and bool(row_of)

    def run_node(self, n: fx.Node):
        self.current = n
        before = self.mode.totals.flops
        out = super().run_node(n)
        if n in self.flop_nodes:
            self.cost.split_flops += self.mode.totals.flops - before
        tensors = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        for t in tensors:
            self.producer.setdefault(t.untyped_storage()._cdata, n)
        if n in self.row_outputs:
            self.cost.allreduce_fwd_bytes += sum(tensor_bytes(t) for t in tensors if t.is_floating_point())
        if n in self.col_inputs:
            self.cost.allreduce_bwd_bytes += sum(tensor_bytes(t) for t in tensors
                                                 if t.is_floating_point() and t.requires_grad)
        self.current = None
        return out

    def on_pack(self) -> None:
        """Call from the saved-tensors pack hook: remembers which node saved the tensor."""
        self.saver.append(self.current)

    def is_split(self, t: torch.Tensor, index: int) -> bool:
        """Whether the index-th packed tensor `t` is split by TP (its producer, else its saver, is split)."""
        node = self.producer.get(t.untyped_storage()._cdata)
        if node is None:
            node = self.saver[index] if index < len(self.saver) else None
        return node in self.split_producers
