"""`pipeplan calibrate`: measure this machine's link and pipeline runtime overhead and write a
cluster JSON that `pipeplan plan --cluster` uses, so predictions match what exported jobs measure."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.errors import PipeplanError
from core.files import check_writable, write_file_atomic
from planner.contracts.cluster import MAX_DEVICES, parse_memory


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("calibrate", help="measure the p2p link and the pipeline runtime's per-action overhead here "
                                         "(2 ranks with torchrun: gloo on CPU, NCCL on CUDA)")
    p.add_argument("--devices", type=int, default=2, help="devices in the written cluster (default 2)")
    p.add_argument("--memory", default="64GB", help="memory per device in the written cluster (default 64GB)")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads per rank (OMP_NUM_THREADS), as the training job will run (default 1)")
    p.add_argument("--from-run", nargs="+", type=Path, metavar="LOG",
                   help="instead of measuring here: refit the plan's cluster from exported jobs' logs (train.py's "
                        "stdout), with --plan (planner/calibration/from_run.py)")
    p.add_argument("--plan", type=Path, help="the plan.json the --from-run logs' job was exported from")
    p.add_argument("--profile", type=Path,
                   help="with --from-run: the profile the plan was made from (needed for devices given in TFLOP/s)")
    p.add_argument("--report", type=Path, help="with --from-run: write the fit's report (residuals) as JSON here")
    p.add_argument("-o", "--output", help="write the calibrated cluster JSON here")
    p.add_argument("--json", action="store_true", help="print the measurements as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    from planner.calibration.calibrate import calibrate, calibrated_cluster

    if args.from_run:
        return run_from_run(args)
    if not 1 <= args.devices <= MAX_DEVICES:
        raise PipeplanError(f"--devices must be between 1 and {MAX_DEVICES}, got {args.devices}")
    if not 1 <= args.threads <= 256:
        raise PipeplanError(f"--threads must be between 1 and 256, got {args.threads}")
    memory = parse_memory(args.memory)
    out = Path(args.output) if args.output else None
    if out is not None:
        check_writable(out, "calibrated cluster JSON")
    result = calibrate(threads=args.threads, progress=lambda m: print(f"calibrate: {m}", file=sys.stderr))
    cluster = calibrated_cluster(result, args.devices, memory, name="gpu" if result.backend == "nccl" else "cpu")
    if out is not None:
        write_file_atomic(out, cluster.to_json(indent=2) + "\n", "calibrated cluster JSON")
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(f"backend {result.backend} on {result.device}, {args.threads} thread(s) per rank")
    print(f"link: {1e3 * result.latency_s:.3f} ms latency, {result.bandwidth_bytes_per_s / 1e9:.2f} GB/s")
    print(f"pipeline runtime: {result.action_overhead_ms:.3f} ms per forward/backward action")
    if out is not None:
        print(f"wrote {out} ({args.devices} devices); plan with: pipeplan plan MODEL --cluster {out}")
    return 0


def run_from_run(args: argparse.Namespace) -> int:
    from planner.calibration.from_run import calibrate_files

    if args.plan is None:
        raise PipeplanError("--from-run needs --plan plan.json (the plan the run was exported from)")
    out = Path(args.output) if args.output else None
    if out is not None:
        check_writable(out, "calibrated cluster JSON")
    cluster, report = calibrate_files(args.plan, list(args.from_run), args.profile)
    if out is not None:
        write_file_atomic(out, cluster.to_json(indent=2) + "\n", "calibrated cluster JSON")
    if args.report is not None:
        write_file_atomic(args.report, json.dumps(report, indent=2) + "\n", "calibration report")
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    step = report["step"]
    print(f"from {report['steps_used']} measured steps: compute factor per device {report['device_factor']} "
          f"(new speeds {report['device_speed']}), {report['action_overhead_ms']:.3f} ms per action, "
          f"{report['step_overhead_ms']:.3f} ms per step")
    print(f"link ({report['link']['which']}): {report['link']['transfer_overhead_ms']:.3f} ms per transfer + "
          f"{report['link']['latency_ms']:.3f} ms per tensor, bandwidth kept; memory reserve {report['reserve_bytes']} bytes")
    before = f"{100 * step['error_before']:+.1f}%" if step["error_before"] is not None else "n/a"
    print(f"step: measured {step['measured_ms']:.2f} ms (pipeline {step['measured_pipeline_ms']:.2f} ms); "
          f"plan {before}, refit pipeline {100 * step['error_after']:+.1f}%")
    worst = max((abs(r["error"]) for r in report["compute_residuals"] if r["error"] is not None), default=0.0)
    print(f"residuals: worst stage fwd/bwd {100 * worst:.1f}% after the fit")
    if out is not None:
        print(f"wrote {out}; plan with: pipeplan plan MODEL --cluster {out}")
    return 0
