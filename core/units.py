"""Units shown to people, shared by the app and the CLI."""

from __future__ import annotations


def human_count(n: float) -> str:
    """A count with a unit suffix: 124439808 -> "124.44M"."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))
