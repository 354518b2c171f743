"""Writes that fail (issue 18, class 2): core.files and every writer of the CLI.

Every file pipeplan writes goes through core.files: a temporary file in the target's folder renamed
over the target (write_file_atomic), or a whole folder built aside and swapped in (replace_folder,
the export). On disk full, permission denied, a read-only place, a path that is a folder or a
missing parent the CLI prints one line `pipeplan CMD: error: cannot write WHAT to 'PATH': REASON`,
exits 2 and leaves the folder as it was. The hostile corpus (tests/hostile/corpus.py, kind "write")
holds one case per writer and error class; the ones that need no wrapper (another user, a private
mount namespace) run here in-process, the rest in tests/test_hostile_cli.py.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest
from hostile.corpus import CASES, WRITERS, Base
from hostile.harness import assert_clear_refusal, assert_nothing_left, base_documents, fill, run_in_process, snapshot

from core.errors import PipeplanError
from core.files import check_folder_writable, check_writable, replace_folder, write_file_atomic
from planner.contracts.plan import Plan
from planner.export import export_plan, previous_export_problem

IN_PROCESS_WRITE_CASES = [c for c in CASES if c.kind == "write" and not c.extra.get("wrap")]


@pytest.fixture(scope="module")
def base() -> Base:
    return base_documents()


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders core.files would have made in `folder`."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and
                  any(f".{k}-" in p.name for k in ("tmp", "new", "old")))


# -- write_file_atomic -----------------------------------------------------------------------------

def test_write_file_atomic_writes_and_replaces(tmp_path):
    target = tmp_path / "plan.json"
    assert write_file_atomic(target, "first", "plan JSON") == target
    assert target.read_text() == "first"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_umask()
    target.chmod(0o640)
    write_file_atomic(target, b"second", "plan JSON")
    assert target.read_bytes() == b"second"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640, "an existing file keeps its permissions"
    assert leftovers(tmp_path) == []


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_write_file_atomic_follows_a_symlink_and_keeps_it(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    write_file_atomic(link, "new", "plan JSON")
    assert link.is_symlink() and real.read_text() == "new"


def test_write_file_atomic_writes_devices_in_place():
    write_file_atomic("/dev/null", "ignored", "plan JSON")  # not replaced by a regular file
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    with pytest.raises(PipeplanError, match=r"^cannot write plan JSON to '/dev/full': no space left on the device$"):
        write_file_atomic("/dev/full", "x" * 10_000, "plan JSON")
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


@pytest.mark.parametrize("where, expect", [
    (lambda d: d, r"it is a folder"),
    (lambda d: d / "missing" / "x.json", r"its folder '.*missing' does not exist"),
    (lambda d: d / "file" / "x.json", r"'.*file' is a file, not a folder"),
    (lambda d: d / "file" / "deeper" / "x.json", r"'.*file' is a file, not a folder"),
], ids=["folder", "missing_parent", "parent_is_file", "grandparent_is_file"])
def test_write_file_atomic_refuses_bad_paths_before_writing(tmp_path, where, expect):
    (tmp_path / "file").write_text("a file")
    before = snapshot(tmp_path)
    for call in (lambda p: check_writable(p, "plan JSON"), lambda p: write_file_atomic(p, "{}", "plan JSON")):
        with pytest.raises(PipeplanError, match=r"^cannot write plan JSON to '.*': " + expect):
            call(where(tmp_path))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("fail_in, error", [
    ("write", OSError(errno.ENOSPC, "No space left on device")),
    ("fsync", OSError(errno.EDQUOT, "Disk quota exceeded")),
    ("replace", OSError(errno.EROFS, "Read-only file system")),
    ("fsync", OSError(errno.EIO, "Input/output error")),
], ids=["enospc_in_write", "edquot_in_fsync", "erofs_in_rename", "eio"])
def test_write_file_atomic_removes_its_temporary_file_on_any_error(tmp_path, monkeypatch, fail_in, error):
    target = tmp_path / "out.json"
    target.write_text("the old, complete file")

    def fail(*args, **kwargs):
        raise error
    monkeypatch.setattr(os, fail_in, fail)
    with pytest.raises(PipeplanError, match=r"^cannot write plan JSON to '.*out.json': "):
        write_file_atomic(target, "new" * 1000, "plan JSON")
    monkeypatch.undo()
    assert target.read_text() == "the old, complete file", "the old file is untouched"
    assert leftovers(tmp_path) == []


def test_write_file_atomic_cleans_up_when_interrupted(tmp_path, monkeypatch):
    def interrupt(fd):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_file_atomic(tmp_path / "out.json", "data", "plan JSON")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0o500 folder anyway (tests/hostile: as nobody)")
def test_write_file_atomic_permission_denied(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(PipeplanError, match=r"permission denied$"):
            check_writable(locked / "x.json", "plan JSON")
        with pytest.raises(PipeplanError, match=r"permission denied$"):
            write_file_atomic(locked / "x.json", "{}", "plan JSON")
    finally:
        locked.chmod(0o700)
    assert list(locked.iterdir()) == []


# -- replace_folder and the export folder ------------------------------------------------------------

def never_previous(folder: Path) -> str | None:
    return "it is not ours"


def test_replace_folder_builds_aside_and_swaps(tmp_path):
    out = tmp_path / "job"
    files = {"a.txt": "A", "sub/b.txt": "B", "run.sh": "#!/bin/sh\n"}
    written = replace_folder(out, files, "the job", is_previous=lambda f: None, executable=("run.sh",),
                             manifest=".manifest")
    assert written == [out / "a.txt", out / "run.sh", out / "sub/b.txt"]
    assert (out / "sub/b.txt").read_text() == "B" and os.access(out / "run.sh", os.X_OK)
    assert (out / ".manifest").read_text().splitlines() == ["a.txt", "run.sh", "sub/b.txt"]
    replace_folder(out, {"c.txt": "C"}, "the job", is_previous=lambda f: None)
    assert sorted(p.name for p in out.iterdir()) == ["c.txt"], "no file of the old folder survives"
    assert leftovers(tmp_path) == []


def test_replace_folder_accepts_an_empty_folder_and_refuses_others(tmp_path):
    out = tmp_path / "job"
    out.mkdir()
    replace_folder(out, {"a.txt": "A"}, "the job", is_previous=never_previous)
    assert (out / "a.txt").read_text() == "A"
    with pytest.raises(PipeplanError, match=r"^cannot write the job to '.*job': it is not ours$"):
        replace_folder(out, {"b.txt": "B"}, "the job", is_previous=never_previous)
    with pytest.raises(PipeplanError, match=r"it is not ours$"):
        check_folder_writable(out, "the job", is_previous=never_previous)
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]


@pytest.mark.parametrize("calls_before_failure", [0, 1, 2])
def test_replace_folder_failing_midway_leaves_the_old_folder(tmp_path, monkeypatch, calls_before_failure):
    out = tmp_path / "job"
    replace_folder(out, {"a.txt": "old A", "b.txt": "old B"}, "the job", is_previous=lambda f: None)
    real_fsync, calls = os.fsync, []

    def full_disk(fd):
        calls.append(fd)
        if len(calls) > calls_before_failure:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(PipeplanError, match=r"^cannot write the job to '.*job': no space left on the device$"):
        replace_folder(out, {"a.txt": "new A", "b.txt": "new B", "c.txt": "new C"}, "the job",
                       is_previous=lambda f: None)
    monkeypatch.undo()
    assert {p.name: p.read_text() for p in out.iterdir()} == {"a.txt": "old A", "b.txt": "old B"}
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("error, raised", [(OSError(errno.EACCES, "Permission denied"), PipeplanError),
                                           (KeyboardInterrupt(), KeyboardInterrupt)], ids=["eacces", "ctrl_c"])
def test_replace_folder_restores_the_old_folder_when_the_swap_fails(tmp_path, monkeypatch, error, raised):
    out = tmp_path / "job"
    replace_folder(out, {"a.txt": "old"}, "the job", is_previous=lambda f: None)
    real_rename = os.rename

    def rename(src, dst):
        if Path(src).name.startswith(".job.new-"):  # after the old folder was renamed aside
            raise error
        real_rename(src, dst)
    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(raised):
        replace_folder(out, {"a.txt": "new"}, "the job", is_previous=lambda f: None)
    monkeypatch.undo()
    assert (out / "a.txt").read_text() == "old"
    assert leftovers(tmp_path) == []


def test_replace_folder_refuses_names_that_leave_the_folder(tmp_path):
    with pytest.raises(PipeplanError, match="leaves the folder"):
        replace_folder(tmp_path / "job", {"../escape.txt": "x"}, "the job", is_previous=lambda f: None)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "job").exists()
    assert leftovers(tmp_path) == []


def test_export_replaces_a_previous_export_whole(base, tmp_path):
    plan = Plan.from_dict(base.plan)
    job = tmp_path / "job"
    first = export_plan(plan, job)
    (job / "model" / "stale_from_an_old_version.py").write_text("x")  # an old export's own file ...
    (job / "__pycache__").mkdir()
    (job / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"")
    again = export_plan(plan, job)  # ... is gone after the re-export: no mix of old and new files
    assert sorted(again) == sorted(first)
    on_disk = sorted(p for p in job.rglob("*") if p.is_file())
    assert on_disk == sorted(first)
    assert leftovers(tmp_path) == []


def test_previous_export_recognised_and_what_it_may_hold(base, tmp_path):
    plan = Plan.from_dict(base.plan)
    job = tmp_path / "job"
    export_plan(plan, job)
    assert previous_export_problem(job) is None
    (job / "__pycache__").mkdir()
    assert previous_export_problem(job) is None, "python's own caches do not count"
    (job / "train.log").write_text("loss 3.2\n")
    assert "holds files the export did not write (train.log)" in previous_export_problem(job)
    assert previous_export_problem(job, {"train.log"}) is None
    (job / "train.log").unlink()
    (job / "plan.json").write_text('{"schema": "something/else"}')
    assert "not a pipeplan export" in previous_export_problem(job)


def test_cli_export_twice_into_the_same_folder(base, tmp_path):
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(base.plan))
    job = tmp_path / "job"
    for _ in range(2):
        res = run_in_process(["export", str(plan_file), "-o", str(job), "--zip"], tmp_path)
        assert res.rc == 0, res.stderr
    assert (job / "train.py").is_file() and (tmp_path / "job.zip").is_file()
    assert leftovers(tmp_path) == [] and leftovers(job) == []


# -- calibrate: its disk-full case needs a measurement (stubbed here) ----------------------------------

@pytest.fixture
def fake_calibration(monkeypatch):
    from planner.calibration import calibrate as calibration

    class Result:
        backend, device, latency_s, bandwidth_bytes_per_s, action_overhead_ms = "gloo", "cpu", 1e-5, 1e9, 0.5

        def to_dict(self):
            return {"backend": self.backend}

    def calibrated_cluster(result, devices, memory, name):
        from planner.contracts.cluster import Cluster

        return Cluster.uniform(devices, memory_bytes=memory)
    monkeypatch.setattr(calibration, "calibrate", lambda **kw: Result())
    monkeypatch.setattr(calibration, "calibrated_cluster", calibrated_cluster)


def test_calibrate_disk_full_is_one_line(fake_calibration, tmp_path):
    res = run_in_process(["calibrate", "-o", "/dev/full"], tmp_path)
    assert res.rc == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == ("pipeplan calibrate: error: cannot write calibrated cluster JSON "
                                                   "to '/dev/full': no space left on the device")


def test_calibrate_writes_its_cluster_atomically(fake_calibration, tmp_path, monkeypatch):
    from planner.contracts.cluster import Cluster

    out = tmp_path / "cluster.json"
    assert run_in_process(["calibrate", "-o", str(out)], tmp_path).rc == 0
    assert Cluster.from_json(out.read_text()).num_devices == 2
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    res = run_in_process(["calibrate", "-o", str(out), "--devices", "3"], tmp_path)
    assert res.rc == 2 and "no space left on the device" in res.stderr
    monkeypatch.undo()
    assert Cluster.from_json(out.read_text()).num_devices == 2, "the old calibration is intact"
    assert leftovers(tmp_path) == []


# -- the corpus's write cases that need no wrapper, through the CLI in-process -------------------------

@pytest.mark.parametrize("case", IN_PROCESS_WRITE_CASES, ids=lambda c: c.name)
def test_write_case_refused_cleanly(case, base, tmp_path):
    folder = tmp_path / case.name
    folder.mkdir()
    path = case.build(folder, base)
    argv = fill(case.cli, path=path, good_profile=folder / "in_profile.json", folder=folder)
    before = snapshot(folder)
    res = run_in_process(argv, folder)
    assert_clear_refusal(res, case)
    assert_nothing_left(before, snapshot(folder), case, res)


def test_every_writer_is_in_the_corpus():
    """grep-level guard: the CLI modules write only through core.files."""
    root = Path(__file__).resolve().parents[1]
    for module in (root / "cli").glob("*.py"):
        text = module.read_text()
        for call in (".write_text(", ".write_bytes(", "open("):
            assert call not in text, f"{module.name} writes with {call} instead of core.files"
    assert set(WRITERS) == {"profile", "plan", "html", "timeline", "export", "calibrate"}
