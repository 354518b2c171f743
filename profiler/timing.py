"""Measure each layer's forward and backward time on the device at hand.

Each layer program runs on its own, with its inputs cut from the producer's
autograd graph, exactly as a pipeline stage holding just that layer would:
`warmup` untimed runs, then `reps` timed forward + backward pairs; the median
of each is kept. CPU: wall clock (time.perf_counter). CUDA: CUDA events around
each phase, after a synchronize.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from profiler.analyze import detach_input, grad_leaves, grad_targets, loss_closure
from profiler.layers import LayerProgram, resolve_attr

# Layers slower than this (first run, fwd + bwd) get 1 warm-up and 3 timed runs:
# GPT-124M at seq 1024 on 2 CPU cores would otherwise take minutes.
SLOW_LAYER_MS = 100.0
SLOW_LAYER_REPS = 3
# Layers slower than this on their first run are warm already (one-time costs are
# milliseconds against half a second or more): the first run counts as a timing and the median
# is over VERY_SLOW_LAYER_REPS runs. GPT-124M at seq 1024 on 2 CPU cores has 13
# such layers; this keeps its measured profile near a minute.
VERY_SLOW_LAYER_MS = 500.0
VERY_SLOW_LAYER_REPS = 2


class _Clock:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def start(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def elapsed_ms(self, start) -> float:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        return (time.perf_counter() - start) * 1e3


def measure_layers(programs: list[LayerProgram], root: nn.Module, placeholders: list[str], inputs: tuple,
                   device: torch.device, node_layer: dict[str, str], *, loss_fn=None, target=None,
                   warmup: int = 2, reps: int = 5,
                   progress: Callable[[str, float], None] | None = None) -> dict[str, tuple[float, float]]:
    """layer id -> (median forward ms, median backward ms) on `device` with real tensors."""
    clock = _Clock(device)
    env: dict[str, object] = dict(zip(placeholders, tree_flatten(inputs)[0]))
    attr_cache: dict[str, object] = {}
    result: dict[str, tuple[float, float]] = {}
    for i, prog in enumerate(programs):
        if progress:
            progress(f"timing {prog.id}", i / max(len(programs), 1))
        for attr_name in prog.attr_targets:
            attr_cache.setdefault(attr_name, resolve_attr(root, attr_name))
        attrs = [attr_cache[t] for t in prog.attr_targets]
        own_modules = [root.get_submodule(t) for t in prog.call_modules]
        fwd_times, bwd_times = [], []
        outs = None
        n_warm, n_reps = warmup, reps
        rep = 0
        while rep < n_warm + n_reps:
            ins = [tree_map(detach_input, env[n]) for n in prog.input_names]
            if clock.cuda:
                torch.cuda.synchronize()
            t0 = clock.start()
            outs = prog.module(*ins, *attrs)
            fwd_ms = clock.elapsed_ms(t0)
            leaves_in, params = grad_leaves(ins, attrs, own_modules)
            targets, grads = grad_targets(outs)
            bwd_ms = 0.0
            if targets and (leaves_in or params):
                t0 = clock.start()
                torch.autograd.grad(targets, leaves_in + params, grads, allow_unused=True)
                bwd_ms = clock.elapsed_ms(t0)
            if rep == 0 and fwd_ms + bwd_ms > SLOW_LAYER_MS:
                # a slow layer is already warm after one run, and 3 timings are stable
                n_warm, n_reps = min(warmup, 1), min(reps, SLOW_LAYER_REPS)
                if fwd_ms + bwd_ms > VERY_SLOW_LAYER_MS:
                    n_warm, n_reps = 0, min(reps, VERY_SLOW_LAYER_REPS)
            if rep >= n_warm:
                fwd_times.append(fwd_ms)
                bwd_times.append(bwd_ms)
            rep += 1
        with torch.no_grad():  # keep outputs for the next layers without this layer's graph
            for name, value in zip(prog.output_names, outs):
                env[name] = tree_map(lambda t: t.detach().requires_grad_(t.requires_grad)
                                     if isinstance(t, torch.Tensor) else t, value)
        result[prog.id] = (statistics.median(fwd_times), statistics.median(bwd_times))
    loss = loss_closure(root, loss_fn, target)
    if loss is not None:  # charged to the layer producing the output, like analyze() does
        names, run = loss
        fwd_times, bwd_times = [], []
        loss_warmup = min(warmup, 1)  # one fused op chain: warm after one run
        for rep in range(loss_warmup + min(reps, SLOW_LAYER_REPS)):
            t0 = clock.start()
            value, leaves = run(env)
            fwd_ms = clock.elapsed_ms(t0)
            t0 = clock.start()
            if leaves and value.requires_grad:
                torch.autograd.grad(value, leaves, allow_unused=True)
            bwd_ms = clock.elapsed_ms(t0)
            if rep >= loss_warmup:
                fwd_times.append(fwd_ms)
                bwd_times.append(bwd_ms)
        lay = node_layer[names[-1]]
        f, b = result[lay]
        result[lay] = (f + statistics.median(fwd_times), b + statistics.median(bwd_times))
    return result


OPTIMIZER_WARMUP = 2
OPTIMIZER_REPS = 5


def measure_optimizer_ms(model: nn.Module, owned: dict[str, list[str]], device: torch.device, *,
                         progress: Callable[[str, float], None] | None = None) -> dict[str, float]:
    """layer id -> median time of one AdamW step with global-norm clipping on the layer's own
    parameters, on `device`.

    It runs what an exported job's step runs once the last backward is done (the schedule's scaling
    of the gradients by 1/M, the clip's squared norm and scale, torch.optim.AdamW with its defaults
    for the device, zeroing the gradients), on copies of the parameters with random gradients, so
    the model is untouched. Small layers are dominated by per-tensor
    dispatch, which is why this is measured per layer rather than derived from the byte count.
    """
    clock = _Clock(device)
    result: dict[str, float] = {}
    layers = [lay for lay, fqns in owned.items() if fqns]
    for i, lay in enumerate(layers):
        if progress:
            progress(f"timing the optimizer step of {lay}", i / max(len(layers), 1))
        params = []
        for fqn in owned[lay]:
            p = nn.Parameter(model.get_parameter(fqn).detach().to(device, torch.float32).clone())
            p.grad = torch.randn_like(p)
            params.append(p)
        opt = torch.optim.AdamW(params, lr=1e-4)
        times = []
        n_warm, n_reps = OPTIMIZER_WARMUP, OPTIMIZER_REPS
        rep = 0
        while rep < n_warm + n_reps:
            t0 = clock.start()
            for p in params:  # the pipeline schedule's scale_grads: sum over micro-batches -> mean
                p.grad.div_(2.0)
            norm_sq = sum(p.grad.pow(2).sum() for p in params)
            scale = torch.clamp(1.0 / (norm_sq.sqrt() + 1e-6), max=1.0)
            for p in params:
                p.grad.mul_(scale)
            opt.step()
            opt.zero_grad(set_to_none=False)  # the exported job keeps its gradient buffers between steps
            ms = clock.elapsed_ms(t0)
            if rep == 0 and ms > SLOW_LAYER_MS:  # a big layer (an embedding table): warm after one step
                n_warm, n_reps = 1, SLOW_LAYER_REPS
            if rep >= n_warm:
                times.append(ms)
            rep += 1
        result[lay] = statistics.median(times)
    return result
