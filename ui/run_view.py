"""5. Measured run: upload an exported job's logs (train.py's stdout) next to its plan.json; per stage
the plan's compute and activation memory against what the job measured, per rank its waits and peak
memory, and the refit cluster (planner/calibration/from_run.py) to download for the next plan
(issue 19, item 4)."""

from __future__ import annotations

import streamlit as st

from core.errors import PipeplanError
from planner.contracts.plan import Plan
from ui.uploads import check_upload_size


def _fmt_bytes(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


def run_section(plan: Plan | None) -> None:
    st.header("5. Measured run")
    st.caption("Upload the stdout of an exported job (`torchrun ... train.py > run.log`) and the plan.json it was "
               "exported from (default: the plan above). pipeplan refits the cluster from what the job measured.")
    logs = st.file_uploader("Run logs (train.py's stdout)", accept_multiple_files=True, key="run_logs")
    plan_file = st.file_uploader("plan.json of that run (optional)", type=["json"], key="run_plan")
    if not logs:
        return
    from planner.calibration.from_run import calibrate_from_run

    try:
        if plan_file is not None:
            data = plan_file.getvalue()
            check_upload_size(plan_file.name, data)
            plan = Plan.from_json(data)
        if plan is None:
            st.info("No plan to compare with: upload the run's plan.json.")
            return
        texts = []
        for f in logs:
            data = f.getvalue()
            check_upload_size(f.name, data)
            texts.append(data.decode("utf-8", errors="replace"))
        cluster, report = calibrate_from_run(plan, texts)
    except PipeplanError as exc:
        st.error(f"Measured run: {exc}")
        return
    step = report["step"]
    c1, c2, c3 = st.columns(3)
    c1.metric("Measured step", f"{step['measured_ms']:.2f} ms")
    c2.metric("Planned step", f"{step['planned_ms']:.2f} ms" if step["planned_ms"] else "n/a",
              f"{100 * step['error_before']:+.1f}%" if step["error_before"] is not None else None,
              delta_color="off")
    c3.metric("Refit step", f"{step['fitted_ms']:.2f} ms", f"{100 * step['error_after']:+.1f}%",
              delta_color="off")
    res = {(r["stage"], r["what"]): r for r in report["compute_residuals"]}
    rows = []
    for st_plan, mem in zip(plan.stages, report["memory_per_stage"]):
        f, b = res[(st_plan.index, "fwd_ms")], res[(st_plan.index, "bwd_ms")]
        rows.append({"stage": st_plan.index, "device": plan.cluster.devices[st_plan.device].name,
                     "fwd planned ms": f["planned_ms"], "fwd measured ms": f["measured_ms"],
                     "bwd planned ms": b["planned_ms"], "bwd measured ms": b["measured_ms"],
                     "activations planned": _fmt_bytes(mem["planned_act_bytes"]),
                     "activations measured": _fmt_bytes(mem["measured_act_bytes"])})
    st.dataframe(rows, hide_index=True, key="run_stages")
    st.dataframe([{"rank": m["rank"], "memory planned": _fmt_bytes(m["planned_bytes"]),
                   "memory measured (peak)": _fmt_bytes(m["measured_bytes"])} for m in report["memory_per_rank"]],
                 hide_index=True, key="run_ranks")
    st.write(f"Refit: speeds {report['device_speed']}, {report['action_overhead_ms']:.3f} ms per action, "
             f"{report['step_overhead_ms']:.3f} ms per step, link {report['link']['transfer_overhead_ms']:.3f} ms "
             f"per transfer + {report['link']['latency_ms']:.3f} ms per tensor (bandwidth kept), memory reserve "
             f"{_fmt_bytes(report['reserve_bytes'])}.")
    st.download_button("Download the refit cluster JSON", cluster.to_json(indent=2) + "\n",
                       file_name="cluster.calibrated.json", mime="application/json", key="run_cluster")
    st.caption("Plan the next run with it: `pipeplan plan MODEL --cluster cluster.calibrated.json` "
               f"(and `--reserve {report['reserve_bytes']}B` if the plan's memory missed it).")
