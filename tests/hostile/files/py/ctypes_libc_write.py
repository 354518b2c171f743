"""Hostile factory: calls libc's open/write through ctypes to write outside its folder."""
import ctypes
from pathlib import Path

(Path(__file__).resolve().parent / "RAN-ctypes_libc_write").write_text("imported")
OUTSIDE = Path(__file__).resolve().parent.parent / "PWNED-ctypes_libc_write"


def make_model(*args, **kwargs):
    libc = ctypes.CDLL("libc.so.6")
    fd = libc.open(str(OUTSIDE).encode(), 0o101, 0o644)  # O_WRONLY | O_CREAT
    libc.write(fd, b"escaped", 7)
    raise RuntimeError("ctypes wrote outside its folder")
