"""`pipeplan export plan.json -o DIR`: write a runnable pipeline-parallel training job."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.errors import PipeplanError
from core.files import check_writable, write_file_atomic
from core.jsonio import read_json_file


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="write a torchrun training job (train.py, launch.sh, slurm.sbatch...) for a plan",
                       description="Write train.py, launch.sh, slurm.sbatch, plan.json, README.md and model/ into DIR.")
    p.add_argument("plan", type=Path, help="plan JSON from `pipeplan plan`")
    p.add_argument("-o", "--out", type=Path, required=True,
                   help="output folder: created, or replaced if it is a previous export holding nothing else")
    p.add_argument("--model-source", default=None,
                   help="model to train when the plan's own source has no code or is not found from here, e.g. "
                        "sample:gpt:tiny, hf:PATH/config.json or file:PATH.py:FACTORY (default: the plan's model "
                        "source)")
    p.add_argument("--weights", metavar="PATH", default=None,
                   help="pretrained safetensors weights for the job to start from: a Hugging Face checkpoint folder "
                        "or one .safetensors file, as a path on the machine that runs the job (recorded in train.py's "
                        "settings and launch.sh; not read by export). Pickles (.bin, .pt) are refused")
    p.add_argument("--zip", action="store_true", help="also write DIR.zip (the same bytes the app offers)")
    p.add_argument("--profile", metavar="PROFILE.json",
                   help="the profile the plan was made from: check the plan against it before exporting "
                        "(fingerprint, every layer in exactly one stage, stages in topological order)")
    return p


def run(args: argparse.Namespace) -> int:
    from planner.contracts.plan import Plan
    from planner.export import check_export_folder, export_plan, export_zip_bytes

    if not args.plan.is_file():
        raise PipeplanError(f"plan file {args.plan} does not exist; make one with `pipeplan plan ... -o plan.json`")
    zip_path = args.out.with_name(args.out.name + ".zip") if args.zip else None
    if zip_path is not None:
        check_writable(zip_path, "the job zip")
    plan = Plan.from_json(read_json_file(args.plan, "plan"))
    profile = None  # without --profile, a tensor-parallel job rebuilds it from the model for its TP plan
    if args.profile:
        from cli.simulate_cmd import check_plan_against_profile

        profile = check_plan_against_profile(plan, args.profile)
    check_export_folder(args.out)  # before the job is rendered (which may import torch for the model)
    written = export_plan(plan, args.out, model_source=args.model_source, weights=args.weights, profile=profile)
    if zip_path is not None:
        write_file_atomic(zip_path, export_zip_bytes(plan, model_source=args.model_source, weights=args.weights,
                                                     profile=profile),
                          "the job zip")
        written.append(zip_path)
    stages = len(plan.stages)
    ranks = len({s.device for s in plan.stages}) * plan.config.data_parallel * plan.config.tensor_parallel
    print(f"wrote {len(written)} files to {args.out}: {stages} stages, {plan.config.schedule}, {ranks} processes")
    print(f"run:   cd {args.out} && ./launch.sh        check: python train.py --single-process --steps 5")
    if args.weights:
        print(f"weights: {args.weights} (train.py's --weights default; the job reads it, export did not)")
    return 0
