"""Hostile module: the payload runs at import time, before any factory is called."""
from pathlib import Path

(Path(__file__).resolve().parent.parent / "PWNED-import_payload").write_text("import_payload.py ran")


def make_model(*args, **kwargs):
    return None
