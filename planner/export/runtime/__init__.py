"""Plan-independent code that every exported job runs, copied verbatim next to train.py.

Decision: these files are ordinary modules of pipeplan (importable and unit-tested here:
tests/test_export_runtime.py) and, unchanged, files of the job folder, where train.py imports them
as siblings (like ./model), so the job still needs only torch. They therefore import nothing but
the standard library and torch, hold no @PLACEHOLDERS@ and read no SETTINGS: everything the plan
decides is passed in by train.py.
"""

RUNTIME_FILES = ("pipeline_runtime.py",)
"""Copied into the job folder as they are (planner.export.job.render_job)."""
