"""The model's own code for an exported job: the `model/` package train.py imports.

Decision: the job carries the model's source instead of importing pipeplan, so
the folder runs anywhere torch runs. A sample model is copied with its
registry record and its per-FQN initialisation rule (sample_models/spec.py,
init.py, NAME.py); a Hugging Face model is rebuilt from its config.json (copied)
with transformers; a user's `file:PATH.py:FACTORY` is copied as text (never
imported or run here). `model/__init__.py` is a small adapter with the same five
names either way (see templates/model_sample.py).
"""

from __future__ import annotations

import ast
import re
import stat
from importlib import resources
from pathlib import Path

from core.errors import PipeplanError
from profiler.profile import ModelInfo

SAMPLE_FILES = ("spec.py", "init.py")
"""sample_models files every copied sample model needs, besides its own NAME.py."""
MAX_USER_FILE_BYTES = 5 * 2**20
"""A model file larger than this is not a model definition (the app's .py upload limit too)."""
FILE_FORM = "file:PATH.py:FACTORY"


def template_text(name: str) -> str:
    return resources.files("planner.export").joinpath("templates", name).read_text(encoding="utf-8")


def runtime_text(name: str) -> str:
    """A file of planner/export/runtime/, which a job folder holds unchanged (see that package)."""
    return resources.files("planner.export.runtime").joinpath(name).read_text(encoding="utf-8")


def _sample_model_files(source: str, info: ModelInfo) -> dict[str, str]:
    import sample_models

    parts = source.split(":")
    name = parts[1] if len(parts) > 1 else ""
    size = parts[2] if len(parts) > 2 and parts[2] else "tiny"
    if name not in sample_models.REGISTRY:
        raise PipeplanError(f"model source {source!r}: unknown sample model {name!r}; "
                            f"choose one of {', '.join(sample_models.REGISTRY)}")
    spec = sample_models.get_model(name)
    if size not in spec.sizes:
        raise PipeplanError(f"model source {source!r}: unknown size {size!r}; choose one of {', '.join(spec.sizes)}")
    if spec.shape_kind == "none":
        shape = None
    elif spec.shape_kind == "seq_len":
        shape = info.seq_len if info.seq_len is not None else spec.default_shape_for(size)
    else:  # image_size, volume_size: ModelInfo.image_size holds the side length
        shape = info.image_size if info.image_size is not None else spec.default_shape_for(size)
    package = Path(sample_models.__file__).parent
    files = {f"model/{f}": (package / f).read_text(encoding="utf-8") for f in (*SAMPLE_FILES, f"{name}.py")}
    files["model/__init__.py"] = (template_text("model_sample.py").replace("@NAME@", name).replace("@SIZE@", size)
                                  .replace("@SHAPE_KIND@", spec.shape_kind).replace("@SHAPE@", repr(shape)))
    return files


def _hf_model_files(source: str, info: ModelInfo) -> dict[str, str]:
    import sample_models

    path = Path(source.split(":", 1)[1]).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise PipeplanError(f"model source {source!r}: {path} does not exist; give the HF config.json to copy "
                            "(pipeplan export --model-source hf:PATH/config.json)")
    # Only a real HF config is copied into the job: a plan's model source comes from a file the user may
    # not have written (an uploaded profile), and must not smuggle another file (hf:/etc/passwd) into it.
    from core.jsonio import load_json_text, read_json_file

    text = read_json_file(path, "HF config")
    try:
        config = load_json_text(text, f"model source {source!r}")
    except PipeplanError:
        config = None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise PipeplanError(f"model source {source!r}: {path} is not an HF config.json (a JSON object with a "
                            "model_type); pass the model's config.json with --model-source hf:PATH/config.json")
    from profiler.hf import resolve_class

    # the class the profiler built for this config (profiler.hf.resolve_class) is the one the job builds
    task, class_name = resolve_class(config)
    shape = info.image_size if task.shape_kind == "image_size" else info.seq_len
    if not shape:
        raise PipeplanError(f"the plan's model has no {task.shape_kind}; an HF {task.label} needs one: re-profile "
                            "with --seq-len (the image side for image models)")
    files = {"model/config.json": text.decode("utf-8"),
             "model/init.py": (Path(sample_models.__file__).parent / "init.py").read_text(encoding="utf-8")}
    files["model/__init__.py"] = (template_text("model_hf.py").replace("@SHAPE@", repr(shape))
                                  .replace("@TASK@", repr(task.name)).replace("@MODEL_CLASS@", repr(class_name)))
    return files


def _user_file(source: str) -> tuple[Path, str]:
    """(path, factory) of a file: source, checked without importing the file."""
    path_text, sep, factory = source.split(":", 1)[1].rpartition(":")
    if not sep or not path_text:
        path_text, factory = source.split(":", 1)[1], ""
    if not path_text.endswith(".py"):
        raise PipeplanError(f"model source {source!r}: {path_text!r} is not a .py file; write {FILE_FORM} "
                            "(pipeplan export --model-source file:model.py:make_model)")
    if not factory.isidentifier():
        raise PipeplanError(f"model source {source!r} names no factory function; write {FILE_FORM}, "
                            "e.g. file:model.py:make_model")
    path = Path(path_text).expanduser()
    try:
        mode = path.stat().st_mode
    except OSError:
        raise PipeplanError(f"model source {source!r}: {path} does not exist. A plan records the file as it was "
                            "profiled (often a bare name): run export from that folder or pass "
                            f"--model-source {FILE_FORM} with the file's path") from None
    if not stat.S_ISREG(mode):
        raise PipeplanError(f"model source {source!r}: {path} is not a regular file; pass the model's .py file "
                            f"with --model-source {FILE_FORM}")
    if path.stat().st_size > MAX_USER_FILE_BYTES:
        raise PipeplanError(f"model source {source!r}: {path} is larger than {MAX_USER_FILE_BYTES >> 20} MiB; "
                            "pass the .py file that defines the model and its factory")
    return path, factory


def _defines(tree: ast.Module, name: str) -> bool:
    """Whether the module's top level binds `name` (def, class, assignment or import)."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(n, ast.Name) and n.id == name for t in targets for n in ast.walk(t)):
                return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and \
                any((a.asname or a.name.split(".")[0]) == name for a in node.names):
            return True
    return False


def _safe_name(name: str) -> str:
    """The file name for a docstring: only characters that cannot end or escape a string literal."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)


def _file_model_files(source: str, info: ModelInfo) -> dict[str, str]:
    # Security: the user's file is only read and parsed (ast.parse compiles nothing to run); it
    # runs when the user runs train.py, never in the pipeplan process.
    path, factory = _user_file(source)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise PipeplanError(f"model source {source!r}: {path} is not UTF-8 text; save it as UTF-8") from None
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as exc:
        raise PipeplanError(f"model source {source!r}: {path} is not valid Python (line {exc.lineno}: {exc.msg}); "
                            "fix the file and export again") from None
    if not _defines(tree, factory):
        raise PipeplanError(f"model source {source!r}: {path} defines no top-level {factory!r}; name the factory "
                            f"that returns (model, inputs[, loss_fn, target]): {FILE_FORM}")
    import sample_models

    adapter = (template_text("model_file.py").replace("@FACTORY@", factory).replace("@ORIGIN@", _safe_name(path.name))
               .replace("@MBS@", str(info.micro_batch_size)).replace("@SHAPE@", repr(info.seq_len)))
    return {"model/user_model.py": text,
            "model/init.py": (Path(sample_models.__file__).parent / "init.py").read_text(encoding="utf-8"),
            "model/__init__.py": adapter}


def model_files(source: str, info: ModelInfo) -> dict[str, str]:
    """relative path -> text of the job's `model/` package for this model source."""
    kind = source.split(":", 1)[0]
    if kind == "sample":
        return _sample_model_files(source, info)
    if kind == "hf":
        return _hf_model_files(source, info)
    if kind == "file":
        return _file_model_files(source, info)
    raise PipeplanError(
        f"cannot export model source {source!r}: export supports sample:NAME[:SIZE], hf:PATH/config.json and "
        f"{FILE_FORM}. For a profile JSON, pass the model it came from with --model-source")


def model_readme(source: str) -> str:
    """A README section for model sources whose job behaves differently from a sample model's."""
    if not source.startswith("file:"):
        return ""
    return template_text("README_file.md").replace("@FACTORY@", source.rsplit(":", 1)[-1])
