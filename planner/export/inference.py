"""Export an InferencePlan as a forward-only torchrun job (issue 20).

The job folder holds: infer.py (the loop), inference_runtime.py (its helpers), the training export's
pipeline_runtime.py (tracing, splitting, materialising and safetensors loading, reused as is) and
model/ (the model's code), inference.json (the plan). The model files and the runtime come from the
training export's render_job, run on a carrier training Plan with the same stages (GPipe, forward
never used), so the split is exactly the training job's.

    pipeplan infer sample:gpt:tiny --devices 2 --memory 1GB -o infer.json --export job/
    torchrun --nproc-per-node 2 job/infer.py --requests 64 --out outputs.safetensors
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from core.errors import PipeplanError
from planner.contracts.cluster import Cluster, Device
from planner.contracts.config import TrainConfig
from planner.contracts.plan import SolverInfo
from planner.costmodel.cost import build_tables
from planner.costmodel.inference import InferencePlan
from planner.export.model_files import runtime_text, template_text

INFER_FILES = ("infer.py", "inference_runtime.py", "live_bytes.py")


def carrier_plan(profile, iplan: InferencePlan):
    """A training Plan with the inference plan's stages (one per device), for render_job's model files."""
    from planner.solvers.evaluate import make_plan
    from planner.solvers.search import cuts_to_stage_of

    S = len(iplan.stages)
    tables = build_tables(profile)
    big = Cluster(devices=[Device(name=f"d{i}", memory_bytes=1 << 60, speed=1.0) for i in range(S)])
    config = TrainConfig(schedule="GPipe", num_microbatches=S, micro_batch_size=profile.model.micro_batch_size)
    stage_of = cuts_to_stage_of([0, *iplan.cuts, tables.num_nodes])
    return make_plan(profile, tables, big, config, stage_of, list(range(S)), [False] * S,
                     SolverInfo(backend="inference", status="evaluated"), timeline=False)


def render_inference_job(profile, iplan: InferencePlan, *, model_source: str | None = None,
                         weights: str | None = None) -> dict[str, str]:
    """relative path -> file text of the inference job folder."""
    from planner.export.job import render_job

    if not iplan.fits:
        raise PipeplanError("this inference plan does not fit in memory: only a fitting plan can be exported")
    if iplan.config.weight_dtype == "int8":
        raise PipeplanError("int8 weights are planned (1 byte/param) but not exported: the job has no int8 "
                            "weight-only kernels; export with --weights fp32 or bf16")
    if iplan.config.activation_dtype != iplan.config.weight_dtype:
        raise PipeplanError(f"this plan serves {iplan.config.weight_dtype} weights with {iplan.config.activation_dtype} "
                            "activations, but the job runs activations in the weights' dtype; plan again with "
                            f"--activations {iplan.config.weight_dtype} to export")
    files = render_job(carrier_plan(profile, iplan), model_source=model_source)
    keep = {k: v for k, v in files.items() if k.startswith("model/") or k.endswith("_runtime.py")}
    settings = {"stages": [s.nodes for s in iplan.stages], "micro_batch_size": profile.model.micro_batch_size,
                "weight_dtype": iplan.config.weight_dtype, "activation_dtype": iplan.config.activation_dtype,
                "predicted": {"period_ms": iplan.period_ms, "latency_ms": iplan.latency_ms,
                              "throughput_sps": iplan.throughput_sps,
                              "live_bytes": [round(s.memory.live / iplan.config.in_flight) for s in iplan.stages],
                              "activation_bytes": [s.memory.activation_peak(iplan.config.in_flight)
                                                   for s in iplan.stages]},
                "weights": weights}
    keep["infer.py"] = template_text("infer.py").replace("@SETTINGS@", json.dumps(settings, indent=1))
    keep["inference_runtime.py"] = runtime_text("inference_runtime.py")
    keep["live_bytes.py"] = resources.files("core").joinpath("live_bytes.py").read_text(encoding="utf-8")
    keep["inference.json"] = iplan.to_json(indent=2) + "\n"
    return dict(sorted(keep.items()))


def export_inference(profile, iplan: InferencePlan, out_dir: str | Path, **kw) -> list[Path]:
    from core.files import replace_folder

    files = render_inference_job(profile, iplan, **kw)
    return replace_folder(out_dir, files, "the export folder", executable=("infer.py",),
                          is_previous=lambda folder: None)
