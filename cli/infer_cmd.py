"""`pipeplan infer MODEL --devices N ...`: plan a forward-only (inference) pipeline for throughput or latency.

    pipeplan infer sample:unet3d --devices 4 --gpu L4 --objective latency --latency-budget 500 -o infer.json
    pipeplan infer profile:gpt.json --memory 8GB --devices 2 --weights bf16 --simulate 16
"""

from __future__ import annotations

import argparse
import json
import sys

from core.errors import PipeplanError
from core.files import check_writable, write_file_atomic
from core.limits import check_shape
from planner.contracts.cluster import check_device_count, parse_memory
from planner.contracts.config import TrainConfig
from planner.contracts.inference_config import INFERENCE_SOLVERS, training_precision
from planner.costmodel.inference import OBJECTIVES, WEIGHT_DTYPES, InferenceConfig, InferencePlan
from profiler.gpus import GiB


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("infer", help="plan an inference (forward-only) pipeline for throughput or latency")
    p.add_argument("model", help="profile:PATH.json, sample:NAME[:SIZE], hf:PATH/config.json or file:PATH.py:FACTORY")
    p.add_argument("--devices", type=int, help="number of devices (at most this many stages)")
    dev = p.add_mutually_exclusive_group()
    dev.add_argument("--gpu", help="GPU preset of every device, e.g. L4")
    dev.add_argument("--memory", help="memory per device, e.g. 24GB")
    dev.add_argument("--cluster", help="cluster JSON file")
    p.add_argument("--objective", default="throughput", choices=OBJECTIVES)
    p.add_argument("--latency-budget", type=float, help="ms: a request's latency must not exceed it")
    p.add_argument("--weights", dest="weight_dtype", default="fp32", choices=WEIGHT_DTYPES,
                   help="serving dtype of the weights (int8: weight-only quantised, where you say so)")
    p.add_argument("--activations", choices=("fp32", "bf16"), help="default: fp32 with fp32 weights, else bf16")
    p.add_argument("--solver", default="auto", choices=INFERENCE_SOLVERS,
                   help="dp: the Pareto DP; ilp: the interval MILP (HiGHS); auto: the DP, and the MILP where the "
                        "DP is not exact")
    p.add_argument("--in-flight", type=int, default=1, help="micro-batches a stage holds at once (1: blocking loop)")
    p.add_argument("--reserve", default="0", help="memory held back per device, e.g. 2GB")
    p.add_argument("--batch-size", type=int, help="samples per request (profile sample/hf models at it)")
    p.add_argument("--seq-len", type=int, help="sequence length to profile sample/hf models at")
    p.add_argument("--allow-code", action="store_true", help="allow file: models (runs their code)")
    p.add_argument("--simulate", type=int, metavar="M", help="also simulate a stream of M requests")
    p.add_argument("--export", metavar="DIR", help="also write the forward-only torchrun job (infer.py) here")
    p.add_argument("--weights-file", help="safetensors (or weights_only .pt) the exported job loads by default")
    p.add_argument("-o", "--output", help="write the inference plan JSON here")
    p.add_argument("--json", action="store_true", help="print the inference plan JSON instead of a summary")
    return p


def summary(plan: InferencePlan, cluster) -> str:
    c = plan.config
    lines = [f"inference, objective {c.objective}"
             + (f" (latency budget {c.latency_budget_ms:g} ms)" if c.latency_budget_ms else "")
             + f", weights {c.weight_dtype}, activations {c.activation_dtype}, {c.micro_batch_size} per request"]
    lines.append(f"{'stage':>5} {'device':<10} {'layers':<28} {'fwd ms':>9} {'period ms':>10} {'memory / limit':>22}")
    for s in plan.stages:
        ids = s.nodes
        layers = f"{ids[0]} .. {ids[-1]} ({len(ids)})" if len(ids) > 1 else ids[0]
        lines.append(f"{s.index:>5} {cluster.devices[s.device].name:<10} {layers[:28]:<28} {s.compute_ms:>9.2f} "
                     f"{s.period_ms:>10.2f} {s.memory.total / GiB:>8.2f} / {s.memory_limit / GiB:.2f} GiB")
    lines.append(f"throughput {plan.throughput_sps:.3f} samples/s (period {plan.period_ms:.2f} ms), "
                 f"latency {plan.latency_ms:.2f} ms per request")
    lines.append(plan.solver_summary())
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from cli.plan_cmd import build_cluster, load_model
    from planner.solvers.solve import solve

    if args.devices is not None:
        if args.devices < 1:
            raise PipeplanError(f"--devices must be >= 1, got {args.devices}")
        check_device_count(args.devices, "--devices asks for")
    check_shape(args.batch_size, args.seq_len)
    if args.output:
        check_writable(args.output, "inference plan JSON")
    args.precision = training_precision(args.weight_dtype)  # the devices' speed preset
    profile = load_model(args.model, args)
    cluster, chosen = build_cluster(args, profile)
    config = InferenceConfig(objective=args.objective, latency_budget_ms=args.latency_budget,
                             weight_dtype=args.weight_dtype, activation_dtype=args.activations,
                             micro_batch_size=args.batch_size or profile.model.micro_batch_size,
                             in_flight=args.in_flight, solver=args.solver,
                             reserve_bytes=parse_memory(args.reserve) if args.reserve not in ("0", "") else 0)
    plan = solve(profile, cluster, TrainConfig.for_inference(config))
    data = plan.to_dict()
    data["model"] = {"name": profile.model.name, "source": args.model}
    data["cluster"] = cluster.to_dict()
    text = summary(plan, cluster)
    if args.simulate:
        from planner.pipeline.inference_sim import simulate_inference

        tl = simulate_inference(plan, args.simulate)
        data["simulated"] = {"requests": args.simulate, "makespan_ms": tl.makespan_ms,
                             "peak_live_bytes": tl.peak_memory_bytes}
        text += (f"\nsimulated stream of {args.simulate}: {tl.makespan_ms:.2f} ms, "
                 f"{1000 * args.simulate * config.micro_batch_size / tl.makespan_ms:.3f} samples/s")
    if args.export:
        from planner.export.inference import export_inference

        export_inference(profile, plan, args.export, model_source=args.model if not args.model.startswith(
            "profile:") else None, weights=args.weights_file)
        text += f"\nexported the inference job to {args.export}/ (torchrun --nproc-per-node {len(plan.stages)} infer.py)"
    out = json.dumps(data, indent=2, allow_nan=False)
    if args.output:
        write_file_atomic(args.output, out, "inference plan JSON")
    if chosen and args.json:
        print(chosen, file=sys.stderr)
    print(out if args.json else (f"{chosen}\n" if chosen else "") + text)
    return 0
