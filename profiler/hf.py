"""Hugging Face config.json -> Profile, with random weights and no download.

Any architecture transformers can build from a config: the class comes from
transformers' own auto registries (profiler.hf_tasks: the config's `architectures`
entry when transformers registers it, else the first task of causal LM, seq2seq LM, masked LM,
image classification, sequence classification that has this model_type). The
model is built from the config on the meta device (on the measuring device with
--measure), `use_cache=False` (a DynamicCache in the output breaks torch.export,
shared notes §5), and never with `trust_remote_code`: a config whose `auto_map`
asks for custom code is refused. Layer ids are module paths of the HF model
("model.layers.3"), from the structural rule of profiler/trace.py.

Whatever goes wrong is one line (PipeplanError): an unknown model_type, no auto
class for any task, remote code, a config transformers refuses, or a trace failure
naming the module and source line it happened in.
"""

from __future__ import annotations

import logging
import threading
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.fx.experimental.symbolic_shapes import is_concrete_int

from core.errors import PipeplanError
from core.jsonio import load_json_text
from core.limits import MAX_HF_LAYERS, check_hf_config_sizes, check_shape  # noqa: F401  (MAX_HF_LAYERS: re-exported)
from profiler import hf_moe
from profiler.hf_tasks import TASK_BY_NAME, TASKS, architectures, make_batch, pick_class
from profiler.memcheck import check_fits_for_measuring
from profiler.profile import Profile
from profiler.profile_model import profile_model

MAX_CONFIG_BYTES = 4 * 2**20
_DROP = ("model_type", "architectures", "transformers_version", "auto_map")


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


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}"


def _import_transformers():
    try:
        import transformers
    except ImportError:
        raise PipeplanError("hf: models need transformers; install the extra: pip install 'pipeplan[hf]'") from None
    logging.getLogger("transformers").setLevel(logging.ERROR)
    return transformers


def resolve_class(data: dict[str, Any]):
    """(task, class name) for a config dict, or a one-line PipeplanError."""
    if "auto_map" in data:
        raise PipeplanError("this config asks for custom remote code (auto_map); pipeplan never runs "
                            "trust_remote_code. Use an architecture built into transformers")
    model_type = data.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise PipeplanError("HF config has no model_type; config.json must name its architecture "
                            "(e.g. \"model_type\": \"llama\")")
    transformers = _import_transformers()
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if model_type not in CONFIG_MAPPING_NAMES:
        raise PipeplanError(f"HF model_type {model_type!r} is unknown to transformers {transformers.__version__} "
                            "(a newer transformers, or a model that needs remote code); pipeplan never runs "
                            "trust_remote_code")
    return pick_class(model_type, data.get("architectures"))


def default_config(model_type: str) -> dict[str, Any]:
    """transformers' own default config of an architecture, as a config.json dict (no download: every
    value is the library's default, usually the family's base size)."""
    if model_type not in architectures():
        raise PipeplanError(f"HF model_type {model_type!r} is not an architecture pipeplan trains; pick one of "
                            "profiler.hf_tasks.architectures()")
    transformers = _import_transformers()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = transformers.AutoConfig.for_model(model_type).to_dict()
    return {k: v for k, v in data.items() if k not in ("transformers_version", "_name_or_path", "architectures")}


def build_hf_model(data: dict[str, Any], *, device: str = "meta", seq_len: int | None = None,
                   task: str | None = None):
    """(model, task name, config) for a config dict; PipeplanError for what pipeplan cannot build.

    task: force one of profiler.hf_tasks.TASKS instead of the architectures/priority choice."""
    check_hf_config_sizes(data)  # before transformers builds anything proportional to a size
    picked, class_name = resolve_class(data)
    model_type = data["model_type"]
    if task is not None:
        from profiler.hf_tasks import registry

        picked = TASK_BY_NAME[task]
        names = registry(picked).get(model_type)
        if not names:
            raise PipeplanError(f"HF model_type {model_type!r} has no {picked.label} class in transformers")
        class_name = names[0]
    transformers = _import_transformers()
    cls = getattr(transformers, class_name, None)
    if cls is None:
        raise PipeplanError(f"transformers {transformers.__version__} registers {class_name} for {model_type!r} "
                            "but cannot import it (a missing optional dependency?)")
    fields = {k: v for k, v in data.items() if k not in _DROP}
    fields.update(use_cache=False)
    if device == "meta" and "experts_implementation" not in fields and hf_moe.register():
        fields["experts_implementation"] = hf_moe.BALANCED  # routing is data-dependent: see profiler.hf_moe
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = transformers.AutoConfig.for_model(model_type, **fields)
            for sub in [config.get_text_config(), *(getattr(config, k, None) for k in getattr(config, "sub_configs", {}))]:
                if hasattr(sub, "use_cache"):
                    sub.use_cache = False  # composite models (vision + text): the text part's cache too
            if picked.shape_kind == "image_size" and seq_len is not None:
                for sub in [config, *(getattr(config, k, None) for k in getattr(config, "sub_configs", {}))]:
                    if isinstance(getattr(sub, "image_size", None), int):
                        sub.image_size = seq_len  # position embeddings follow the image side
            config = _config_for_class(config, cls)
            with torch.device(device):
                model = cls._from_config(config)
    except PipeplanError:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for bad configs
        raise PipeplanError(f"transformers could not build {class_name} from this config: {_first_line(exc)}") from None
    return model, picked.name, config


def _config_for_class(config, cls):
    """The part of a composite config that `cls` is built from, as transformers' Auto classes pick it: a
    Qwen3.5 or Llama-4 config.json describes the vision-language model, and its causal LM is built from
    the `text_config`; MusicGen's from its `decoder`. The config itself when it is already of that class."""
    wanted = getattr(cls, "config_class", None)
    if wanted is None or isinstance(config, wanted):
        return config
    parts = [config.get_text_config(), *(getattr(config, k, None) for k in getattr(config, "sub_configs", {}))]
    return next((p for p in parts if isinstance(p, wanted)), config)


def make_hf_batch(task: str, config, batch_size: int, seq_len: int | None, device: str,
                  model_class: type | None = None):
    """(inputs, target, loss_fn, shape) for one micro-batch of the task (profiler.hf_tasks.make_batch)."""
    return make_batch(TASK_BY_NAME[task], config, batch_size, seq_len, device, model_class)


def _where(exc: BaseException, model: torch.nn.Module) -> str:
    """' in module model.layers.0.mlp (MixtralSparseMoeBlock) at modeling_mixtral.py:120: `code`' for the
    innermost frame of the traceback that runs a submodule of `model`, or ''."""
    paths = {id(m): p for p, m in model.named_modules()}
    tb = exc.__traceback__
    found = ""
    while tb is not None:
        frame = tb.tb_frame
        owner = frame.f_locals.get("self")
        if owner is not None and id(owner) in paths:
            line = (traceback.extract_tb(tb, limit=1)[0].line or "").strip()
            path = paths[id(owner)] or "(root)"
            found = (f" in module {path} ({type(owner).__name__}) at "
                     f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}: `{line[:120]}`")
        tb = tb.tb_next
    return found


def _trace_failure(model, inputs, name: str) -> PipeplanError:
    """The one-line reason torch.export gives for this model, naming the module it failed in."""
    try:
        torch.export.export(model, tuple(inputs), strict=False)
    except Exception as exc:  # noqa: BLE001 - the reason is what we are after
        return PipeplanError(f"cannot trace {name}: {_first_line(exc)}{_where(exc, model)}")
    return PipeplanError(f"cannot trace {name} (torch.export succeeded on retry; profile again)")


def profile_hf_config(config_json: dict | str | bytes | Path, *, batch_size: int = 1, seq_len: int | None = None,
                      estimate_for: str | None = None, measure: str | None = None, granularity: str = "block",
                      progress: Callable[[str, float], None] | None = None, source: str | None = None,
                      task: str | None = None) -> Profile:
    """Profile an HF architecture from its config.json (dict, JSON text or path)."""
    check_shape(batch_size, seq_len)
    data = read_config(config_json)
    device = measure or "meta"
    if measure is not None:
        meta_model, _, _ = build_hf_model(data, device="meta", seq_len=seq_len, task=task)
        check_fits_for_measuring(2 * sum(p.numel() * p.element_size() for p in meta_model.parameters()),
                                 measure, "this HF model")
    model, task_name, config = build_hf_model(data, device=device, seq_len=seq_len, task=task)
    return _profile_built(model, task_name, config, data, batch_size=batch_size, seq_len=seq_len, device=device,
                          estimate_for=estimate_for, measure=measure, granularity=granularity, progress=progress,
                          source=source)


def _profile_built(model, task_name: str, config, data: dict[str, Any], *, batch_size: int, seq_len: int | None,
                   device: str, estimate_for: str | None, measure: str | None, granularity: str,
                   progress: Callable[[str, float], None] | None, source: str | None, **trace) -> Profile:
    """profile_hf_config once the model is built; `trace`: profile_model's dynamic_shapes, keep_trace, reuse."""
    inputs, target, loss_fn, shape = make_hf_batch(task_name, config, batch_size, seq_len, device, type(model))
    name = type(model).__name__
    kwargs = {TASK_BY_NAME[task_name].shape_kind: shape}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prof = profile_model(model, inputs, loss_fn=loss_fn, target=target,
                                 source=source or f"hf:{data.get('model_type')}", name=name,
                                 estimate_for=estimate_for, measure=measure, granularity=granularity,
                                 progress=progress, **kwargs, **trace)
    except PipeplanError as exc:
        if str(exc).startswith("cannot trace the model"):
            raise _trace_failure(model, inputs, name) from None
        raise
    except Exception as exc:  # noqa: BLE001 - an op the analysis cannot run: one line, not a traceback
        raise PipeplanError(f"cannot profile {name}: {_first_line(exc)}{_where(exc, model)}") from None
    if hf_moe.uses_balanced(model):
        prof.provenance.notes += "; " + hf_moe.NOTE
    return prof


class HfLengthProfiler:
    """One HF config.json profiled at many sequence lengths from one trace (the app's "Sequence length").

    The first profile traces with the token dimension symbolic (torch.export's Dim.AUTO, on the meta
    device); every later length runs only the analysis again on those shape-generic layer programs,
    less than half the work. `profile(n)` equals `profile_hf_config(config, seq_len=n, ...)` field
    by field (tests/test_hf_lengths.py). It is exactly that call when the trace cannot stay generic:
    an image model (its size changes the config), export specialising the length or bounding it
    below n, or any error in the reuse.
    """

    def __init__(self, config_json: dict | str | bytes | Path, *, batch_size: int = 1,
                 estimate_for: str | None = None, source: str | None = None, task: str | None = None) -> None:
        self._data = read_config(config_json)
        check_hf_config_sizes(self._data)
        self._args = {"batch_size": batch_size, "estimate_for": estimate_for, "source": source, "task": task}
        self._lock = threading.Lock()  # one app server, many sessions: the model is shortened while traced
        self._built = None
        self._trace = None
        self._ranges: list = []
        """Per token input, the lengths the kept trace holds for (export's range of its symbol)."""
        self._may_trace = TASK_BY_NAME[resolve_class(self._data)[0].name if task is None else task].shape_kind \
            == "seq_len"
        """False once a generic trace failed, and for image models."""
        self._specialised = False
        """Export fixed every token dimension at the first length: that trace was a static one."""
        self.reused = 0
        """How many profiles came from the kept trace (for tests and benchmarks)."""

    def profile(self, seq_len: int | None = None, progress: Callable[[str, float], None] | None = None) -> Profile:
        with self._lock:
            return self._profile(seq_len, progress)

    def _profile(self, seq_len: int | None, progress: Callable[[str, float], None] | None) -> Profile:
        args = self._args
        if self._trace is None and not self._may_trace:
            return profile_hf_config(self._data, seq_len=seq_len, progress=progress, **args)
        check_shape(args["batch_size"], seq_len)
        if self._built is None:
            self._built = build_hf_model(self._data, device="meta", seq_len=seq_len, task=args["task"])
        model, task_name, config = self._built
        common = {"batch_size": args["batch_size"], "seq_len": seq_len, "device": "meta",
                  "estimate_for": args["estimate_for"], "measure": None, "granularity": "block",
                  "progress": progress, "source": args["source"]}
        inputs = make_hf_batch(task_name, config, args["batch_size"], seq_len, "meta", type(model))[0]
        lengths = [x.shape[1] for x in inputs if isinstance(x, torch.Tensor) and x.dim() >= 2]
        if self._trace is not None and all(r.lower <= n <= r.upper for r, n in zip(self._ranges, lengths)):
            try:
                prof = _profile_built(model, task_name, config, self._data, reuse=self._trace, **common)
                self.reused += 1
                return prof
            except Exception as exc:  # noqa: BLE001 - the generic programs refused this length: trace it afresh
                logging.getLogger(__name__).info("sequence length %s: tracing again (%s)", seq_len, _first_line(exc))
        if self._trace is None:
            dims = tuple({1: torch.export.Dim.AUTO} if isinstance(x, torch.Tensor) and x.dim() >= 2 else None
                         for x in inputs)
            prof = None
            try:
                prof = _profile_built(model, task_name, config, self._data, dynamic_shapes=dims,
                                      keep_trace=self._keep, **common)
            except Exception as exc:  # noqa: BLE001 - export could not keep the length symbolic: trace each length
                logging.getLogger(__name__).info("no shape-generic trace (%s)", _first_line(exc))
            self._may_trace = self._trace is not None
            if prof is not None and (self._trace is not None or self._specialised):  # a static one: not redone
                return prof
        return profile_hf_config(self._data, seq_len=seq_len, progress=progress, **args)

    def _keep(self, trace) -> None:
        """Keep `trace` when every token dimension stayed symbolic; remember the lengths export allows."""
        ranges = trace.traced.graph_module.meta.get("range_constraints", {})
        sizes = [node.meta["val"].shape[1] for node in trace.traced.graph_module.graph.nodes
                 if node.op == "placeholder" and isinstance(node.meta.get("val"), torch.Tensor)
                 and node.meta["val"].dim() >= 2]
        if sizes and all(is_concrete_int(size) for size in sizes):
            self._specialised = True  # Mamba: no size node, nothing symbolic, the static trace's graph
        elif sizes and all(isinstance(size, torch.SymInt) and size.node.expr in ranges for size in sizes):  # generic
            self._trace, self._ranges = trace, [ranges[size.node.expr] for size in sizes]


__all__ = ["TASKS", "HfLengthProfiler", "build_hf_model", "default_config", "make_hf_batch", "profile_hf_config",
           "read_config", "resolve_class"]
