"""Hostile factory: never returns."""
from pathlib import Path

(Path(__file__).resolve().parent / "RAN-loop_forever").write_text("imported")


def make_model(*args, **kwargs):
    while True:
        pass
