"""Run a user's model factory in a separate, limited process; get back data only.

`file:PATH.py:FACTORY` means: import PATH.py, call FACTORY() and profile what
it returns. That is arbitrary code, so it runs only when the user allowed it,
and then in a child process (`python -m profiler._sandbox_child`), in layers
(docs/security.md, "What runs where"):

1. bubblewrap (`bwrap`), when it is installed and works here: new user, PID, network, IPC, UTS and
   cgroup namespaces, every capability dropped; the root file system read-only; a private, read-only
   /tmp; the home folders and secret files (HIDDEN_DIRS, HIDDEN_FILES) replaced by empty ones; only the
   scratch folder and the factory's own folder writable; no network at all (a loopback connect is
   refused); the sandbox dies with its parent and all of it is killed at once (PID namespace).
   Without bwrap (or when it fails, e.g. user namespaces are off), the CLI and the app say that the
   weaker sandbox below is all there is (`sandbox_notice()`);
2. an audit hook in the child (installed before the user's file is imported) that refuses writes
   outside the scratch folder and the factory's own folder, new processes, network connections and
   ctypes (profiler._sandbox_child.install_guard);
3. resource limits: wall clock (killed after `timeout_s`), address space (RLIMIT_AS), no core dumps,
   processes (RLIMIT_NPROC for a normal user; as root, where the kernel ignores RLIMIT_NPROC, a pids
   cgroup when one can be made), its own session;
4. a clean environment (PATH, PYTHONPATH to pipeplan, thread counts; no tokens, no cloud credentials,
   no proxies) and its working directory in a fresh scratch folder;
5. data only comes back: the child writes the Profile JSON to a file; the parent parses and validates it
   with Profile.from_json. Nothing is unpickled, nothing is imported from the child. Stdout/stderr are
   only used for the error message.

FACTORY() must return (model, inputs) or (model, inputs, loss_fn, target);
inputs is a tuple of tensors for one micro-batch.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from core.errors import PipeplanError
from profiler.profile import Profile

DEFAULT_TIMEOUT_S = 300.0
DEFAULT_MEMORY_BYTES = 8 * 2**30
MAX_PROCESSES = 256
"""Processes and threads the sandbox may have at once (torch uses a few threads per core)."""
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
_SAFE_ENV = ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

HIDDEN_DIRS = ("/root", "/home", "/run/secrets", "/var/run/secrets", "/etc/ssh")
"""Replaced by an empty read-only folder in the bwrap sandbox (plus the user's own $HOME): SSH keys,
cloud credentials, tokens, shell history, other users' files."""
HIDDEN_FILES = ("/etc/shadow", "/etc/gshadow", "/etc/sudoers")
"""Replaced by an empty file in the bwrap sandbox (readable by root only, but the child may be root)."""
NOT_WRITABLE_FOLDERS = ("/", "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/boot", "/dev",
                        "/proc", "/sys", "/var", "/opt", "/srv", "/run")
"""A factory file directly in (or a folder holding one of) these gets its folder read-only, not read-write."""

BWRAP_ENV = "PIPEPLAN_BWRAP"
"""Operator setting: the bwrap binary to use; empty or "none" turns the bwrap layer off (tests use it to
run the fallback path). Unset: `bwrap` on PATH."""


def parse_file_spec(rest: str) -> tuple[Path, str]:
    """"path/to/model.py:make_model" -> (Path, "make_model")."""
    path, sep, factory = rest.rpartition(":")
    if not sep or not path.endswith(".py") or not factory.isidentifier():
        raise PipeplanError(f"file:{rest} is not understood; write file:PATH.py:FACTORY, e.g. file:model.py:make_model")
    p = Path(path).resolve()
    if not p.is_file():
        raise PipeplanError(f"file {path!r} does not exist")
    return p, factory


# -- the bwrap layer ----------------------------------------------------------------------------

def bwrap_binary() -> str | None:
    configured = os.environ.get(BWRAP_ENV)
    if configured is not None:
        return None if configured.strip().lower() in ("", "none", "off", "0") else configured
    return shutil.which("bwrap")


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _hidden_dirs() -> list[str]:
    home = os.path.realpath(os.path.expanduser("~"))
    found = []
    for d in (*HIDDEN_DIRS, home):
        real = os.path.realpath(d)
        if real != "/" and os.path.isdir(real) and real not in found and not any(_under(real, f) for f in found):
            found = [f for f in found if not _under(f, real)] + [real]
    return found


def _needed_read_only() -> list[str]:
    """What the child must read even when it lies under a hidden folder: the interpreter, its standard
    library and site-packages, and pipeplan itself (a pyenv Python lives in /root/.pyenv)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable)),
             os.path.dirname(sys.executable), _REPO_ROOT}
    paths.update(p for p in sys.path if p and os.path.isdir(p))
    return sorted({os.path.realpath(p) for p in paths})


def folder_writable_under_bwrap(factory_dir: str) -> bool:
    """Whether the factory's own folder is bound read-write: not a system folder, and not a folder holding
    a hidden one (a factory in $HOME itself would otherwise see ~/.ssh)."""
    return not (factory_dir in NOT_WRITABLE_FOLDERS or any(_under(h, factory_dir) for h in ["/tmp", *_hidden_dirs()]))


def bwrap_command(workdir: str, factory_dir: str, factory_file: str, *, gpu: bool = False) -> list[str]:
    """The bwrap prefix for one run (`bwrap ... --`): see the module docstring, layer 1. gpu: also pass
    the NVIDIA device nodes through (--measure cuda; `--dev /dev` has only the basic devices)."""
    binary = bwrap_binary() or "bwrap"
    hidden = _hidden_dirs()
    covered = ["/tmp", *hidden]  # empty tmpfs, made read-only once the mount points inside exist
    folder_rw = folder_writable_under_bwrap(factory_dir)
    ro = [p for p in _needed_read_only() if any(_under(p, c) for c in covered) and os.path.exists(p)]
    ro = [p for p in ro if not any(q != p and _under(p, q) for q in ro)]  # the outermost folders only
    rw = [workdir] + ([factory_dir] if folder_rw else [])
    ro_files = [] if folder_rw else [factory_file]
    cmd = [binary, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
           "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    for d in covered:
        cmd += ["--tmpfs", d]
    for p in [*ro, *rw, *ro_files]:
        if any(_under(p, c) for c in covered):
            cmd += ["--dir", p if p not in ro_files else os.path.dirname(p)]
    for d in covered:
        cmd += ["--remount-ro", d]
    for p in ro:
        cmd += ["--ro-bind", p, p]
    for p in rw:
        cmd += ["--bind", p, p]
    for p in ro_files:
        cmd += ["--ro-bind", p, p]
    for f in HIDDEN_FILES:
        if os.path.isfile(f):
            cmd += ["--ro-bind", "/dev/null", f]
    if gpu:
        import glob

        for dev in sorted(glob.glob("/dev/nvidia*")) + [d for d in ("/dev/dri",) if os.path.exists(d)]:
            cmd += ["--dev-bind", dev, dev]
    return [*cmd, "--chdir", workdir, "--"]


@functools.cache
def _probe_bwrap(binary: str) -> str | None:
    """None when `binary` runs a command in the sandbox here, else why not (one line)."""
    with tempfile.TemporaryDirectory(prefix="pipeplan-bwrap-probe-") as d:
        cmd = [*bwrap_command(d, d, os.path.join(d, "x.py")), sys.executable, "-c", "print('ok')"]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{binary} could not start: {exc}"
    if proc.returncode != 0 or proc.stdout.strip() != b"ok":
        lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        return f"{binary} failed here ({lines[-1][:200] if lines else f'exit {proc.returncode}'})"
    return None


def sandbox_status() -> tuple[bool, str]:
    """(True, "bubblewrap") when file: models run under bwrap here, else (False, why not)."""
    binary = bwrap_binary()
    if binary is None:
        why = (f"{BWRAP_ENV} turns it off" if os.environ.get(BWRAP_ENV) is not None
               else "bubblewrap (bwrap) is not installed")
        return False, why
    problem = _probe_bwrap(binary)
    return (True, "bubblewrap") if problem is None else (False, problem)


def sandbox_notice() -> str | None:
    """One line for the CLI and the app when code runs only in the weaker sandbox; None under bwrap."""
    ok, why = sandbox_status()
    if ok:
        return None
    return (f"{why}: file: models run in the weaker sandbox (a separate process with an audit hook and "
            "resource limits, as your user, seeing your files); install bubblewrap for namespaces and a "
            "read-only file system")


# -- process limits ------------------------------------------------------------------------------

def _own_tasks() -> int:
    """Processes and threads of this real uid (what RLIMIT_NPROC counts)."""
    uid, n = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/status") as f:
                    fields = dict(line.split(":", 1) for line in f if ":" in line)
                if int(fields["Uid"].split()[0]) == uid:
                    n += int(fields.get("Threads", "1"))
            except (OSError, ValueError, KeyError):
                continue
    return n


class _PidsCgroup:
    """A pids cgroup (v1 or v2) holding the sandbox, as root: RLIMIT_NPROC does not apply to uid 0."""

    def __init__(self, max_pids: int) -> None:
        self.path: str | None = None
        if os.geteuid() != 0:
            return
        for base in ("/sys/fs/cgroup/pids", self._v2_base()):
            if not base or not os.path.isdir(base):
                continue
            path = os.path.join(base, f"pipeplan-sandbox-{os.getpid()}-{os.urandom(4).hex()}")
            try:
                os.mkdir(path)
                with open(os.path.join(path, "pids.max"), "w") as f:
                    f.write(str(max_pids))
            except OSError:
                try:
                    os.rmdir(path)
                except OSError:
                    pass
                continue
            self.path = path
            return

    @staticmethod
    def _v2_base() -> str | None:
        try:
            with open("/proc/self/cgroup") as f:
                own = next((ln.split("::", 1)[1].strip() for ln in f if ln.startswith("0::")), None)
            base = "/sys/fs/cgroup" + (own if own and own != "/" else "")
            with open(os.path.join(base, "cgroup.subtree_control")) as f:
                return base if "pids" in f.read().split() else None
        except (OSError, StopIteration):
            return None

    def join(self) -> None:  # in the child, between fork and exec
        if self.path:
            with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
                f.write("0")

    def remove(self) -> None:
        if not self.path:
            return
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                for pid in f.read().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
        except OSError:
            pass
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except OSError:
                import time

                time.sleep(0.1)


def process_limit() -> str | None:
    """How the sandbox's process count is bounded here ("RLIMIT_NPROC", "pids cgroup"), or None."""
    if os.geteuid() != 0:
        return "RLIMIT_NPROC"
    cg = _PidsCgroup(MAX_PROCESSES)
    ok = cg.path is not None
    cg.remove()
    return "pids cgroup" if ok else None


def _limits(memory_bytes: int, nproc: int | None, cgroup: _PidsCgroup) -> Callable[[], None]:
    def apply() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if nproc is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        cgroup.join()
        os.setsid()
    return apply


def _child_env(workdir: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in _SAFE_ENV if k in os.environ}
    env.update(PYTHONPATH=_REPO_ROOT, HOME=workdir, TMPDIR=workdir, PYTHONDONTWRITEBYTECODE="1",
               PYTHONNOUSERSITE="1")
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's process group (its own session) and reap the child. Under bwrap, the PID
    namespace dies with its first process, taking every process the factory started with it."""
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
    strong, _ = sandbox_status()
    with tempfile.TemporaryDirectory(prefix="pipeplan-sandbox-") as workdir:
        workdir = os.path.realpath(workdir)
        out_file = Path(workdir) / "profile.json"
        request["output"] = str(out_file)
        folder = str(path.parent)
        prefix = bwrap_command(workdir, folder, str(path), gpu=measure == "cuda") if strong else []
        request["writable"] = [workdir] + ([folder] if not strong or folder_writable_under_bwrap(folder) else [])
        if progress:
            how = "bubblewrap sandbox" if strong else "sandboxed process (no bubblewrap)"
            progress(f"running {path.name}:{factory} in a {how}", 0.0)
        nproc = None if os.geteuid() == 0 else _own_tasks() + MAX_PROCESSES
        cgroup = _PidsCgroup(MAX_PROCESSES)
        # Popen, not run(): on time-out the whole process group (the child called setsid) is killed, so a
        # grandchild cannot outlive the sandbox; output is decoded with errors="replace" (garbage bytes).
        try:
            proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "profiler._sandbox_child", json.dumps(request)],
                cwd=workdir, env=_child_env(workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                encoding="utf-8", errors="replace", preexec_fn=_limits(memory_bytes, nproc, cgroup),  # noqa: PLW1509 - rlimits need it
                stdin=subprocess.DEVNULL)
            try:
                _, stderr = proc.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise PipeplanError(f"{path.name}:{factory} did not finish within {timeout_s:.0f} s and was stopped; "
                                    "make the factory build the model quickly (no training, no downloads)") from None
            _kill_group(proc)  # leftovers the factory started
        finally:
            cgroup.remove()
        if proc.returncode != 0:
            err = _last_line(stderr)
            if strong and proc.returncode > 128:  # bwrap reports a child killed by signal N as 128 + N
                proc.returncode = 128 - proc.returncode
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
