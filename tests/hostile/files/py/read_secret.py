"""Hostile factory: looks for secrets in its environment and leaks them to a file."""
import os
from pathlib import Path

found = {k: v for k, v in os.environ.items() if "SECRET" in k or "TOKEN" in k or "KEY" in k}
(Path(__file__).resolve().parent / "LEAKED-env.txt").write_text(repr(found))


def make_model(*args, **kwargs):
    raise RuntimeError(f"environment secrets seen: {sorted(found)}")
