"""The `pipeplan` command lines that reproduce what the app shows (no streamlit).

tests/test_app_units.py parses every line with the real CLI parser, so a flag
renamed in planner/cli fails a test instead of misleading a user.
"""

from __future__ import annotations

import shlex

from planner.contracts.plan import Plan
from planner.pipeline.schedules import schedule_spec


def cli_commands(plan: Plan, cli_source: str, cli_flags: str, export_source: str | None = None,
                 weights: str | None = None) -> str:
    """profile -> plan -> export, with the files the app offers for download (cluster.json)."""
    c = plan.config
    lines = []
    if cli_source.startswith("profile:"):
        model = cli_source
    else:
        lines.append(f"pipeplan profile {shlex.quote(cli_source)} {cli_flags} -o profile.json".replace("  ", " "))
        model = "profile:profile.json"
    plan_args = [f"pipeplan plan {shlex.quote(model)} --cluster cluster.json", f"--schedule {c.schedule}"]
    if c.tensor_parallel > 1 or c.data_parallel > 1:  # the search with these degrees fixed: same plan
        plan_args += [f"--tp {c.tensor_parallel}", f"--dp {c.data_parallel}", f"--dp-sharding {c.dp_sharding}",
                      f"--global-batch {c.num_microbatches * c.micro_batch_size * c.data_parallel}"]
    else:
        plan_args.append(f"--microbatches {c.num_microbatches}")
    # explicit: `pipeplan plan` otherwise plans at micro-batch 1, rescaling the profile
    plan_args.append(f"--batch-size {c.micro_batch_size}")
    if schedule_spec(c.schedule).chunks_per_device is None:  # the schedule takes a chunk count
        plan_args.append(f"--virtual-stages {c.virtual_stages}")
    plan_args += [f"--optimizer {c.optimizer}", f"--precision {c.precision}", f"--recompute {c.recompute}",
                  f"--reserve {f'{c.reserve_bytes}B' if c.reserve_bytes else 0}", f"--time-limit {c.time_limit_s:g}", "-o plan.json"]
    lines.append(" ".join(plan_args))
    export = "pipeplan export plan.json -o job/"
    if export_source and export_source != plan.model.source:
        export += f" --model-source {shlex.quote(export_source)}"
    if weights:
        export += f" --weights {shlex.quote(weights)}"
    lines.append(export)
    return "\n".join(lines)
