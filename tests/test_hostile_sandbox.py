"""User .py factories with code execution allowed: each runs in the sandboxed child process
(profiler.sandbox.profile_file_factory, what `--allow-code` and the app's .py upload call) and fails
with one clear PipeplanError; the parent stays healthy; secrets in the parent's environment are not
inherited; a grandchild does not outlive the sandbox."""

from __future__ import annotations

import os
import re
import time

import pytest
from hostile.corpus import SANDBOX_CASES, by_name
from hostile.harness import FAKE_SECRET, module_exists, run_cli

HANGS = {"loop_forever": 15}
"""Wall-time limits for the factories that never return; the others get 120 s to import torch under load."""

pytestmark = pytest.mark.skipif(not module_exists("profiler.sandbox"), reason="profiler/sandbox.py not built yet")


def _copy(name: str, folder):
    from hostile.corpus import _py_factory

    return _py_factory(name)(folder, None)


@pytest.mark.slow  # one sandbox child per case; the hang and orphan cases wait 10-15 s
@pytest.mark.parametrize("name", sorted(SANDBOX_CASES))
def test_sandboxed_factory_fails_clearly(name, tmp_path, monkeypatch):
    from core.errors import PipeplanError
    from profiler.sandbox import profile_file_factory

    monkeypatch.setenv("PIPEPLAN_FAKE_SECRET", FAKE_SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    path = _copy(name, tmp_path)
    start = time.monotonic()
    with pytest.raises(PipeplanError) as err:
        profile_file_factory(f"{path}:make_model", timeout_s=HANGS.get(name, 120), memory_bytes=4 * 2**30)
    took = time.monotonic() - start
    msg = str(err.value)
    assert re.search(SANDBOX_CASES[name], msg), msg
    assert "\n" not in msg.strip() and len(msg) < 700, msg
    assert took < HANGS.get(name, 120) + 30, f"{name}: {took:.1f} s"
    if name == "read_secret":
        leaked = (tmp_path / "job" / "LEAKED-env.txt").read_text()
        assert FAKE_SECRET not in leaked and FAKE_SECRET not in msg, leaked
    if name == "spawn_orphan":
        time.sleep(10)  # the grandchild writes its marker 8 s after it starts, if it is still alive
        assert not (tmp_path / "job" / "ORPHAN-alive").exists(), "a grandchild outlived the sandbox"
    if name == "write_outside":
        assert not (tmp_path / "PWNED-write_outside").exists(), "the factory wrote outside its folder"
    # the parent is healthy: it can still build a profile in-process
    from hostile.harness import base_documents

    assert base_documents().plan["feasible"]


@pytest.mark.slow  # a CLI process, then its sandbox child
def test_cli_allow_code_runs_factory_sandboxed(tmp_path):
    """Through the CLI with --allow-code: the factory's exception is one line, no traceback, exit 2."""
    path = _copy("raises", tmp_path)
    res = run_cli(["profile", f"file:{path}:make_model", "--allow-code", "-o", str(tmp_path / "out.json"),
                   "--quiet"], timeout=300)
    assert "Traceback" not in res.stdout + res.stderr, res.stderr[-2000:]
    assert res.rc == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "factory exploded" in lines[0], lines
    assert (tmp_path / "job" / "RAN-raises").exists(), "with --allow-code the factory does run (sandboxed)"
    assert not (tmp_path / "out.json").exists()


def test_without_allow_code_nothing_runs(tmp_path):
    case = by_name()["py_write_outside_without_allow_code"]
    path = case.build(tmp_path, None)
    from core.errors import PipeplanError
    from profiler.sources import load_profile

    with pytest.raises(PipeplanError, match="--allow-code"):
        load_profile(f"file:{path}:make_model")
    assert not (tmp_path / "PWNED-write_outside").exists()
    assert os.listdir(tmp_path / "job") == ["write_outside.py"]


GUARDED = """
import os, socket, subprocess, sys
from pathlib import Path

import torch
from torch import nn

OUTSIDE = Path(__file__).resolve().parent.parent

def _model():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), (torch.randn(2, 8),)

def normal():
    (Path(__file__).resolve().parent / "own-folder-ok").write_text("writes in its own folder are allowed")
    Path("scratch.txt").write_text("and in its working folder")
    return _model()

def write_marker():
    (OUTSIDE / "MARKER-outside").write_text("escaped")
    return _model()

def os_open_marker():
    os.close(os.open(str(OUTSIDE / "MARKER-os-open"), os.O_WRONLY | os.O_CREAT, 0o600))
    return _model()

def symlink_escape():
    os.symlink(str(OUTSIDE), "link")
    Path("link/MARKER-symlink").write_text("escaped through a symlink")
    return _model()

def remove_outside():
    os.remove(str(OUTSIDE / "KEEP-me"))
    return _model()

def run_subprocess():
    subprocess.run(["touch", str(OUTSIDE / "MARKER-subprocess")])
    return _model()

def run_system():
    os.system("touch " + str(OUTSIDE / "MARKER-system"))
    return _model()

def fork():
    if os.fork() == 0:
        Path(OUTSIDE / "MARKER-fork").write_text("forked")
        os._exit(0)
    return _model()

def connect():
    socket.create_connection(("127.0.0.1", 9), timeout=1)
    return _model()

def bind():
    socket.socket().bind(("127.0.0.1", 0))
    return _model()

def ctypes_escape():
    import ctypes
    ctypes.CDLL(None).system(("touch " + str(OUTSIDE / "MARKER-ctypes")).encode())
    return _model()
"""


@pytest.fixture()
def guarded(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    (job / "guarded.py").write_text(GUARDED)
    (tmp_path / "KEEP-me").write_text("must survive")
    return job / "guarded.py"


@pytest.mark.slow  # one sandbox child per escape (~2 s each)
@pytest.mark.parametrize("factory, message", [
    ("write_marker", r"sandbox blocked writing \S*MARKER-outside \(outside the factory's folder\)"),
    ("os_open_marker", r"sandbox blocked writing \S*MARKER-os-open"),
    ("symlink_escape", r"sandbox blocked writing \S*MARKER-symlink"),
    ("remove_outside", r"sandbox blocked os\.remove\(\S*KEEP-me\)"),
    ("run_subprocess", r"sandbox blocked subprocess\.Popen: a model factory may not start processes"),
    ("run_system", r"sandbox blocked os\.system"),
    ("fork", r"sandbox blocked os\.fork"),
    ("connect", r"sandbox blocked socket\.connect: a model factory may not use the network"),
    ("bind", r"sandbox blocked socket\.bind"),
    ("ctypes_escape", r"sandbox blocked ctypes\.dlopen"),
])
def test_guard_blocks_escapes(factory, message, guarded):
    from core.errors import PipeplanError
    from profiler.sandbox import profile_file_factory

    with pytest.raises(PipeplanError) as err:
        profile_file_factory(f"{guarded}:{factory}", timeout_s=120)
    msg = str(err.value)
    assert re.search(message, msg), msg
    assert msg.startswith(f"guarded.py:{factory} failed: PermissionError: "), msg
    outside = guarded.parent.parent
    assert sorted(p.name for p in outside.iterdir()) == ["KEEP-me", "job"], list(outside.iterdir())
    assert (outside / "KEEP-me").read_text() == "must survive"


@pytest.mark.slow  # a sandbox child that profiles (~3 s each)
@pytest.mark.parametrize("measure", [None, "cpu"])
def test_guard_lets_a_normal_factory_profile(measure, guarded):
    """The guard does not get in torch's way: estimated and measured (CPU) profiling both work."""
    from profiler.sources import load_profile

    prof = load_profile(f"file:{guarded}:normal", allow_code=True, measure=measure)
    assert [n.id for n in prof.nodes] == ["0", "1", "2"]
    assert prof.total_param_bytes == (8 * 16 + 16 + 16 * 4 + 4) * 4
    assert (guarded.parent / "own-folder-ok").exists()
