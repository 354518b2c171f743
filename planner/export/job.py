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

EXPORTABLE_SCHEDULES = tuple(name for name, spec in SCHEDULE_SPECS.items() if spec.torch_class and spec.exported)
"""Schedules train.py runs with torch's built-in schedule classes (ScheduleSpec.torch_class). ZBH1 is
torch's ScheduleInterleavedZeroBubble with one stage per rank; its per-rank order equals
planner.pipeline.schedules.schedule_actions("ZBH1", ...) (tests/test_export_zbh1.py checks this)."""
JOB_OPTIMIZERS = ("adamw", "adam", "sgd", "sgd_momentum")
"""Optimizers train.py's make_optimizer builds; any other name is refused at export."""
JOB_PRECISIONS = ("fp32", "bf16_mixed")
"""Precisions train.py applies (fp32, or bf16 autocast with fp32 master weights); others are refused."""
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


def _device_kind(plan: Plan, d: int) -> tuple:
    dev = plan.cluster.devices[d]
    return (*dev.kind(), dev.node)


def check_device_order(plan: Plan, ranks: list[int]) -> None:
    """The job starts pipeline rank r as process r (node r // per-node, GPU r % per-node), i.e. on the
    cluster's device r. A plan that puts rank r's stages on another device (device_order="auto") is
    applied only if the two devices are alike (memory, speed, node): else export refuses."""
    stages = sorted(plan.stages, key=lambda s: s.index)
    group = _group_size(plan, max(ranks) + 1)
    for s, r in zip(stages, ranks):
        first = r * group  # the job's global rank of (pp r, dp 0, tp 0): the mesh layout, tp fastest
        if s.device != first and _device_kind(plan, s.device) != _device_kind(plan, first):
            devs = plan.cluster.devices
            raise PipeplanError(
                f"plan runs stage {s.index} on device {s.device} ({devs[s.device].name}), but the job starts "
                f"pipeline rank {r} on the cluster's device {first} ({devs[first].name}), which differs in memory, speed "
                "or node; export does not reorder devices: list the cluster's devices in the plan's order "
                "and plan again, or plan with device_order fixed")


def _group_size(plan: Plan, pp: int) -> int:
    """Processes per pipeline rank on the plan's cluster: dp x tp for a plan on the whole mesh (a cluster of
    pp x dp x tp devices, planner.costmodel.parallel.to_mesh_plan: stage devices are the first device of each
    pipeline rank's group), else 1 (a plan on the pipeline devices only, e.g. PP x DP plans)."""
    cfg = plan.config
    group = cfg.data_parallel * cfg.tensor_parallel
    return group if group > 1 and len(plan.cluster.devices) >= pp * group else 1


def check_recompute(plan: Plan, spec) -> list[bool]:
    """The per-stage recompute flags train.py applies (activation checkpointing of the whole stage)."""
    flags = [bool(s.recompute) for s in sorted(plan.stages, key=lambda s: s.index)]
    if any(flags) and not spec.supports_recompute:
        on = ", ".join(str(i) for i, f in enumerate(flags) if f)
        raise PipeplanError(
            f"plan recomputes stage(s) {on} under {spec.name}, whose weight-gradient pass is split from the "
            "input-gradient pass: torch's checkpoint then rebuilds the stage's forward once for the input "
            "gradient and again for every weight-gradient group (13 times per micro-batch for a 2-block GPT "
            "stage), not once as the plan assumes; re-plan with recompute off, or with 1F1B, "
            "Interleaved1F1B or GPipe")
    return flags


def _join(base: str, rel: str) -> str:
    return f"{base}.{rel}" if base and rel else base or rel


def tp_plan(plan: Plan, profile) -> dict[str, str]:
    """The TP plan train.py applies: module path (from the model's root) -> "colwise" | "rowwise", read
    from the profile's per-layer facts (ProfileNode.tp_colwise / tp_rowwise, relative to the node's
    module_path) for every layer of the plan. Modules not named replicate."""
    nodes = {n.id: n for n in profile.nodes}
    out: dict[str, str] = {}
    for s in sorted(plan.stages, key=lambda s: s.index):
        for nid in s.node_ids:
            node = nodes.get(nid)
            if node is None:
                raise PipeplanError(f"the plan's layer {nid!r} is not in the profile given for its TP plan; "
                                    "export with the profile the plan was made from")
            for style, rels in (("colwise", node.tp_colwise), ("rowwise", node.tp_rowwise)):
                for rel in rels:
                    path = _join(node.module_path, rel)
                    if out.setdefault(path, style) != style:
                        raise PipeplanError(f"the profile's TP plan makes {path} both colwise and rowwise")
    return out


def _profile_for(plan: Plan, source: str, profile):
    """The profile that holds the plan's per-layer TP facts: the one given, else the model's profile
    rebuilt from its source at the plan's shape (the same facts the planner read)."""
    if profile is not None:
        fp = plan.profile_fingerprint
        if fp and fp != "hand" and profile.fingerprint() != fp:
            raise PipeplanError("the profile given for the TP plan is not the one the plan was made from "
                                f"(fingerprint {profile.fingerprint()[:12]} vs the plan's {fp[:12]}); export "
                                "with the plan's own profile")
        return profile
    from profiler import load_profile

    try:
        return load_profile(source, batch_size=plan.model.micro_batch_size,
                            seq_len=plan.model.seq_len or plan.model.image_size)
    except PipeplanError as exc:
        raise PipeplanError(f"a tensor-parallel plan is exported with its layers' TP plan, from the model's "
                            f"profile; rebuilding it from {source} failed ({exc}): export with the profile") from None


HYBRID_SCHEDULES = ("GPipe", "1F1B", "Interleaved1F1B", "ZBH1")
"""Schedules whose exported jobs were checked with tensor parallelism and FSDP against --single-process
(tests/test_export_hybrid.py; recompute and bf16_mixed too). ZBV fails under TP in torch 2.13 ("Can't detach
views in-place" in its split backward); the others are not checked here."""


def check_hybrid(plan: Plan, spec) -> None:
    """Refuse the hybrid combinations the job does not run (each with its reason)."""
    cfg = plan.config
    tp, dp, sharding = cfg.tensor_parallel, cfg.data_parallel, cfg.dp_sharding
    if sharding not in ("ddp", "zero1", "fsdp"):
        raise PipeplanError(f"the job runs dp_sharding ddp, zero1 and fsdp; not {sharding!r}")
    what = " and ".join(x for x in (f"tensor parallelism (tp {tp})" if tp > 1 else "",
                                    "FSDP" if sharding == "fsdp" and dp > 1 else "") if x)
    if what and spec.name not in HYBRID_SCHEDULES:
        raise PipeplanError(f"the job runs {what} with the {', '.join(HYBRID_SCHEDULES)} schedules only (the "
                            f"ones checked against --single-process); {spec.name} is not one of them: re-plan with "
                            "one of those, or with tp 1 and ddp/zero1")


def job_settings(plan: Plan, source: str, profile=None) -> dict:
    """What train.py needs from the plan, in train.py's own terms. With tensor_parallel > 1 the TP plan
    comes from `profile` (the plan's profile; rebuilt from the model source when not given)."""
    if not plan.feasible or not plan.stages:
        raise PipeplanError("this plan is infeasible (no stages): only a feasible plan can be exported")
    cfg = plan.config
    if cfg.schedule not in EXPORTABLE_SCHEDULES:
        raise PipeplanError(f"export runs {', '.join(EXPORTABLE_SCHEDULES)}; {cfg.schedule} has no torch schedule "
                            "class here: re-plan with one of those")
    if cfg.num_microbatches is None:
        raise PipeplanError("plan config has no num_microbatches; export a plan returned by the solver")
    if cfg.micro_batch_size != plan.model.micro_batch_size:
        raise PipeplanError(f"plan config has micro_batch_size {cfg.micro_batch_size} but its model was profiled "
                            f"at {plan.model.micro_batch_size}; the job traces and feeds micro-batches of the "
                            "profiled shape: re-profile at the micro-batch size you want and plan again")
    if cfg.optimizer not in JOB_OPTIMIZERS:
        raise PipeplanError(f"the exported job runs {', '.join(JOB_OPTIMIZERS)}; the plan's optimizer "
                            f"{cfg.optimizer!r} is not one of them")
    if cfg.precision not in JOB_PRECISIONS:
        raise PipeplanError(f"the exported job runs {', '.join(JOB_PRECISIONS)}; the plan's precision "
                            f"{cfg.precision!r} is not one of them")
    ranks = pipeline_ranks(plan)
    check_device_order(plan, ranks)
    pp = max(ranks) + 1
    # torch raises only after the process group exists; say it here, clearly
    spec = schedule_spec(cfg.schedule)
    check_schedule(spec.name, pp, cfg.num_microbatches, cfg.virtual_stages)
    why = spec.export_rule(pp, cfg.num_microbatches, cfg.virtual_stages) if spec.export_rule else None
    if why is not None:
        raise PipeplanError(why)
    recompute = check_recompute(plan, spec)
    check_hybrid(plan, spec)
    hybrid = {"tensor_parallel": cfg.tensor_parallel, "dp_sharding": cfg.dp_sharding}
    if cfg.tensor_parallel > 1:
        hybrid["tp_plan"] = tp_plan(plan, _profile_for(plan, source, profile))
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
        "recompute": recompute,
        **hybrid,
    }


WEIGHTS_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
"""Pickle checkpoints: refused by name at export (the job refuses them too, pipeline_runtime.pickle_refusal)."""


def check_weights_path(weights: str) -> str:
    """The --weights path as the job will get it. Only the text is checked (it names a file on the
    training machine, which pipeplan never reads): not empty, one line, and no pickle checkpoint."""
    text = weights.strip()
    if not text or any(ord(c) < 32 for c in text):
        raise PipeplanError("--weights must be one line naming a safetensors file or a Hugging Face checkpoint "
                            "folder on the machine that runs the job")
    if text.lower().endswith(WEIGHTS_PICKLE_SUFFIXES):
        from planner.export.runtime.pipeline_runtime import pickle_refusal

        raise PipeplanError(pickle_refusal(text))
    return text


def render_job(plan: Plan, *, model_source: str | None = None, source_label: str | None = None,
               weights: str | None = None, profile=None) -> dict[str, str]:
    """relative path -> file text for the whole job folder (deterministic).

    model_source is where the model comes from (read here: an HF config's path); source_label is how
    the job names it (the app passes the uploaded file's own name, not the server's temporary path).
    weights: pretrained safetensors for the job to start from (a path on the training machine, never
    read here): SETTINGS["weights"], the default of train.py --weights, and launch.sh's command.
    profile: the plan's Profile, whose per-layer TP facts the job applies when tensor_parallel > 1
    (rebuilt from the model source when not given)."""
    source = model_source or plan.model.source
    label = source_label or source
    settings = job_settings(plan, source, profile)
    settings["model_source"] = label
    if weights:
        if settings["tensor_parallel"] > 1 or (settings["dp_sharding"] == "fsdp" and settings["data_parallel"] > 1):
            raise PipeplanError("--weights is not implemented for jobs with tensor parallelism or FSDP (each rank "
                                "would read a slice of every tensor); export without --weights, or plan with tp 1 "
                                "and ddp or zero1")
        settings["weights"] = check_weights_path(weights)
    pp = max(settings["stage_to_rank"]) + 1
    world = pp * settings["data_parallel"] * settings["tensor_parallel"]
    devices = plan.cluster.devices
    if _group_size(plan, pp) > 1:  # a plan on the whole mesh: every process has its device
        nodes = sorted({d.node for d in devices[:world]})
    else:
        nodes = sorted({devices[s.device].node for s in plan.stages}) if devices else [0]
    per_node = max(1, -(-world // len(nodes)))
    subst = {
        "@SETTINGS@": json.dumps(settings, indent=1),
        "@PP@": str(pp),
        "@DP@": str(settings["data_parallel"]),
        "@TP@": str(settings["tensor_parallel"]),
        "@DP_SHARDING@": settings["dp_sharding"],
        "@WORLD@": str(world),
        "@NODES@": str(len(nodes)),
        "@PER_NODE@": str(per_node),
        "@SCHEDULE@": settings["schedule"],
        "@MODEL@": shlex.quote(label),
        "@MICRO@": str(settings["num_microbatches"]),
        "@MBS@": str(settings["micro_batch_size"]),
        "@STAGES_TABLE@": "\n".join(f"| {i} | {r} | {', '.join(ids)} | {'on' if rc else 'off'} |"
                                    for i, (r, ids, rc) in enumerate(zip(settings["stage_to_rank"],
                                                                         settings["stages"], settings["recompute"]))),
        "@PREDICTED@": f"{plan.step_time_ms:.2f} ms" if plan.step_time_ms is not None else "n/a",
        "@MODEL_NOTES@": model_readme(source),
        "@PRECISION@": PRECISION_NOTES.get(settings["precision"], settings["precision"]),
        "@WEIGHTS_ARGS@": f" --weights {shlex.quote(settings['weights'])}" if "weights" in settings else "",
        "@WEIGHTS@": (f"This job starts from the weights at `{settings['weights']}` (train.py's `--weights` default)."
                      if "weights" in settings else
                      "This job starts from pipeplan's random initialisation; `--weights` loads pretrained ones."),
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
