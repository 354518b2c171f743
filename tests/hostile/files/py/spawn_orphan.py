"""Hostile factory: starts a grandchild that tries to outlive the sandbox, then hangs."""
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def make_model(*args, **kwargs):
    code = ("import time, pathlib\n"
            f"p = pathlib.Path({str(HERE / 'ORPHAN-alive')!r})\n"
            "time.sleep(8)\n"
            "p.write_text('the grandchild outlived the sandbox')\n")
    subprocess.Popen([sys.executable, "-c", code], start_new_session=False)
    while True:
        pass
