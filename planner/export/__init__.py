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
from planner.export.runtime import RUNTIME_FILES

__all__ = ["export_plan", "export_zip_bytes", "render_job"]

EXECUTABLE = ("train.py", "launch.sh")
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)
"""The zip format's earliest date: fixed so the same plan always gives the same bytes."""


def export_plan(plan: Plan, out_dir: str | Path, *, model_source: str | None = None,
                weights: str | None = None, profile=None) -> list[Path]:
    """Write the job for `plan` into out_dir (created if needed); returns the paths written.
    `model_source` overrides plan.model.source (e.g. for a plan made from a profile JSON); `weights`
    is the safetensors checkpoint the job starts from (a path on the training machine, not read here)."""
    return write_job_folder(out_dir, render_job(plan, model_source=model_source, weights=weights, profile=profile))


# -- the folder write (core.files.replace_folder): all or nothing --------------------------------
JOB_TOP_LEVEL = frozenset({"train.py", "launch.sh", "slurm.sbatch", "README.md", "plan.json", "model",
                           *RUNTIME_FILES})
"""What an export writes at the top of its folder (render_job); with __pycache__, what a previous
export may hold and still be replaced."""


def write_job_folder(out_dir: str | Path, files: dict[str, str]) -> list[Path]:
    """out_dir becomes a folder holding exactly `files`: built as a temporary sibling and swapped in,
    so a failed write (disk full, permission denied, ...) leaves out_dir as it was and a re-export
    never mixes old and new files. An existing out_dir must be empty or a previous export that holds
    nothing else (checkpoints or logs written into it are not deleted: the export is refused)."""
    from core.files import replace_folder

    own = {rel.split("/", 1)[0] for rel in files}
    return replace_folder(out_dir, files, "the export folder", executable=EXECUTABLE,
                          is_previous=lambda folder: previous_export_problem(folder, own))


def check_export_folder(out_dir: str | Path) -> None:
    """PipeplanError now if write_job_folder(out_dir, ...) would certainly fail (disk full aside)."""
    from core.files import check_folder_writable

    check_folder_writable(out_dir, "the export folder", is_previous=previous_export_problem)


def previous_export_problem(folder: Path, own: set[str] | frozenset[str] = frozenset()) -> str | None:
    """None if `folder` is a previous pipeplan export (a plan.json of pipeplan's and a train.py) holding
    nothing but what an export writes (JOB_TOP_LEVEL, `own`, __pycache__); else why it may not be replaced."""
    if not ((folder / "train.py").is_file() and _is_plan_file(folder / "plan.json")):
        return ("it exists and is not a pipeplan export (no train.py and plan.json of pipeplan's); "
                "choose a new folder or empty this one")
    allowed = JOB_TOP_LEVEL | set(own) | {"__pycache__"}
    extra = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if p.name not in allowed)
    if extra:
        shown = ", ".join(extra[:3]) + (", ..." if len(extra) > 3 else "")
        return (f"it is a previous export but also holds files the export did not write ({shown}); "
                "move them out (checkpoints?) or choose another -o")
    return None


def _is_plan_file(path: Path) -> bool:
    from core.errors import PipeplanError
    from core.jsonio import load_json_text, read_json_file

    try:
        data = load_json_text(read_json_file(path, "plan"), "plan")
    except PipeplanError:
        return False
    return isinstance(data, dict) and isinstance(data.get("schema"), str) and data["schema"].startswith("pipeplan.plan/")


def export_zip_bytes(plan: Plan, *, model_source: str | None = None, source_label: str | None = None,
                     weights: str | None = None, profile=None) -> bytes:
    """The job as a zip archive; byte-identical for the same plan (fixed timestamps and order)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel, text in render_job(plan, model_source=model_source, source_label=source_label,
                                    weights=weights, profile=profile).items():
            info = zipfile.ZipInfo(rel, date_time=ZIP_TIMESTAMP)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o100755 if rel in EXECUTABLE else 0o100644) << 16
            zf.writestr(info, text.encode("utf-8"))
    return buf.getvalue()
