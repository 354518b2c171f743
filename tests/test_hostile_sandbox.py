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
from hostile.harness import FAKE_SECRET, ROOT, module_exists, run_cli

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


# -- the bubblewrap layer (issue 18, class 5) ---------------------------------------------------------
# The audit hook above stops Python-level escapes; native code (a C extension imported from disk) makes
# system calls without audit events. Under bubblewrap those calls meet a read-only file system, hidden
# home folders, an empty network namespace and a bounded PID namespace instead.

def _ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def _need_bwrap() -> None:
    """Skip without a working bwrap, except under CI (.ci/run installs bubblewrap), where it is a failure."""
    from profiler.sandbox import sandbox_status

    ok, why = sandbox_status()
    if not ok:
        if _ci():
            pytest.fail(f"{why}; CI is set, so the strong sandbox must be tested (.ci/run installs bubblewrap)")
        pytest.skip(why)


def test_bwrap_sandbox_is_available_in_ci():
    """CI must exercise the strong path; locally a machine without bwrap skips (and the CLI says so)."""
    _need_bwrap()
    from profiler.sandbox import sandbox_notice

    assert sandbox_notice() is None


NATIVE_C = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

static PyObject *write_file(PyObject *self, PyObject *args) {
    const char *path;
    if (!PyArg_ParseTuple(args, "s", &path)) return NULL;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
    ssize_t n = write(fd, "escaped\n", 8);
    close(fd);
    if (n < 0) return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
    Py_RETURN_NONE;
}

static PyObject *read_file(PyObject *self, PyObject *args) {
    const char *path;
    char buf[4096];
    if (!PyArg_ParseTuple(args, "s", &path)) return NULL;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    if (n < 0) return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
    return PyBytes_FromStringAndSize(buf, n);
}

static PyObject *connect_port(PyObject *self, PyObject *args) {
    int port;
    if (!PyArg_ParseTuple(args, "i", &port)) return NULL;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) return PyErr_SetFromErrno(PyExc_OSError);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) { close(s); return PyErr_SetFromErrno(PyExc_OSError); }
    send(s, "escaped", 7, 0);
    close(s);
    Py_RETURN_NONE;
}

static PyObject *fork_bomb(PyObject *self, PyObject *args) {
    for (;;) {
        if (fork() < 0) usleep(20000); /* every process keeps forking; a failed fork waits a little */
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"write_file", write_file, METH_VARARGS, ""}, {"read_file", read_file, METH_VARARGS, ""},
    {"connect_port", connect_port, METH_VARARGS, ""}, {"fork_bomb", fork_bomb, METH_NOARGS, ""},
    {NULL, NULL, 0, NULL}};
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "pipeplan_native_escape", NULL, -1, methods};
PyMODINIT_FUNC PyInit_pipeplan_native_escape(void) { return PyModule_Create(&mod); }
"""

NATIVE_FACTORIES = """
import os, sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeplan_native_escape as native  # a C extension: no audit event guards its system calls

OUTSIDE = Path(__file__).resolve().parent.parent
SECRET = os.environ.get("PIPEPLAN_SECRET_FILE_FOR_TEST", "") or {secret!r}

def _model():
    return nn.Sequential(nn.Linear(8, 4)), (torch.randn(2, 8),)

def native_write_outside():
    native.write_file(str(OUTSIDE / "MARKER-native"))
    return _model()

def native_write_repo():
    native.write_file({repo_marker!r})
    return _model()

def native_read_secret():
    data = native.read_file(SECRET)
    raise RuntimeError("read the secret: " + data.decode(errors="replace"))

def native_connect():
    native.connect_port({port})
    return _model()

def native_fork_bomb():
    native.fork_bomb()
    return _model()

def python_read_secret():
    raise RuntimeError("read the secret: " + open(SECRET).read())

def ctypes_libc_write():
    import ctypes
    libc = ctypes.CDLL("libc.so.6")
    fd = libc.open(str(OUTSIDE / "MARKER-ctypes-open").encode(), 0o101, 0o644)
    libc.write(fd, b"escaped", 7)
    return _model()
"""


@pytest.fixture(scope="module")
def native_extension(tmp_path_factory):
    """The C extension, compiled once with the system compiler; skipped (with the reason) without one."""
    import shutil
    import subprocess
    import sysconfig

    cc = shutil.which("gcc") or shutil.which("cc")
    include = sysconfig.get_paths()["include"]
    if cc is None or not os.path.isfile(os.path.join(include, "Python.h")):
        pytest.skip(f"no C compiler or no Python.h ({include}): the native escapes need a compiled extension")
    d = tmp_path_factory.mktemp("native")
    (d / "native.c").write_text(NATIVE_C)
    out = d / f"pipeplan_native_escape{sysconfig.get_config_var('EXT_SUFFIX')}"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", f"-I{include}", str(d / "native.c"), "-o", str(out)],
                   check=True, capture_output=True, timeout=120)
    return out


@pytest.fixture()
def secret_file():
    """A fake key in a folder like ~/.ssh, under the real home of the user running the tests."""
    import shutil
    import tempfile

    home = os.path.realpath(os.path.expanduser("~"))
    d = tempfile.mkdtemp(prefix=".ssh-pipeplan-test-", dir=home)
    key = os.path.join(d, "id_fake")
    with open(key, "w") as f:
        f.write(f"-----BEGIN FAKE KEY----- {FAKE_SECRET}\n")
    yield key
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture()
def listener():
    """A TCP listener on the host's loopback; records whether anything connected."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    srv.settimeout(0.2)
    seen: list[bytes] = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    seen.append(conn.recv(100) or b"(connected)")
                except OSError:
                    seen.append(b"(connected)")

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1], seen
    stop.set()
    t.join(2)
    srv.close()


@pytest.fixture()
def escapes(tmp_path, native_extension, secret_file, listener):
    import shutil

    job = tmp_path / "job"
    job.mkdir()
    shutil.copy(native_extension, job / native_extension.name)
    repo_marker = str(ROOT / "MARKER-native-repo")
    (job / "escapes.py").write_text(NATIVE_FACTORIES.format(secret=secret_file, port=listener[0],
                                                            repo_marker=repo_marker))
    return job / "escapes.py"



def _run(path, factory, timeout_s=120):
    from core.errors import PipeplanError
    from profiler.sandbox import profile_file_factory

    start = time.monotonic()
    with pytest.raises(PipeplanError) as err:
        profile_file_factory(f"{path}:{factory}", timeout_s=timeout_s, memory_bytes=4 * 2**30)
    msg = str(err.value)
    assert "\n" not in msg.strip() and len(msg) < 700, msg
    assert "Traceback" not in msg, msg
    return msg, time.monotonic() - start


@pytest.mark.slow  # one sandbox child per escape (~2-4 s each)
@pytest.mark.parametrize("factory, message", [
    ("native_write_outside", (r"^escapes\.py:native_write_outside failed: OSError: \[Errno 30\] Read-only file "
                             r"system: '\S*/MARKER-native'$")),
    ("native_write_repo", r"failed: OSError: \[Errno 30\] Read-only file system: '\S*/MARKER-native-repo'$"),
    ("native_read_secret", r"failed: FileNotFoundError: \[Errno 2\] No such file or directory: '\S*id_fake'$"),
    ("python_read_secret", r"failed: FileNotFoundError: \[Errno 2\] No such file or directory: '\S*id_fake'$"),
    ("native_connect", (r"failed: (ConnectionRefusedError|OSError): \[Errno (111|101)\] "
                       r"(Connection refused|Network is unreachable)$")),
])
def test_bwrap_contains_native_escapes(factory, message, escapes, listener, secret_file):
    """A C extension writing outside, into the repository, reading a fake ~/.ssh key, connecting to a
    loopback listener of the host: each fails inside the sandbox with one line, and nothing happened."""
    _need_bwrap()
    msg, _took = _run(escapes, factory)
    assert re.search(message, msg), msg
    assert FAKE_SECRET not in msg
    outside = escapes.parent.parent
    assert sorted(p.name for p in outside.iterdir()) == ["job"], list(outside.iterdir())
    assert not (ROOT / "MARKER-native-repo").exists()
    assert listener[1] == [], f"the sandbox reached the host's loopback: {listener[1]}"


@pytest.mark.slow  # a sandbox child that forks until the limit, then the wall-clock limit (~20 s)
def test_bwrap_contains_a_native_fork_bomb(escapes):
    """Every process forks forever: the pids limit (RLIMIT_NPROC, or a pids cgroup as root) bounds it, the
    wall-clock limit stops it, and the PID namespace takes every process with it."""
    _need_bwrap()
    from profiler.sandbox import process_limit

    if process_limit() is None:
        pytest.skip("running as root without a pids cgroup: nothing here bounds the number of processes, "
                    "and a fork bomb would exhaust the machine's PID table")
    msg, took = _run(escapes, "native_fork_bomb", timeout_s=15)
    assert re.search(r"^escapes\.py:native_fork_bomb did not finish within 15 s and was stopped", msg), msg
    assert took < 15 + 20, f"{took:.1f} s"
    time.sleep(1)
    left = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if str(escapes).encode() in f.read():
                    left.append(pid)
        except OSError:
            continue
    assert not left, f"processes of the fork bomb outlived the sandbox: {left}"


@pytest.mark.slow  # one sandbox child (~2 s)
def test_ctypes_libc_write_is_blocked(escapes):
    """libc's open/write through ctypes: the audit hook refuses loading the library (both sandboxes)."""
    msg, _ = _run(escapes, "ctypes_libc_write")
    assert re.search(r"failed: PermissionError: the sandbox blocked ctypes\.dlopen", msg), msg
    assert not (escapes.parent.parent / "MARKER-ctypes-open").exists()


# -- without bubblewrap: the weaker sandbox, said out loud -----------------------------------------------

@pytest.fixture()
def failing_bwrap(tmp_path):
    """A bwrap that fails at run time the way it does where user namespaces are off."""
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize("setting, why", [
    ("none", r"PIPEPLAN_BWRAP turns it off"),
    ("FAILING", r"failed here \(bwrap: setting up uid map: Permission denied\)"),
])
def test_notice_when_bwrap_is_missing_or_fails(setting, why, failing_bwrap, monkeypatch):
    from profiler.sandbox import sandbox_notice, sandbox_status

    monkeypatch.setenv("PIPEPLAN_BWRAP", str(failing_bwrap) if setting == "FAILING" else setting)
    ok, _ = sandbox_status()
    assert not ok
    note = sandbox_notice()
    assert re.search(why + r": file: models run in the weaker sandbox", note), note
    assert "\n" not in note


@pytest.mark.slow  # two sandbox children (~3 s each)
@pytest.mark.parametrize("setting", ["none", "FAILING"])
def test_fallback_sandbox_still_guards(setting, guarded, failing_bwrap, monkeypatch):
    """bwrap missing or failing at run time: the factory runs in the process sandbox, whose audit hook
    still refuses a write outside; a normal factory still profiles."""
    from core.errors import PipeplanError
    from profiler.sandbox import profile_file_factory
    from profiler.sources import load_profile

    monkeypatch.setenv("PIPEPLAN_BWRAP", str(failing_bwrap) if setting == "FAILING" else setting)
    with pytest.raises(PipeplanError, match=r"sandbox blocked writing \S*MARKER-outside"):
        profile_file_factory(f"{guarded}:write_marker", timeout_s=120)
    assert not (guarded.parent.parent / "MARKER-outside").exists()
    prof = load_profile(f"file:{guarded}:normal", allow_code=True)
    assert [n.id for n in prof.nodes] == ["0", "1", "2"]


@pytest.mark.slow  # two CLI processes, each with its sandbox child
def test_cli_says_which_sandbox(tmp_path):
    """Without bwrap the CLI adds one note line saying the weaker sandbox runs the code; with it, none."""
    path = _copy("raises", tmp_path)
    argv = ["profile", f"file:{path}:make_model", "--allow-code", "-o", str(tmp_path / "out.json"), "--quiet"]
    weak = run_cli(argv, timeout=300, extra_env={"PIPEPLAN_BWRAP": "none"})
    lines = [ln for ln in weak.stderr.splitlines() if ln.strip()]
    assert weak.rc == 2 and "Traceback" not in weak.stderr, weak.stderr
    assert len(lines) == 2, lines
    assert re.match(r"pipeplan profile: note: PIPEPLAN_BWRAP turns it off: file: models run in the weaker "
                    r"sandbox", lines[0]), lines
    assert lines[1].startswith("pipeplan profile: error: raises.py:make_model failed: RuntimeError: factory "
                               "exploded"), lines
    from profiler.sandbox import sandbox_status

    if sandbox_status()[0]:
        strong = run_cli(argv, timeout=300)
        assert [ln for ln in strong.stderr.splitlines() if ln.strip()] == [lines[1]], strong.stderr


def test_bwrap_command_hides_homes_and_binds_only_what_it_must(tmp_path):
    """The command itself (no bwrap needed): read-only root, private /tmp and homes made read-only after
    their mount points exist, the interpreter re-exposed read-only, scratch and factory folder writable;
    a factory directly in $HOME or in /usr gets its file only, read-only."""
    import sys
    from itertools import pairwise

    from profiler.sandbox import bwrap_command, folder_writable_under_bwrap

    home = os.path.realpath(os.path.expanduser("~"))
    work, job = str(tmp_path / "work"), str(tmp_path / "job")
    cmd = bwrap_command(work, job, job + "/m.py")
    pairs = list(pairwise(cmd))
    assert cmd[1:4] == ["--ro-bind", "/", "/"] and cmd[-1] == "--"
    for flag in ("--unshare-all", "--die-with-parent", "--new-session"):
        assert flag in cmd
    assert ("--cap-drop", "ALL") in pairs and ("--tmpfs", "/tmp") in pairs and ("--remount-ro", "/tmp") in pairs
    assert ("--tmpfs", home) in pairs or any(p == "--tmpfs" and home.startswith(q + "/") for p, q in pairs)
    assert ("--bind", work) in pairs and ("--bind", job) in pairs
    assert cmd.index("--remount-ro") < cmd.index("--bind")  # mount points first, then read-only, then binds
    exe_dir = os.path.dirname(os.path.realpath(sys.executable))
    if any(exe_dir.startswith(h + "/") for h in (home, "/root", "/home")):
        assert any(p == "--ro-bind" and exe_dir.startswith(q) for p, q in pairs), "the interpreter is hidden"
    assert not folder_writable_under_bwrap(home) and not folder_writable_under_bwrap("/usr")
    in_home = bwrap_command(work, home, home + "/m.py")
    home_pairs = list(pairwise(in_home))
    assert ("--bind", home) not in home_pairs and ("--ro-bind", home + "/m.py") in home_pairs
    assert "--dev-bind" not in cmd
