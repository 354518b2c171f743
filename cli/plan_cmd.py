"""`pipeplan plan MODEL --devices N ...`: solve for the optimal stages and print a summary (or the Plan JSON)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.errors import PipeplanError
from core.files import check_writable, write_file_atomic
from core.jsonio import read_json_file
from core.limits import (
    MAX_GLOBAL_BATCH,
    MAX_MICROBATCHES,
    MAX_VIRTUAL_STAGES,
    check_count,
    check_pipeline_size,
    check_shape,
)
from planner.contracts.cluster import Cluster, Device, check_device_count, parse_memory
from planner.contracts.config import TrainConfig
from planner.contracts.plan import Plan
from planner.pipeline.schedules import SCHEDULE_SPECS, SCHEDULES
from profiler.gpus import GiB
from profiler.profile import Profile


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("plan", help="find the optimal pipeline stages for a model on a cluster")
    p.add_argument("model", help="profile:PATH.json, sample:NAME[:SIZE], hf:PATH/config.json or file:PATH.py:FACTORY")
    p.add_argument("--devices", type=int, help="number of devices (pipeline stages per chunk)")
    dev = p.add_mutually_exclusive_group()
    dev.add_argument("--gpu", help="GPU preset of every device, e.g. A100-80GB")
    dev.add_argument("--memory", help="memory per device, e.g. 80GB (speed = the profile's reference device)")
    dev.add_argument("--cluster", help="cluster JSON file (devices, memory, speed, links)")
    mb = p.add_mutually_exclusive_group()
    mb.add_argument("--microbatches", type=int, help="micro-batches per step (M)")
    mb.add_argument("--global-batch", type=int, help="samples per step; pipeplan picks the fastest M")
    p.add_argument("--schedule", default="1F1B", help=", ".join(SCHEDULES))
    p.add_argument("--virtual-stages", type=int, default=1, help="chunks per device (" + ", ".join(
        s.name for s in SCHEDULE_SPECS.values() if s.chunks_per_device is None) + ")")
    p.add_argument("--optimizer", default="adamw", help="adamw, adam, sgd, sgd_momentum")
    p.add_argument("--precision", default="fp32", help="fp32 or bf16 (bf16 mixed with fp32 master weights)")
    p.add_argument("--recompute", default="off", choices=("off", "on", "auto"))
    p.add_argument("--reserve", default="0", help="memory held back per device, e.g. 2GB")
    p.add_argument("--solver", default="auto", choices=("auto", "highs", "cbc", "dp"))
    p.add_argument("--time-limit", type=float, default=10.0, help="solver time limit in seconds")
    p.add_argument("--device-order", default="fixed", choices=("fixed", "auto"),
                   help="auto: let the solver reorder the devices")
    p.add_argument("--batch-size", type=int, help="micro-batch size to profile sample/hf models at")
    p.add_argument("--seq-len", type=int, help="sequence length to profile sample/hf models at")
    p.add_argument("--allow-code", action="store_true", help="allow file: models (runs their code)")
    p.add_argument("-o", "--output", help="write the Plan JSON here")
    p.add_argument("--json", action="store_true", help="print the Plan JSON instead of a summary")
    hy = p.add_argument_group("hybrid parallelism (PP x DP x TP; docs/hybrid.md)")
    hy.add_argument("--parallel", choices=("pp", "auto"), default=None,
                    help="auto: search pipeline, data and tensor parallel degrees for all --devices (ranked); "
                         "pp: pipeline only (the default unless --tp/--dp is given)")
    hy.add_argument("--gpus-per-node", type=int, help="GPUs per node (default 8); TP groups stay inside a node")
    hy.add_argument("--tp", type=int, help="tensor-parallel degree (fixes it; divides --gpus-per-node)")
    hy.add_argument("--dp", type=int, help="data-parallel degree (fixes it); pp = devices / (dp x tp)")
    hy.add_argument("--dp-sharding", choices=("ddp", "zero1", "fsdp"),
                    help="how replicas hold the model state (default: searched with --parallel auto, ddp otherwise)")
    hy.add_argument("--top", type=int, default=5, help="configurations to list with --parallel auto (default 5)")
    return p


def load_model(spec: str, args: argparse.Namespace) -> Profile:
    if spec.startswith("profile:"):
        path = Path(spec[len("profile:"):])
        if not path.is_file():
            raise PipeplanError(f"profile file {str(path)!r} does not exist")
        return Profile.from_json(read_json_file(path, "profile"))
    if not any(spec.startswith(p) for p in ("sample:", "hf:", "file:")):
        raise PipeplanError(f"cannot read model {spec!r}: write profile:PATH.json, sample:NAME[:SIZE], "
                            "hf:PATH/config.json or file:PATH.py:FACTORY")
    try:
        from profiler import load_profile
    except ImportError:
        raise PipeplanError("this pipeplan cannot profile models yet; pass profile:PATH.json") from None
    estimate_for = args.gpu if args.gpu else None
    if args.allow_code and spec.startswith("file:"):
        import sys

        from profiler.sandbox import sandbox_notice

        if note := sandbox_notice():  # no bubblewrap here: say the code runs in the weaker sandbox
            print(f"pipeplan plan: note: {note}", file=sys.stderr)
    return load_profile(spec, batch_size=args.batch_size, seq_len=args.seq_len, estimate_for=estimate_for,
                        allow_code=args.allow_code)


def host_memory_bytes() -> int:
    """This machine's physical memory: what a CPU-measured profile is planned against."""
    import os

    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return 16 * GiB


def own_device_cluster(n: int, profile: Profile, precision: str) -> tuple[Cluster, str]:
    """n devices of the kind the profile's layer times belong to, for `--devices N` with no device kind,
    and the line that says so: the GPU preset the times were estimated for, or this machine's CPU for
    times measured on it (speed 1.0, memory = this machine's RAM)."""
    from profiler.gpus import get_preset

    prov = profile.provenance
    how = "estimated for" if prov.method == "estimated" else "measured on"
    try:
        preset = get_preset(prov.device).name
    except PipeplanError:
        preset = None
    if preset is not None:
        cluster = Cluster.uniform(n, preset, precision=precision)
        kind = preset
    elif prov.device.lower() == "cpu":
        memory = host_memory_bytes()
        cluster = Cluster(devices=[Device(name=f"cpu{i}", memory_bytes=memory, speed=1.0) for i in range(n)])
        kind = f"cpu ({memory / GiB:.0f} GiB, this machine's memory)"
    else:
        raise PipeplanError(f"the profile's layer times are {how} {prov.device!r}, which is not a GPU preset: "
                            "say what the devices are: --gpu PRESET, --memory 80GB or --cluster FILE")
    return cluster, (f"devices: {n} × {kind}, the profile's own device (its layer times are {how} "
                     f"{prov.device}); pass --gpu, --memory or --cluster to plan for others")


def build_cluster(args: argparse.Namespace, profile: Profile | None = None) -> tuple[Cluster, str | None]:
    """The cluster the flags describe, and a line saying which devices were chosen when no flag said."""
    if args.cluster:
        path = Path(args.cluster)
        if not path.is_file():
            raise PipeplanError(f"cluster file {str(path)!r} does not exist")
        cluster = Cluster.from_json(read_json_file(path, "cluster"))
        if args.devices is not None and args.devices != cluster.num_devices:
            raise PipeplanError(f"--devices {args.devices} but the cluster file lists {cluster.num_devices} devices")
        return cluster, None
    if args.devices is None:
        raise PipeplanError("say how many devices: --devices N (with --gpu or --memory), or --cluster FILE")
    precision = "bf16_mixed" if args.precision.lower().startswith("bf16") else "fp32"
    if args.gpu:
        return Cluster.uniform(args.devices, args.gpu, precision=precision), None
    if args.memory:
        return Cluster.uniform(args.devices, memory_bytes=parse_memory(args.memory)), None
    if profile is None:
        raise PipeplanError("say what the devices are: --gpu PRESET, --memory 80GB or --cluster FILE")
    return own_device_cluster(args.devices, profile, precision)


def build_config(args: argparse.Namespace, profile_micro_batch_size: int = 1) -> TrainConfig:
    """The TrainConfig the flags describe; the micro-batch size defaults to the profile's own,
    so a profile made at micro-batch 4 is planned at 4, not silently rescaled."""
    precision = {"bf16": "bf16_mixed", "bf16_mixed": "bf16_mixed", "fp32": "fp32"}.get(args.precision.lower())
    if precision is None:
        raise PipeplanError(f"unknown precision {args.precision!r}; choose fp32 or bf16")
    if args.microbatches is None and args.global_batch is None:
        args.microbatches = 8
    return TrainConfig(schedule=args.schedule, num_microbatches=args.microbatches, global_batch=args.global_batch,
                       micro_batch_size=args.batch_size or profile_micro_batch_size, virtual_stages=args.virtual_stages,
                       optimizer=args.optimizer.lower(), precision=precision, recompute=args.recompute,
                       reserve_bytes=parse_memory(args.reserve) if args.reserve not in ("0", "") else 0,
                       solver=args.solver, time_limit_s=args.time_limit, device_order=args.device_order)


def summary(plan: Plan) -> str:
    """A short human summary of a Plan."""
    lines = [(f"{plan.model.name}: {plan.config.schedule}, {plan.config.num_microbatches} micro-batches of "
              f"{plan.config.micro_batch_size}, {plan.cluster.num_devices} devices")]
    cfg = plan.config
    if cfg.data_parallel * cfg.tensor_parallel > 1:
        pp = plan.cluster.num_devices // (cfg.data_parallel * cfg.tensor_parallel)
        lines.append(f"mesh pp {pp} x dp {cfg.data_parallel}"
                     + (f" ({cfg.dp_sharding})" if cfg.data_parallel > 1 else "") + f" x tp {cfg.tensor_parallel}; "
                     "per stage: one TP group of each replica (stage times are one GPU's)")
    if not plan.feasible:
        d = plan.diagnosis
        lines.append(f"NO PLAN FITS: {d.message}")
        lines += [f"  - {p}" for p in d.problems]
        if d.min_devices:
            lines.append(f"  smallest device count that fits: {d.min_devices}")
        if d.min_memory_bytes:
            lines.append(f"  smallest memory per device that fits: {d.min_memory_bytes / GiB:.2f} GiB")
        lines += [f"  suggestion: {s}" for s in d.suggestions]
        return "\n".join(lines)
    lines.append(f"{'stage':>5} {'device':<12} {'layers':<28} {'time ms':>9} {'memory / limit':>22}")
    for s in plan.stages:
        ids = s.node_ids
        layers = f"{ids[0]} .. {ids[-1]} ({len(ids)})" if len(ids) > 1 else ids[0]
        dev = plan.cluster.devices[s.device].name
        lines.append(f"{s.index:>5} {dev:<12} {layers[:28]:<28} {s.fwd_ms + s.bwd_ms + s.comm_out_ms + s.comm_grad_ms:>9.2f} "
                     f"{s.memory.total / GiB:>8.2f} / {s.memory_limit_bytes / GiB:.2f} GiB"
                     + (" (recompute)" if s.recompute else ""))
    sol = plan.solver
    gap = "n/a" if sol.gap is None else f"{100 * sol.gap:.3f}%"
    lines.append(f"step time {plan.step_time_ms:.2f} ms, {plan.throughput_samples_per_s:.1f} samples/s, "
                 f"bubble {100 * plan.bubble_fraction:.1f}%")
    lines.append(f"solver {sol.backend}: {sol.status}, gap {gap}, {sol.seconds:.2f} s")
    if sol.note:
        lines.append(f"note: {sol.note}")
    fits = {k: v for k, v in plan.baselines.items() if v is not None}
    if fits:
        name, t = min(fits.items(), key=lambda kv: kv[1])
        lines.append(f"best baseline {name}: {t:.2f} ms -> this plan is {t / plan.step_time_ms:.3f}x faster")
    elif plan.baselines:
        lines.append("no baseline partition fits in memory")
    return "\n".join(lines)


def check_early_sizes(args: argparse.Namespace) -> None:
    """The counts the flags give, against core.limits, before the model is profiled (TrainConfig and the
    schedule check them again with the profile's micro-batch size)."""
    check_count(args.microbatches, MAX_MICROBATCHES, "num_microbatches", "; use larger micro-batches")
    check_count(args.global_batch, MAX_GLOBAL_BATCH, "global_batch")
    check_count(args.virtual_stages, MAX_VIRTUAL_STAGES, "virtual_stages")
    check_shape(args.batch_size, args.seq_len)
    if args.devices and args.microbatches and args.devices > 0 and args.microbatches > 0 and args.virtual_stages > 0:
        from planner.pipeline.schedules import chunks_per_device

        check_pipeline_size(args.devices * chunks_per_device(args.schedule, args.virtual_stages), args.microbatches)


def hybrid_requested(args: argparse.Namespace) -> bool:
    return args.parallel == "auto" or (args.tp or 1) > 1 or (args.dp or 1) > 1 or args.dp_sharding is not None


def check_hybrid_flags(args: argparse.Namespace) -> None:
    """One clear line for a bad combination of the hybrid flags, before the model is profiled."""
    for flag, value in (("--tp", args.tp), ("--dp", args.dp), ("--gpus-per-node", args.gpus_per_node),
                        ("--top", args.top)):
        if value is not None and value < 1:
            raise PipeplanError(f"{flag} must be >= 1, got {value}")
    if args.parallel == "pp" and ((args.tp or 1) > 1 or (args.dp or 1) > 1):
        raise PipeplanError("--parallel pp plans pipeline parallelism only; drop --tp/--dp or use --parallel auto")
    if args.parallel == "pp" and args.dp_sharding:
        raise PipeplanError("--parallel pp plans pipeline parallelism only; --dp-sharding needs data parallelism")
    if not hybrid_requested(args):
        return
    if args.devices is None and not args.cluster:
        raise PipeplanError("say how many GPUs to plan for: --devices N (with --gpu or --memory), or --cluster FILE")
    n, per = args.devices, args.gpus_per_node or 8
    if args.cluster and args.gpus_per_node:
        raise PipeplanError("--gpus-per-node comes from the cluster file's node ids; drop one of them")
    if n is not None and not args.cluster:
        if args.tp and per % args.tp:
            raise PipeplanError(f"--tp {args.tp} does not divide {per} GPUs per node: a TP group must stay inside "
                                "one node (pass --gpus-per-node or a tp that divides it)")
        if args.tp and args.dp and n % (args.tp * args.dp):
            raise PipeplanError(f"--devices {n} is not a multiple of --dp {args.dp} x --tp {args.tp}")
        if args.tp and n % args.tp:
            raise PipeplanError(f"--devices {n} is not a multiple of --tp {args.tp}")
        if args.dp and n % args.dp:
            raise PipeplanError(f"--devices {n} is not a multiple of --dp {args.dp}")
    if args.microbatches is not None and args.parallel == "auto":
        raise PipeplanError("--parallel auto chooses the micro-batches: give --global-batch (all replicas together), "
                            "not --microbatches")
    if args.global_batch is None:
        raise PipeplanError("hybrid planning needs --global-batch (samples per step, all replicas together)")
    if args.dp and args.global_batch % args.dp:
        raise PipeplanError(f"--global-batch {args.global_batch} is not a multiple of --dp {args.dp}")


def search_table(result) -> str:
    """The ranked configurations of a parallelism search, best first."""
    lines = [f"{result.devices} GPUs ({result.gpus_per_node} per node), global batch {result.global_batch}: "
             f"{result.candidates} configurations, {result.solved} solved, {result.pruned} pruned by their bound, "
             f"{result.no_fit} cannot fit" + (f", {result.unsearched} left by the time budget" if result.unsearched
                                               else "") + f" ({result.seconds:.1f} s)"]
    if not result.ranked:
        d = result.diagnosis
        lines.append(f"NO CONFIGURATION FITS: {d.message if d else ''}")
        if d:
            lines += [f"  - {p}" for p in d.problems]
            lines += [f"  suggestion: {s}" for s in d.suggestions]
        return "\n".join(lines)
    lines.append(f"{'#':>2} {'pp':>3} {'dp':>3} {'tp':>3} {'shard':<6} {'mbs':>4} {'M':>5} {'step ms':>11} "
                 f"{'samples/s':>10} {'tokens/s':>11} {'MFU':>6} {'mem GiB':>8} {'recomp':>6}")
    for i, c in enumerate(result.ranked, 1):
        tok = f"{c.tokens_per_s:11.0f}" if c.tokens_per_s is not None else f"{'-':>11}"
        mfu = f"{100 * c.mfu:5.1f}%" if c.mfu is not None else f"{'-':>6}"
        lines.append(f"{i:>2} {c.pp:>3} {c.dp:>3} {c.tp:>3} {c.dp_sharding if c.dp > 1 else '-':<6} "
                     f"{c.micro_batch_size:>4} {c.num_microbatches:>5} {c.step_time_ms:>11.1f} {c.samples_per_s:>10.2f} "
                     f"{tok} {mfu} {c.memory_per_device_bytes / GiB:>8.1f} {c.recompute_stages:>6}")
    return "\n".join(lines)


def run_hybrid(args: argparse.Namespace) -> int:
    """--parallel auto, or fixed --tp/--dp: the ranked search over the degrees (fixed ones narrow it)."""
    import dataclasses
    import json

    from planner.solvers.hybrid import search_parallel

    profile = load_model(args.model, args)
    cluster, chosen = build_cluster(args, profile)
    if not args.cluster:  # the flags' devices, gpus_per_node to a host
        per = args.gpus_per_node or 8
        cluster = dataclasses.replace(cluster, devices=[dataclasses.replace(d, node=i // per)
                                                        for i, d in enumerate(cluster.devices)])
    args.microbatches = 1  # a placeholder: every candidate sets its own
    global_batch, args.global_batch = args.global_batch, None
    base = build_config(args, profile.model.micro_batch_size)
    progress = (lambda msg: print(f"pipeplan plan: {msg}", file=sys.stderr, flush=True)) if not args.json else None
    if chosen:
        print(chosen, file=sys.stderr)
    fixed_mbs = [args.batch_size] if args.batch_size and args.parallel != "auto" else None
    result = search_parallel(profile, cluster, global_batch, base=base, top_k=args.top, tp=args.tp, dp=args.dp,
                             pp=None, dp_sharding=args.dp_sharding if args.dp_sharding or args.parallel == "auto"
                             else "ddp", micro_batch_sizes=fixed_mbs, time_limit_s=min(args.time_limit, 2.0),
                             progress=progress)
    if args.output and result.best_plan is not None:
        write_file_atomic(args.output, result.best_plan.to_json(indent=2), "plan JSON")
    if args.json:
        print(json.dumps({"ranked": [c for c in result.to_dict()["ranked"]], "search": {
            k: v for k, v in result.to_dict().items() if k not in ("ranked", "best_plan")},
            "best_plan": result.best_plan.to_dict() if result.best_plan else None}, indent=2, allow_nan=False))
    else:
        print(search_table(result))
        if result.best_plan is not None:
            print("best plan:")
            print(summary(result.best_plan))
    return 0 if result.best_plan is not None else 1


def run(args: argparse.Namespace) -> int:
    from planner.solvers.solve import solve

    if args.devices is not None and args.devices < 1:
        raise PipeplanError(f"--devices must be >= 1, got {args.devices}")
    if args.devices is not None:  # refused before the model is profiled
        check_device_count(args.devices, "--devices asks for")
    check_early_sizes(args)
    check_hybrid_flags(args)
    if args.output:
        check_writable(args.output, "plan JSON")
    if hybrid_requested(args):
        return run_hybrid(args)
    profile = load_model(args.model, args)
    cluster, chosen = build_cluster(args, profile)
    config = build_config(args, profile.model.micro_batch_size)
    plan = solve(profile, cluster, config)
    if args.output:
        write_file_atomic(args.output, plan.to_json(indent=2), "plan JSON")
    if chosen and args.json:  # stdout stays pure JSON
        print(chosen, file=sys.stderr)
    print(plan.to_json(indent=2) if args.json else (f"{chosen}\n" if chosen else "") + summary(plan))
    return 0 if plan.feasible else 1
