"""`pipeplan calibrate --from-run LOGS... --plan plan.json`: refit the cluster from what an exported
job measured (issue 19, item 3).

The job's JSON lines (train.py, pipeline_runtime.StepMeter) give per stage the forward and backward
ms per micro-batch, per rank the step, optimizer, clipping, gradient-sync and p2p-wait seconds and
the peak bytes. The first WARMUP_STEPS steps of each log are warm-up and skipped; the rest are reduced by
their median. Fitted, in this order:

1. compute: measured_ms = a_g * (planned_ms - planned_overhead_d) + o for every stage's forward and
   backward, least squares over all stages: one factor a_g per kind of device g (devices the plan's
   cluster describes identically: same preset, TFLOP/s, speed, memory and overhead; their new speed
   is old speed / a_g) and one per-action overhead o (ms; refitted with o = 0 when negative). One
   factor per device would also absorb the layer mix of its stage (on the 2-rank CPU loop the two
   identical ranks fitted factors 1.8-2.4x apart, and the re-plan then moved layers to the "fast"
   one). Per layer kind is not separated: a stage's time is one number (the per-action
   `--profile-steps` times are per stage too);
   then each rank's untimed time (untimed_s: its step less its timed actions, optimizer, clipping,
   gradient sync and receive waits: the schedule's own Python between actions, the loss, the batch's
   slicing) per action, the median over ranks, joins o: the cost model charges the device's overhead
   once per forward and once per backward, and this time lies between them on the rank's timeline;
   and the fixed per-step cost (step_overhead_fit_ms): the optimizer's measured time beyond what its
   planned memory traffic explains at the fitted speed (on CPU the per-tensor launches of AdamW on
   small parameters: ~0.4 ms for DLRM tiny against 0.03 ms planned);
2. link: the measured step (median over steps of the slowest rank's step) against the plan's own
   step model with the fitted stage times: the simulated pipeline, then the clip all-reduce, the fixed
   per-step cost and the optimizer (the plan's optimizer times scaled by the device's factor, as the
   refit speed scales them); the link's per-transfer overhead (Link.transfer_overhead_s) is the value
   that makes them equal (bisection: the simulated step does not decrease with it). The fit targets
   what the plan predicts, so what the model still does not describe (waking the receiving process,
   descheduling on a loaded machine) is charged per transfer, not per tensor: one run has one tensor
   count per boundary, so the two cannot be told apart, and per transfer is what the runs show (DLRM
   tiny's first plan sends 7 tensors per transfer, its re-plan 1; charged per tensor, the re-plan was
   predicted 24% fast, per transfer 10%). The per-message latency and the bandwidth are kept from the
   plan's cluster (one run has one message size per boundary too); only when the model already
   overshoots the step with no overhead is the latency lowered instead;
3. memory reserve: per rank, measured peak bytes less the plan's stage memory (reserve excluded),
   the largest, at least 0 (on CPU the measured peak is the exact live bytes, so it is ~0; on CUDA
   the allocator's peak, so it is what the plan's model misses).
Residuals: per stage forward/backward after the fit, the step before and after, memory per rank.
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path

from core.errors import PipeplanError
from core.jsonio import load_json_text
from planner.contracts.cluster import Cluster, Link
from planner.contracts.plan import Plan


def read_run_log(text: str, what: str = "log") -> list[dict]:
    """The measured step lines of one job's stdout (lines with "ranks" and "stages")."""
    lines = []
    for raw in text.splitlines():
        raw = raw.strip()
        if not raw.startswith("{"):
            continue
        try:
            d = load_json_text(raw, what)
        except PipeplanError:
            continue
        if isinstance(d, dict) and "step" in d and "ranks" in d and "stages" in d:
            lines.append(d)
    return lines


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else 0.0


WARMUP_STEPS = 3
"""Steps skipped at the start of every log (the last one is always kept): the first steps of a job
create the optimizer state, gloo's connections and the allocator's pools, and run 1.5-4x slower than
the rest on CPU (measured on the 7 tiny sample models, bench/bench_loop.py)."""


def steady_steps(lines: list[dict], warmup: int = WARMUP_STEPS) -> list[dict]:
    """A log's step lines after the warm-up (at least its last one)."""
    return lines[min(warmup, max(len(lines) - 1, 0)):]


def summarize(runs: list[list[dict]], num_stages: int) -> dict:
    """Medians over every log's steps after its warm-up (steady_steps): per stage fwd/bwd ms and
    activation peak, per rank step/opt/sync/wait seconds and peak bytes."""
    steps = [d for lines in runs for d in steady_steps(lines)]
    if not steps:
        raise PipeplanError("the logs hold no measured step lines (JSON lines with \"ranks\" and \"stages\"): "
                            "pass the stdout of an exported train.py run without --no-measure")
    if any(len(d["stages"]) != num_stages for d in steps):
        raise PipeplanError(f"the logs' stages do not match the plan's {num_stages} stages: was the run "
                            "exported from this plan.json?")
    stages = [{k: _median([d["stages"][s][k] for d in steps]) for k in ("fwd_ms", "bwd_ms", "act_peak_bytes")}
              for s in range(num_stages)]
    ranks = [{k: _median([d["ranks"][r].get(k, 0.0) for d in steps]) for k in
              ("step_s", "fwd_s", "bwd_s", "opt_s", "sync_s", "wait_s", "clip_s", "peak_bytes")}
             for r in range(len(steps[0]["ranks"]))]
    for r, rank in enumerate(ranks):  # per step, then the median: the parts' medians need not add up
        rank["untimed_s"] = _median([untimed_s(d["ranks"][r]) for d in steps])
    step_s = _median([max(r["step_s"] for r in d["ranks"]) for d in steps])
    pipe_s = _median([max(r["step_s"] - r["opt_s"] - r.get("clip_s", 0.0) - r["sync_s"] for r in d["ranks"])
                      for d in steps])
    # logs written before train.py timed the clipping apart have it inside opt_s
    clip_apart = all("clip_s" in r for d in steps for r in d["ranks"])
    return {"stages": stages, "ranks": ranks, "step_ms": 1e3 * step_s, "pipeline_ms": 1e3 * pipe_s,
            "steps": len(steps), "clip_apart": clip_apart}


def untimed_s(rank: dict) -> float:
    """A rank's step time outside its timed actions, optimizer, gradient sync and receive waits: the
    schedule's own Python between actions (building and posting the p2p ops, the loss), the batch's
    slicing. Never negative (the parts are timed separately and may round past the whole)."""
    return max(0.0, rank["step_s"] - rank["fwd_s"] - rank["bwd_s"] - rank["opt_s"] - rank.get("clip_s", 0.0)
               - rank["sync_s"] - rank["wait_s"])


def untimed_per_action_ms(plan: Plan, ranks: list[dict]) -> float:
    """The untimed time per forward or backward action (ms): each pipeline rank's untimed_s over its
    2 * M * (its stages) actions, the median over ranks. It joins the per-action overhead, which the
    cost model charges once per forward and once per backward (cost.StageTimeCoefficients)."""
    from planner.export.job import pipeline_ranks

    stage_rank = pipeline_ranks(plan)
    per_action = []
    for r, rank in enumerate(ranks):
        local = sum(1 for q in stage_rank if q == r)
        if local:
            per_action.append(1e3 * rank["untimed_s"] / (2 * plan.config.num_microbatches * local))
    return _median(per_action)


def step_overhead_fit_ms(plan: Plan, m: dict, factors: dict[int, float]) -> float:
    """The fixed per-step cost (Device.step_overhead_ms): per pipeline rank, its measured optimizer
    time (opt_s: the update and zeroing the gradients) less the plan's optimizer steps of its stages at
    the fitted speed (what the optimizer's memory traffic explains), the median over ranks, at least 0.
    0 for logs whose opt_s includes the clipping (its all-reduce waits for the last rank, which is not
    a cost of the optimizer) and for plans without optimizer times."""
    from planner.export.job import pipeline_ranks

    if not m["clip_apart"] or not any(st.optimizer_ms > 0 for st in plan.stages):
        return 0.0  # (without optimizer times the step model charges no step end: simulator.simulate)
    stage_rank = pipeline_ranks(plan)
    excess = []
    for r, rank in enumerate(m["ranks"]):
        local = [st for st, q in zip(plan.stages, stage_rank) if q == r]
        if local:
            planned = sum(st.optimizer_ms * factors[st.device] for st in local)
            excess.append(1e3 * rank["opt_s"] - planned)
    return max(0.0, _median(excess))


def _lstsq(rows: list[list[float]], ys: list[float]) -> list[float]:
    import numpy as np

    sol, *_ = np.linalg.lstsq(np.array(rows, dtype=float), np.array(ys, dtype=float), rcond=None)
    return [float(x) for x in sol]


def fit_compute(plan: Plan, measured: list[dict]) -> tuple[dict[int, float], float, list[dict]]:
    """(a_d per device used, overhead o in ms, per-stage residuals); devices of one kind share a_d."""
    used = sorted({st.device for st in plan.stages})
    kinds = sorted({plan.cluster.devices[d].kind() for d in used}, key=repr)
    devices = list(range(len(kinds)))
    col = {d: kinds.index(plan.cluster.devices[d].kind()) for d in used}

    def rows_for(with_o: bool):
        rows, ys, keys = [], [], []
        for st, m in zip(plan.stages, measured):
            o_plan = plan.cluster.devices[st.device].action_overhead_ms
            for kind, planned in (("fwd_ms", st.fwd_ms), ("bwd_ms", st.bwd_ms)):
                row = [0.0] * (len(devices) + (1 if with_o else 0))
                row[col[st.device]] = max(planned - o_plan, 1e-9)
                if with_o:
                    row[-1] = 1.0
                rows.append(row)
                ys.append(m[kind])
                keys.append((st.index, kind))
        return rows, ys, keys

    rows, ys, keys = rows_for(True)
    sol = _lstsq(rows, ys)
    if sol[-1] < 0 or any(a <= 0 for a in sol[:-1]):
        rows, ys, keys = rows_for(False)
        sol = [*_lstsq(rows, ys), 0.0]
    factors = {d: max(sol[col[d]], 1e-6) for d in used}
    o = sol[-1]
    residuals = []
    for (s, kind), row, y in zip(keys, rows, ys):
        fitted = sum(a * x for a, x in zip(sol, row))
        residuals.append({"stage": s, "what": kind, "measured_ms": round(y, 4), "fitted_ms": round(fitted, 4),
                          "planned_ms": round(getattr(plan.stages[s], kind), 4),
                          "error": round((fitted - y) / y, 4) if y > 0 else None})
    return factors, o, residuals


def _simulated_pipeline_ms(plan: Plan, fwd: list[float], bwd: list[float], comm: list[float],
                           optimizer_ms: list[float] | None = None, sync_ms: float = 0.0) -> float:
    """The simulated step of the plan's schedule with these stage and boundary times; with optimizer_ms
    (per stage, after the drain) and sync_ms (the clip all-reduce) the whole step, as the plan's."""
    from planner.pipeline.schedules import chunks_per_device
    from planner.pipeline.simulator import simulate_times

    cfg = plan.config
    v = chunks_per_device(cfg.schedule, cfg.virtual_stages)
    # B/W split scaled like the whole backward
    b_in = [b * (st.bwd_input_ms / st.bwd_ms) if st.bwd_ms > 0 else b / 2 for b, st in zip(bwd, plan.stages)]
    b_w = [b - x for b, x in zip(bwd, b_in)]
    return simulate_times(fwd, bwd, comm, schedule=cfg.schedule, num_devices=len(plan.stages) // v,
                          num_microbatches=cfg.num_microbatches, virtual_stages=v, bwd_input_ms=b_in,
                          bwd_weight_ms=b_w, optimizer_ms=optimizer_ms, sync_ms=sync_ms).makespan_ms


def fit_link(plan: Plan):
    """(the link the boundaries cross, whether it is the inter-node one, comm(latency_ms, overhead_ms)
    -> the boundaries' per-micro-batch transfer ms with that per-message latency, that per-transfer
    overhead and the link's bandwidth). The plan's comm_out_ms gives each boundary's tensor count."""
    cluster = plan.cluster
    inter = any(cluster.devices[a.device].node != cluster.devices[b.device].node
                for a, b in zip(plan.stages, plan.stages[1:]))
    link = cluster.inter_node if inter else cluster.intra_node
    msgs = []
    for st in plan.stages[:-1]:
        rest = st.comm_out_ms - st.comm_out_bytes * link.ms_per_byte - link.transfer_overhead_ms
        msgs.append(max(1, round(rest / link.latency_ms)) if link.latency_ms > 0 and rest > 0 else 1)

    def comm(latency_ms: float, overhead_ms: float = 0.0) -> list[float]:
        return [overhead_ms + st.comm_out_bytes * link.ms_per_byte + k * latency_ms if st.comm_out_bytes > 0 else 0.0
                for st, k in zip(plan.stages[:-1], msgs)]

    return link, inter, comm


def _bisect_to(simulated, target_ms: float) -> float | None:
    """The value (ms) of a link parameter at which the simulated step equals the measured one: the
    simulator's makespan does not decrease as a latency or overhead grows, so bisection (0 when even
    0 is too slow; None when no value up to 10^6 ms reaches it: the parameter does not move the step)."""
    lo, hi = 0.0, 1.0
    if simulated(lo) >= target_ms:
        return 0.0
    while simulated(hi) < target_ms and hi < 1e6:
        hi *= 2
    if simulated(hi) < target_ms:  # the parameter hardly moves the step (no transfer it applies to)
        return None
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if simulated(mid) < target_ms else (lo, mid)
    return (lo + hi) / 2


def calibrate_from_run(plan: Plan, logs: list[str], *, profile=None) -> tuple[Cluster, dict]:
    """The refit cluster and a report (measured medians, fitted values, residuals)."""
    if not plan.stages:
        raise PipeplanError("this plan has no stages (infeasible?): nothing was run from it to calibrate")
    runs = [read_run_log(text, f"log {i + 1}") for i, text in enumerate(logs)]
    m = summarize(runs, len(plan.stages))
    factors, timed_overhead, compute_res = fit_compute(plan, m["stages"])
    untimed = untimed_per_action_ms(plan, m["ranks"])
    overhead = timed_overhead + untimed
    step_overhead = step_overhead_fit_ms(plan, m, factors)
    cluster = plan.cluster
    devices = list(cluster.devices)
    # every device of a fitted kind gets its factor: with data parallelism the plan's stages sit on the first
    # replica's devices, and the others must stay the same kind (parallel.check_uniform)
    kind_factor = {cluster.devices[d].kind(): a for d, a in factors.items()}
    for d, dev in enumerate(cluster.devices):
        a = kind_factor.get(dev.kind())
        if a is None:
            continue
        if dev.speed is None and dev.tflops is not None:
            if profile is None or not profile.provenance.reference_tflops:
                raise PipeplanError(f"device {dev.name!r} gives its speed in TFLOP/s: pass --profile (the profile "
                                    "the plan was made from) so its speed can be rescaled")
            old = cluster.speed_factor(d, profile)
        else:
            old = dev.speed if dev.speed is not None else 1.0
        devices[d] = replace(dev, speed=old / a)
    devices = [replace(dev, action_overhead_ms=overhead, step_overhead_ms=step_overhead) for dev in devices]
    # fitted stage times (what the refit cluster predicts), then the link latency
    fwd = [factors[st.device] * (st.fwd_ms - cluster.devices[st.device].action_overhead_ms) + overhead
           for st in plan.stages]
    bwd = [factors[st.device] * (st.bwd_ms - cluster.devices[st.device].action_overhead_ms) + overhead
           for st in plan.stages]
    link, inter, comm = fit_link(plan)
    # the optimizer step scales with the device's speed (cost.stage_optimizer_ms: reference ms / speed)
    opt = [st.optimizer_ms * factors[st.device] + st.dp_sync_ms for st in plan.stages]

    def refit_at(latency_ms: float, overhead_ms: float) -> Cluster:
        new_link = Link(bandwidth_bytes_per_s=link.bandwidth_bytes_per_s, latency_s=latency_ms / 1e3,
                        transfer_overhead_s=overhead_ms / 1e3)
        return replace(cluster, devices=devices, **({"inter_node": new_link} if inter else {"intra_node": new_link}))

    def step_at(latency_ms: float, overhead_ms: float) -> float:  # the plan's step model (simulator.simulate)
        from planner.costmodel.cost import step_end_ms

        sync = step_end_ms(refit_at(latency_ms, overhead_ms), [st.device for st in plan.stages]) \
            if any(o > 0 for o in opt) else 0.0
        return _simulated_pipeline_ms(plan, fwd, bwd, comm(latency_ms, overhead_ms), opt, sync)

    # the rest of the step is charged per transfer, the per-message latency kept (fit_link's docstring);
    # only a step the model already overshoots lowers the latency instead
    latency_ms, overhead_ms = link.latency_ms, 0.0
    if any(st.comm_out_bytes > 0 and st.device != nxt.device for st, nxt in zip(plan.stages, plan.stages[1:])):
        overhead_ms = _bisect_to(lambda g: step_at(latency_ms, g), m["step_ms"]) or 0.0
    if overhead_ms == 0.0:  # no transfer to charge (then the clip all-reduce's latency takes it), or too slow
        fitted = _bisect_to(lambda a: step_at(a, 0.0), m["step_ms"])
        latency_ms = fitted if fitted is not None else latency_ms
    refit = refit_at(latency_ms, overhead_ms)
    fitted_pipe = _simulated_pipeline_ms(plan, fwd, bwd, comm(latency_ms, overhead_ms))
    fitted_step = step_at(latency_ms, overhead_ms)
    # memory per rank: measured peak against the plan's stages on that device (reserve excluded)
    memory = []
    reserve = 0
    for r, rank in enumerate(m["ranks"]):
        sts = [st for st in plan.stages if st.device == r]
        planned = sum(st.memory.total - st.memory.reserve for st in sts)
        measured = int(rank["peak_bytes"])
        reserve = max(reserve, measured - planned)
        memory.append({"rank": r, "measured_bytes": measured, "planned_bytes": planned,
                       "error": round((planned - measured) / measured, 4) if measured else None})
    stage_memory = [{"stage": st.index, "measured_act_bytes": int(s["act_peak_bytes"]),
                     "planned_act_bytes": st.memory.activations + st.memory.relay,
                     "error": round((st.memory.activations + st.memory.relay - s["act_peak_bytes"])
                                    / s["act_peak_bytes"], 4) if s["act_peak_bytes"] else None}
                    for st, s in zip(plan.stages, m["stages"])]
    report = {
        "steps_used": m["steps"],
        "device_factor": {devices[d].name: round(a, 4) for d, a in factors.items()},
        "device_speed": {devices[d].name: round(devices[d].speed, 4) for d in factors},
        "action_overhead_ms": round(overhead, 4),
        "action_overhead_parts_ms": {"timed": round(timed_overhead, 4), "untimed": round(untimed, 4)},
        "step_overhead_ms": round(step_overhead, 4),
        "link": {"which": "inter_node" if inter else "intra_node", "latency_ms": round(latency_ms, 4),
                 "transfer_overhead_ms": round(overhead_ms, 4),
                 "bandwidth_bytes_per_s": link.bandwidth_bytes_per_s, "bandwidth": "kept from the plan"},
        "reserve_bytes": int(reserve),
        "step": {"measured_ms": round(m["step_ms"], 3), "measured_pipeline_ms": round(m["pipeline_ms"], 3),
                 "planned_ms": plan.step_time_ms, "fitted_pipeline_ms": round(fitted_pipe, 3),
                 "error_before": round((plan.step_time_ms - m["step_ms"]) / m["step_ms"], 4)
                 if plan.step_time_ms else None,
                 "fitted_ms": round(fitted_step, 3),
                 "error_after": round((fitted_step - m["step_ms"]) / m["step_ms"], 4),
                 "pipeline_error_after": round((fitted_pipe - m["pipeline_ms"]) / m["pipeline_ms"], 4)},
        "compute_residuals": compute_res,
        "memory_per_rank": memory,
        "memory_per_stage": stage_memory,
    }
    return refit, report


def calibrate_files(plan_path: Path, log_paths: list[Path], profile_path: Path | None = None) -> tuple[Cluster, dict]:
    from core.jsonio import read_json_file

    plan = Plan.from_json(read_json_file(plan_path, "plan"))
    profile = None
    if profile_path is not None:
        from profiler.profile import Profile

        profile = Profile.from_json(read_json_file(profile_path, "profile"))
    logs = []
    for p in log_paths:
        if not p.is_file():
            raise PipeplanError(f"--from-run: {p} is not a file")
        logs.append(p.read_text(errors="replace"))
    return calibrate_from_run(plan, logs, profile=profile)
