"""The model of this job: pipeplan sample model "@NAME@" at size "@SIZE@", copied with its
initialisation rule (init.py) so that the job needs only torch.

train.py uses exactly these names; to train your own model, provide the same ones:
    build_model() -> nn.Module           called under torch.device("meta")
    make_batch(batch_size, *, generator=None, device="cpu") -> (inputs tuple, target)
    loss_fn(output, target) -> scalar     mean over the batch
    init_parameters / init_buffers / materialize   (init.py: values depend on seed and FQN only)
"""

from .@NAME@ import SAMPLE
from .init import init_buffers, init_parameters, materialize

CONFIG = SAMPLE.sizes["@SIZE@"]
SHAPE = @SHAPE@
"""The @SHAPE_KIND@ the plan was profiled at; every micro-batch has this shape."""

__all__ = ["build_model", "init_buffers", "init_parameters", "loss_fn", "make_batch", "materialize"]


def build_model():
    return SAMPLE.factory(CONFIG)


def make_batch(batch_size, *, generator=None, device="cpu"):
    return SAMPLE.make_batch(CONFIG, batch_size, SHAPE, generator=generator, device=device)


def loss_fn(output, target):
    return SAMPLE.loss_fn(output, target)
