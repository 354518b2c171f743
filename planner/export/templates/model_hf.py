"""The model of this job: a Hugging Face causal LM built from config.json (next to this file),
with random weights from pipeplan's per-FQN initialisation rule (init.py). Needs transformers.

To fine-tune pretrained weights instead, run train.py with --weights (a safetensors checkpoint
folder of this model, or of its base model); --save-weights writes a folder from_pretrained loads.

train.py uses exactly these names:
    build_model() -> nn.Module           called under torch.device("meta")
    make_batch(batch_size, *, generator=None, device="cpu") -> (inputs tuple, target)
    loss_fn(output, target) -> scalar     mean over the batch
    init_parameters / init_buffers / materialize
"""

from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from . import init as _init
from .init import init_parameters

SEQ_LEN = @SHAPE@
"""The sequence length the plan was profiled at; every micro-batch has this shape."""

__all__ = ["build_model", "init_buffers", "init_parameters", "loss_fn", "make_batch", "materialize"]


@lru_cache(maxsize=1)
def _config():
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(Path(__file__).resolve().parent)
    config.use_cache = False  # a KV cache in the output cannot be traced (torch.export) or pipelined
    return config


def build_model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(_config())


def make_batch(batch_size, *, generator=None, device="cpu"):
    """Random token ids (B, SEQ_LEN) and the next-token targets."""
    vocab = _config().vocab_size
    if torch.device(device).type == "meta":
        return (torch.empty(batch_size, SEQ_LEN, dtype=torch.long, device="meta"),), \
            torch.empty(batch_size, SEQ_LEN, dtype=torch.long, device="meta")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    seq = torch.randint(0, vocab, (batch_size, SEQ_LEN + 1), generator=generator).to(device)
    return (seq[:, :-1],), seq[:, 1:]


def loss_fn(output, target):
    """Mean next-token cross-entropy. The unsplit model returns a ModelOutput, the last stage its logits."""
    logits = output.logits if hasattr(output, "logits") else output
    return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten())


@lru_cache(maxsize=1)
def _computed_buffers() -> dict:
    """FQN -> value of buffers HF computes in __init__ (RoPE inv_freq): building on meta loses
    them, so the (parameter-free, small) modules holding them are rebuilt on the CPU."""
    with torch.device("meta"):
        model = build_model()
    values = {}
    for name, module in model.named_modules():
        if any(True for _ in module.buffers(recurse=False)) and not any(True for _ in module.parameters(recurse=False)):
            with torch.device("cpu"):
                fresh = type(module)(config=model.config)
            values.update({f"{name}.{b}": v for b, v in fresh.named_buffers(recurse=False)})
    return values


@torch.no_grad()
def init_buffers(named_buffers):
    """Computed buffers get their real values; others follow init.py. Returns unknown FQNs."""
    unknown = []
    for fqn, buf in named_buffers:
        if fqn in _computed_buffers():
            buf.copy_(_computed_buffers()[fqn])
        else:
            unknown += _init.init_buffers([(fqn, buf)])
    return unknown


def materialize(module, device, seed):
    """init.materialize (per-FQN parameters), then the computed buffers."""
    _init.materialize(module, device, seed)
    init_buffers(module.named_buffers())
    return module
