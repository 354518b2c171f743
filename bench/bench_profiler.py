"""Profiler speed and memory: Llama-70B shape estimated on meta, GPT-124M measured on CPU.

    python -m bench.bench_profiler [--quick]

Each case runs in a fresh child process so its peak RSS is its own. Targets
(issue 3): Llama 70B (80 layers, d=8192), micro-batch 1, seq 4096, estimate
mode: < 60 s and < 3 GB RSS; GPT 124M measured on CPU: < 60 s. Each case also
times a baseline in the same child (FlopCounterMode over one fwd+bwd on meta,
or one eager training step) and reports the ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import RESULTS_DIR, environment

RESULTS = RESULTS_DIR / "profiler.json"
ROOT = Path(__file__).resolve().parent.parent

_CHILD = r"""
import json, resource, sys, time, torch
import sample_models
from profiler.sources import load_profile
name, size, seq, measure = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] or None
torch.set_num_threads(2)
t0 = time.perf_counter()
prof = load_profile(f"sample:{name}:{size}", batch_size=1, seq_len=seq, measure=measure)
seconds = time.perf_counter() - t0
spec = sample_models.get_model(name)
cfg = spec.sizes[size]
device = measure or "meta"
model = sample_models.build(name, size, device=device)
inputs, target = spec.make_batch(cfg, 1, seq, device=device)
t1 = time.perf_counter()
if measure:
    spec.loss_fn(model(*inputs), target).backward()
else:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False):
        spec.loss_fn(model(*inputs), target).backward()
baseline = time.perf_counter() - t1
print(json.dumps({"seconds": seconds, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                  "baseline_seconds": baseline, "ratio_to_baseline": seconds / baseline, "nodes": len(prof.nodes),
                  "tflop_per_microbatch": prof.total_flops / 1e12,
                  "step_ms": sum(n.fwd_ms + n.bwd_ms for n in prof.nodes), "method": prof.provenance.method}))
"""


def _case(name: str, size: str, seq: int, measure: str | None) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, name, size, str(seq), measure or ""], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}",
                "wall_seconds": time.perf_counter() - t0}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> dict:
    """Run the cases (quick: smaller models), write bench/results/profiler.json, return the results."""
    cases = {
        "llama_estimate": ("llama", "7B" if quick else "70B", 4096, None, {"seconds": 60, "peak_rss_gb": 3.0}),
        "gpt_measure_cpu": ("gpt", "tiny" if quick else "124M", 64 if quick else 1024, "cpu", {"seconds": 60}),
    }
    results = {"quick": quick, "env": environment()}
    for key, (name, size, seq, measure, targets) in cases.items():
        r = _case(name, size, seq, measure)
        r.update(model=f"{name}:{size}", seq_len=seq, targets=targets,
                 meets_targets=all(r.get(k, float("inf")) < v for k, v in targets.items()))
        results[key] = r
        print(f"{key}: {json.dumps(r)}", file=sys.stderr)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args().quick)
