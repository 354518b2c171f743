"""Run a user's model factory in a separate, limited process; get back data only.

`file:PATH.py:FACTORY` means: import PATH.py, call FACTORY() and profile what
it returns. That is arbitrary code, so it runs only when the user allowed it,
and then in a child process (`python -m profiler._sandbox_child`) with:
- a wall-clock limit (killed after `timeout_s`),
- an address-space limit (RLIMIT_AS) and no core dumps,
- a clean environment (PATH, PYTHONPATH to pipeplan, thread counts; no tokens,
  no cloud credentials, no proxies),
- its working directory in a fresh temporary folder,
- an audit hook in the child (installed before the user's file is imported) that refuses writes
  outside that folder and the factory's own folder, new processes, network connections and
  ctypes (see profiler._sandbox_child.install_guard and docs/security.md).
The child writes the Profile JSON to a file; the parent parses and validates
it with Profile.from_json. Nothing is unpickled, nothing is imported from the
child. Stdout/stderr are only used for the error message.

FACTORY() must return (model, inputs) or (model, inputs, loss_fn, target);
inputs is a tuple of tensors for one micro-batch.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from core.errors import PipeplanError
from profiler.profile import Profile

DEFAULT_TIMEOUT_S = 300.0
DEFAULT_MEMORY_BYTES = 8 * 2**30
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
_SAFE_ENV = ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def parse_file_spec(rest: str) -> tuple[Path, str]:
    """"path/to/model.py:make_model" -> (Path, "make_model")."""
    path, sep, factory = rest.rpartition(":")
    if not sep or not path.endswith(".py") or not factory.isidentifier():
        raise PipeplanError(f"file:{rest} is not understood; write file:PATH.py:FACTORY, e.g. file:model.py:make_model")
    p = Path(path).resolve()
    if not p.is_file():
        raise PipeplanError(f"file {path!r} does not exist")
    return p, factory


def _limits(memory_bytes: int) -> Callable[[], None]:
    def apply() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.setsid()
    return apply


def _child_env(workdir: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in _SAFE_ENV if k in os.environ}
    env.update(PYTHONPATH=_REPO_ROOT, HOME=workdir, TMPDIR=workdir, PYTHONDONTWRITEBYTECODE="1",
               PYTHONNOUSERSITE="1")
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's process group (its own session) and reap the child."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.communicate(timeout=10)
    except (subprocess.TimeoutExpired, ValueError):
        pass


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def profile_file_factory(rest: str, *, batch_size: int = 1, seq_len: int | None = None,
                         estimate_for: str | None = None, measure: str | None = None, granularity: str = "block",
                         progress: Callable[[str, float], None] | None = None,
                         timeout_s: float = DEFAULT_TIMEOUT_S, memory_bytes: int = DEFAULT_MEMORY_BYTES) -> Profile:
    """Profile the model a user factory builds, in a sandboxed child process."""
    path, factory = parse_file_spec(rest)
    request = {"path": str(path), "factory": factory, "batch_size": batch_size, "seq_len": seq_len,
               "estimate_for": estimate_for, "measure": measure, "granularity": granularity}
    with tempfile.TemporaryDirectory(prefix="pipeplan-sandbox-") as workdir:
        out_file = Path(workdir) / "profile.json"
        request["output"] = str(out_file)
        request["writable"] = [workdir, str(path.parent)]
        if progress:
            progress(f"running {path.name}:{factory} in a sandboxed process", 0.0)
        # Popen, not run(): on time-out the whole process group (the child called setsid) is killed, so a
        # grandchild cannot outlive the sandbox; output is decoded with errors="replace" (garbage bytes).
        proc = subprocess.Popen(
            [sys.executable, "-m", "profiler._sandbox_child", json.dumps(request)],
            cwd=workdir, env=_child_env(workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            encoding="utf-8", errors="replace", preexec_fn=_limits(memory_bytes), stdin=subprocess.DEVNULL)  # noqa: PLW1509 - rlimits need it
        try:
            _, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise PipeplanError(f"{path.name}:{factory} did not finish within {timeout_s:.0f} s and was stopped; "
                                "make the factory build the model quickly (no training, no downloads)") from None
        _kill_group(proc)  # leftovers the factory started
        if proc.returncode != 0:
            err = _last_line(stderr)
            if proc.returncode < 0 or "MemoryError" in stderr or "std::bad_alloc" in stderr:
                raise PipeplanError(f"{path.name}:{factory} was stopped (exit {proc.returncode}): it used more than "
                                    f"{memory_bytes / 2**30:.0f} GiB or crashed. {err}".strip())
            raise PipeplanError(f"{path.name}:{factory} failed: {err or f'exit code {proc.returncode}'}")
        if not out_file.is_file():
            raise PipeplanError(f"{path.name}:{factory} exited without writing a profile "
                                "(did the factory call sys.exit?)")
        if progress:
            progress("reading the profile", 1.0)
        return Profile.from_json(out_file.read_bytes())
