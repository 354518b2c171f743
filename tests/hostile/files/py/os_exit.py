"""Hostile factory: kills its own process without a word."""
import os
from pathlib import Path

(Path(__file__).resolve().parent / "RAN-os_exit").write_text("imported")


def make_model(*args, **kwargs):
    os._exit(0)
