"""Loading-memory check for the exported job's --weights (issue 21): what one rank holds while it
copies a safetensors checkpoint into its materialised stage parameters.

    python -m bench.bench_weights [--mib 256] [--tensors 8]

Writes a checkpoint of `--tensors` fp32 tensors (`--mib` MiB in all) to a temporary folder, then, in
a fresh process: allocates the parameters (the stage as materialize() leaves it), runs
pipeline_runtime.load_weights, and reports the peak of anonymous memory (RssAnon, sampled every
millisecond by a thread) and of total RSS (VmHWM, which also counts the checkpoint's memory-mapped
file pages while a file is open) above the baseline before allocation, against the parameter bytes
and the largest tensor. Prints one JSON line; writes no result file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, threading, time
import torch
from planner.export.runtime import pipeline_runtime as rt

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0

path = sys.argv[1]
source = rt.WeightsFile(path)
base_anon, base_hwm = status("RssAnon"), status("VmHWM")
params = {k: [torch.nn.Parameter(torch.empty(e[2]))] for k, e in source.entries.items()}
for ps in params.values():
    ps[0].data.zero_()  # touch the pages: materialised parameters
after_alloc = status("RssAnon")
peak = [after_alloc]
done = False
def sample():
    while not done:
        peak[0] = max(peak[0], status("RssAnon"))
        time.sleep(0.001)
t = threading.Thread(target=sample); t.start()
rt.load_weights(source, {k: k for k in params}, params)
done = True; t.join()
peak[0] = max(peak[0], status("RssAnon"))
print(json.dumps({"param_bytes": source.total_bytes, "largest_tensor_bytes": max(e[3] for e in source.entries.values()),
                  "anon_after_alloc": after_alloc - base_anon, "anon_peak_loading": peak[0] - base_anon,
                  "rss_peak_incl_mapped_file": status("VmHWM") - base_hwm}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--tensors", type=int, default=8)
    args = p.parse_args(argv)
    import torch
    from safetensors.torch import save_file

    n = args.mib * 2**20 // 4 // args.tensors
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_file({f"t{i}": torch.full((n,), float(i)) for i in range(args.tensors)}, str(path))
        out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parents[1]).stdout.strip().splitlines()[-1]
    result = json.loads(out)
    result["anon_overhead_over_params"] = result["anon_peak_loading"] - result["param_bytes"]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
