"""Child side of profiler.sandbox: import the user's file, call the factory, write Profile JSON.

Run only by profiler.sandbox in a limited process. Any failure is printed as
one last stderr line "Type: message" and exit code 3.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys


def _call_factory(path: str, factory: str, batch_size: int, seq_len: int | None):
    spec = importlib.util.spec_from_file_location("pipeplan_user_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise ValueError(f"{path} has no function {factory!r}")
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in (("batch_size", batch_size), ("seq_len", seq_len))
              if k in params and v is not None}
    return fn(**kwargs)


def main(argv: list[str]) -> int:
    req = json.loads(argv[1])
    try:
        import torch
        from torch import nn

        from profiler.profile_model import profile_model

        result = _call_factory(req["path"], req["factory"], req["batch_size"], req["seq_len"])
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
                             granularity=req["granularity"])
        with open(req["output"], "w") as f:
            f.write(prof.to_json())
        return 0
    except BaseException as exc:  # report everything as one line; the parent turns it into a PipeplanError
        if isinstance(exc, SystemExit):
            print(f"SystemExit: the factory called sys.exit({exc.code})", file=sys.stderr)
        else:
            msg = str(exc).strip().splitlines()
            print(f"{type(exc).__name__}: {msg[0][:300] if msg else ''}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv))
