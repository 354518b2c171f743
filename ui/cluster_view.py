"""Section 2: the cluster: an "N x preset" quick fill (64 devices, 8 per node = 8 nodes × 8),
the device table (grouped by node when it is long), the links."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import streamlit as st

from planner.contracts.cluster import Cluster
from profiler.gpus import GPU_PRESETS, get_preset
from ui.cluster_table import (
    COLUMNS,
    INTER_NODE_DEFAULT_GBS,
    PRESET_CHOICES,
    base_rows,
    cluster_from_rows,
    node_summary_rows,
    rows_for_count,
)

DEFAULT_DEVICES, DEFAULT_PRESET, DEFAULT_PER_NODE = 4, "A100-80GB", 8
OPENING_KINDS = ("A100-80GB", "A100-80GB", "L4", "L4")
"""The opening example's table (issue 17, item 14): a node of two A100s and a node of two L4s, where the
cut matters: an even split waits on the slower L4s (every baseline is over 1.3x slower than the plan)."""
OPENING_NODES = (0, 0, 1, 1)
LEFT_OPENING = "kept:left_opening_table"
GROUP_BY_NODE_ABOVE = 16
"""Past this many devices the section shows one line per node and folds the device table away."""


def opening_rows() -> list[dict[str, Any]]:
    return [{**row, "preset": kind, "node": node}
            for row, kind, node in zip(base_rows(len(OPENING_KINDS), DEFAULT_PRESET, DEFAULT_PER_NODE),
                                       OPENING_KINDS, OPENING_NODES)]


@dataclass(frozen=True, slots=True)
class ClusterInputs:
    """The cluster as the user entered it; ui.cluster_table.cluster_from_rows builds the Cluster."""

    rows: list[dict[str, Any]]
    intra_node_gbs: float
    inter_node_gbs: float
    preset: str
    devices_per_node: int

    def cluster(self, precision: str, n: int | None = None) -> Cluster:
        """The Cluster from the table, or (for the device-count sweep) the table resized to n devices."""
        rows = self.rows if n is None else rows_for_count(self.rows, n, self.devices_per_node)
        return cluster_from_rows(rows, intra_node_gbs=self.intra_node_gbs, inter_node_gbs=self.inter_node_gbs,
                                 precision=precision)


def device_table_key(n: int, preset: str, devices_per_node: int) -> str:
    """The data_editor key: a new "N x preset" starts a fresh table (edits to the old one are dropped);
    a new devices-per-node starts from the edited table with its nodes renumbered (table_base)."""
    return f"devices-{n}-{preset}-{devices_per_node}"


def renumbered(rows: list[dict[str, Any]], old_per_node: int, new_per_node: int) -> list[dict[str, Any]]:
    """The rows with the default node numbering redone for new_per_node; a node the user typed is kept."""
    return [{**row, "node": i // new_per_node if row.get("node") == i // old_per_node else row.get("node")}
            for i, row in enumerate(rows)]


def table_base(n: int, preset: str, per_node: int) -> list[dict[str, Any]]:
    """The rows the editor starts from. The editor's identity includes its data, so a refill would drop
    the user's edits: when only devices per node changed, start from the edited table, renumbered.
    The base is kept per editor key, so it stays the same while the user edits."""
    key = device_table_key(n, preset, per_node)
    held = st.session_state.get("kept:device_table_base")
    if held is not None and held[0] == key:
        return held[1]
    last = st.session_state.get("kept:device_rows")
    opening = key == device_table_key(DEFAULT_DEVICES, DEFAULT_PRESET, DEFAULT_PER_NODE)
    if last is not None and last[:2] == (n, preset) and last[2] != per_node:
        base = renumbered(last[3], last[2], per_node)
    elif opening and not st.session_state.get(LEFT_OPENING):
        base = opening_rows()  # until the user refills the table, which then means what it says
    else:
        base = base_rows(n, preset, per_node)
    if not opening:
        st.session_state[LEFT_OPENING] = True
    st.session_state["kept:device_table_base"] = (key, base)
    return base


def table_summary(rows: list[dict[str, Any]]) -> str:
    """What the table holds now, edits included: "2 × A100-80GB + 2 × L4 on 2 nodes"."""
    counts: dict[str, int] = {}
    for row in rows:
        kind = str(row.get("preset") or "custom")
        counts[kind] = counts.get(kind, 0) + 1
    nodes = len({row.get("node") for row in rows})
    kinds = " + ".join(f"{c} × {k}" for k, c in counts.items()) or "no devices"
    return f"{kinds} on {nodes} node{'s' if nodes != 1 else ''}"


def device_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The table with typed columns (blank numbers as NaN) so the editor shows number cells."""
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in ("memory_gib", "tflops", "speed"):
        frame[col] = frame[col].astype("float64")
    frame["node"] = frame["node"].astype("int64")
    return frame


def cluster_section() -> ClusterInputs:
    quick = st.columns(4)
    n = int(quick[0].number_input("Devices", min_value=1, max_value=512, value=DEFAULT_DEVICES, step=1,
                                  key="n_devices", help="Pipeline stages run on these devices, in table order."))
    presets = list(GPU_PRESETS)
    preset = quick[1].selectbox("GPU preset", presets, index=presets.index(DEFAULT_PRESET), key="preset")
    per_node = int(quick[2].number_input("Devices per node", min_value=1, max_value=64, value=DEFAULT_PER_NODE,
                                         step=1, key="devices_per_node"))
    caption = quick[3].empty()  # filled after the table, so it says what the edited table holds
    grouped = n > GROUP_BY_NODE_ABOVE
    if grouped:  # 64 rows are hard to read: show the nodes, keep the single rows one click away
        nodes_box = st.empty()
        editor_box = st.expander(f"Edit single devices ({n} rows)", expanded=False)
    else:
        editor_box = st.container()
    rows = editor_box.data_editor(
        device_frame(table_base(n, preset, per_node)),
        key=device_table_key(n, preset, per_node),
        num_rows="dynamic",
        placeholder="preset",
        width="stretch",
        column_config={
            "name": st.column_config.TextColumn("Name", required=True),
            "preset": st.column_config.SelectboxColumn("Preset", options=list(PRESET_CHOICES), required=True,
                                                       help="A GPU preset, or custom (give memory and speed)"),
            "memory_gib": st.column_config.NumberColumn("Memory limit GiB", min_value=0.01,
                                                        help="Blank: the preset's full memory"),
            "tflops": st.column_config.NumberColumn("Peak TFLOP/s", min_value=0.001,
                                                    help="Blank: the preset's peak in the training precision"),
            "speed": st.column_config.NumberColumn("Relative speed", min_value=0.001,
                                                   help="Overrides TFLOP/s: 1.0 = the profile's reference device"),
            "node": st.column_config.NumberColumn("Node", min_value=0, step=1, format="%d"),
        },
    )
    records = rows.to_dict("records")
    st.session_state["kept:device_rows"] = (n, preset, per_node, records)
    if grouped:
        nodes_box.dataframe(node_summary_rows(records), hide_index=True, key="node_summary")
    opening = " It opens on a mixed cluster, where the cut matters." if not st.session_state.get(LEFT_OPENING) else ""
    caption.caption(f"The table below holds **{table_summary(records)}**. Edit any row to mix GPUs; changing "
                    f"the device count or the preset refills it, devices per node renumbers the nodes.{opening}")
    links = st.columns(2)
    intra = links[0].number_input("Link within a node, GB/s", min_value=0.1, max_value=10000.0,
                                  value=float(get_preset(preset).intra_node_bw_gbs), key=f"intra_gbs_{preset}",
                                  help="Per direction, e.g. NVLink; the preset's figure by default")
    inter = links[1].number_input("Link between nodes, GB/s", min_value=0.01, max_value=10000.0,
                                  value=INTER_NODE_DEFAULT_GBS, key="inter_gbs",
                                  help="Per direction per GPU, e.g. 25 GB/s = one 200 Gb/s NIC")
    return ClusterInputs(rows=rows.to_dict("records"), intra_node_gbs=float(intra), inter_node_gbs=float(inter),
                         preset=preset, devices_per_node=per_node)
