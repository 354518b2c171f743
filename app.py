"""pipeplan Streamlit app: model -> cluster -> training -> plan -> export.

Run with `pipeplan app` (binds 127.0.0.1). This file only wires widgets to
library calls; views live in ui/.
"""

from __future__ import annotations

import streamlit as st

from planner.cli.models_cmd import human_count, model_rows

st.set_page_config(page_title="pipeplan", layout="wide")
st.title("pipeplan: pipeline-parallel training planner")

st.header("1. Model")
rows = model_rows()
st.dataframe(
    [{"model": r["model"], "size": r["size"], "params": human_count(r["params"]), "spec": r["spec"],
      "description": r["description"]} for r in rows],
    hide_index=True,
)
