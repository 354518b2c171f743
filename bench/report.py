"""docs/benchmarks.md and docs/benchmarks/*.html from bench/results/*.json.

    python -m bench.report        (or python -m bench.run --report-only)

Every number in the page is read from a results file that `make bench` wrote; nothing is typed
in by hand. A section whose results file is missing says so.
"""

# ruff: noqa: ISC004  (long prose paragraphs are implicit concatenations inside join lists)
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR

ROOT = Path(__file__).resolve().parent.parent
DOCS = Path(os.environ.get("PIPEPLAN_BENCH_DOCS") or ROOT / "docs")
"""Where the page goes; PIPEPLAN_BENCH_DOCS overrides it (the smoke test writes to a temporary folder)."""
DOC = DOCS / "benchmarks.md"
FIG_DIR = DOCS / "benchmarks"
MiB = 2**20


def load(name: str) -> dict | None:
    p = RESULTS_DIR / f"{name}.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if x == 0:
            return "0"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:.{digits}g}"
    return str(x)


def mib(x: Any) -> str:
    return "—" if x is None else f"{x / MiB:.2f}"


def table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(c if isinstance(c, str) else f(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def provenance(d: dict, name: str) -> str:
    e = d.get("env", {})
    mode = " (--quick)" if d.get("quick") else ""
    load_ = e.get("load_average_1m")
    return (f"_Source: `bench/results/{name}.json`{mode}; {e.get('machine', '?')}, {e.get('cpu_count', '?')} CPUs, "
            f"load {load_}; torch {e.get('torch', '?')}; {e.get('date', '?')}._")


def _fig(fig, name: str) -> str:
    FIG_DIR.mkdir(parents=True, exist_ok=True)
    path = FIG_DIR / f"{name}.html"
    fig.write_html(path, include_plotlyjs="cdn", full_html=True)
    return f"[figure: benchmarks/{name}.html](benchmarks/{name}.html)"


# --------------------------------------------------------------------------- sections
def quality_section(d: dict, figs: list[Path]) -> str:
    import plotly.graph_objects as go

    rows, labels = [], []
    ratios = {"uniform_layers": [], "param_balanced": [], "time_balanced": []}
    for r in d["rows"]:
        case = f"{r['model']}:{r['size']}"
        if r["status"] != "ok":
            note = (r.get("reason") or "")[:90]
            fits = {k: v for k, v in (r.get("baselines_ms") or {}).items() if v is not None}
            if fits:
                note += "; but baselines fit (" + ", ".join(f"{k} {f(v, 4)} ms" for k, v in fits.items()) + \
                    "): the solver found no plan within its time limit"
            rows.append([case, r["cluster"], r["schedule"], r["status"], "—", "—", "—", "—", "—", "—", note])
            continue
        b = r["baseline_over_optimal"]
        auto = r.get("torch_auto_partition") or {}
        auto_cell = "—" if not auto.get("fits") else f(auto.get("over_optimal"))
        rows.append([case, r["cluster"], r["schedule"], f(r["optimal_ms"], 4), f(b.get("uniform_layers")),
                     f(b.get("param_balanced")), f(b.get("time_balanced")), auto_cell, f(r["optimal_over_lower_bound"]),
                     f"{r['backend']} {r['solver_status']}" + (f" gap {f(r['gap'])}" if r.get("gap") else ""),
                     f"{r['recompute_stages']} recompute stages" if r.get("recompute_stages") else ""])
        labels.append(f"{case} {r['cluster']} {r['schedule']}")
        for k, values in ratios.items():
            values.append(b.get(k))
    fig = go.Figure([go.Bar(name=k, x=labels, y=v) for k, v in ratios.items()])
    fig.update_layout(title="Baseline step time / optimal step time (predicted; missing bar = does not fit)",
                      barmode="group", yaxis_title="ratio (1 = as fast as optimal)", height=600)
    link = _fig(fig, "quality")
    s = d["summary"]
    summ = table(["baseline", "cases that fit", "cases that do not fit", "min ratio", "geomean", "max ratio"],
                 [[k, v["cases"], v["infeasible"], v["min"], v["geomean"], v["max"]] for k, v in s.items()
                  if k in ratios])
    auto = s.get("torch_auto_partition")
    if auto:
        summ += (f"\n\ntorch `auto_partition` (its published algorithm: time-balanced DP plus simulated cut "
                 f"refinement, memory ignored): fits {auto['fits']} of {auto['cases']} cases; its step over "
                 f"pipeplan's {f(auto.get('over_optimal_min'))}–{f(auto.get('over_optimal_max'))}, geomean "
                 f"{f(auto.get('over_optimal_geomean_fitting'))} where it fits.")
    if s.get("solver_status"):
        summ += "\n\nSolver statuses (under the simulator): " + ", ".join(
            f"{k} {v}" for k, v in sorted(s["solver_status"].items())) + "."
    per = {}
    for r in d["rows"]:
        if r["status"] == "ok":
            per.setdefault(r["schedule"], []).append(r)
    if per:
        import statistics

        summ += "\n\n" + table(
            ["schedule", "cases", "optimal", "gap ≤ 1 %", "median gap", "max gap", "max solve s"],
            [[k, len(v), sum(r["solver_status"] == "optimal" for r in v), sum((r.get("gap") or 0) <= 0.01 for r in v),
              f(statistics.median(r.get("gap") or 0 for r in v)), f(max(r.get("gap") or 0 for r in v)),
              f(max(r.get("solve_s") or 0 for r in v))] for k, v in per.items()])
    return "\n\n".join([
        "## 1. Plan quality: optimal plan vs baselines vs the lower bound",
        f"Every sample model at a realistic size, profiled in estimate mode for {d['preset']}; {d['precision']}, "
        f"{d['optimizer']}, recompute `{d['recompute']}`, micro-batches = {d['microbatches']}. Columns: predicted "
        "step time of pipeplan's plan; each baseline's step time over it (uniform layers = DeepSpeed `uniform`/"
        "torchtitan even split, parameter-balanced = DeepSpeed `parameters`, time-balanced = torchgpipe "
        "`balance_by_time` solved exactly; — = that partition does not fit in memory); and the plan over the "
        "lower bound M × total compute / Σ device speed (no bubble, no communication, perfect balance). "
        "All values are predictions of the same cost model; the ratios show what the partition is worth.",
        provenance(d, "quality"),
        table(["model", "cluster", "schedule", "optimal ms", "uniform / opt", "param-bal. / opt",
               "time-bal. / opt", "torch auto / opt", "opt / lower bound", "solver", "note"], rows),
        summ, link])


def solver_section(d: dict, planner: dict | None) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    backends = ["dp", "highs", "cbc", "highs_cold", "cbc_cold"]

    def cell(c: dict) -> str:
        if c.get("status") == "skipped":
            return "skipped"
        txt = f"{f(c.get('seconds'))} s {c.get('status')}"
        if c.get("gap") not in (None, 0, 0.0):
            txt += f", gap {f(c['gap'])}"
        if c.get("plan_over_dp") not in (None, 1.0):
            txt += f", ×{f(c['plan_over_dp'], 4)} of DP"
        return txt

    parts = ["## 2. Solver speed and optimality",
             "Random chains; `dp` = the exact chain DP (pipeplan's default on chains); `highs`/`cbc` = "
             "`solve(..., solver=...)`, the ILP warm-started and bounded by the DP (the product path); "
             "`*_cold` = the ILP alone with no warm start, time limit "
             f"{d['ilp_time_limit_s']} s, skipped above {d['max_cold_binaries']} binaries (CBC, warm or cold, above "
             f"{d.get('max_cbc_binaries', '—')}). A status `timeout` "
             "means no incumbent within the limit. Seconds are wall time on a shared machine. "
             f"Instances: {d['instances']}.",
             provenance(d, "solver")]
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"vs graph size ({d['size_sweep']['stages']} stages)",
                                                       f"vs stage count ({d['stage_sweep']['nodes']} nodes)"))
    for col, key, xkey in ((1, "size_sweep", "nodes"), (2, "stage_sweep", "stages")):
        rows = d[key]["rows"]
        parts.append(table([xkey] + backends, [[r[xkey]] + [cell(r[b]) for b in backends] for r in rows]))
        for i, b in enumerate(backends):
            pts = [(r[xkey], r[b].get("seconds")) for r in rows
                   if r[b].get("seconds") is not None and r[b].get("status") in ("optimal", "feasible")]
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=b,
                                     legendgroup=b, showlegend=col == 1, line={"color": _color(i)}), row=1, col=col)
        fig.update_xaxes(type="log", title_text=xkey, row=1, col=col)
        fig.update_yaxes(type="log", title_text="seconds (solved only)", row=1, col=col)
    fig.update_layout(title="Solve time (wall, log-log); points only where a solution was found", height=500)
    parts.append(_fig(fig, "solver"))
    if planner:
        rows = []
        for k, v in planner.items():
            if isinstance(v, dict) and "seconds" in v:
                rows.append([k, v.get("seconds"), v.get("backend"), v.get("status"), v.get("gap"),
                             v.get("best_baseline_over_optimal")])
            elif isinstance(v, dict):
                for k2, v2 in v.items():
                    if isinstance(v2, dict) and "seconds" in v2:
                        rows.append([f"{k} / {k2}", v2.get("seconds"), v2.get("backend"), v2.get("status"),
                                     v2.get("gap"), v2.get("best_baseline_over_optimal")])
        parts += ["### Planner targets (bench/bench_planner.py)",
                  "_Source: `bench/results/planner.json` (written by bench/bench_planner.py)._",
                  table(["case", "seconds", "backend", "status", "gap", "best baseline / optimal"], rows)]
    return "\n\n".join(parts)


def _color(i: int) -> str:
    return ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"][i % 6]


def simulator_section(d: dict) -> str:
    rows = [[c["schedule"], c["devices"], c["stages"], c["microbatches"], c["events"], c["wall_s"], c["cpu_s"],
             c["bubble"]] for c in d.get("cases", [])]
    return "\n\n".join([
        "### Simulator (bench/bench_simulator.py)",
        f"_Source: `bench/results/simulator.json`; target: {d.get('target')}; met (wall): "
        f"{f(d.get('target_met_wall'))}, met (CPU): {f(d.get('target_met_cpu'))}; load {d.get('load_average_1m')}._",
        table(["schedule", "devices", "stages", "micro-batches", "events", "wall s", "CPU s", "bubble"], rows)])


def export_section(d: dict) -> str:
    lines = [
        "## 3b. Exported job: step time against the prediction, overhead against a hand-written script",
        f"`python -m bench.bench_export`: {d['model']} (seq {d['seq_len']}, micro-batch {d['micro_batch_size']}, "
        f"{d['num_microbatches']} micro-batches, {d['schedule']}, {d['ranks']} ranks, gloo), split {d['split']}; "
        f"{d['runs']} alternating runs of {d['steps_per_run']} steps, median step after two warm-up steps.",
        provenance(d, "export"),
        calibration_line(d),
        table(["", "ms"], [
            ["predicted (plan.step_time_ms, calibrated)", f(d["predicted_step_ms"], 4)],
            ["of which optimizer step", f(d.get("predicted_optimizer_ms"), 3)],
            ["predicted without calibration", f(d.get("predicted_uncalibrated_ms"), 4)],
            ["exported job, measured", f(d["exported_step_ms"], 4)],
            ["hand-written PipelineStage script, measured", f(d["handwritten_step_ms"], 4)],
        ]),
        f"Measured / predicted: **{f(d['measured_over_predicted'])}** (median over runs, each with its own "
        f"profile: {', '.join(f(x) for x in d.get('measured_over_predicted_runs', []))}) "
        f"(uncalibrated: {f(d.get('measured_over_predicted_uncalibrated'))}). Exported over hand-written: "
        f"**{f(100 * paired_overhead(d), 3)} %** as the median over the alternating pairs of runs (each pair "
        f"ran under the same load), {f(100 * d['exported_overhead_vs_handwritten'], 3)} % between the two "
        f"medians, {f(100 * d['exported_overhead_vs_handwritten_best'], 3)} % on best steps "
        f"(target ≤ {f(100 * d['target_overhead'], 2)} %).",
    ]
    return "\n\n".join(lines)


def paired_overhead(d: dict) -> float:
    """Median of exported / hand-written over the alternating pairs of runs, minus 1."""
    import statistics

    if "exported_overhead_vs_handwritten_paired" in d:
        return d["exported_overhead_vs_handwritten_paired"]
    return statistics.median(e / h for e, h in zip(d["exported_runs_ms"], d["handwritten_runs_ms"])) - 1


def calibration_line(d: dict) -> str:
    c = d.get("calibration")
    if not c:
        return "No calibration in this result: the plans used the default links and no per-action overhead."
    return (f"`pipeplan calibrate` measured here ({c['backend']}): link {f(1e3 * c['latency_s'], 3)} ms + bytes / "
            f"{f(c['bandwidth_bytes_per_s'] / 1e9, 3)} GB/s, {f(c['action_overhead_ms'], 3)} ms per forward or "
            "backward action of the pipeline runtime.")


def accuracy_section(d: dict) -> str:
    import plotly.graph_objects as go

    rows, mem_rows, xs, ys, names = [], [], [], [], []
    for r in d["rows"]:
        if r["status"] != "ok":
            rows.append([r["model"], "—", "—", "—", "—", "—", "—", (r.get("reason") or r["status"])[:120]])
            continue
        rows.append([r["model"], f(r["predicted_step_ms"], 4), f(r["predicted_comm_ms"], 3),
                     f(r.get("predicted_optimizer_ms"), 3),
                     f"{f(r['measured_step_ms'], 4)} ± {f(r['measured_step_ms_stdev'], 2)}",
                     f(r.get("measured_step_ms_median"), 4), f(r["measured_over_predicted"]),
                     f(r.get("measured_over_predicted_uncalibrated"))])
        xs.append(r["predicted_step_ms"])
        ys.append(r["measured_step_ms"])
        names.append(r["model"])
        for s in r["stages"]:
            mem_rows.append([r["model"], s["stage"], s["layers"], s["in_flight"], mib(s["predicted_bytes"]),
                             mib(s["peak_rss_bytes"]), mib(s["rss_over_baseline_bytes"]), mib(s.get("unmodelled_bytes")),
                             f(s["measured_over_predicted"])])
    fig = go.Figure([go.Scatter(x=xs, y=ys, text=names, mode="markers+text", textposition="top center",
                                name="models"),
                     go.Scatter(x=[min(xs + ys, default=1), max(xs + ys, default=1)],
                                y=[min(xs + ys, default=1), max(xs + ys, default=1)], mode="lines", name="y = x")])
    fig.update_layout(title="Measured vs predicted step time, 2 CPU ranks (gloo)", xaxis_type="log", yaxis_type="log",
                      xaxis_title="predicted ms", yaxis_title="measured ms (mean of later steps)", height=500)
    base = d.get("baseline_rss_bytes", {})
    s = d["summary"]
    return "\n\n".join([
        "## 3. Prediction accuracy on this machine (CPU, torchrun + gloo)",
        f"Each tiny sample model is profiled on this CPU (measured, one thread), planned for {d['cluster']}, "
        f"{d['schedule']}, {d['precision']} {d['optimizer']}, exported, and run with `torchrun --nproc-per-node 2` "
        f"for {d['steps']} steps; measured = mean (± s.d.) and median `step_time_s` of steps {d['timed_steps']}.",
        provenance(d, "accuracy"),
        calibration_line(d),
        table(["model", "predicted ms", "of which comm ms", "of which optimizer ms", "measured ms", "median ms",
               "measured / predicted", "uncalibrated ratio"], rows),
        f"Step-time ratio over {s['ok']} models: min {f(s['step_time_ratio_min'])}, median "
        f"{f(s['step_time_ratio_median'])}, max {f(s['step_time_ratio_max'])}. Without calibration (default "
        f"links, no per-action overhead; optimizer step included): min {f(s.get('uncalibrated_ratio_min'))}, "
        f"median {f(s.get('uncalibrated_ratio_median'))}, max {f(s.get('uncalibrated_ratio_max'))}.",
        "Memory per rank: predicted stage memory (params + grads + AdamW state + activations × in-flight) against "
        "the rank's peak RSS (VmHWM) minus the peak RSS of a bare worker (torch imported, gloo group up: "
        f"{', '.join(f'rank {k}: {mib(v)} MiB' for k, v in sorted(base.items()))}). 'Unmodelled' = RSS over "
        "baseline − predicted.",
        table(["model", "stage", "layers", "in flight", "predicted MiB", "peak RSS MiB", "RSS over bare worker MiB",
               "unmodelled MiB", "ratio"], mem_rows),
        _fig(fig, "accuracy")])


def memory_section(d: dict) -> str:
    import plotly.graph_objects as go

    rows, stage_rows = [], []
    names, single, stage_r = [], [], []
    for r in d["rows"]:
        if r["status"] != "ok":
            rows.append([r["model"]] + ["—"] * 6 + [(r.get("reason") or "")[:100]])
            continue
        sd = r["single_device"]
        p, t = sd["predicted"], sd["memtracker_peak"]
        rows.append([r["model"], mib(p["total"]), mib(t["total"]), f(sd["predicted_over_tracked"]),
                     f"{mib(p['params'])} / {mib(t['params'])}", f"{mib(p['optimizer'])} / {mib(t['optimizer'])}",
                     f"{mib(p['activations'])} / {mib(t['activations'])}", f"temp {mib(t['temp'])}"])
        names.append(r["model"])
        single.append(sd["predicted_over_tracked"])
        for s in r["stages"]:
            stage_rows.append([r["model"], s["stage"], s["layers"], s["in_flight"], mib(s["predicted_bytes"]),
                               mib(s["tracked_bytes"]), f(s["predicted_over_tracked"]),
                               f"{mib(s['predicted_act_per_mb'])} / {mib(s['tracked_act_per_mb'])}"])
            stage_r.append((f"{r['model']} s{s['stage']}", s["predicted_over_tracked"]))
    fig = go.Figure([go.Bar(name="single device", x=names, y=single)])
    fig.add_trace(go.Bar(name="per stage (2-stage 1F1B)", x=[n for n, _ in stage_r], y=[v for _, v in stage_r]))
    fig.add_hline(y=1.0)
    fig.update_layout(title="Predicted / MemTracker-tracked peak", yaxis_title="ratio", height=500)
    s = d["summary"]
    return "\n\n".join([
        "## 4. Memory accuracy against MemTracker (FakeTensorMode)",
        "Single device: MemTracker's peak over one steady-state iteration (forward, backward, AdamW step, after a "
        "warm-up iteration that creates gradients and optimizer state) against the plan's one-stage memory. "
        "Per stage (2-stage 1F1B, M = 4): the stage's modules' tracked parameter bytes × 4 (weights, grads, AdamW "
        "m and v) + in-flight × the activations its modules leave alive after forward, against the plan's stage "
        "memory. Cells `a / b` are predicted / tracked.",
        provenance(d, "memory"),
        table(["model", "predicted MiB", "tracked peak MiB", "predicted / tracked", "params", "optimizer",
               "activations", "tracked only"], rows),
        table(["model", "stage", "layers", "in flight", "predicted MiB", "tracked MiB", "predicted / tracked",
               "activations per micro-batch"], stage_rows),
        f"Single device: predicted / tracked {f(s['single_min'])}–{f(s['single_max'])}; per stage "
        f"{f(s['stage_min'])}–{f(s['stage_max'])}.",
        _fig(fig, "memory")])


def scale_section(d: dict) -> str:
    r = d["result"]
    c = d["case"]
    if r.get("status") == "error":
        return "## 5. Scale\n\nThe scale run failed: " + r.get("reason", "")[:500]
    rows = [["imports", "—", "—", mib(r["rss_after_imports_bytes"])],
            [f"profile {c['spec']} (seq {c['seq_len']}, mb 1, estimate)", f(r["profile_wall_s"]),
             f(r["profile_cpu_s"]), mib(r["rss_after_profile_bytes"])],
            [f"plan on {d['cluster']}, M = {c['microbatches']}", f(r["plan_wall_s"]), f(r["plan_cpu_s"]),
             mib(r["rss_after_plan_bytes"])]]
    res = (f"Plan: feasible {f(r['feasible'])}, {r.get('nodes')} layers, {f(r.get('params'))} parameters; "
           f"predicted step {f(r.get('step_time_ms'), 5)} ms ({r.get('backend')} {r.get('solver_status')}, gap "
           f"{f(r.get('gap'))}), {r.get('recompute_stages')} stages recompute, largest stage "
           f"{f(r.get('max_stage_memory_gib'), 4)} GiB; baselines (ms): "
           + ", ".join(f"{k} {f(v, 5)}" for k, v in (r.get("baselines_ms") or {}).items())) if r.get("feasible") \
        else f"No plan fits: {r.get('diagnosis')}"
    return "\n\n".join([
        "## 5. Scale: profile and plan the Llama 70B shape on 64 devices",
        f"One fresh child process; {d['schedule']}, {d['precision']} {d['optimizer']}, recompute `{d['recompute']}`. "
        "Peak RSS is the child process's high-water mark (VmHWM) after each phase (cumulative).",
        provenance(d, "scale"),
        table(["phase", "wall s", "CPU s", "peak RSS MiB"], rows), res])


def run_section(d: dict) -> str:
    rows = [[r["name"], r["status"], r["seconds"], (r.get("error") or "")[:120]] for r in d["runs"]]
    return "\n\n".join(["## Suite run", provenance(d, "run"),
                        table(["benchmark", "status", "seconds", "error"], rows),
                        f"Total: {f(d['total_seconds'])} s (sum of the benchmarks; groups may run in parallel)."])


def generate() -> list[Path]:
    parts = ["# Benchmarks",
             "Generated by `make bench` (`python -m bench.run`; `--quick` for the smoke-test sizes) from "
             "`bench/results/*.json`; do not edit by hand. Each section names its results file, the machine, the "
             "torch version and the date. Figures are Plotly HTML files next to this page. How the numbers are "
             "predicted: [cost-model.md](cost-model.md); what the planner solves: [ilp.md](ilp.md)."]
    for name, fn in (("quality", quality_section), ("solver", None), ("accuracy", accuracy_section),
                     ("export", export_section), ("memory", memory_section), ("scale", scale_section)):
        d = load(name)
        if d is None and name == "export":  # optional (torchrun jobs): a quick run may leave it out
            parts.append("## 3b. Exported job\n\n_Not in this set of results: run `python -m bench.run --only "
                         "export`._")
            continue
        if d is None:
            parts.append(f"## {name}\n\n_No results yet: run `python -m bench.run --only {name}`._")
            continue
        try:
            if name == "solver":
                parts.append(solver_section(d, load("planner")))
                sim = load("simulator")
                if sim:
                    parts.append(simulator_section(sim))
            elif name == "quality":
                parts.append(fn(d, []))
            else:
                parts.append(fn(d))
        except (KeyError, TypeError, ValueError) as exc:  # a results file from an older version of the bench
            parts.append(f"## {name}\n\n_`bench/results/{name}.json` could not be read ({type(exc).__name__}: "
                         f"{exc}); re-run `python -m bench.run --only {name}`._")
    parts.append(GAPS)
    run = load("run")
    if run:
        parts.append(run_section(run))
    parts += kept_blocks(DOC.read_text() if DOC.exists() else "")
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text("\n\n".join(parts) + "\n")
    return [DOC] + sorted(FIG_DIR.glob("*.html"))


def kept_blocks(text: str) -> list[str]:
    """The sections other scripts write between `<!-- NAME:begin -->` and `<!-- NAME:end -->` markers
    (bench/bench_coverage.py, bench/app_timings.py): kept as they are when the page is regenerated."""
    import re

    return [m.group(0) for m in re.finditer(r"<!-- ([a-z-]+):begin -->.*?<!-- \1:end -->", text, flags=re.DOTALL)]


GAPS = """## Reading the numbers

- **Plan quality** compares partitions under one cost model; it says how much the cut matters when
  the model is right, not how right the model is. Sections 3 and 4 check the model.
- **Statuses are under the simulator** (docs/ilp.md, "What is proven"): "optimal" is proven for the
  simulated step; "feasible" with a gap means the gap bounds the simulated step (the bound holds for
  every plan in the search space). For Interleaved1F1B and ZBV the bound is the path bound (the
  simulated step is the longest path of the schedule's event graph; each scored plan's critical
  path becomes an ILP row): exact for every plan scored, and what gap is left is the ILP over the
  partitions stopping on its time share, not a better plan known. A baseline is always a candidate,
  so no plan is slower on the timeline than a baseline that fits.
- **CPU step time.** The tiny models' layers take fractions of a millisecond to a few ms, so the
  runtime's own costs matter: the pipelining runtime's Python work per action and gloo's loopback
  send/recv (the cluster's default link says 100 GB/s and 5 µs; a loopback gloo message on this VM
  costs 0.1–2 ms). `pipeplan calibrate` measures both and the accuracy benchmark plans with them;
  the optimizer step is in every plan (measured per layer by the profiler). What is left: the
  other processes on this 2-core machine (two ranks already fill it) and the gradient-sync and
  clipping all-reduces, which are not modelled.
- **CPU memory.** RSS counts what the memory model leaves to the reserve: tracing the model with
  torch.export in every worker, split_module graphs, PipelineStage buffers, allocator arenas. For
  the tiny models those are tens of MiB against predicted MiB or less, so the per-rank ratios are
  large; the 'unmodelled MiB' column is the size of that fixed cost. On a GPU the same check uses
  `torch.cuda.max_memory_allocated` (bench/gpu_check.py), which excludes it.
- **MemTracker** is torch's own accounting under FakeTensorMode; its test allows ±10 % against the
  CUDA allocator. Temporaries (the 'tracked only' column) are not in the plan's stage memory.
"""


if __name__ == "__main__":
    for p in generate():
        print(p)
