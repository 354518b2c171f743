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

HANGS = {"loop_forever": 15, "spawn_orphan": 15}
"""Wall-time limits for the factories that never return; the others get 120 s to import torch under load."""

pytestmark = pytest.mark.skipif(not module_exists("profiler.sandbox"), reason="profiler/sandbox.py not built yet")


def _copy(name: str, folder):
    from hostile.corpus import _py_factory

    return _py_factory(name)(folder, None)


@pytest.mark.parametrize("name", sorted(SANDBOX_CASES))
def test_sandboxed_factory_fails_clearly(name, tmp_path, monkeypatch):
    from profiler.errors import PipeplanError
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
    # the parent is healthy: it can still build a profile in-process
    from hostile.harness import base_documents

    assert base_documents().plan["feasible"]


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
    from profiler.errors import PipeplanError
    from profiler.sources import load_profile

    with pytest.raises(PipeplanError, match="--allow-code"):
        load_profile(f"file:{path}:make_model")
    assert not (tmp_path / "PWNED-write_outside").exists()
    assert os.listdir(tmp_path / "job") == ["write_outside.py"]
