"""Hostile factory: raises an exception with a long, multi-line message."""
from pathlib import Path

(Path(__file__).resolve().parent / "RAN-raises").write_text("imported")


def make_model(*args, **kwargs):
    raise RuntimeError("factory exploded\n" + "x" * 10000)
