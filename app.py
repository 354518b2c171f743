"""pipeplan Streamlit app: model -> cluster -> training -> plan -> export.

Run with `pipeplan app` (binds 127.0.0.1; `--allow-code` enables .py uploads).
This file only wires the sections together; each section lives in ui/ and every
number it shows comes from a profiler/ or planner/ call.
"""

from __future__ import annotations

import streamlit as st

from core.errors import PipeplanError
from planner.contracts.config import TrainConfig
from ui.cluster_view import cluster_section
from ui.export_view import export_section
from ui.hybrid_view import parallel_search_section, parallelism_section
from ui.inference_view import inference_section, inference_settings, mode_switch
from ui.model_view import model_section
from ui.plan_view import plan_section
from ui.run_view import run_section
from ui.training_view import training_section
from ui.url_state import restore_from_url, save_to_url
from ui.warmup import start_background_imports

st.set_page_config(page_title="pipeplan", layout="wide")
st.title("pipeplan: pipeline-parallel training planner")
st.caption("Cut a model into pipeline stages across your GPUs, see the schedule and memory, download the job.")

restore_from_url()
mode = mode_switch()
model_tab, cluster_tab, training_tab = st.tabs(["1. Model", "2. Cluster", "3. Training"])
with model_tab:
    choice = model_section()
with cluster_tab:
    cluster_inputs = cluster_section()
with training_tab:
    if mode == "Inference":
        inference_config = inference_settings(choice.profile.model.micro_batch_size if choice else 1)
        config = None if inference_config is None else TrainConfig.for_inference(inference_config)
    else:
        config = training_section(choice.profile.model.micro_batch_size if choice else 1)
        parallel = parallelism_section(choice.profile.model.micro_batch_size if choice else 1)

save_to_url()
st.caption("The page URL holds these settings: share it, or reload without losing them. Uploaded files and "
           "edits to single rows of the device table are not part of the link.")

cluster = None
if config is not None:
    try:
        cluster = cluster_inputs.cluster(config.precision)
    except PipeplanError as exc:
        st.error(f"Cluster (tab 2): {exc}")

if choice is None or cluster is None or config is None:
    st.header("4. Plan")
    # nothing uploaded yet is not a mistake: only point at "fix" when a setting was refused
    st.info("No plan yet: pick a sample model or upload one in tab 1." if choice is None else
            "Fix the settings marked in red above to see a plan.")
elif mode == "Inference":
    inference_section(choice.profile, cluster, config)
else:
    if parallel.hybrid:  # the ranked PP x DP x TP configurations; the picked one is planned below
        config = parallel_search_section(choice.profile, cluster, config, parallel)
    plan = None if config is None else plan_section(choice.profile, cluster, config,
                                                    lambda n: cluster_inputs.cluster(config.precision, n))
    if plan is not None:
        export_section(plan, choice.profile, choice.cli_source, choice.cli_flags, choice.export_source,
                       choice.export_error, choice.export_label)
    run_section(plan)
start_background_imports()  # after the page is drawn: an HF upload then finds transformers imported
