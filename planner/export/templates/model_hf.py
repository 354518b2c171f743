"""The model of this job: a Hugging Face model (MODEL_CLASS, for TASK) built from config.json (next to this file),
with random weights from pipeplan's per-FQN initialisation rule (init.py). Needs transformers.

To fine-tune pretrained weights instead, run train.py with --weights (a safetensors checkpoint
folder of this model, or of its base model); --save-weights writes a folder from_pretrained loads.

train.py uses exactly these names:
    build_model() -> nn.Module           called under torch.device("meta")
    make_batch(batch_size, *, generator=None, device="cpu") -> (inputs tuple, target)
    loss_fn(output, target) -> scalar     mean over the batch
    init_parameters / init_buffers / materialize
"""

from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from . import init as _init
from .init import init_parameters

TASK = @TASK@
"""The training task pipeplan planned this model for (profiler.hf_tasks): causal-lm, seq2seq-lm,
masked-lm, image-classification or sequence-classification."""
MODEL_CLASS = @MODEL_CLASS@
"""The transformers class the plan was profiled with; the job builds the same one."""
SHAPE = @SHAPE@
"""The sequence length (image side for image models) the plan was profiled at; every micro-batch has it."""
SEQ_LEN = SHAPE

__all__ = ["build_model", "init_buffers", "init_parameters", "loss_fn", "make_batch", "materialize"]


def _config_for_class(config, cls):
    """The part of a composite config that `cls` is built from (a vision-language config's text_config),
    as transformers' Auto classes and pipeplan's profiler pick it."""
    if isinstance(config, cls.config_class):
        return config
    parts = [config.get_text_config(), *(getattr(config, k, None) for k in getattr(config, "sub_configs", {}))]
    return next((p for p in parts if isinstance(p, cls.config_class)), config)


@lru_cache(maxsize=1)
def _config():
    import transformers

    # Mixture-of-experts layers: transformers' default (grouped_mm) bakes the traced device's histogram
    # dtype into the graph, and train.py traces on meta, which on a CPU job (gloo) gives an op the CPU
    # lacks. batched_mm computes the same experts' outputs and traces the same on every device.
    extra = {} if torch.cuda.is_available() else {"experts_implementation": "batched_mm"}
    config = transformers.AutoConfig.from_pretrained(Path(__file__).resolve().parent, **extra)
    for part in [config, *(getattr(config, k, None) for k in getattr(config, "sub_configs", {}))]:
        if hasattr(part, "use_cache"):
            part.use_cache = False  # a KV cache in the output cannot be traced (torch.export) or pipelined
        if TASK == "image-classification" and isinstance(getattr(part, "image_size", None), int):
            part.image_size = SHAPE  # position embeddings follow the image side, as in the profile
    return _config_for_class(config, getattr(transformers, MODEL_CLASS))


def build_model():
    import transformers

    return getattr(transformers, MODEL_CLASS)._from_config(_config())


def make_batch(batch_size, *, generator=None, device="cpu"):
    """One batch of TASK with random contents: (inputs tuple, target).

    causal-lm: token ids (B, T), next-token targets. seq2seq-lm: source ids, an all-ones attention mask
    and decoder ids (B, T), next-token targets. masked-lm: token ids, a target token per position.
    image-classification: images (B, C, S, S), one label per image. sequence-classification: token ids,
    one label per sequence."""
    config = _config()
    meta = torch.device(device).type == "meta"
    if generator is None and not meta:
        generator = torch.Generator().manual_seed(0)

    def ints(high, shape):
        if meta:
            return torch.empty(shape, dtype=torch.long, device="meta")
        return torch.randint(0, high, shape, generator=generator).to(device)

    B, T = batch_size, SHAPE
    if TASK == "image-classification":
        channels = getattr(config, "num_channels", 3) or 3
        shape = (B, channels, SHAPE, SHAPE)
        images = torch.empty(shape, device="meta") if meta else torch.randn(shape, generator=generator).to(device)
        return (images,), ints(config.num_labels, (B,))
    vocab = getattr(config.get_text_config(), "vocab_size", None) or config.vocab_size
    if TASK == "seq2seq-lm":
        source, decoder = ints(vocab, (B, T)), ints(vocab, (B, T + 1))
        mask = torch.ones((B, T), dtype=torch.long, device=source.device)
        return (source, mask, decoder[:, :-1]), decoder[:, 1:]
    if TASK == "masked-lm":
        return (ints(vocab, (B, T)),), ints(vocab, (B, T))
    if TASK == "sequence-classification":
        return (ints(vocab, (B, T)),), ints(config.num_labels, (B,))
    seq = ints(vocab, (B, T + 1))
    return (seq[:, :-1],), seq[:, 1:]


def _logits(output):
    """The logits: the unsplit model returns a ModelOutput, the last stage a tensor or a tuple."""
    if hasattr(output, "logits"):
        return output.logits
    return output[0] if isinstance(output, (tuple, list)) else output


def loss_fn(output, target):
    """Mean cross-entropy: over every token for the LM tasks, over one label per sample otherwise."""
    logits = _logits(output)
    if TASK in ("image-classification", "sequence-classification"):
        return F.cross_entropy(logits.reshape(logits.shape[0], -1).float(), target)
    return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten())


@contextmanager
def _parameters_on_meta():
    """Build with parameters on meta (no memory, no init cost) but buffers where they are computed."""
    register = torch.nn.Module.register_parameter

    def to_meta(module, name, param):
        register(module, name, param)
        if param is not None:
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = to_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


@lru_cache(maxsize=1)
def _computed_buffers() -> dict:
    """FQN -> value of every buffer HF computes in __init__ (RoPE inv_freq, Swin's relative position
    index): building on meta loses them, so the model is built once more with its parameters on meta
    and its buffers on the CPU (buffers are small: no parameter memory is touched)."""
    with torch.device("cpu"), _parameters_on_meta():
        model = build_model()
    return {name: b for name, b in model.named_buffers()}


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
