"""Shared helpers of the hostile-input tests: the valid base documents and the CLI runner."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hostile.corpus import Base, Case

ROOT = Path(__file__).resolve().parents[2]
FAKE_SECRET = "hunter2-pipeplan-test-secret"


def base_documents() -> Base:
    """A 6-layer chain profile, a 2-device cluster and a plan of it (3 + 3 layers), as JSON dicts."""
    from planner.contracts.cluster import Cluster
    from planner.contracts.config import TrainConfig
    from planner.solvers.evaluate import evaluate_partition
    from profiler.profile import ModelInfo, Profile, ProfileEdge, ProfileNode, Provenance

    n = 6
    nodes = [ProfileNode(id=f"layers.{i}", name=f"block {i}", kind="block", module_path=f"layers.{i}",
                         fwd_flops=1e9, bwd_flops=2e9, fwd_ms=1.0 + 0.1 * i, bwd_ms=2.0 + 0.2 * i,
                         param_bytes=4_000_000, param_count=1_000_000, activation_bytes=2_000_000,
                         output_bytes=65_536) for i in range(n)]
    edges = [ProfileEdge(src=f"layers.{i}", dst=f"layers.{i + 1}", bytes=65_536) for i in range(n - 1)]
    profile = Profile(model=ModelInfo(source="sample:gpt:tiny", name="hostile-base", param_count=n * 1_000_000,
                                      micro_batch_size=1, seq_len=64, input_bytes=512),
                      provenance=Provenance(method="estimated", device="A100-80GB", reference_tflops=19.5),
                      nodes=nodes, edges=edges)
    cluster = Cluster.uniform(2, memory_bytes=8 * 2**30)
    # a fixed 3 + 3 split, not the solver's choice: the cases edit stages by position and name layers
    plan = evaluate_partition(profile, cluster, TrainConfig(num_microbatches=4),
                              [[n.id for n in nodes[:3]], [n.id for n in nodes[3:]]],
                              fingerprint=profile.fingerprint())
    assert plan.feasible, "the base plan must be feasible"
    return Base(profile=profile.to_dict(), cluster=cluster.to_dict(), plan=plan.to_dict())


def module_exists(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@dataclass
class CliResult:
    rc: int
    stdout: str
    stderr: str
    seconds: float


def run_cli(argv: list[str], *, timeout: float = 120, cwd: Path | None = None,
            extra_env: dict[str, str] | None = None, wrap: list[str] | None = None) -> CliResult:
    """`python -m cli ARGV` in a fresh process, with a fake secret in its environment; `wrap` (from
    `wrapper`) goes in front of the command."""
    env = {**os.environ, "PIPEPLAN_FAKE_SECRET": FAKE_SECRET, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
           "PYTHONPATH": str(ROOT), **(extra_env or {})}
    env.pop("PIPEPLAN_ALLOW_CODE", None)
    start = time.monotonic()
    proc = subprocess.run([*(wrap or []), sys.executable, "-m", "cli", *argv], capture_output=True, timeout=timeout,
                          cwd=cwd or ROOT, env=env, check=False)
    return CliResult(proc.returncode, proc.stdout.decode("utf-8", "replace"),
                     proc.stderr.decode("utf-8", "replace"), time.monotonic() - start)


def run_in_process(argv: list[str], cwd: Path) -> CliResult:
    """cli.main(argv) in this process, cwd and env as run_cli sets them; a crash becomes a traceback."""
    import contextlib
    import io
    import traceback

    from cli import main

    out, err = io.StringIO(), io.StringIO()
    old_cwd, allow = os.getcwd(), os.environ.pop("PIPEPLAN_ALLOW_CODE", None)
    start = time.monotonic()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as exc:  # argparse usage errors
                rc = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001 - what the real process would print
                traceback.print_exc()
                rc = 1
    finally:
        os.chdir(old_cwd)
        if allow is not None:
            os.environ["PIPEPLAN_ALLOW_CODE"] = allow
    return CliResult(rc, out.getvalue(), err.getvalue(), time.monotonic() - start)


# -- wrappers for the "write" cases: a user without permission, a read-only or a full file system -----
NOBODY = 65534
FULL_MOUNT_SCRIPT = ('mount -t tmpfs -o size=64k tmpfs "$1" || exit 97; d=$1; shift; '
                     'head -c 1048576 /dev/zero > "$d/filler" 2>/dev/null; "$@"; rc=$?; '
                     'echo "LEFT ON THE FULL DISK: $(ls -A "$d" | tr "\\n" " ")"; exit $rc')
RO_MOUNT_SCRIPT = 'mount -t tmpfs -o ro,size=64k tmpfs "$1" || exit 97; shift; exec "$@"'


@functools.cache
def namespaces_work() -> bool:
    """Can this machine give a process a private mount namespace (unshare -rm) with its own tmpfs?"""
    if shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as d:
        try:
            return subprocess.run(["unshare", "-rm", "sh", "-c", RO_MOUNT_SCRIPT, "sh", d, "true"],
                                  capture_output=True, timeout=30, check=False).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False


def wrapper(case: Case, folder: Path) -> tuple[list[str] | None, str | None]:
    """(command prefix, None) for a case's extra["wrap"], or (None, why it cannot run here)."""
    wrap = case.extra.get("wrap")
    if wrap is None:
        return [], None
    if wrap == "nobody":
        if os.geteuid() != 0:
            return [], None  # the 0o500 folder refuses this user already
        if shutil.which("setpriv") is None:
            return None, "running as root without setpriv: cannot drop to a user the folder refuses"
        return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"], None
    if not namespaces_work():
        return None, "no private mount namespace here (unshare -rm) for a read-only or full tmpfs"
    script = RO_MOUNT_SCRIPT if wrap == "ro" else FULL_MOUNT_SCRIPT
    return ["unshare", "-rm", "sh", "-c", script, "sh", str(folder / case.extra["mount"])], None


def world_readable_folder(root: Path | None = None) -> Path:
    """A folder nobody (uid 65534) can reach: pytest's tmp_path is under a 0o700 folder of root's."""
    d = Path(tempfile.mkdtemp(prefix="pipeplan-hostile-", dir=root))
    d.chmod(0o755)
    return d


def snapshot(folder: Path) -> dict[str, tuple[str, int, str]]:
    """relative path -> (kind, mode, sha256 of a file's bytes) of everything under `folder`."""
    out: dict[str, tuple[str, int, str]] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root, name)
            st = p.lstat()
            if p.is_file() and not p.is_symlink():
                try:
                    digest = hashlib.sha256(p.read_bytes()).hexdigest()
                except OSError:
                    digest = "?"
                out[p.relative_to(folder).as_posix()] = ("file", st.st_mode, digest)
            else:
                out[p.relative_to(folder).as_posix()] = ("dir" if p.is_dir() else "other", st.st_mode, "")
    return out


def assert_nothing_left(before: dict, after: dict, case: Case, res: CliResult) -> None:
    """A refused write leaves the folder as it was: no temporary file, no partial output, nothing changed;
    on a full tmpfs (gone when the process ends) the wrapper lists what was left there."""
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert not (added or removed or changed), f"{case.name}: added {added}, removed {removed}, changed {changed}"
    left = [ln for ln in res.stdout.splitlines() if ln.startswith("LEFT ON THE FULL DISK:")]
    if case.extra.get("wrap") == "full":
        assert left and left[-1].split(":", 1)[1].split() == ["filler"], f"{case.name}: {left}"


def fill(argv: tuple[str, ...], *, path: Path, good_profile: Path, folder: Path) -> list[str]:
    return [a.format(path=path, good_profile=good_profile, out=folder / "out.json", out_dir=folder / "job_out",
                     folder=folder)
            for a in argv]


def assert_clear_refusal(res: CliResult, case: Case) -> str:
    """Exit 2, one line on stderr that starts `pipeplan COMMAND: error:` and matches the case's regex,
    no traceback anywhere."""
    both = res.stdout + res.stderr
    assert "Traceback" not in both, f"{case.name}: traceback\n{both[-3000:]}"
    assert res.rc == 2, f"{case.name}: exit {res.rc}, expected 2\n{both[-2000:]}"
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    # `pipeplan profile` may draw a progress line first; the error is the last line
    lines = [ln for ln in lines if not ln.lstrip("\r").startswith("[")]
    assert len(lines) == 1, f"{case.name}: expected one line on stderr, got {lines!r}"
    line = lines[0]
    prefix = f"pipeplan {case.cli[0]}: error: "
    assert line.startswith(prefix), line
    # the pattern is matched against the message after the prefix: "^" anchors at the message's start
    assert re.search(case.expect, line[len(prefix):]), f"{case.name}: {line!r} does not match {case.expect!r}"
    assert len(line) < 600, f"{case.name}: the error line is {len(line)} characters long"
    return line


def markers_absent(folder: Path, case: Case) -> None:
    for m in case.markers:
        assert not (folder / m).exists(), f"{case.name}: payload ran: {folder / m} exists"
