"""The model of this job: a Hugging Face causal LM built from config.json (next to this file),
with random weights from pipeplan's per-FQN initialisation rule (init.py). Needs transformers.

To fine-tune pretrained weights instead, load them by FQN into each stage after
train.py's materialize() (state-dict keys are the same FQNs).

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

from .init import init_buffers, init_parameters, materialize

SEQ_LEN = @SHAPE@
"""The sequence length the plan was profiled at; every micro-batch has this shape."""

__all__ = ["build_model", "make_batch", "loss_fn", "init_parameters", "init_buffers", "materialize"]


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
