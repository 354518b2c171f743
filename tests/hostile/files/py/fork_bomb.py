"""Hostile factory: a Python fork bomb (the audit hook refuses os.fork; bwrap's PID namespace and the
pids limit would bound a native one, tests/test_hostile_sandbox.py)."""
import os
from pathlib import Path

(Path(__file__).resolve().parent / "RAN-fork_bomb").write_text("imported")


def make_model(*args, **kwargs):
    while True:
        os.fork()
