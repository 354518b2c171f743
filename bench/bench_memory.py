"""Memory accuracy: the planner's memory model against torch's MemTracker under FakeTensorMode.

    python -m bench.bench_memory [--quick]

Writes bench/results/memory.json. Per sample model (tiny size, micro-batch MICRO_BATCH, fp32,
AdamW), with no real memory used (FakeTensorMode):
- single device: one warm-up iteration creates the optimizer state and gradients
  (`zero_grad(set_to_none=False)` keeps them, as the exported job does), then MemTracker records
  one forward + backward + AdamW step. Its peak (params + buffers + grads + optimizer state +
  activations + temporaries) against the plan's single-stage memory (evaluate_partition on one
  device, M = 1: params + grads + optimizer + saved activations);
- per stage: a 2-stage 1F1B plan (M = 4). MemTracker gives, per layer module, the parameter
  bytes and the activation bytes the module leaves alive after its forward (POST_FW - PRE_FW
  of the Activation category). A stage's "tracked" peak is its modules' parameters x (weights +
  grads + AdamW's 2 states) + in_flight x its modules' activations: the per-layer inputs are
  measured, the in-flight composition is the schedule's (the pipeline itself is not run here;
  bench_accuracy runs it).
"""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType, _ModState

import sample_models as sm
from bench.common import Timer, command_line, rnd, spread, write_result
from planner.contracts.cluster import Cluster, Device
from planner.contracts.config import TrainConfig
from planner.solvers.evaluate import evaluate_partition
from planner.solvers.solve import solve
from profiler import load_profile
from profiler.gpus import GiB

MODELS = ["gpt", "llama", "vit", "resnet", "unet3d", "dlrm", "mlp"]
QUICK_MODELS = ["gpt", "mlp"]
MICRO_BATCH = 4


def _cpu(snap: dict) -> dict:
    return next(iter(snap.values())) if snap else {}


def tracked(name: str) -> tuple[dict, dict[str, dict]]:
    """(peak breakdown, per-module {param_bytes, act_bytes}) from MemTracker under FakeTensorMode."""
    spec = sm.get_model(name)
    cfg = spec.config("tiny")
    with FakeTensorMode():
        model = sm.build(name, "tiny", device="cpu", seed=None)
        opt = torch.optim.AdamW(model.parameters())
        inputs, target = spec.make_batch(cfg, MICRO_BATCH, device="cpu")

        def iteration() -> None:
            spec.loss_fn(model(*inputs), target).backward()
            opt.step()
            opt.zero_grad(set_to_none=False)

        iteration()
        mt = MemTracker()
        mt.track_external(model, opt)
        with mt:
            iteration()
        peak = {(k.value if isinstance(k, _MemRefType) else k): v for k, v in _cpu(mt.get_tracker_snapshot("peak")).items()}
        per_module = {}
        for fqn, mod in model.named_modules():
            stats = mt.memory_tracking.get(mod)
            if stats is None or not fqn:
                continue
            pre = stats.snapshots.get(_ModState.PRE_FW) or []
            post = stats.snapshots.get(_ModState.POST_FW) or []
            act = None
            if pre and post:
                act = _cpu(post[-1]).get(_MemRefType.ACT, 0) - _cpu(pre[-1]).get(_MemRefType.ACT, 0)
            per_module[fqn] = {"param_bytes": int(getattr(stats, "parameter_mem", 0)), "act_bytes": act}
    return peak, per_module


def cluster(n: int) -> Cluster:
    return Cluster(devices=[Device(name=f"dev{i}", memory_bytes=64 * GiB) for i in range(n)])


def case(name: str) -> dict:
    with Timer() as t:
        peak, per_module = tracked(name)
        prof = load_profile(f"sample:{name}:tiny", batch_size=MICRO_BATCH)
    row = {"model": name, "size": "tiny", "micro_batch_size": MICRO_BATCH, "nodes": len(prof.nodes),
           "seconds": rnd(t.wall, 3)}
    cfg1 = TrainConfig(num_microbatches=1, micro_batch_size=MICRO_BATCH, precision="fp32", optimizer="adamw")
    single = evaluate_partition(prof, cluster(1), cfg1, [[n.id for n in prof.nodes]])
    mem = single.stages[0].memory
    measured = {"params": peak.get("Parameter", 0) + peak.get("Buffer", 0), "grads": peak.get("Gradient", 0),
                "optimizer": peak.get("Optstate", 0), "activations": peak.get("Activation", 0),
                "temp": peak.get("Temp", 0), "total": peak.get("Total", 0)}
    predicted = {"params": mem.params, "grads": mem.grads, "optimizer": mem.optimizer,
                 "activations": mem.activations, "total": mem.total}
    row["single_device"] = {"predicted": predicted, "memtracker_peak": measured,
                            "predicted_over_tracked": rnd(mem.total / measured["total"]) if measured["total"] else None}
    cfg2 = TrainConfig(num_microbatches=4, micro_batch_size=MICRO_BATCH, precision="fp32", optimizer="adamw")
    plan = solve(prof, cluster(2), cfg2)
    stages = []
    for st in plan.stages:
        paths = [n.module_path for n in prof.nodes if n.id in set(st.node_ids)]
        mods = [per_module.get(p) for p in paths]
        known = [m for m in mods if m is not None and m["act_bytes"] is not None]
        p_bytes = sum(m["param_bytes"] for m in known)
        a_bytes = sum(max(m["act_bytes"], 0) for m in known)
        tracked_peak = p_bytes * 4 + st.in_flight * a_bytes  # weights + grads + AdamW m, v (fp32)
        pred_act_per_mb = st.memory.activations / st.in_flight if st.in_flight else 0
        stages.append({"stage": st.index, "layers": len(st.node_ids), "layers_tracked": len(known),
                       "in_flight": st.in_flight, "predicted_bytes": st.memory.total - st.memory.reserve,
                       "tracked_bytes": tracked_peak,
                       "predicted_over_tracked": rnd((st.memory.total - st.memory.reserve) / tracked_peak)
                       if tracked_peak else None,
                       "predicted_act_per_mb": int(pred_act_per_mb), "tracked_act_per_mb": a_bytes,
                       "predicted_param_bytes": st.memory.params, "tracked_param_bytes": p_bytes})
    row["stages"] = stages
    row["status"] = "ok"
    return row


def run(quick: bool) -> dict:
    rows = []
    for name in QUICK_MODELS if quick else MODELS:
        try:
            rows.append(case(name))
        except Exception as exc:  # noqa: BLE001 - one model's failure is a result, not the end of the suite
            rows.append({"model": name, "status": "error", "reason": f"{type(exc).__name__}: {exc}"[:2000]})
        r = rows[-1]
        print(f"  memory {name}: {r['status']} single x{r.get('single_device', {}).get('predicted_over_tracked')} "
              f"stages {[s['predicted_over_tracked'] for s in r.get('stages', [])]}", flush=True)
    ok = [r for r in rows if r["status"] == "ok"]
    singles = [r["single_device"]["predicted_over_tracked"] for r in ok if r["single_device"]["predicted_over_tracked"]]
    per_stage = [s["predicted_over_tracked"] for r in ok for s in r["stages"] if s["predicted_over_tracked"]]
    data = {"precision": "fp32", "optimizer": "adamw", "rows": rows,
            "summary": {"models": len(rows), "ok": len(ok), **spread("single", singles), **spread("stage", per_stage)}}
    write_result("memory", data, quick)
    return data


if __name__ == "__main__":
    command_line(run, summary_key="summary")
