"""Writing files and folders so that a failed write leaves nothing behind.

Every file pipeplan writes (the CLI's output JSON, the timeline HTML, the calibrated cluster, the
export folder) goes through these helpers:

- `write_file_atomic(path, data, what)`: the data goes to a temporary file in the target's own
  folder, is flushed to disk, then `os.replace`d over the target: readers see the old file or the
  new one, never half of it, and on any error the temporary file is removed. A target that exists
  and is not a regular file (`/dev/null`, `/dev/stdout`, a FIFO) is written in place: replacing a
  device node with a regular file would be wrong, and there is no half-written file to leave.
- `check_writable(path, what)`: the same checks before a long computation (profiling, solving,
  calibrating), so a typo in `-o` fails in a second, not after the work is done.
- `replace_folder(out, files, what, is_previous)`: a whole folder built as a temporary sibling and
  swapped in (the old folder renamed aside, the new one renamed in, the old one deleted), so an
  export into an existing folder never leaves a mix of old and new files.

OS errors (disk full, permission denied, a read-only place, a path that is a folder, a missing
parent) become one PipeplanError line: `cannot write plan JSON to 'out.json': no space left on
the device`.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

from core.errors import PipeplanError

_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "it is on a read-only file system",
    errno.EISDIR: "it is a folder",
    errno.EFBIG: "the file is too large for this file system",
    errno.ENAMETOOLONG: "the name is too long",
    errno.ELOOP: "too many symbolic links",
}


def _reason(exc: OSError, path: Path) -> str:
    """What went wrong, in words, for an OSError raised while writing `path`."""
    if exc.errno == errno.ENOENT:
        return f"its folder {str(path.parent)!r} does not exist"
    if exc.errno == errno.ENOTDIR:
        return f"{_first_non_folder(path.parent)!r} is a file, not a folder"
    return _REASONS.get(exc.errno, exc.strerror or type(exc).__name__)


def _first_non_folder(folder: Path) -> str:
    """The first component of `folder` that exists and is not a folder (for ENOTDIR)."""
    for p in [*reversed(folder.parents), folder]:
        try:
            st = os.stat(p)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            return str(p)
    return str(folder)


def write_error(exc: OSError, path: str | Path, what: str) -> PipeplanError:
    """The one-line error for an OSError while writing `what` to `path`."""
    return PipeplanError(f"cannot write {what} to {str(path)!r}: {_reason(exc, Path(path))}")


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)  # not thread-safe; only where /proc is missing
    os.umask(old)
    return old


def _lstat(p: Path, path: str | Path, what: str, *, follow: bool = True) -> os.stat_result | None:
    """p's stat, None if it does not exist; any other OSError (no permission to look) is the write's error."""
    try:
        return os.stat(p, follow_symlinks=follow)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise write_error(exc, path, what) from None


def _check_parent(parent: Path, path: str | Path, what: str) -> None:
    st = _lstat(parent, path, what)
    if st is None:
        blocker = _first_non_folder(parent)
        if blocker != str(parent):
            raise PipeplanError(f"cannot write {what} to {str(path)!r}: {blocker!r} is a file, not a folder")
        raise PipeplanError(f"cannot write {what} to {str(path)!r}: its folder {str(parent)!r} does not exist")
    if not stat.S_ISDIR(st.st_mode):
        raise PipeplanError(f"cannot write {what} to {str(path)!r}: {str(parent)!r} is a file, not a folder")


def _target(path: str | Path, what: str) -> tuple[Path, os.stat_result | None]:
    """The path to write (a symlink's target, so the link stays a link) and its stat, or None if new;
    refuses a folder and a missing or non-folder parent before anything is created."""
    if str(path) == "":
        raise PipeplanError(f"cannot write {what}: the output path is empty")
    p = Path(path)
    link = _lstat(p, path, what, follow=False)
    if link is not None and stat.S_ISLNK(link.st_mode):
        p = Path(os.path.realpath(p))
    st = _lstat(p, path, what)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise PipeplanError(f"cannot write {what} to {str(path)!r}: it is a folder; give a file name inside it")
    _check_parent(p.parent, path, what)
    return p, st


def _temp_name(folder: Path, name: str, kind: str) -> Path:
    return folder / f".{name}.{kind}-{secrets.token_hex(4)}"


def _create_temp(folder: Path, name: str) -> tuple[int, Path]:
    for _ in range(100):
        tmp = _temp_name(folder, name, "tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "could not find a free temporary name", str(folder))


def check_writable(path: str | Path, what: str) -> None:
    """Raise PipeplanError now if `write_file_atomic(path, ...)` would certainly fail: the path is a
    folder, its parent is missing or not a folder, or the folder refuses a new file (permission
    denied, read-only). Disk full is found only when the data is written."""
    p, st = _target(path, what)
    if st is not None and not stat.S_ISREG(st.st_mode):
        if not os.access(p, os.W_OK):
            raise PipeplanError(f"cannot write {what} to {str(path)!r}: permission denied")
        return
    try:
        fd, tmp = _create_temp(p.parent, p.name)
    except OSError as exc:
        raise write_error(exc, path, what) from None
    os.close(fd)
    os.unlink(tmp)


def write_file_atomic(path: str | Path, data: str | bytes, what: str, *, mode: int | None = None) -> Path:
    """Write `data` (text is UTF-8) to `path` all at once: a temporary file in the same folder,
    fsync'd, then renamed over `path`. On any OSError the temporary file is removed and a
    PipeplanError names `what`, the path and the reason. `mode` (e.g. 0o755) sets the permission
    bits; by default an existing file keeps its own and a new one gets 0o666 minus the umask."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    p, st = _target(path, what)
    try:
        if st is not None and not stat.S_ISREG(st.st_mode):
            _write_in_place(p, raw)  # /dev/null, /dev/stdout, a FIFO: nothing to rename over
            return p
        fd, tmp = _create_temp(p.parent, p.name)
    except OSError as exc:
        raise write_error(exc, path, what) from None
    try:
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            if mode is None:
                mode = stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~_umask()
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.replace(tmp, p)
    except BaseException as exc:
        _unlink_quietly(tmp)
        if isinstance(exc, OSError):
            raise write_error(exc, path, what) from None
        raise
    return p


def _write_in_place(p: Path, raw: bytes) -> None:
    with open(p, "wb") as f:
        f.write(raw)
        f.flush()


def _unlink_quietly(p: Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def _rmtree_quietly(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True)


def _check_folder_target(out: Path, what: str, is_previous: Callable[[Path], str | None]) -> os.stat_result | None:
    """replace_folder's refusals that need no writing; returns out's stat (None if it does not exist)."""
    if str(out) in ("", ".", "/") or out.name in ("", ".", ".."):
        raise PipeplanError(f"cannot write {what} to {str(out)!r}: give a new folder name such as job/")
    st = _lstat(out, out, what, follow=False)
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise PipeplanError(f"cannot write {what} to {str(out)!r}: it is a symbolic link; give a real folder")
        if not stat.S_ISDIR(st.st_mode):
            raise PipeplanError(f"cannot write {what} to {str(out)!r}: it exists and is not a folder")
        try:
            empty = not any(out.iterdir())
            why = None if empty else is_previous(out)
        except OSError as exc:
            raise write_error(exc, out, what) from None
        if why is not None:
            raise PipeplanError(f"cannot write {what} to {str(out)!r}: {why}")
    _check_parent(out.parent, out, what)
    return st


def check_folder_writable(out: str | Path, what: str, *, is_previous: Callable[[Path], str | None]) -> None:
    """Raise PipeplanError now if `replace_folder(out, ...)` would certainly fail (see there): the
    target is not a folder or not replaceable, its parent is missing, or the parent refuses a new
    folder (permission denied, read-only). Disk full is found only when the files are written."""
    out = Path(out)
    _check_folder_target(out, what, is_previous)
    probe = _temp_name(out.parent, out.name, "new")
    try:
        os.mkdir(probe, 0o700)
    except OSError as exc:
        raise write_error(exc, out, what) from None
    os.rmdir(probe)


def manifest_text(files: Mapping[str, str | bytes]) -> str:
    """The manifest replace_folder writes: the folder's files (not itself), sorted, one per line."""
    return "".join(f"{name}\n" for name in sorted(files))


def replace_folder(out: str | Path, files: Mapping[str, str | bytes], what: str, *,
                   is_previous: Callable[[Path], str | None], executable: tuple[str, ...] = (),
                   manifest: str | None = None) -> list[Path]:
    """Make `out` a folder holding exactly `files` (relative path -> contents), all or nothing.

    The folder is built as a temporary sibling `.NAME.new-XXXX`; then an existing `out` is renamed
    aside to `.NAME.old-XXXX`, the new folder is renamed to `out`, and the old one is deleted. On
    any error the temporary folders are removed and `out` is left as it was.

    An existing `out` is replaced only if it is an empty folder or `is_previous(out)` returns None;
    otherwise the string it returns says why not (e.g. "it is not a pipeplan export") and the
    export is refused. `manifest`, if given, names a file written into the folder that lists every
    file (one per line), so that a later call can recognise the folder as its own.
    Returns the paths of the files, as they are under `out`.
    """
    out = Path(out)
    st = _check_folder_target(out, what, is_previous)
    parent = out.parent
    new = _temp_name(parent, out.name, "new")
    old: Path | None = None
    try:
        os.mkdir(new, 0o777 & ~_umask())
        all_files = dict(files)
        if manifest is not None:
            all_files[manifest] = manifest_text(files)
        for rel, data in all_files.items():
            target = new / rel
            if not target.resolve().is_relative_to(new.resolve()) or rel.startswith("/"):
                raise PipeplanError(f"cannot write {what}: file name {rel!r} leaves the folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
            with open(target, "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
            if rel in executable:
                target.chmod(0o777 & ~_umask() | 0o111)
        if st is not None:
            old = _temp_name(parent, out.name, "old")
            os.rename(out, old)
        os.rename(new, out)
    except BaseException as exc:
        if old is not None and not os.path.lexists(out):  # the swap failed half-way (or Ctrl-C): put it back
            try:
                os.rename(old, out)
                old = None
            except OSError:
                pass
        _rmtree_quietly(new)
        if isinstance(exc, OSError):
            raise write_error(exc, out, what) from None
        raise
    if old is not None:
        _rmtree_quietly(old)
    return [out / rel for rel in sorted(files)]
