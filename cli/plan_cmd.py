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


def run(args: argparse.Namespace) -> int:
    from planner.solvers.solve import solve

    if args.devices is not None and args.devices < 1:
        raise PipeplanError(f"--devices must be >= 1, got {args.devices}")
    if args.devices is not None:  # refused before the model is profiled
        check_device_count(args.devices, "--devices asks for")
    check_early_sizes(args)
    if args.output:
        check_writable(args.output, "plan JSON")
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
