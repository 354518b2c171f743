"""Hostile factory: talks to a service on the host's loopback (a database, a metadata endpoint)."""
import socket
from pathlib import Path

(Path(__file__).resolve().parent / "RAN-socket_loopback").write_text("imported")


def make_model(*args, **kwargs):
    with socket.create_connection(("127.0.0.1", 22), timeout=2) as s:
        s.sendall(b"escaped")
    raise RuntimeError("connected to the host's loopback")
