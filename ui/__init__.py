"""View helpers for app.py: widget wiring and small formatting helpers.

Nothing here plans or computes costs: every number shown comes from a
profiler/ or planner/ function. This package may import streamlit; the
library packages (profiler/, planner/, sample_models/) never do.
"""
