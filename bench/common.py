"""Shared helpers of the benchmark modules: environment record, timing, peak RSS, results I/O.

Every results file carries `env` (machine, CPU count, load, torch version, date) so a number
is never read without knowing where it came from.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(os.environ.get("PIPEPLAN_BENCH_RESULTS") or Path(__file__).parent / "results")
"""Where results go; PIPEPLAN_BENCH_RESULTS overrides it (the smoke test writes to a temporary folder)."""


def environment() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "machine": f"{platform.node()} ({platform.machine()}, {cpu})",
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _proc_status_bytes(key: str) -> int | None:
    """A kB field of /proc/self/status ("VmHWM", "VmRSS") in bytes; None where there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """This process's peak resident set size: VmHWM (reset by exec, unlike ru_maxrss, which Linux
    carries over from the parent across fork + exec), else ru_maxrss (KiB)."""
    peak = _proc_status_bytes("VmHWM")
    return peak if peak is not None else int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def current_rss_bytes() -> int:
    return _proc_status_bytes("VmRSS") or 0


def spread(prefix: str, values: list[float], *, median: bool = False) -> dict[str, float | None]:
    """{prefix_min, prefix_max[, prefix_median]} of values, rounded; None for no values."""
    keys = [("min", min), ("max", max)] + ([("median", statistics.median)] if median else [])
    return {f"{prefix}_{name}": rnd(fn(values)) if values else None for name, fn in keys}


def command_line(run: Callable[[bool], dict], *, description: str | None = None,
                 summary_key: str | None = None) -> None:
    """`python -m bench.bench_NAME [--quick]`: run the benchmark and print its result (or its summary) as JSON."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true")
    result = run(ap.parse_args().quick)
    print(json.dumps(result[summary_key] if summary_key else result, indent=2))


class Timer:
    """with Timer() as t: ...; t.wall, t.cpu (seconds)."""

    def __enter__(self):
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c


def write_result(name: str, data: dict[str, Any], quick: bool) -> Path:
    """bench/results/<name>.json with the environment and mode added."""
    out = _finite({"benchmark": name, "quick": quick, "env": environment(), **data})
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(out, indent=2, allow_nan=False, default=_default) + "\n")
    return path


def _finite(o: Any) -> Any:
    """inf/nan -> None (JSON has neither; e.g. a solver bound that was never found)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def rnd(x: float | None, digits: int = 4) -> float | None:
    if x is None:
        return None
    return float(f"{x:.{digits}g}")
