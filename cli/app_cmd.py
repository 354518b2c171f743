"""`pipeplan app`: start the Streamlit app (loopback only unless told otherwise)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

APP_PATH = Path(__file__).resolve().parents[2] / "app.py"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("app", help="start the Streamlit app on 127.0.0.1")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--address", default="127.0.0.1",
                   help="address to bind; anything but loopback exposes the app (read docs/security.md)")
    p.add_argument("--allow-code", action="store_true",
                   help="allow .py model uploads to run (in a sandboxed child process); never on a shared server")
    return p


def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if args.allow_code:
        env["PIPEPLAN_ALLOW_CODE"] = "1"
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP_PATH),
           "--server.address", args.address, "--server.port", str(args.port)]
    return subprocess.call(cmd, env=env, cwd=APP_PATH.parent)
