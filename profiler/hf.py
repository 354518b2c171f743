"""Hugging Face config.json -> Profile, with random weights and no download.

The model is built with `AutoModelFor*.from_config` on the meta device (on the
measuring device with --measure), `use_cache=False` (a DynamicCache in the
output breaks torch.export, shared notes §5), and
never with `trust_remote_code`: a config whose `auto_map` asks for custom code
is refused. Layer ids are module paths of the HF model ("model.layers.3").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from core.errors import PipeplanError
from core.jsonio import load_json_text
from profiler.memcheck import check_fits_for_measuring
from profiler.profile import Profile
from profiler.profile_model import profile_model

# model_type -> task. The task picks the Auto class, the inputs and the loss.
SUPPORTED: dict[str, str] = {
    "gpt2": "causal-lm", "llama": "causal-lm", "mistral": "causal-lm", "qwen2": "causal-lm",
    "bert": "masked-lm", "vit": "image-classification", "resnet": "image-classification",
}
_AUTO = {"causal-lm": "AutoModelForCausalLM", "masked-lm": "AutoModelForMaskedLM",
         "image-classification": "AutoModelForImageClassification"}
MAX_CONFIG_BYTES = 4 * 2**20
MAX_HF_LAYERS = 1024
"""More layers than any real model: building a million-layer config on meta takes hours."""
DEFAULT_SEQ_LEN = 1024


def read_config(config_json: dict | str | bytes | Path) -> dict[str, Any]:
    """The config as a dict, from a dict, JSON text, or a path to config.json."""
    if isinstance(config_json, dict):
        return config_json
    if not isinstance(config_json, (str, bytes, Path)):
        raise PipeplanError("HF config JSON must be an object (the contents of config.json)")
    if isinstance(config_json, Path) or (isinstance(config_json, str) and not config_json.lstrip().startswith("{")):
        path = Path(config_json)
        if not path.is_file():
            raise PipeplanError(f"HF config {str(path)!r} does not exist; point hf: at a config.json file")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise PipeplanError(f"HF config {str(path)!r} is larger than 4 MiB; is it really a config.json?")
        config_json = path.read_bytes()
    data = load_json_text(config_json, "HF config")
    if not isinstance(data, dict):
        raise PipeplanError("HF config JSON must be an object (the contents of config.json)")
    return data


def build_hf_model(data: dict[str, Any], *, device: str = "meta", seq_len: int | None = None):
    """(model, task, config) for a config dict; PipeplanError for what pipeplan does not support."""
    if "auto_map" in data:
        raise PipeplanError("this config asks for custom remote code (auto_map); pipeplan never runs "
                            "trust_remote_code. Use a built-in architecture: " + ", ".join(SUPPORTED))
    model_type = data.get("model_type")
    if model_type not in SUPPORTED:
        raise PipeplanError(f"HF model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED)} "
                            "(causal LMs, BERT-style masked LMs, ViT/ResNet image classifiers)")
    for key in ("num_hidden_layers", "n_layer", "num_layers", "depths"):
        value = data.get(key)
        count = sum(v for v in value if isinstance(v, int)) if isinstance(value, list) else value
        if isinstance(count, int) and not isinstance(count, bool) and count > MAX_HF_LAYERS:
            raise PipeplanError(f"HF config {key}={count} is more layers than pipeplan profiles "
                                f"(at most {MAX_HF_LAYERS}); check the config.json")
    try:
        import transformers
    except ImportError:
        raise PipeplanError("hf: models need transformers; install the extra: pip install 'pipeplan[hf]'") from None
    task = SUPPORTED[model_type]
    fields = {k: v for k, v in data.items() if k not in ("model_type", "architectures", "transformers_version")}
    fields.update(use_cache=False)
    if task == "image-classification" and model_type == "vit" and seq_len is not None:
        fields["image_size"] = seq_len  # position embeddings follow the image side
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        config = transformers.AutoConfig.for_model(model_type, **fields)
        with torch.device(device):
            model = getattr(transformers, _AUTO[task]).from_config(config, trust_remote_code=False)
    except PipeplanError:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for bad configs
        raise PipeplanError(f"transformers could not build {model_type!r} from this config: "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    return model, task, config


def make_hf_batch(task: str, config, batch_size: int, seq_len: int | None, device: str):
    """(inputs, target, loss_fn, shape) for one micro-batch of the task."""
    gen = torch.Generator().manual_seed(0)

    def ints(high: int, shape: tuple) -> torch.Tensor:
        if device == "meta":
            return torch.empty(shape, dtype=torch.long, device="meta")
        return torch.randint(0, high, shape, generator=gen).to(device)

    if task in ("causal-lm", "masked-lm"):
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        t = seq_len or min(DEFAULT_SEQ_LEN, limit or DEFAULT_SEQ_LEN)
        if limit and t > limit:
            raise PipeplanError(f"sequence length {t} exceeds this model's max_position_embeddings ({limit})")
        ids = ints(config.vocab_size, (batch_size, t + 1))
        loss: Callable = lambda out, tgt: F.cross_entropy(out.flatten(0, 1).float(), tgt.flatten())
        return (ids[:, :-1],), ids[:, 1:], loss, t
    side = seq_len or getattr(config, "image_size", None) or 224
    channels = getattr(config, "num_channels", 3)
    shape = (batch_size, channels, side, side)
    images = torch.empty(shape, device="meta") if device == "meta" else torch.randn(shape, generator=gen).to(device)
    labels = ints(config.num_labels, (batch_size,))
    return (images,), labels, (lambda out, tgt: F.cross_entropy(out.float(), tgt)), side


def profile_hf_config(config_json: dict | str | bytes | Path, *, batch_size: int = 1, seq_len: int | None = None,
                      estimate_for: str | None = None, measure: str | None = None, granularity: str = "block",
                      progress: Callable[[str, float], None] | None = None, source: str | None = None) -> Profile:
    """Profile an HF architecture from its config.json (dict, JSON text or path)."""
    data = read_config(config_json)
    device = measure or "meta"
    if measure is not None:
        meta_model, _, _ = build_hf_model(data, device="meta", seq_len=seq_len)
        check_fits_for_measuring(2 * sum(p.numel() * p.element_size() for p in meta_model.parameters()),
                                 measure, "this HF model")
    model, task, config = build_hf_model(data, device=device, seq_len=seq_len)
    inputs, target, loss_fn, shape = make_hf_batch(task, config, batch_size, seq_len, device)
    name = (data.get("architectures") or [type(model).__name__])[0]
    kwargs = {"seq_len": shape} if task != "image-classification" else {"image_size": shape}
    return profile_model(model, inputs, loss_fn=lambda out, tgt: loss_fn(out[0] if isinstance(out, tuple) else out, tgt),
                         target=target, source=source or f"hf:{data.get('model_type')}", name=name,
                         estimate_for=estimate_for, measure=measure, granularity=granularity, progress=progress,
                         **kwargs)


