"""Run the benchmark suite and regenerate docs/benchmarks.md.

    python -m bench.run [--quick] [--only NAME ...] [--report-only]

Each module's `run(quick)` writes bench/results/<name>.json; this writes bench/results/run.json
(what ran, how long, what failed) and then docs/benchmarks.md and docs/benchmarks/*.html from
those files (bench/report.py). A module that fails is recorded and the others still run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback

from bench.common import RESULTS_DIR, write_result

# (results name, module). Modules owned by other engineers are run when present.
MODULES = [
    ("quality", "bench.bench_quality"),
    ("solver", "bench.bench_solver"),
    ("planner", "bench.bench_planner"),
    ("simulator", "bench.bench_simulator"),
    ("memory", "bench.bench_memory"),
    ("accuracy", "bench.bench_accuracy"),
    ("scale", "bench.bench_scale"),
    ("profiler", "bench.bench_profiler"),
    ("export", "bench.bench_export"),
    ("hybrid", "bench.bench_hybrid"),
]
OPTIONAL = {"bench.bench_profiler", "bench.bench_export"}


def _previous_runs(quick: bool) -> list[dict]:
    path = RESULTS_DIR / "run.json"
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    return d.get("runs", []) if d.get("quick") == quick else []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke-test sizes (< 5 minutes)")
    ap.add_argument("--only", nargs="*", help="run only these benchmarks (names: " +
                    ", ".join(n for n, _ in MODULES) + ")")
    ap.add_argument("--report-only", action="store_true", help="regenerate docs from existing results")
    args = ap.parse_args(argv)
    failures = 0
    if not args.report_only:
        runs = []
        t_all = time.perf_counter()
        for name, modname in MODULES:
            if args.only and name not in args.only:
                continue
            try:
                mod = importlib.import_module(modname)
            except ModuleNotFoundError as exc:
                if modname in OPTIONAL and exc.name == modname:
                    continue
                raise
            if hasattr(mod, "RESULTS"):  # modules with a fixed results path write where this run writes
                mod.RESULTS = RESULTS_DIR / f"{name}.json"
            print(f"[bench] {name} ...", flush=True)
            t0 = time.perf_counter()
            try:
                mod.run(args.quick)
                status, error = "ok", None
            except Exception as exc:  # noqa: BLE001 - recorded; the rest of the suite still runs
                failures += 1
                status, error = "error", "".join(traceback.format_exception_only(exc)).strip()[-2000:]
                traceback.print_exc()
            runs.append({"name": name, "module": modname, "status": status, "seconds": round(time.perf_counter() - t0, 2),
                         "error": error})
            print(f"[bench] {name}: {status} in {runs[-1]['seconds']} s", flush=True)
        if args.only:  # keep the other benchmarks' entries of an earlier run (runs may be split in groups)
            prev = _previous_runs(args.quick)
            names = {r["name"] for r in runs}
            runs = [r for r in prev if r["name"] not in names] + runs
            runs.sort(key=lambda r: [n for n, _ in MODULES].index(r["name"]) if r["name"] in dict(MODULES) else 99)
        write_result("run", {"runs": runs, "total_seconds": round(sum(r["seconds"] for r in runs), 2),
                             "wall_seconds_this_invocation": round(time.perf_counter() - t_all, 2)}, args.quick)
    from bench.report import generate

    for path in generate():
        print(f"[bench] wrote {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
