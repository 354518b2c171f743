"""Profiler speed and memory: Llama-70B shape estimated on meta, GPT-124M measured on CPU, and new
sequence lengths of an HF config from one kept trace.

    python -m bench.bench_profiler [--quick]

Each case runs in a fresh child process so its peak RSS is its own. Targets
(issue 3): Llama 70B (80 layers, d=8192), micro-batch 1, seq 4096, estimate
mode: < 60 s and < 3 GB RSS; GPT 124M measured on CPU: < 60 s. Each case also
times a baseline in the same child (FlopCounterMode over one fwd+bwd on meta,
or one eager training step) and reports the ratio. The HF case (the app's
"Sequence length" box, issue 17) profiles a Llama-shaped config.json with
profiler.hf.HfLengthProfiler, then each new length once from the kept trace and
once afresh with profile_hf_config, alternating in the same child, and checks
the two profiles are equal.
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

_HF_LENGTHS_CHILD = r"""
import json, statistics, sys, time, warnings
warnings.simplefilter("ignore")
from profiler.hf import HfLengthProfiler, profile_hf_config
layers, hidden, ffn, heads, kv = (int(x) for x in sys.argv[1:6])
config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
          "intermediate_size": ffn, "num_attention_heads": heads, "num_key_value_heads": kv,
          "num_hidden_layers": layers, "max_position_embeddings": 4096, "vocab_size": 32000}
lengths = HfLengthProfiler(config, estimate_for="A100-80GB")
t0 = time.perf_counter()
lengths.profile(None)
first = time.perf_counter() - t0
reused, fresh, equal = [], [], True
for n in (2048, 1024, 3072, 512, 4000):
    t0 = time.perf_counter()
    a = lengths.profile(n)
    reused.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    b = profile_hf_config(config, seq_len=n, estimate_for="A100-80GB")
    fresh.append(time.perf_counter() - t0)
    a, b = a.to_dict(), b.to_dict()
    a["provenance"].pop("date"); b["provenance"].pop("date")
    equal = equal and a == b
print(json.dumps({"first_profile_seconds": first, "new_length_seconds": statistics.median(reused),
                  "fresh_profile_seconds": statistics.median(fresh),
                  "ratio_to_fresh": statistics.median(r / f for r, f in zip(reused, fresh)),
                  "lengths": 5, "reused": lengths.reused, "equal_to_fresh": equal}))
"""
LLAMA_SHAPES = {"7B": (32, 4096, 11008, 32, 32), "70B": (80, 8192, 28672, 64, 8)}


def _child(script: str, args: list[str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}",
                "wall_seconds": time.perf_counter() - t0}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _case(name: str, size: str, seq: int, measure: str | None) -> dict:
    return _child(_CHILD, [name, size, str(seq), measure or ""])


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
    size = "7B" if quick else "70B"
    r = _child(_HF_LENGTHS_CHILD, [str(x) for x in LLAMA_SHAPES[size]])
    r.update(model=f"HF llama {size} shape (config.json)", targets={"new_length_seconds": 1.0},
             meets_targets=r.get("new_length_seconds", float("inf")) < 1.0 and bool(r.get("equal_to_fresh")))
    results["hf_new_sequence_length"] = r
    print(f"hf_new_sequence_length: {json.dumps(r)}", file=sys.stderr)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args().quick)
