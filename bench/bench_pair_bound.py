"""What the device-pair bound (planner/solvers/path_search.device_pair_bound) is worth: every
Interleaved1F1B and ZBV case of bench_quality solved twice in a row, with the bound and with it switched
off, so both runs see the same machine load. Not part of `make bench` (about 15 minutes).

    python -m bench.bench_pair_bound [--quick]

Writes bench/results/pair_bound.json: per case the gap, step and solve seconds of both runs, and how
many cases the bound made better or worse.
"""

from __future__ import annotations

import statistics

from bench.bench_quality import MODELS, QUICK_MODELS, case, clusters, profile_for
from bench.common import command_line, write_result
from planner.solvers import path_search

MULTI_CHUNK = [("Interleaved1F1B", 2), ("ZBV", 2)]


def run(quick: bool) -> dict:
    real = path_search.device_pair_bound
    off = lambda *args, **kwargs: -float("inf")
    rows = []
    try:
        for name, size, shape in QUICK_MODELS if quick else MODELS:
            prof, _, _ = profile_for(name, size, shape, 16)
            for cname, cluster in clusters(quick):
                for schedule, v in MULTI_CHUNK:
                    row = {"model": name, "size": size, "cluster": cname, "schedule": schedule}
                    for label, fn in (("with", real), ("without", off)):
                        path_search.device_pair_bound = fn
                        r = case(prof, cname, cluster, schedule, v, time_limit=4.0 if quick else 10.0)
                        row[label] = {k: r.get(k) for k in ("optimal_ms", "solver_status", "gap", "solve_s")}
                    rows.append(row)
                    print(f"  pair bound {name} {cname} {schedule}: gap {row['without']['gap']} -> "
                          f"{row['with']['gap']}", flush=True)
    finally:
        path_search.device_pair_bound = real
    ok = [r for r in rows if r["with"]["gap"] is not None and r["without"]["gap"] is not None]
    summary = {"cases": len(ok),
               "better": sum(r["with"]["gap"] < r["without"]["gap"] - 1e-4 for r in ok),
               "worse": sum(r["with"]["gap"] > r["without"]["gap"] + 1e-4 for r in ok)}
    for schedule, _ in MULTI_CHUNK:
        these = [r for r in ok if r["schedule"] == schedule]
        if these:
            summary[schedule] = {k: {"median_gap": statistics.median(r[k]["gap"] for r in these),
                                     "within_1pct": sum(r[k]["gap"] <= 0.01 for r in these),
                                     "max_solve_s": max(r[k]["solve_s"] for r in these)}
                                 for k in ("with", "without")}
    data = {"rows": rows, "summary": summary}
    write_result("pair_bound", data, quick)
    return data


if __name__ == "__main__":
    command_line(run, summary_key="summary")
