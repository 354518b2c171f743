"""Export a Plan as a runnable torch.distributed.pipelining training job.

    from planner.export import export_plan, export_zip_bytes
    export_plan(plan, "job/")            # train.py, pipeline_runtime.py, launch.sh, slurm.sbatch, plan.json,
                                         # README.md, model/
    data = export_zip_bytes(plan)         # the same files as a zip (fixed timestamps: reproducible bytes)

See docs/export.md for how the generated train.py splits the model and how to run it.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from planner.contracts.plan import Plan
from planner.export.job import render_job

__all__ = ["export_plan", "export_zip_bytes", "render_job"]

EXECUTABLE = ("train.py", "launch.sh")
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)
"""The zip format's earliest date: fixed so the same plan always gives the same bytes."""


def export_plan(plan: Plan, out_dir: str | Path, *, model_source: str | None = None) -> list[Path]:
    """Write the job for `plan` into out_dir (created if needed); returns the paths written.
    `model_source` overrides plan.model.source (e.g. for a plan made from a profile JSON)."""
    files = render_job(plan, model_source=model_source)
    out = Path(out_dir)
    written = []
    for rel, text in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if rel in EXECUTABLE:
            path.chmod(0o755)
        written.append(path)
    return written


def export_zip_bytes(plan: Plan, *, model_source: str | None = None) -> bytes:
    """The job as a zip archive; byte-identical for the same plan (fixed timestamps and order)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel, text in render_job(plan, model_source=model_source).items():
            info = zipfile.ZipInfo(rel, date_time=ZIP_TIMESTAMP)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o100755 if rel in EXECUTABLE else 0o100644) << 16
            zf.writestr(info, text.encode("utf-8"))
    return buf.getvalue()
