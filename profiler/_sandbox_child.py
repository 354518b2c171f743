"""Child side of profiler.sandbox: import the user's file, call the factory, write Profile JSON.

Run only by profiler.sandbox in a limited process. Any failure is printed as
one last stderr line "Type: message" and exit code 3.

Before the user's file is imported, an audit hook (`sys.addaudithook`, which Python code cannot
remove) refuses with PermissionError: writing, creating, removing, renaming or chmod-ing files
outside the sandbox's temporary working folder and the factory's own folder; starting processes
(subprocess, os.system, exec*, spawn*, fork); network connections (socket connect/bind/sendto);
and loading or calling native code through ctypes. See docs/security.md for what it does not stop.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import sys

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_ALWAYS_WRITABLE = frozenset({os.devnull})
_PATH_EVENTS = {  # event -> indexes of its path arguments that get written/changed
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.replace": (0, 1),
    "os.symlink": (1,), "os.link": (1,), "os.chmod": (0,), "os.chown": (0,), "os.truncate": (0,),
    "os.utime": (0,), "os.mkfifo": (0,), "os.mknod": (0,), "shutil.rmtree": (0,),
}
_PROCESS_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork",
                   "os.forkpty", "pty.spawn", "os.kill", "os.killpg")
_NETWORK_EVENTS = ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg")
_CTYPES_EVENTS = ("ctypes.dlopen", "ctypes.dlsym", "ctypes.call_function", "ctypes.cdata")


def install_guard(writable: list[str]) -> dict[str, bool]:
    """Install the audit hook; returns its state ({"user": False}); set "user" to True when user code starts."""
    roots = tuple(os.path.realpath(w) for w in writable)
    state = {"user": False}

    def inside(path) -> bool:
        if isinstance(path, int):  # an already open file descriptor
            return True
        try:
            real = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return False
        return real in _ALWAYS_WRITABLE or any(real == r or real.startswith(r + os.sep) for r in roots)

    def refuse(what: str) -> None:
        raise PermissionError(f"the sandbox blocked {what}")

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, 0))[:3]
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITE_FLAGS)
            if writes and not inside(path):
                refuse(f"writing {os.fsdecode(path)!s} (outside the factory's folder)")
        elif event in _PATH_EVENTS:
            for i in _PATH_EVENTS[event]:
                if i < len(args) and not inside(args[i]):
                    refuse(f"{event}({os.fsdecode(args[i])!s}) (outside the factory's folder)")
        elif event.startswith(_PROCESS_EVENTS):
            refuse(f"{event}: a model factory may not start processes")
        elif event in _NETWORK_EVENTS:
            refuse(f"{event}: a model factory may not use the network")
        elif state["user"] and event in _CTYPES_EVENTS:
            refuse(f"{event}: a model factory may not load or call native code through ctypes")

    sys.addaudithook(hook)
    return state


def _call_factory(path: str, factory: str, batch_size: int, seq_len: int | None):
    spec = importlib.util.spec_from_file_location("pipeplan_user_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise ValueError(f"{path} has no function {factory!r}")  # noqa: TRY004 - the parent reports "ValueError: ..."
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in (("batch_size", batch_size), ("seq_len", seq_len))
              if k in params and v is not None}
    return fn(**kwargs), kwargs


def main(argv: list[str]) -> int:
    req = json.loads(argv[1])
    try:
        import torch
        from torch import nn

        from profiler.profile_model import profile_model

        state = install_guard(req["writable"])
        state["user"] = True
        result, used = _call_factory(req["path"], req["factory"], req["batch_size"], req["seq_len"])
        if not isinstance(result, tuple) or len(result) not in (2, 4) or not isinstance(result[0], nn.Module):
            raise TypeError(f"{req['factory']}() must return (model, inputs) or (model, inputs, loss_fn, target), "
                            f"got {type(result).__name__}")
        model, inputs = result[0], result[1]
        loss_fn, target = (result[2], result[3]) if len(result) == 4 else (None, None)
        if isinstance(inputs, torch.Tensor):
            inputs = (inputs,)
        name = req["path"].rsplit("/", 1)[-1]
        prof = profile_model(model, tuple(inputs), loss_fn=loss_fn, target=target,
                             source=f"file:{name}:{req['factory']}", name=f"{name}:{req['factory']}",
                             estimate_for=req["estimate_for"], measure=req["measure"],
                             granularity=req["granularity"],
                             # recorded only when the factory took it, so an export rebuilds the same shapes
                             seq_len=used.get("seq_len"))
        with open(req["output"], "w") as f:
            f.write(prof.to_json())
        return 0
    except BaseException as exc:  # noqa: BLE001 - report everything as one line; the parent turns it into a PipeplanError
        if isinstance(exc, SystemExit):
            print(f"SystemExit: the factory called sys.exit({exc.code})", file=sys.stderr)
        else:
            msg = str(exc).strip().splitlines()
            print(f"{type(exc).__name__}: {msg[0][:300] if msg else ''}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv))
