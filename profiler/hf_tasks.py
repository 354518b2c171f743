"""Which transformers class a config builds, and what one training micro-batch of its task is.

No allowlist: the class comes from transformers' own auto registries
(`transformers.models.auto.modeling_auto.*_MAPPING_NAMES`, model_type -> class name).

1. The config's `architectures[0]`, when it is the registered class of this model_type for one
   of the tasks below (e.g. `Qwen2ForCausalLM`, `BertForSequenceClassification`).
2. Otherwise the first task, in `TASKS` order, whose registry has this model_type:
   causal LM, seq2seq LM (when the class takes token ids, not audio), masked LM, image
   classification, sequence classification.

An encoder-decoder (T5, BART, Marian, ...) trains as a seq2seq LM: source ids, decoder ids and
next-token targets of the same length. Its layer graph has two stacks; the encoder output is an
edge into every decoder layer that reads it (relayed across the cuts in between).

Each task is written once here: its Auto registry, its inputs, its target and its loss.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from core.errors import PipeplanError

DEFAULT_SEQ_LEN = 1024
"""The sequence length of a config that states no maximum."""
MAX_DEFAULT_SEQ_LEN = 8192
"""A config's max_position_embeddings is its default length up to this (long-context models are usually
trained at a few thousand tokens first; pass --seq-len for more)."""


@dataclass(frozen=True)
class Task:
    name: str
    registry: str
    """The `modeling_auto` mapping of model_type -> class name(s)."""
    label: str
    """For messages: 'causal LM'."""
    shape_kind: str
    """'seq_len' (token ids) or 'image_size' (pixel_values)."""


TASKS: tuple[Task, ...] = (
    Task("causal-lm", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "causal LM", "seq_len"),
    Task("seq2seq-lm", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "seq2seq LM", "seq_len"),
    Task("masked-lm", "MODEL_FOR_MASKED_LM_MAPPING_NAMES", "masked LM", "seq_len"),
    Task("image-classification", "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES", "image classification", "image_size"),
    Task("sequence-classification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", "sequence classification",
         "seq_len"),
)
TASK_BY_NAME = {t.name: t for t in TASKS}


def registry(task: Task) -> dict[str, tuple[str, ...]]:
    """model_type -> class names registered for `task` (most types have one)."""
    from transformers.models.auto import modeling_auto

    return {k: (v,) if isinstance(v, str) else tuple(v) for k, v in getattr(modeling_auto, task.registry).items()}


@lru_cache(maxsize=1)
def _registries() -> dict[str, dict[str, tuple[str, ...]]]:
    return {t.name: registry(t) for t in TASKS}


def architectures() -> list[str]:
    """Every model_type transformers registers for a task pipeplan trains, sorted (the app's picker)."""
    return sorted({t for reg in _registries().values() for t in reg})


def pick_class(model_type: str, architectures: list | None) -> tuple[Task, str]:
    """(task, class name) for a model_type and the config's `architectures` (see the module docstring)."""
    regs = _registries()
    arch = architectures[0] if isinstance(architectures, list) and architectures and \
        isinstance(architectures[0], str) else None
    if arch is not None:
        for task in TASKS:
            if arch in regs[task.name].get(model_type, ()):
                return task, arch
    for task in TASKS:
        names = regs[task.name].get(model_type)
        if names and (task.name != "seq2seq-lm" or _takes_seq2seq_args(names[0])):
            return task, names[0]
    raise PipeplanError(f"HF model_type {model_type!r} has no auto class for any task pipeplan trains "
                        f"({', '.join(t.label for t in TASKS)}) in this transformers version; "
                        "speech models and encoder-only base models are not supported yet")




def _logits(out):
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, dict):
        return out.get("logits", next(iter(out.values())))
    return out[0] if isinstance(out, (tuple, list)) else out


def token_loss(out, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every token (next-token targets for causal LMs, tokens for MLM)."""
    logits = _logits(out)
    return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten())


def label_loss(out, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of one label per sample (image and sequence classification)."""
    logits = _logits(out)
    return F.cross_entropy(logits.reshape(logits.shape[0], -1).float(), target)


def text_config(config):
    """The text part of a composite config (vocabulary, positions), or the config itself."""
    try:
        return config.get_text_config() or config
    except Exception:  # noqa: BLE001 - older or unusual configs: the config itself
        return config


def _text_len(config, seq_len: int | None) -> int:
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    limit = limit if isinstance(limit, int) and limit > 0 else None
    # the model's own length by default (a 4096-token Llama is planned at 4096, not 1024)
    t = seq_len or (min(limit, MAX_DEFAULT_SEQ_LEN) if limit else DEFAULT_SEQ_LEN)
    if limit and t > limit:
        raise PipeplanError(f"sequence length {t} exceeds this model's max_position_embeddings ({limit})")
    return t


def image_side(config, seq_len: int | None) -> int:
    size = getattr(config, "image_size", None)
    if size is None:  # composite models: the vision part's
        size = getattr(getattr(config, "vision_config", None), "image_size", None)
    if isinstance(size, (list, tuple)) and size:
        size = size[0]
    return seq_len or (size if isinstance(size, int) and size > 0 else 224)


SEQ2SEQ_ARGS = ("input_ids", "attention_mask", "decoder_input_ids")
"""The positional inputs of the encoder-decoders pipeplan trains (T5, BART, Marian, Pegasus, ...). Every
input is a tensor (the mask all ones), so the pipeline's first stage receives no None."""


def _takes_seq2seq_args(class_name: str) -> bool:
    """Whether transformers' class takes SEQ2SEQ_ARGS first (speech-to-text models in the seq2seq
    registry take audio features instead: they go on to the next task)."""
    import transformers

    cls = getattr(transformers, class_name, None)
    try:
        return cls is not None and tuple(list(inspect.signature(cls.forward).parameters)[1:4]) == SEQ2SEQ_ARGS
    except (TypeError, ValueError):
        return False


def seq2seq_inputs(model_class: type | None, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor) -> tuple:
    """(input_ids, attention_mask, decoder_input_ids) for a forward that takes them in this order."""
    names = list(inspect.signature(model_class.forward).parameters)[1:4] if model_class is not None else []
    if tuple(names) != SEQ2SEQ_ARGS:
        raise PipeplanError(f"{getattr(model_class, '__name__', 'this model')}.forward does not start with "
                            f"{', '.join(SEQ2SEQ_ARGS)}; pipeplan trains encoder-decoders whose forward does")
    mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
    return input_ids, mask, decoder_input_ids


def make_batch(task: Task, config, batch_size: int, seq_len: int | None, device: str,
               model_class: type | None = None) -> tuple[tuple, torch.Tensor, Callable, int]:
    """(inputs, target, loss_fn(output, target), shape) for one micro-batch of `task` (model_class: the
    class built, needed for the order of a seq2seq model's inputs)."""
    gen = torch.Generator().manual_seed(0)

    def ints(high: int, shape: tuple) -> torch.Tensor:
        if device == "meta":
            return torch.empty(shape, dtype=torch.long, device="meta")
        return torch.randint(0, high, shape, generator=gen).to(device)

    if task.shape_kind == "seq_len":
        text = text_config(config)
        t = _text_len(text, seq_len)
        vocab = getattr(text, "vocab_size", None) or getattr(config, "vocab_size", None)
        vocab = vocab if isinstance(vocab, int) else 0
        if vocab <= 0:
            raise PipeplanError(f"this {task.label} config has no vocab_size; add one to config.json")
        if task.name == "causal-lm":
            ids = ints(vocab, (batch_size, t + 1))
            return (ids[:, :-1],), ids[:, 1:], token_loss, t
        if task.name == "seq2seq-lm":
            decoder = ints(vocab, (batch_size, t + 1))
            return seq2seq_inputs(model_class, ints(vocab, (batch_size, t)), decoder[:, :-1]), decoder[:, 1:], \
                token_loss, t
        if task.name == "masked-lm":
            ids = ints(vocab, (batch_size, t))
            return (ids,), ints(vocab, (batch_size, t)), token_loss, t
        return (ints(vocab, (batch_size, t)),), ints(config.num_labels, (batch_size,)), label_loss, t
    side = image_side(config, seq_len)
    channels = getattr(config, "num_channels", 3)
    channels = channels if isinstance(channels, int) and channels > 0 else 3
    shape = (batch_size, channels, side, side)
    images = torch.empty(shape, device="meta") if device == "meta" else torch.randn(shape, generator=gen).to(device)
    return (images,), ints(config.num_labels, (batch_size,)), label_loss, side
