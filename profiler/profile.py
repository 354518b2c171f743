"""The Profile contract: one model's layer graph at one micro-batch shape.

Units are fixed here once: times in milliseconds, sizes in bytes, FLOPs as
plain counts, all *per micro-batch*. The JSON format is public and documented
in docs/formats.md; bump SCHEMA when a field changes meaning.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import networkx as nx

from core.errors import PipeplanError
from core.jsonio import build_dataclass, load_json_text
from core.limits import MAX_PROFILE_EDGES, MAX_PROFILE_NODES

SCHEMA = "pipeplan.profile/1"


@dataclass(kw_only=True, slots=True)
class ProfileNode:
    """One layer of the model (a transformer block, the embedding, a conv stage...)."""

    id: str
    """Stable identifier, unique in the profile; usually the module path ("layers.3")."""
    name: str
    """Human-readable label."""
    kind: str
    """Layer kind: "embedding", "block", "norm", "head", "conv", "mlp", "other"..."""
    module_path: str
    """Module FQN prefix that owns this layer's graph nodes ("" for the root)."""
    fwd_flops: float = 0.0
    """Forward FLOPs per micro-batch (FlopCounterMode)."""
    bwd_flops: float = 0.0
    """Backward FLOPs per micro-batch."""
    fwd_ms: float = 0.0
    """Forward time per micro-batch on the profile's reference device."""
    bwd_ms: float = 0.0
    """Full backward time (input-grad + weight-grad) per micro-batch."""
    bwd_input_ms: float | None = None
    """Input-gradient part of backward (B of zero-bubble schedules), if known."""
    bwd_weight_ms: float | None = None
    """Weight-gradient part of backward (W of zero-bubble schedules), if known."""
    param_bytes: int = 0
    """Bytes of parameters owned by this layer, in the profile dtype; shared ones counted once."""
    param_count: int = 0
    """Number of parameters owned by this layer (shared ones counted once)."""
    shared_params: list[str] = field(default_factory=list)
    """FQNs of parameters this layer uses that are tied to/owned by another layer."""
    activation_bytes: int = 0
    """Bytes autograd saves for backward per micro-batch (measured, not guessed)."""
    output_bytes: int = 0
    """Bytes of this layer's outputs per micro-batch."""
    fwd_peak_bytes: int = 0
    """Peak bytes per micro-batch the layer's forward holds without autograd beyond its inputs and
    weights (intermediates and outputs alive at once; profiler.analyze.forward_peak_bytes): an inference
    stage's transient. 0: not measured (profiles from before it, synthetic ones); output_bytes stands in."""
    optimizer_ms: float | None = None
    """Time of one optimizer step (AdamW, with global-norm clipping) on this layer's own parameters
    on the reference device: measured, or the roofline estimate (profiler.gpus.optimizer_step_ms).
    None (older profiles): the planner charges no optimizer time for this layer."""
    # -- tensor parallelism (profiler.tp; docs/hybrid.md). All zero/empty: the layer replicates under TP.
    tp_colwise: list[str] = field(default_factory=list)
    """Submodule paths, relative to module_path, that tensor parallelism splits column-wise
    (torch.distributed.tensor.parallel.ColwiseParallel: output features sharded)."""
    tp_rowwise: list[str] = field(default_factory=list)
    """Submodule paths, relative to module_path, split row-wise (RowwiseParallel: input features sharded,
    the output all-reduced)."""
    tp_split_param_count: int = 0
    """Parameters of this layer that TP shards (the rest replicate on every TP rank)."""
    tp_split_flops: float = 0.0
    """Forward FLOPs per micro-batch that TP splits (planned matmuls, and attention over the local heads);
    the backward splits in the same proportion."""
    tp_split_activation_bytes: int = 0
    """Saved-activation bytes per micro-batch that TP splits (inside the colwise..rowwise region)."""
    tp_allreduce_fwd_bytes: int = 0
    """Bytes per micro-batch that TP all-reduces in forward (Megatron block: 2 all-reduces of the hidden
    states), summed over the layer's collectives; 0 without a TP plan."""
    tp_allreduce_bwd_bytes: int = 0
    """Bytes per micro-batch that TP all-reduces in backward (the input gradients of the column-wise
    modules)."""
    tp_max_degree: int = 0
    """0: no limit (the layer replicates). Else the gcd of the dimensions TP splits (attention heads,
    key/value heads, colwise output and rowwise input features): a TP degree must divide it
    (profiler.tp.tp_degree_allowed)."""

    def __post_init__(self) -> None:
        for name in ("fwd_flops", "bwd_flops", "fwd_ms", "bwd_ms", "param_bytes",
                     "param_count", "activation_bytes", "output_bytes", "fwd_peak_bytes", "tp_split_param_count",
                     "tp_split_flops",
                     "tp_split_activation_bytes", "tp_allreduce_fwd_bytes", "tp_allreduce_bwd_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise PipeplanError(f"profile node {self.id!r}: {name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise PipeplanError(f"profile node {self.id!r}: {name} must be finite and >= 0, got {value!r}")
        for name in ("tp_split_param_count", "tp_allreduce_fwd_bytes", "tp_allreduce_bwd_bytes",
                     "tp_split_activation_bytes", "tp_max_degree"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise PipeplanError(f"profile node {self.id!r}: {name} must be an integer >= 0, got {value!r}")
        for name in ("tp_colwise", "tp_rowwise"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise PipeplanError(f"profile node {self.id!r}: {name} must be a list of module paths")
        if bool(self.tp_colwise) != bool(self.tp_rowwise):
            raise PipeplanError(f"profile node {self.id!r}: tp_colwise and tp_rowwise must both be given or "
                                "both be empty")
        if self.tp_split_flops > self.fwd_flops * (1 + 1e-9) or self.tp_split_param_count > self.param_count:
            raise PipeplanError(f"profile node {self.id!r}: TP cannot split more FLOPs or parameters than "
                                "the layer has")
        for name in ("bwd_input_ms", "bwd_weight_ms", "optimizer_ms"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value < 0):
                raise PipeplanError(f"profile node {self.id!r}: {name} must be null or a finite number >= 0, got {value!r}")

    @property
    def train_ms(self) -> float:
        """Forward + backward time per micro-batch on the reference device."""
        return self.fwd_ms + self.bwd_ms


@dataclass(kw_only=True, slots=True)
class ProfileEdge:
    """A tensor flowing from one layer to another (skip connections included)."""

    src: str
    dst: str
    bytes: int
    """Bytes per micro-batch of the tensors src sends to dst (forward activations;
    the gradient flowing back has the same size for float tensors that need grad)."""
    requires_grad: bool = True
    """False for tensors with no gradient (masks, integer ids): no backward traffic."""
    saved_by_src: bool = False
    """src saves these tensors for its own backward (a ReLU's output): its activation_bytes hold them, so a
    stage that sends them on holds nothing more until their backward (planner.costmodel.memory)."""
    saved_by_dst: bool = False
    """dst saves (a view of) these tensors for its backward. The profile charges a saved tensor once, to the
    first layer that saves it; a later stage whose layer saves its own received copy holds those bytes too
    (planner.costmodel.memory.saved_copy_bytes)."""


@dataclass(kw_only=True, slots=True)
class ModelInfo:
    """What model this profile describes."""

    source: str
    """"sample:gpt:124M", "hf:config.json", "file:model.py:make" ..."""
    name: str
    param_count: int
    dtype: str = "float32"
    micro_batch_size: int = 1
    seq_len: int | None = None
    image_size: int | None = None
    input_bytes: int = 0
    """Bytes of one micro-batch of model inputs (what the first stage receives)."""


@dataclass(kw_only=True, slots=True)
class Provenance:
    """Where the node times come from."""

    method: str
    """"measured" or "estimated"."""
    device: str
    """"cpu", a CUDA device name, or a GPU preset name for estimates."""
    reference_tflops: float | None = None
    """Dense peak TFLOP/s of the reference device; lets a Cluster scale times to other devices."""
    torch_version: str = ""
    date: str = ""
    notes: str = ""


@dataclass(kw_only=True, slots=True)
class Profile:
    model: ModelInfo
    provenance: Provenance
    nodes: list[ProfileNode]
    """In a topological order of the layer graph."""
    edges: list[ProfileEdge]
    schema: str = SCHEMA

    def __post_init__(self) -> None:
        ids = [n.id for n in self.nodes]
        if not ids:
            raise PipeplanError("profile has no nodes: profile a model with at least one layer")
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise PipeplanError(f"profile node id {dup!r} appears twice: node ids must be unique")
        position = {i: k for k, i in enumerate(ids)}
        for e in self.edges:
            if e.src not in position or e.dst not in position:
                raise PipeplanError(f"profile edge {e.src!r} -> {e.dst!r} names an unknown node")
            if position[e.src] >= position[e.dst]:
                raise PipeplanError(
                    f"profile edge {e.src!r} -> {e.dst!r} runs backwards: nodes must be listed in topological order")
            if isinstance(e.bytes, bool) or not isinstance(e.bytes, int) or e.bytes < 0:
                raise PipeplanError(f"profile edge {e.src!r} -> {e.dst!r}: bytes must be an integer >= 0")

    # -- derived views -------------------------------------------------------
    def graph(self) -> nx.DiGraph:
        """The layer graph as a networkx DAG; node attrs are the ProfileNode, edge attr `bytes`."""
        g = nx.DiGraph()
        for n in self.nodes:
            g.add_node(n.id, node=n)
        for e in self.edges:
            if g.has_edge(e.src, e.dst):
                g.edges[e.src, e.dst]["bytes"] += e.bytes
            else:
                g.add_edge(e.src, e.dst, bytes=e.bytes, requires_grad=e.requires_grad)
        return g

    @property
    def total_param_bytes(self) -> int:
        return sum(n.param_bytes for n in self.nodes)

    @property
    def total_flops(self) -> float:
        return sum(n.fwd_flops + n.bwd_flops for n in self.nodes)

    def fingerprint(self) -> str:
        """Short content hash; a Plan records it to say which profile it was made from."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    # -- JSON ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        # Field-by-field instead of dataclasses.asdict: asdict deep-copies every
        # value and costs ~0.5 s on a 1000-layer profile; planners fingerprint
        # profiles on every solve.
        return {
            "model": asdict(self.model),
            "provenance": asdict(self.provenance),
            "nodes": [_flat_dict(n) for n in self.nodes],
            "edges": [_flat_dict(e) for e in self.edges],
            "schema": self.schema,
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> Profile:
        if not isinstance(data, dict):
            raise PipeplanError("profile JSON must be an object with keys schema, model, provenance, nodes, edges")
        schema = data.get("schema")
        if schema != SCHEMA:
            raise PipeplanError(
                f"profile schema {schema!r} is not supported: this pipeplan reads {SCHEMA!r}; "
                "re-create the profile with `pipeplan profile`")
        try:
            return cls(
                model=_build(ModelInfo, data.get("model"), "model"),
                provenance=_build(Provenance, data.get("provenance"), "provenance"),
                nodes=[_build(ProfileNode, n, f"nodes[{i}]")
                       for i, n in enumerate(_list(data, "nodes", MAX_PROFILE_NODES))],
                edges=[_build(ProfileEdge, e, f"edges[{i}]")
                       for i, e in enumerate(_list(data, "edges", MAX_PROFILE_EDGES))],
                schema=schema,
            )
        except PipeplanError:
            raise
        except (TypeError, ValueError) as exc:  # wrong field types deep inside
            raise PipeplanError(f"profile JSON is malformed: {exc}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> Profile:
        return cls.from_dict(load_json_text(text, "profile"))


def _flat_dict(obj: Any) -> dict[str, Any]:
    """A dataclass whose fields are scalars or lists of scalars, as a dict. The facts added after the first
    profiles (tensor parallelism, forward peaks, who saves an edge's tensors: _OPTIONAL_FIELDS) are left
    out while they are empty, so a profile without them keeps the fingerprint it had before they existed
    (plans record it)."""
    out = {}
    for name in _FIELD_NAMES[type(obj)]:
        value = getattr(obj, name)
        if not value and (name.startswith("tp_") or name in _OPTIONAL_FIELDS):
            continue
        out[name] = list(value) if isinstance(value, list) else value
    return out


_FIELD_NAMES = {cls: tuple(f.name for f in fields(cls)) for cls in (ProfileNode, ProfileEdge)}
_OPTIONAL_FIELDS = frozenset({"fwd_peak_bytes", "saved_by_src", "saved_by_dst"})


def _list(data: dict, key: str, limit: int) -> list:
    value = data.get(key)
    if not isinstance(value, list):
        raise PipeplanError(f"profile JSON: {key!r} must be a list")
    if len(value) > limit:  # checked before any is built (core.limits)
        raise PipeplanError(f"profile JSON has {len(value)} {key}; pipeplan plans at most {limit} "
                            "(profile at --granularity block)")
    return value


def _build(cls: type, data: Any, where: str):
    return build_dataclass(cls, data, f"profile JSON: {where}")
