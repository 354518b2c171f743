"""The model of this job: @FACTORY@() from your file @ORIGIN@, copied here as user_model.py.

pipeplan only copied the file; it runs here, when you run train.py. The conventions are the
profiler's (`pipeplan profile file:PATH.py:@FACTORY@ --allow-code`): @FACTORY@() returns
(model, inputs) or (model, inputs, loss_fn, target), `inputs` being one micro-batch, batched on
dim 0; it is called with batch_size= and seq_len= when its signature takes them.

- Weights: pipeplan's per-FQN initialisation rule (init.py), not the file's own, so that each
  pipeline stage builds only its part and still gets exactly the unsplit model's values.
  Buffers the model computes in __init__ keep the values the factory gives them.
- Data (get_batch in train.py, until you plug in real data): each sample is a random row of the
  factory's example inputs and target, made once with seed 0 (up to POOL_ROWS rows). An input
  whose shape does not follow batch_size (e.g. a (T, T) mask) is passed whole to every micro-batch.
- Loss: the factory's loss_fn. Without one, the mean square of the model's floating-point
  outputs (MSE against zeros), with a placeholder target of zeros.

train.py uses exactly these names:
    build_model() -> nn.Module           called under torch.device("meta")
    make_batch(batch_size, *, generator=None, device="cpu") -> (inputs tuple, target)
    loss_fn(output, target) -> scalar     mean over the batch
    init_parameters / init_buffers / materialize
"""

import inspect
import warnings
from contextlib import contextmanager
from functools import lru_cache

import torch
from torch import nn

from . import init as _init
from . import user_model
from .init import init_parameters

FACTORY = "@FACTORY@"
MICRO_BATCH = @MBS@
SEQ_LEN = @SHAPE@
"""Passed as seq_len= when the factory takes it (None: the factory's default)."""
POOL_ROWS = 16
"""Rows of example data the factory is asked for (batch_size=); samples are drawn from them."""

__all__ = ["build_model", "init_buffers", "init_parameters", "loss_fn", "make_batch", "materialize"]


def _call_factory(batch_size):
    """(model, inputs tuple, loss_fn or None, target or None), checked like the profiler checks them."""
    fn = getattr(user_model, FACTORY, None)
    if not callable(fn):
        raise TypeError(f"user_model.py has no function {FACTORY!r}")
    takes = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in (("batch_size", batch_size), ("seq_len", SEQ_LEN)) if k in takes and v is not None}
    result = fn(**kwargs)
    if not isinstance(result, tuple) or len(result) not in (2, 4) or not isinstance(result[0], nn.Module):
        raise TypeError(f"{FACTORY}() must return (model, inputs) or (model, inputs, loss_fn, target)")
    inputs = (result[1],) if isinstance(result[1], torch.Tensor) else tuple(result[1])
    return (result[0], inputs, *result[2:]) if len(result) == 4 else (result[0], inputs, None, None)


def _takes_batch_size():
    return "batch_size" in inspect.signature(getattr(user_model, FACTORY)).parameters


@contextmanager
def _parameters_on_meta():
    """Parameters created meanwhile live on meta (no memory, whatever the model's size); buffers
    and the example inputs stay real. The same trick as accelerate's init_empty_weights."""
    register = nn.Module.register_parameter

    def on_meta(module, name, param):
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


@lru_cache(maxsize=1)
def _example():
    """(model with real buffers, example inputs, target, loss_fn) from one factory call on the
    CPU with seed 0; the caller's RNG state is left alone."""
    with torch.random.fork_rng(devices=[]), _parameters_on_meta(), torch.device("cpu"):
        torch.manual_seed(0)
        model, inputs, loss, target = _call_factory(max(MICRO_BATCH, POOL_ROWS))
    rows = inputs[0].shape[0] if inputs and inputs[0].dim() else 1
    if target is None:
        target = torch.zeros(rows)
    return model, inputs, target, loss


@lru_cache(maxsize=1)
def _batched():
    """Which inputs follow batch_size: those whose dim 0 changes when the factory (on meta) is
    asked for one more row. A factory without batch_size: inputs with the example's row count."""
    _, inputs, _, _ = _example()
    if not _takes_batch_size():
        rows = inputs[0].shape[0] if inputs[0].dim() else None
        return tuple(x.dim() > 0 and x.shape[0] == rows for x in inputs)
    with torch.device("meta"):
        more = _call_factory(max(MICRO_BATCH, POOL_ROWS) + 1)[1]
    return tuple(a.shape[:1] != b.shape[:1] for a, b in zip(inputs, more))


def build_model():
    return _call_factory(MICRO_BATCH)[0]


def _meta_rows(x, batch_size):
    return torch.empty((batch_size, *x.shape[1:]), dtype=x.dtype, device="meta")


def make_batch(batch_size, *, generator=None, device="cpu"):
    """`batch_size` samples: random rows of the example data (see the module docstring)."""
    _, inputs, target, _ = _example()
    batched = _batched()
    if torch.device(device).type == "meta":
        return (tuple(_meta_rows(x, batch_size) if b else x.to("meta") for x, b in zip(inputs, batched)),
                _meta_rows(target, batch_size))
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    pick = torch.randint(0, target.shape[0], (batch_size,), generator=generator)
    return (tuple((x[pick] if b else x).to(device) for x, b in zip(inputs, batched)),
            target[pick].to(device))


def loss_fn(output, target):
    user_loss = _example()[3]
    if user_loss is not None:
        return user_loss(output, target)
    outputs = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else (output,)
    return sum(o.float().pow(2).mean() for o in outputs if torch.is_tensor(o) and o.is_floating_point())


@torch.no_grad()
def init_buffers(named_buffers):
    """Buffers the factory computes get its values; others follow init.py. Returns unknown FQNs."""
    computed = dict(_example()[0].named_buffers())
    unknown = []
    for fqn, buf in named_buffers:
        if fqn in computed and not computed[fqn].is_meta:
            buf.copy_(computed[fqn])
        else:
            unknown += _init.init_buffers([(fqn, buf)])
    return unknown


def materialize(module, device, seed):
    """init.materialize (per-FQN parameters), then the computed buffers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns about buffers it cannot know; init_buffers sets them
        _init.materialize(module, device, seed)
    unknown = init_buffers(module.named_buffers())
    if unknown:
        warnings.warn(f"buffers without a known value (left uninitialised): {unknown}", stacklevel=2)
    return module
