"""`pipeplan models`: the sample model zoo with sizes and parameter counts."""

from __future__ import annotations

import argparse
import json

from core.units import human_count


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("models", help="list the sample models, their sizes and parameter counts")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def model_rows() -> list[dict]:
    """One row per (model, size); shared with the app's model list."""
    import sample_models

    rows = []
    for name, entry in sample_models.REGISTRY.items():
        for size in entry.sizes:
            rows.append({"model": name, "size": size, "params": entry.documented_params[size],
                         "spec": f"sample:{name}:{size}", "description": entry.description})
    return rows


def run(args: argparse.Namespace) -> int:
    rows = model_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'MODEL':<8} {'SIZE':<12} {'PARAMS':>9}  {'SPEC':<24} DESCRIPTION")
    for r in rows:
        print(f"{r['model']:<8} {r['size']:<12} {human_count(r['params']):>9}  {r['spec']:<24} {r['description']}")
    return 0
