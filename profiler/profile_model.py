"""`profile_model`: an nn.Module and one micro-batch of inputs -> a Profile.

Steps: trace (profiler.trace) -> one program per layer (profiler.layers) ->
FLOPs, bytes, saved activations and edges under FakeTensorMode
(profiler.analyze) -> times, either measured on a real device
(profiler.timing) or a per-op roofline for a GPU preset (profiler.gpus).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from core.errors import PipeplanError
from profiler.analyze import Analysis, analyze
from profiler.gpus import GpuPreset, optimizer_step_ms, resolve_device, roofline_ms
from profiler.layers import LayerProgram, build_programs
from profiler.memcheck import check_fits_for_measuring
from profiler.params import LayerParams, layer_params
from profiler.profile import ModelInfo, Profile, ProfileEdge, ProfileNode, Provenance
from profiler.repeat import Run, expand, find_runs, shortened
from profiler.timing import measure_layers, measure_optimizer_ms
from profiler.tp import layer_tp_plan, max_degree, plan_note, split_param_count
from profiler.trace import TracedModel, trace_model

DEFAULT_PRESET = "A100-80GB"
MEASURE_DEVICES = ("cpu", "cuda")
Progress = Callable[[str, float], None]

_NORMS = ("LayerNorm", "RMSNorm", "GroupNorm", "BatchNorm", "Norm")
_HEAD_NAMES = ("head", "lm_head", "output", "classifier", "fc", "cls", "decoder")


def layer_kind(layer_id: str, module: nn.Module | None, is_last: bool) -> str:
    """A coarse label for the UI: embedding, block, norm, head, conv, mlp or other."""
    if module is None:
        return "other"
    types = {type(m).__name__ for m in module.modules() if any(True for _ in m.parameters(recurse=False))}
    last = layer_id.rsplit(".", 1)[-1]
    if "embed" in layer_id.lower() or types & {"Embedding", "EmbeddingBag"} == types and types:
        return "embedding"
    if types and all(any(k in t for k in _NORMS) for t in types):
        return "norm"
    if is_last or last in _HEAD_NAMES:
        return "head"
    if last.isdigit() and len(list(module.children())) > 1:
        return "block"
    if types and all(t.startswith("Conv") for t in types):
        return "conv"
    if types and types <= {"Linear"}:
        return "mlp"
    return "block" if last.isdigit() else "other"


def _model_dtype(model: nn.Module) -> str:
    for p in model.parameters():
        if p.is_floating_point():
            return str(p.dtype).replace("torch.", "")
    return "float32"


def _check_measure(measure: str | None, model: nn.Module) -> torch.device | None:
    if measure is None:
        return None
    if measure not in MEASURE_DEVICES:
        raise PipeplanError(f"--measure {measure!r} is not supported; use cpu or cuda, or --estimate-for PRESET")
    if measure == "cuda" and not torch.cuda.is_available():
        raise PipeplanError("--measure cuda: no CUDA device is available here; use --measure cpu or "
                            "--estimate-for PRESET (e.g. A100-80GB)")
    devices = {p.device.type for p in model.parameters()}
    if "meta" in devices:
        raise PipeplanError("the model is on the meta device (no weights), so it cannot be timed; "
                            "use an estimate (--estimate-for PRESET) or build it on a real device")
    if devices and devices != {measure}:
        raise PipeplanError(f"the model is on {sorted(devices)} but --measure {measure} was asked; move it first")
    return torch.device(measure)


@dataclass
class LayerTrace:
    """A model traced and cut into layer programs: what the analysis runs. Traced with symbolic input
    sizes (profile_model's `dynamic_shapes`), the programs are shape-generic: `profile_model(reuse=...)`
    analyses them again at other sizes, which is the whole profile less the trace."""

    traced: TracedModel
    programs: list[LayerProgram]
    placeholders: list[str]
    params: dict[str, LayerParams]
    tp_plans: dict[str, dict[str, str]]
    runs: list[Run]
    """The stacks traced shortened (profiler.repeat); [] when the whole model was traced."""


def _trace_layers(model: nn.Module, inputs: tuple, granularity: str, runs: list[Run],
                  dynamic_shapes: tuple | None) -> LayerTrace:
    traced = trace_model(model, inputs, granularity=granularity, dynamic_shapes=dynamic_shapes)
    root = traced.graph_module
    programs = build_programs(traced, device=torch.device("cpu"))
    tp_plans = {lay: layer_tp_plan(model, lay) for lay in traced.layers} if granularity == "block" else {}
    return LayerTrace(traced=traced, programs=programs,
                      placeholders=[n.name for n in root.graph.nodes if n.op == "placeholder"],
                      params=layer_params(model, root, traced, programs), tp_plans=tp_plans, runs=runs)


def _analyse_layers(trace: LayerTrace, inputs: tuple, report: Progress, **costs) -> Analysis:
    return analyze(trace.programs, trace.traced.graph_module, trace.placeholders, inputs, trace.traced.node_layer,
                   progress=lambda m, f: report(m, 0.1 + 0.4 * f), tp_plans=trace.tp_plans,
                   size_nodes=trace.traced.size_nodes, **costs)


def profile_model(model: nn.Module, inputs: tuple, *, loss_fn: Callable | None = None, target=None,
                  source: str, name: str, estimate_for: str | GpuPreset | None = None,
                  measure: str | None = None, granularity: str = "block", progress: Progress | None = None,
                  seq_len: int | None = None, image_size: int | None = None,
                  warmup: int = 2, reps: int = 5, shorten: bool = True,
                  dynamic_shapes: tuple | None = None, reuse: LayerTrace | None = None,
                  keep_trace: Callable[[LayerTrace], None] | None = None) -> Profile:
    """Profile `model` on one micro-batch `inputs` (dim 0 is the micro-batch).

    measure="cpu"|"cuda": times measured on that device (the model and inputs must be there).
    Otherwise times are a roofline estimate for `estimate_for` (default A100-80GB); the
    model may then live on the meta device. loss_fn(output, target), when given, is
    charged to the layer that produces the output (the last stage computes the loss).
    shorten: for estimates, trace only the first three blocks of each stack of identical
    blocks and copy block 1 to the rest when that provably equals the full trace
    (profiler.repeat); shorten=False always traces the whole model.
    Estimates only: `dynamic_shapes` (torch.export's) traces with symbolic sizes and hands the trace
    to `keep_trace`; `reuse` analyses such a trace at `inputs`' sizes instead of tracing.
    """
    if not isinstance(inputs, tuple):
        inputs = (inputs,)
    device = _check_measure(measure, model)
    if measure is not None and estimate_for is not None:
        raise PipeplanError("give either --measure or --estimate-for, not both")
    if device is not None and (dynamic_shapes is not None or reuse is not None):
        raise PipeplanError("a shape-generic trace is for estimates; measure at each shape instead")
    preset = None
    if device is None:
        preset = estimate_for if isinstance(estimate_for, GpuPreset) else resolve_device(estimate_for or DEFAULT_PRESET)
    dtype = _model_dtype(model)
    was_training = model.training
    model.train()
    try:
        report = progress or (lambda msg, frac: None)
        report("tracing", 0.0)
        op_time = (lambda f, b: roofline_ms(f, b, preset, dtype)) if preset else None
        costs = {"op_time": op_time, "loss_fn": loss_fn, "target": target}

        expanded = None
        if reuse is not None:
            runs = reuse.runs
        else:
            runs = find_runs(model) if shorten and device is None and granularity == "block" else []
        if runs:  # estimates of repeated blocks: trace the first three of each stack (profiler.repeat)
            try:
                with shortened(model, runs):
                    trace = reuse or _trace_layers(model, inputs, granularity, runs, dynamic_shapes)
                    analysis = _analyse_layers(trace, inputs, report, **costs)
                    expanded = expand(runs, trace.traced, trace.programs, analysis, trace.params, model)
            except Exception:  # the shortened model does not run (forward indexes blocks by number)
                if reuse is not None or dynamic_shapes is not None:
                    raise
                expanded = None
            # A stack of blocks is traced shape-generic only shortened: a full symbolic trace of an 80-block
            # model takes minutes. The caller traces statically instead (profiler.hf.HfLengthProfiler).
            if expanded is None and (reuse is not None or dynamic_shapes is not None):
                raise PipeplanError("no shortened shape-generic trace of this model")
        if expanded is not None:
            traced, analysis, params = expanded
        else:
            trace = reuse or _trace_layers(model, inputs, granularity, [], dynamic_shapes)
            analysis = _analyse_layers(trace, inputs, report, **costs)
            traced, params = trace.traced, trace.params
        if keep_trace is not None and dynamic_shapes is not None:
            keep_trace(trace)
        times = optimizer_times = None
        if device is not None:
            needed = 2 * sum(p.bytes for p in params.values()) + analysis.input_bytes + \
                sum(c.activation_bytes for c in analysis.costs.values())
            check_fits_for_measuring(needed, device.type, name)
            if device.type == "cpu":
                timed = trace.programs
            else:
                timed = build_programs(traced)
            times = measure_layers(timed, traced.graph_module, trace.placeholders, inputs, device, traced.node_layer,
                                   loss_fn=loss_fn, target=target, warmup=warmup, reps=reps,
                                   progress=lambda m, f: report(m, 0.5 + 0.45 * f))
            optimizer_times = measure_optimizer_ms(model, {lay: p.owned for lay, p in params.items()}, device,
                                                   progress=lambda m, f: report(m, 0.95 + 0.05 * f))
        report("writing profile", 1.0)
    finally:
        model.train(was_training)
    return _assemble(model, traced, analysis, params, times, optimizer_times, preset, device, dtype,
                     source=source, name=name,
                     inputs=inputs, seq_len=seq_len, image_size=image_size)


def _tp_fields(model: nn.Module, lay: str, module: nn.Module | None, cost, merged: list[str]) -> dict:
    """The node's tp_* fields (profiler.tp): empty when the layer has no TP plan, when the analysis found
    no split region, or when another layer was merged into it (its plan would not cover the merged ops)."""
    if module is None or cost.tp is None or merged:
        return {}
    plan = layer_tp_plan(model, lay)
    if not plan:
        return {}
    return {"tp_colwise": [r for r, s in plan.items() if s == "colwise"],
                "tp_rowwise": [r for r, s in plan.items() if s == "rowwise"],
                "tp_split_param_count": split_param_count(module, plan), "tp_split_flops": float(cost.tp.split_flops),
                "tp_split_activation_bytes": int(cost.tp.split_activation_bytes),
                "tp_allreduce_fwd_bytes": int(cost.tp.allreduce_fwd_bytes),
                "tp_allreduce_bwd_bytes": int(cost.tp.allreduce_bwd_bytes),
                "tp_max_degree": max_degree(model, module, plan)}


def _assemble(model, traced, analysis, params, times, optimizer_times, preset, device, dtype, *, source, name, inputs,
              seq_len, image_size) -> Profile:
    nodes = []
    for i, lay in enumerate(traced.layers):
        cost = analysis.costs[lay]
        try:
            module = model.get_submodule(lay) if lay != "root" else None
        except AttributeError:
            module = None
        if times is not None:
            fwd_ms, bwd_ms = times[lay]
            bwd_in = bwd_w = None
            optimizer_ms = optimizer_times.get(lay, 0.0)
        else:
            fwd_ms, bwd_ms = cost.fwd.ms, cost.bwd.ms
            bwd_in = min(cost.bwd_input.ms, bwd_ms) if cost.bwd_input is not None else 0.0
            bwd_w = bwd_ms - bwd_in
            optimizer_ms = optimizer_step_ms(params[lay].count, preset)
        merged = sorted(k for k, v in traced.merged.items() if v == lay)
        label = f"{lay} ({type(module).__name__})" if module is not None else lay
        tp = _tp_fields(model, lay, module, cost, merged)
        nodes.append(ProfileNode(
            id=lay, name=label + (f" + {', '.join(merged)}" if merged else ""),
            kind=layer_kind(lay, module, i == len(traced.layers) - 1),
            module_path=lay if module is not None else "",
            fwd_flops=float(cost.fwd.flops), bwd_flops=float(cost.bwd.flops),
            fwd_ms=fwd_ms, bwd_ms=bwd_ms, bwd_input_ms=bwd_in, bwd_weight_ms=bwd_w,
            param_bytes=params[lay].bytes, param_count=params[lay].count, shared_params=params[lay].shared,
            activation_bytes=cost.activation_bytes, output_bytes=cost.output_bytes, optimizer_ms=optimizer_ms,
            fwd_peak_bytes=cost.fwd_peak_bytes,
            **tp,
        ))
    edges = [ProfileEdge(src=s, dst=d, bytes=int(b), requires_grad=bool(rg), saved_by_src=bool(by_src),
                         saved_by_dst=bool(by_dst))
             for (s, d), (b, rg, by_src, by_dst) in sorted(analysis.edges.items(),
                                           key=lambda kv: (traced.layers.index(kv[0][0]), traced.layers.index(kv[0][1])))]
    batch = next((x.shape[0] for x in tree_flatten(inputs)[0] if isinstance(x, torch.Tensor) and x.dim() > 0), 1)
    if device is not None:
        dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        provenance = Provenance(method="measured", device=dev_name, reference_tflops=None,
                                notes=f"median of timed runs per layer, {traced.method} trace")
    else:
        provenance = Provenance(method="estimated", device=preset.name, reference_tflops=preset.peak_tflops(dtype),
                                notes=f"per-op roofline: compute eff {preset.compute_efficiency}, memory eff "
                                      f"{preset.memory_efficiency}, {preset.kernel_overhead_us} us/op; "
                                      f"{traced.method} trace")
    provenance.notes += "; " + plan_note(model)
    provenance.torch_version = torch.__version__
    provenance.date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    info = ModelInfo(source=source, name=name, param_count=sum(p.numel() for p in model.parameters()), dtype=dtype,
                     micro_batch_size=int(batch), seq_len=seq_len, image_size=image_size,
                     input_bytes=int(analysis.input_bytes))
    for n in nodes:
        if not all(math.isfinite(v) for v in (n.fwd_ms, n.bwd_ms)):
            raise PipeplanError(f"layer {n.id}: timing produced a non-finite value")
    return Profile(model=info, provenance=provenance, nodes=nodes, edges=edges)
