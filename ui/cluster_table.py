"""The device table of the Cluster section <-> a planner Cluster.

Plain functions (no streamlit): rows are dicts as st.data_editor returns them
(one per device, in pipeline order). A blank memory or TFLOP/s cell means "the
preset's value", so changing a row's preset never leaves a stale number behind.
"""

from __future__ import annotations

import math
from typing import Any

from core.errors import PipeplanError
from planner.contracts.cluster import INTER_NODE_LATENCY_S, INTRA_NODE_LATENCY_S, Cluster, Device, Link
from profiler.gpus import GPU_PRESETS, GiB, get_preset

CUSTOM = "custom"
PRESET_CHOICES = (*GPU_PRESETS, CUSTOM)
COLUMNS = ("name", "preset", "memory_gib", "tflops", "speed", "node")
INTER_NODE_DEFAULT_GBS = 25.0
"""Default inter-node bandwidth (GB/s per direction): one 200 Gb/s InfiniBand/RoCE NIC per GPU."""


def base_rows(n: int, preset: str, devices_per_node: int) -> list[dict[str, Any]]:
    """n devices of one preset, devices_per_node to a host: what "N x preset" fills in."""
    if not isinstance(n, int) or n < 1:
        raise PipeplanError(f"device count must be at least 1, got {n!r}")
    if devices_per_node < 1:
        raise PipeplanError(f"devices per node must be at least 1, got {devices_per_node!r}")
    return [{"name": f"gpu{i}", "preset": preset, "memory_gib": None, "tflops": None, "speed": None,
             "node": i // devices_per_node} for i in range(n)]


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str)
                                                                               and not value.strip())


def cluster_from_rows(rows: list[dict[str, Any]], *, intra_node_gbs: float, inter_node_gbs: float,
                      precision: str) -> Cluster:
    """A Cluster from table rows; PipeplanError naming the row and column on a bad cell."""
    if not rows:
        raise PipeplanError("the device table is empty: add at least one device")
    devices = []
    for i, row in enumerate(rows):
        if all(_blank(row.get(k)) for k in ("name", "preset", "memory_gib")):
            raise PipeplanError(f"device row {i} is empty: fill it in or delete it")
        name = row.get("name")
        name = f"gpu{i}" if _blank(name) else str(name)
        preset = row.get("preset")
        preset = CUSTOM if _blank(preset) else str(preset)
        memory_gib, tflops, speed, node = (row.get(k) for k in ("memory_gib", "tflops", "speed", "node"))
        where = f"device row {i} ({name})"
        try:
            memory_bytes = None if _blank(memory_gib) else int(float(memory_gib) * GiB)
            tflops = None if _blank(tflops) else float(tflops)
            speed = None if _blank(speed) else float(speed)
            node = 0 if _blank(node) else int(node)
        except (TypeError, ValueError):
            raise PipeplanError(f"{where}: memory, TFLOP/s, speed and node must be numbers") from None
        if memory_bytes is not None and memory_bytes <= 0:
            raise PipeplanError(f"{where}: memory limit must be positive, got {memory_gib} GiB")
        if preset == CUSTOM:
            if memory_bytes is None:
                raise PipeplanError(f"{where}: a custom device needs a memory limit (GiB)")
            devices.append(Device(name=name, memory_bytes=memory_bytes, tflops=tflops, speed=speed, node=node))
        else:
            get_preset(preset)  # clear error for an unknown preset
            d = Device.from_preset(preset, name=name, node=node, memory_bytes=memory_bytes, precision=precision)
            if tflops is not None:
                d.tflops = tflops
            d.speed = speed
            d.__post_init__()  # re-validate the overridden fields
            devices.append(d)
    if not (intra_node_gbs > 0 and inter_node_gbs > 0):
        raise PipeplanError("link bandwidths must be positive (GB/s)")
    return Cluster(devices=devices,
                   intra_node=Link(bandwidth_bytes_per_s=intra_node_gbs * 1e9, latency_s=INTRA_NODE_LATENCY_S),
                   inter_node=Link(bandwidth_bytes_per_s=inter_node_gbs * 1e9, latency_s=INTER_NODE_LATENCY_S))


def device_summary_rows(cluster: Cluster) -> list[dict[str, Any]]:
    """What will be planned, resolved from presets: one row per device."""
    return [{"device": i, "name": d.name, "preset": d.preset or CUSTOM, "memory GiB": round(d.memory_bytes / GiB, 2),
             "TFLOP/s": d.tflops, "speed": d.speed, "node": d.node} for i, d in enumerate(cluster.devices)]


def rows_for_count(rows: list[dict[str, Any]], n: int, devices_per_node: int) -> list[dict[str, Any]]:
    """The table resized to n devices for a sweep: the first n rows, or the rows plus copies of the
    last one (next names, filling nodes devices_per_node at a time)."""
    if n < 1 or not rows:
        raise PipeplanError("a sweep needs at least one device")
    out = [dict(r) for r in rows[:n]]
    while len(out) < n:
        i = len(out)
        out.append({**rows[-1], "name": f"gpu{i}", "node": i // devices_per_node})
    return out


def node_summary_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The table grouped by node, in node order: one row per host with its device count, its GPU kinds
    and its table rows ("8 × H100-80GB", rows 0–7), so a 64-device cluster reads as 8 lines."""
    nodes: dict[Any, dict[str, Any]] = {}
    for i, row in enumerate(rows):
        node = 0 if _blank(row.get("node")) else row.get("node")
        group = nodes.setdefault(node, {"kinds": {}, "rows": []})
        kind = CUSTOM if _blank(row.get("preset")) else str(row.get("preset"))
        group["kinds"][kind] = group["kinds"].get(kind, 0) + 1
        group["rows"].append(i)
    out = []
    for node in sorted(nodes, key=lambda n: (not isinstance(n, (int, float)), n if isinstance(n, (int, float)) else 0)):
        group = nodes[node]
        idx = group["rows"]
        span = f"{idx[0]}–{idx[-1]}" if idx == list(range(idx[0], idx[-1] + 1)) and len(idx) > 1 else \
            ", ".join(map(str, idx))
        out.append({"node": node, "devices": len(idx),
                    "GPUs": " + ".join(f"{c} × {k}" for k, c in group["kinds"].items()), "table rows": span})
    return out
