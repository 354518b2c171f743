"""Section 5: download the training job and the equivalent command lines."""

from __future__ import annotations

import streamlit as st

from core.errors import PipeplanError
from planner.contracts.plan import Plan
from profiler.profile import Profile
from ui import cache
from ui.commands import cli_commands


def export_section(plan: Plan, profile: Profile, cli_source: str, cli_flags: str,
                   export_source: str | None = None, export_error: str | None = None,
                   export_label: str | None = None) -> None:
    """The job's zip (naming an uploaded config by export_label, its own file name, not the server's
    path), the plan, profile and cluster JSON, and the CLI commands that make the same job.
    The pretrained-weights path is text for the job (its settings and launch.sh): this server never
    opens it, since it names a file on the machine that will train."""
    st.header("5. Export")
    weights = st.text_input(
        "Pretrained weights (optional)", key="export_weights",
        placeholder="/data/checkpoints/my-model  (a Hugging Face safetensors folder or a .safetensors file)",
        help="Path on the machine that runs the job; written into train.py's settings and launch.sh as "
             "--weights. This app never reads it. Only safetensors: .bin/.pt pickles are refused.").strip() or None
    cols = st.columns(4)
    try:
        if export_error:
            raise PipeplanError(export_error)
        with st.spinner("Writing the training job…"):
            data = cache.export_zip(plan, plan.to_json(), export_source, export_label, weights, profile)
    except PipeplanError as exc:
        st.error(f"Cannot export this plan: {exc}")
    else:
        cols[0].download_button("Download training job (.zip)", data=data, file_name="pipeplan_job.zip",
                                mime="application/zip", key="download_zip", on_click="ignore", type="primary")
        cols[0].caption("train.py, launch.sh, slurm.sbatch, plan.json, README.md")
    cols[1].download_button("plan.json", data=plan.to_json(indent=2), file_name="plan.json",
                            mime="application/json", key="download_plan", on_click="ignore")
    cols[2].download_button("profile.json", data=profile.to_json(indent=2), file_name="profile.json",
                            mime="application/json", key="download_profile", on_click="ignore")
    cols[3].download_button("cluster.json", data=plan.cluster.to_json(indent=2), file_name="cluster.json",
                            mime="application/json", key="download_cluster", on_click="ignore")
    st.markdown("The same job from the command line (`pipeplan export plan.json` writes exactly the zip's files):")
    st.code(cli_commands(plan, cli_source, cli_flags, export_label or export_source, weights), language="bash")
