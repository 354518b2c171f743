"""The `pipeplan` command line.

    pipeplan models
    pipeplan profile sample:gpt:124M --seq-len 1024 --estimate-for A100-80GB -o gpt.json
    pipeplan plan profile:gpt.json --devices 4 --gpu A100-80GB --microbatches 8 -o plan.json
    pipeplan simulate plan.json --html timeline.html
    pipeplan export plan.json -o job/
    pipeplan calibrate -o cluster.json
    pipeplan app

Each subcommand lives in its own module here with `add_parser(subparsers)` and
`run(args) -> int`. Bad input exits 2 with one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from core.errors import PipeplanError

SUBCOMMANDS = ("models", "profile", "plan", "infer", "simulate", "export", "calibrate", "app")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeplan",
        description="Plan pipeline-parallel training of PyTorch models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n")[1],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"cli.{name}_cmd")
        except ModuleNotFoundError as exc:  # subcommand not built yet
            if exc.name != f"cli.{name}_cmd":
                raise
            continue
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except PipeplanError as exc:
        print(f"pipeplan {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pipeplan {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
