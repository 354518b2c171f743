"""Render an exported training job: every file of the folder, as text, from a Plan.

One function decides the contents (`render_job`); writing a folder and building
the zip both use it, so `pipeplan export` and the app's download are identical.
"""

from __future__ import annotations

import json
import shlex

from core.errors import PipeplanError
from planner.contracts.plan import Plan
from planner.export.model_files import model_files, model_readme, runtime_text, template_text
from planner.export.runtime import RUNTIME_FILES
from planner.pipeline.schedules import SCHEDULE_SPECS, check_schedule, schedule_spec, stage_to_device

EXPORTABLE_SCHEDULES = tuple(name for name, spec in SCHEDULE_SPECS.items() if spec.torch_class)
"""Schedules train.py runs with torch's built-in schedule classes (ScheduleSpec.torch_class). ZBH1 is
torch's ScheduleInterleavedZeroBubble with one stage per rank; its per-rank order equals
planner.pipeline.schedules.schedule_actions("ZBH1", ...) (tests/test_export_zbh1.py checks this)."""
PRECISION_NOTES = {
    "fp32": "fp32",
    "bf16_mixed": "`bf16_mixed`: fp32 weights, gradients and optimizer; each stage's forward under "
                  "`torch.autocast(bfloat16)`; tensors cross stages in fp32",
}


def pipeline_ranks(plan: Plan) -> list[int]:
    """Pipeline rank of every stage: the placement the torch schedule class needs (loop, or V
    for ZBV), checked against the plan's own stage -> device assignment."""
    stages = sorted(plan.stages, key=lambda s: s.index)
    if [s.index for s in stages] != list(range(len(stages))):
        raise PipeplanError(f"plan stage indices {[s.index for s in stages]} are not 0..{len(stages) - 1}")
    devices = sorted({s.device for s in stages})
    cfg = plan.config
    ranks = stage_to_device(len(devices), cfg.schedule, cfg.virtual_stages)
    if len(ranks) != len(stages):
        raise PipeplanError(f"plan has {len(stages)} stages on {len(devices)} devices, but {cfg.schedule} with "
                            f"{cfg.virtual_stages} stage(s) per device needs {len(ranks)}; re-plan")
    rank_device: dict[int, int] = {}
    for s, r in zip(stages, ranks):
        if rank_device.setdefault(r, s.device) != s.device:
            raise PipeplanError(f"plan puts stage {s.index} on device {s.device}, but {cfg.schedule} needs it on the "
                                f"device of stage {ranks.index(r)} (device {rank_device[r]}); re-plan")
    return ranks


def job_settings(plan: Plan, source: str) -> dict:
    """What train.py needs from the plan, in train.py's own terms."""
    if not plan.feasible or not plan.stages:
        raise PipeplanError("this plan is infeasible (no stages): only a feasible plan can be exported")
    cfg = plan.config
    if cfg.schedule not in EXPORTABLE_SCHEDULES:
        raise PipeplanError(f"export runs {', '.join(EXPORTABLE_SCHEDULES)}; {cfg.schedule} has no torch schedule "
                            "class here: re-plan with one of those")
    if cfg.num_microbatches is None:
        raise PipeplanError("plan config has no num_microbatches; export a plan returned by the solver")
    ranks = pipeline_ranks(plan)
    pp = max(ranks) + 1
    # torch raises only after the process group exists; say it here, clearly
    spec = schedule_spec(cfg.schedule)
    check_schedule(spec.name, pp, cfg.num_microbatches, cfg.virtual_stages)
    why = spec.export_rule(pp, cfg.num_microbatches, cfg.virtual_stages) if spec.export_rule else None
    if why is not None:
        raise PipeplanError(why)
    return {
        "model_source": source,
        "schedule": cfg.schedule,
        "schedule_class": spec.torch_class,
        "num_microbatches": cfg.num_microbatches,
        "micro_batch_size": cfg.micro_batch_size,
        "data_parallel": cfg.data_parallel,
        "optimizer": cfg.optimizer,
        "precision": cfg.precision,
        "stage_to_rank": ranks,
        "stages": [list(s.node_ids) for s in sorted(plan.stages, key=lambda s: s.index)],
    }


def render_job(plan: Plan, *, model_source: str | None = None) -> dict[str, str]:
    """relative path -> file text for the whole job folder (deterministic)."""
    source = model_source or plan.model.source
    settings = job_settings(plan, source)
    pp = max(settings["stage_to_rank"]) + 1
    world = pp * settings["data_parallel"]
    nodes = sorted({plan.cluster.devices[s.device].node for s in plan.stages}) if plan.cluster.devices else [0]
    per_node = max(1, -(-world // len(nodes)))
    subst = {
        "@SETTINGS@": json.dumps(settings, indent=1),
        "@PP@": str(pp),
        "@DP@": str(settings["data_parallel"]),
        "@WORLD@": str(world),
        "@NODES@": str(len(nodes)),
        "@PER_NODE@": str(per_node),
        "@SCHEDULE@": settings["schedule"],
        "@MODEL@": shlex.quote(source),
        "@MICRO@": str(settings["num_microbatches"]),
        "@MBS@": str(settings["micro_batch_size"]),
        "@STAGES_TABLE@": "\n".join(f"| {i} | {r} | {', '.join(ids)} |" for i, (r, ids) in
                                    enumerate(zip(settings["stage_to_rank"], settings["stages"]))),
        "@PREDICTED@": f"{plan.step_time_ms:.2f} ms" if plan.step_time_ms is not None else "n/a",
        "@MODEL_NOTES@": model_readme(source),
        "@PRECISION@": PRECISION_NOTES.get(settings["precision"], settings["precision"]),
    }
    files: dict[str, str] = {}
    for name in ("train.py", "launch.sh", "slurm.sbatch", "README.md"):
        text = template_text(name)
        for key, value in subst.items():
            text = text.replace(key, value)
        files[name] = text
    for name in RUNTIME_FILES:  # copied as they are: plan-independent, and imported by train.py
        files[name] = runtime_text(name)
    files["plan.json"] = plan.to_json(indent=2) + "\n"
    files.update(model_files(source, plan.model))
    return dict(sorted(files.items()))
