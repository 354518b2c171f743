"""`pipeplan profile MODEL -o profile.json`: trace a model into a Profile."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.files import check_writable, write_file_atomic


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("profile", help="trace a model into a layer graph with cost and memory per layer",
                       description="MODEL: sample:NAME[:SIZE], hf:PATH/config.json, profile:PATH.json, "
                                   "file:PATH.py:FACTORY (with --allow-code)")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--batch-size", type=int, default=None, help="micro-batch size (default 1)")
    p.add_argument("--seq-len", type=int, default=None,
                   help="sequence length, or image/volume side for vision models (default: the model's)")
    timing = p.add_mutually_exclusive_group()
    timing.add_argument("--measure", choices=["cpu", "cuda"], default=None, help="measure times on this device")
    timing.add_argument("--estimate-for", metavar="PRESET", default=None,
                        help="roofline estimate for a GPU preset, or custom:TFLOPS,BW_GBS,MEM_GB "
                             "(default A100-80GB)")
    p.add_argument("--granularity", choices=["block", "op"], default="block",
                   help="block: one node per transformer block/stage; op: one per leaf module")
    p.add_argument("--allow-code", action="store_true",
                   help="allow file: models (runs your code in a sandboxed child process)")
    p.add_argument("-o", "--output", required=True, help="where to write the profile JSON")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def _progress(msg: str, frac: float) -> None:
    print(f"\r[{frac * 100:5.1f}%] {msg:<60}", end="", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    check_writable(out, "profile JSON")  # before the profiler (and torch) is imported

    from profiler.sources import load_profile

    if args.allow_code and args.model.startswith("file:"):
        from profiler.sandbox import sandbox_notice

        if note := sandbox_notice():  # no bubblewrap here: say the code runs in the weaker sandbox
            print(f"pipeplan profile: note: {note}", file=sys.stderr)
    prof = load_profile(args.model, batch_size=args.batch_size, seq_len=args.seq_len,
                        estimate_for=args.estimate_for, measure=args.measure, granularity=args.granularity,
                        allow_code=args.allow_code, progress=None if args.quiet else _progress)
    if not args.quiet:
        print(file=sys.stderr)
    write_file_atomic(out, prof.to_json(indent=1), "profile JSON")
    m, pv = prof.model, prof.provenance
    step_ms = sum(n.fwd_ms + n.bwd_ms for n in prof.nodes)
    print(f"{m.name}: {len(prof.nodes)} layers, {m.param_count / 1e6:.2f}M params, "
          f"{prof.total_flops / 1e12:.3f} TFLOP/micro-batch, "
          f"{sum(n.activation_bytes for n in prof.nodes) / 2**20:.1f} MiB saved activations, "
          f"{step_ms:.2f} ms fwd+bwd ({pv.method} on {pv.device}) -> {out}")
    return 0
