"""Hostile factory: tries to allocate 50 GB."""
from pathlib import Path

(Path(__file__).resolve().parent / "RAN-alloc_50gb").write_text("imported")


def make_model(*args, **kwargs):
    hog = bytearray(50 * 2**30)
    return hog
