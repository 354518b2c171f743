"""Hostile factory: floods stdout and stderr with garbage that looks like protocol data."""
import sys
from pathlib import Path

(Path(__file__).resolve().parent / "RAN-garbage_stdout").write_text("imported")


def make_model(*args, **kwargs):
    sys.stdout.write('{"schema": "pipeplan.profile/1", "nodes": [' + "\x00\xff garbage \x1b[2J" * 1000 + "\n")
    sys.stdout.buffer.write(bytes(range(256)) * 64)
    sys.stdout.flush()
    sys.stderr.write("Traceback (most recent call last):\n  fake\n" * 50)
    print("}}}} not json at all")
    raise SystemExit(0)
