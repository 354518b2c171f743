"""Hostile factory: writes outside its own folder, at import time and when called."""
from pathlib import Path

OUTSIDE = Path(__file__).resolve().parent.parent / "PWNED-write_outside"
OUTSIDE.write_text("write_outside.py ran at import")


def make_model(*args, **kwargs):
    OUTSIDE.write_text("write_outside.py factory ran")
    raise RuntimeError("wrote outside its folder")
