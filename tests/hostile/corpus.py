"""The hostile-input corpus: malformed and malicious inputs, each with where it goes and what must be said.

Small inputs are committed under tests/hostile/files/; big ones (huge JSON, a
20 GiB sparse file, zip bombs) and the ones that embed a marker path (the
pickle payload in a .pt2) are generated at test time by `Case.build`.

Every Case says:
- kind: which parser it attacks ("profile", "cluster", "plan", "hf", "archive", "train", "code");
- build(folder, base) -> Path: writes the input into `folder` and returns its path;
- expect: a regex the one-line error must match (it names the bad field or the fix);
- cli: the argv after `python -m cli`, with {path}, {good_profile}, {out} filled in;
- markers: file names (relative to `folder`) a payload would create; they must never exist.
"""

from __future__ import annotations

import copy
import io
import json
import pickle
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILES = Path(__file__).resolve().parent / "files"


@dataclass(frozen=True)
class Base:
    """Valid documents the hostile ones are mutated from (plain JSON dicts)."""

    profile: dict[str, Any]
    cluster: dict[str, Any]
    plan: dict[str, Any]


@dataclass(frozen=True)
class Case:
    name: str
    kind: str
    build: Callable[[Path, Base], Path]
    expect: str
    cli: tuple[str, ...]
    markers: tuple[str, ...] = ()
    app: bool = True
    """Also upload it through the app (profile/hf/archive kinds)."""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# -- builders ------------------------------------------------------------------

def _write(name: str, data: bytes | str) -> Callable[[Path, Base], Path]:
    def build(folder: Path, base: Base) -> Path:
        p = folder / name
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        return p
    return build


def _mutated(doc: str, name: str, mutate: Callable[[dict], Any], *, raw: Callable[[str], str] | None = None):
    """A copy of a base document changed by `mutate` (which edits in place or returns a new value)."""
    def build(folder: Path, base: Base) -> Path:
        d = copy.deepcopy(getattr(base, doc))
        out = mutate(d)
        d = d if out is None else out
        text = json.dumps(d)
        if raw is not None:
            text = raw(text)
        p = folder / name
        p.write_text(text)
        return p
    return build


def _set(path: str, value: Any) -> Callable[[dict], None]:
    """Set a dotted path ("nodes.0.fwd_ms") in a document."""
    def mutate(d: dict) -> None:
        *parents, last = path.split(".")
        cur: Any = d
        for part in parents:
            cur = cur[int(part)] if isinstance(cur, list) else cur[part]
        if isinstance(cur, list):
            cur[int(last)] = value
        else:
            cur[last] = value
    return mutate


def _truncated(doc: str, name: str) -> Callable[[Path, Base], Path]:
    def build(folder: Path, base: Base) -> Path:
        text = json.dumps(getattr(base, doc), indent=1)
        p = folder / name
        p.write_text(text[: len(text) // 2])
        return p
    return build


def _huge_profile(folder: Path, base: Base) -> Path:
    """A 60 MiB profile: valid JSON, over the 50 MiB cap."""
    d = copy.deepcopy(base.profile)
    d["provenance"]["notes"] = "x" * (60 * 2**20)
    p = folder / "huge_profile.json"
    p.write_text(json.dumps(d))
    return p


def _sparse_20gib(folder: Path, base: Base) -> Path:
    """A 20 GiB file that takes no disk: reading it whole would exhaust memory or take minutes."""
    p = folder / "sparse_20gib.json"
    with open(p, "wb") as f:
        f.write(b'{"schema": "pipeplan.profile/1", "notes": "')
        f.truncate(20 * 2**30)
    return p


def _deep_nesting(folder: Path, base: Base) -> Path:
    p = folder / "deep.json"
    p.write_text("[" * 200_000 + "]" * 200_000)
    return p


def _bigint(folder: Path, base: Base) -> Path:
    """An integer with 5000 digits: Python's int parser refuses it with a ValueError."""
    text = json.dumps(base.profile)
    key = '"param_bytes": '
    i = text.index(key) + len(key)
    j = i
    while text[j].isdigit():
        j += 1
    p = folder / "bigint_profile.json"
    p.write_text(text[:i] + "9" * 5000 + text[j:])
    return p


class _Payload:
    """Unpickling this calls open(marker, "w"): a benign stand-in for arbitrary code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_payload(marker: Path) -> bytes:
    return pickle.dumps(_Payload(str(marker)), protocol=2)


def _pt2_with_pickle(folder: Path, base: Base) -> Path:
    """A torch.export-style .pt2 archive whose pickled parts run code when unpickled.

    Layout follows torch 2.13's archive (models/model.json, data/weights/*,
    data/sample_inputs/model.pt); the sample inputs and the weights config are the
    two pickle paths torch.export.load falls back to (shared/notes: variants A, B).
    """
    marker = folder / "PWNED-pt2-pickle"
    payload = pickle_payload(marker)
    inner = io.BytesIO()  # torch.save-style zip holding the pickle
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("model/data.pkl", payload)
        z.writestr("model/version", "3\n")
    p = folder / "evil_model.pt2"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("evil_model/archive_format", "pt2")
        z.writestr("evil_model/models/model.json", json.dumps({"graph_module": {"graph": {"nodes": []}}}))
        z.writestr("evil_model/data/weights/model_weights_config.json",
                   json.dumps({"config": {"w": {"path_name": "weight_0", "is_param": True, "use_pickle": True}}}))
        z.writestr("evil_model/data/weights/weight_0", payload)
        z.writestr("evil_model/data/sample_inputs/model.pt", inner.getvalue())
        z.writestr("evil_model/data.pkl", payload)
    return p


def _zip_bomb(name: str, member: str) -> Callable[[Path, Base], Path]:
    """~1 MiB on disk, 1 GiB when extracted (deflate of zeros)."""
    def build(folder: Path, base: Base) -> Path:
        p = folder / name
        chunk = b"\0" * (16 * 2**20)
        with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z, z.open(member, "w", force_zip64=True) as f:
            for _ in range(64):
                f.write(chunk)
        return p
    return build


def _copy_file(rel: str, name: str | None = None) -> Callable[[Path, Base], Path]:
    def build(folder: Path, base: Base) -> Path:
        dst = folder / (name or Path(rel).name)
        shutil.copyfile(FILES / rel, dst)
        return dst
    return build


def _hf_remote_code(config_name: str) -> Callable[[Path, Base], Path]:
    """The config.json next to its remote-code modules (which leave a marker if imported)."""
    def build(folder: Path, base: Base) -> Path:
        dst = folder / "hf_remote"
        dst.mkdir()
        for f in ("modeling_evil.py", "configuration_evil.py"):
            shutil.copyfile(FILES / "hf_remote_code" / f, dst / f)
        shutil.copyfile(FILES / "hf_remote_code" / config_name, dst / "config.json")
        return dst / "config.json"
    return build


def _py_factory(name: str) -> Callable[[Path, Base], Path]:
    """A .py factory in its own folder (folder/job/NAME.py); 'outside' is folder/."""
    def build(folder: Path, base: Base) -> Path:
        job = folder / "job"
        job.mkdir(exist_ok=True)
        dst = job / f"{name}.py"
        shutil.copyfile(FILES / "py" / f"{name}.py", dst)
        return dst
    return build


# -- the corpus ----------------------------------------------------------------

PLAN_PROFILE = ("plan", "profile:{path}", "--devices", "2", "--memory", "80GB")
PROFILE_PROFILE = ("profile", "profile:{path}", "-o", "{out}")
PLAN_CLUSTER = ("plan", "profile:{good_profile}", "--cluster", "{path}")
SIMULATE = ("simulate", "{path}")
EXPORT = ("export", "{path}", "-o", "{out_dir}")
PROFILE_HF = ("profile", "hf:{path}", "-o", "{out}")
PROFILE_FILE = ("profile", "file:{path}:make_model", "-o", "{out}")


def _train(*flags: str) -> tuple[str, ...]:
    return ("plan", "profile:{good_profile}", *flags)


CASES: list[Case] = [
    # Profile JSON ---------------------------------------------------------------
    Case("profile_truncated", "profile", _truncated("profile", "truncated.json"),
         r"not valid JSON.*complete", PLAN_PROFILE),
    Case("profile_empty_file", "profile", _write("empty.json", b""), r"not valid JSON|is empty", PROFILE_PROFILE),
    Case("profile_binary_garbage", "profile", _write("garbage.json", bytes(range(256)) * 8),
         r"not valid JSON", PLAN_PROFILE),
    Case("profile_top_level_array", "profile", _write("array.json", "[1, 2, 3]"), r"must be an object",
         PROFILE_PROFILE),
    Case("profile_unknown_schema", "profile", _mutated("profile", "schema99.json", _set("schema", "pipeplan.profile/99")),
         r"schema 'pipeplan\.profile/99' is not supported", PLAN_PROFILE),
    Case("profile_wrong_type", "profile", _mutated("profile", "wrongtype.json", _set("nodes.0.fwd_ms", "fast")),
         r"fwd_ms", PROFILE_PROFILE),
    Case("profile_nan", "profile", _mutated("profile", "nan.json", _set("nodes.1.bwd_ms", "__NAN__"),
                                            raw=lambda t: t.replace('"__NAN__"', "NaN")),
         r"NaN.*finite", PLAN_PROFILE),
    Case("profile_overflow_to_infinity", "profile",
         _mutated("profile", "inf.json", _set("nodes.0.fwd_ms", "__INF__"), raw=lambda t: t.replace('"__INF__"', "1e999")),
         r"fwd_ms must be finite", PROFILE_PROFILE),
    Case("profile_negative_bytes", "profile", _mutated("profile", "neg.json", _set("nodes.2.activation_bytes", -5)),
         r"activation_bytes", PLAN_PROFILE),
    Case("profile_5000_digit_int", "profile", _bigint, r"digits", PROFILE_PROFILE),
    Case("profile_deeply_nested", "profile", _deep_nesting, r"nested too deeply", PLAN_PROFILE),
    Case("profile_no_nodes", "profile", _mutated("profile", "nonodes.json", _set("nodes", [])), r"no nodes",
         PROFILE_PROFILE),
    Case("profile_duplicate_ids", "profile",
         _mutated("profile", "dup.json", lambda d: d["nodes"].__setitem__(1, {**d["nodes"][1], "id": d["nodes"][0]["id"]})),
         r"appears twice", PLAN_PROFILE),
    Case("profile_cycle", "profile",
         _mutated("profile", "cycle.json", lambda d: d["edges"].append({**d["edges"][0], "src": d["edges"][0]["dst"],
                                                                        "dst": d["edges"][0]["src"]})),
         r"runs backwards", PROFILE_PROFILE),
    Case("profile_unknown_field", "profile", _mutated("profile", "extra.json", _set("nodes.0.exec", "import os")),
         r"unknown field.*exec", PLAN_PROFILE),
    Case("profile_huge_60mib", "profile", _huge_profile, r"at most 50 MiB|limited to", PLAN_PROFILE),
    Case("profile_sparse_20gib", "profile", _sparse_20gib, r"MiB", PLAN_PROFILE, app=False,
         notes="must be refused from its size, without reading 20 GiB"),
    Case("profile_python_source_as_json", "profile", _py_factory("import_payload"), r"not valid JSON", PLAN_PROFILE,
         markers=("PWNED-import_payload",)),
    # Cluster JSON ---------------------------------------------------------------
    Case("cluster_zero_devices", "cluster", _mutated("cluster", "c0.json", _set("devices", [])), r"no devices",
         PLAN_CLUSTER),
    Case("cluster_empty_device_row", "cluster", _mutated("cluster", "cempty.json", _set("devices.1", {})),
         r"devices\[1\].*(name|memory_bytes)", PLAN_CLUSTER),
    Case("cluster_negative_memory", "cluster", _mutated("cluster", "cneg.json", _set("devices.0.memory_bytes", -1)),
         r"memory_bytes must be > 0", PLAN_CLUSTER),
    Case("cluster_zero_memory", "cluster", _mutated("cluster", "czero.json", _set("devices.1.memory_bytes", 0)),
         r"memory_bytes must be > 0", PLAN_CLUSTER),
    Case("cluster_memory_as_string", "cluster", _mutated("cluster", "cstr.json", _set("devices.0.memory_bytes", "80GB")),
         r"memory_bytes.*wrong type", PLAN_CLUSTER),
    Case("cluster_nan_speed", "cluster", _mutated("cluster", "cnan.json", _set("devices.0.speed", "__NAN__"),
                                                  raw=lambda t: t.replace('"__NAN__"', "NaN")),
         r"NaN.*finite", PLAN_CLUSTER),
    Case("cluster_negative_latency", "cluster", _mutated("cluster", "clat.json", _set("inter_node.latency_s", -1.0)),
         r"latency_s", PLAN_CLUSTER),
    Case("cluster_unknown_schema", "cluster", _mutated("cluster", "cschema.json", _set("schema", "pipeplan.cluster/7")),
         r"schema", PLAN_CLUSTER),
    Case("cluster_unknown_preset", "cluster", _mutated("cluster", "cpreset.json", _set("devices.0.preset", "TPU-v9")),
         r"TPU-v9", PLAN_CLUSTER),
    Case("cluster_5000_devices", "cluster",
         _mutated("cluster", "cmany.json", lambda d: d.__setitem__("devices", [d["devices"][0]] * 5000)),
         r"at most 4096", PLAN_CLUSTER),
    Case("cluster_astronomical_memory", "cluster",
         _mutated("cluster", "cbig.json", _set("devices.0.memory_bytes", 10**400)),
         r"memory_bytes is too large", PLAN_CLUSTER),
    # Training settings ----------------------------------------------------------
    Case("train_microbatches_do_not_divide_batch", "train", _write("unused", b""),
         r"global_batch 10 is not a multiple of micro_batch_size 4",
         _train("--devices", "2", "--memory", "80GB", "--global-batch", "10", "--batch-size", "4")),
    Case("train_schedule_needs_more_microbatches", "train", _write("unused", b""),
         r"1F1B needs at least as many micro-batches as devices.*got 2 micro-batches for 4 devices",
         _train("--devices", "4", "--memory", "80GB", "--microbatches", "2")),
    Case("train_zero_microbatches", "train", _write("unused", b""), r"num_microbatches must be > 0",
         _train("--devices", "2", "--memory", "80GB", "--microbatches", "0")),
    Case("train_hundred_million_microbatches", "train", _write("unused", b""), r"num_microbatches",
         _train("--devices", "2", "--memory", "80GB", "--microbatches", "100000000"),
         notes="must be refused, not planned for minutes"),
    Case("train_zero_devices", "train", _write("unused", b""), r"--devices must be >= 1",
         _train("--devices", "0", "--memory", "80GB")),
    Case("train_negative_memory", "train", _write("unused", b""), r"memory size '-3GB' must be a positive number",
         _train("--devices", "2", "--memory=-3GB")),
    Case("train_zero_memory", "train", _write("unused", b""), r"memory size '0GB' must be a positive number",
         _train("--devices", "2", "--memory", "0GB")),
    # Plan JSON ------------------------------------------------------------------
    Case("plan_truncated", "plan", _truncated("plan", "plan_trunc.json"), r"not valid JSON", SIMULATE),
    Case("plan_unknown_schema", "plan", _mutated("plan", "plan_schema.json", _set("schema", "pipeplan.plan/42")),
         r"schema", EXPORT),
    Case("plan_stage_on_missing_device", "plan", _mutated("plan", "plan_dev.json", _set("stages.1.device", 99)),
         r"device 99", SIMULATE),
    Case("plan_model_source_reads_server_file", "plan",
         _mutated("plan", "plan_passwd.json", _set("model.source", "hf:/etc/passwd")),
         r"not an HF config\.json|model_type", EXPORT,
         notes="the exporter would copy /etc/passwd into the job as model/config.json"),
    # HF config.json ---------------------------------------------------------------
    Case("hf_trust_remote_code_architecture", "hf", _hf_remote_code("config.json"),
         r"(?i)evil|auto_map|remote code|not supported", PROFILE_HF, markers=("hf_remote/PWNED-remote-code",)),
    Case("hf_known_type_with_auto_map", "hf", _hf_remote_code("config_known_type.json"),
         r"(?i)auto_map|remote code|trust_remote_code", PROFILE_HF, markers=("hf_remote/PWNED-remote-code",),
         notes="a known model_type must not make pipeplan follow auto_map either"),
    Case("hf_million_layers", "hf",
         _write("config.json", json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
                                           "n_layer": 1_000_000, "n_embd": 64, "n_head": 1, "vocab_size": 1000})),
         r"n_layer=1000000.*at most", PROFILE_HF, notes="building a million blocks on meta took > 2 minutes"),
    Case("hf_not_an_object", "hf", _write("config.json", '["GPT2LMHeadModel"]'), r"must be (a JSON )?(an )?object", PROFILE_HF),
    Case("hf_absurd_sizes", "hf",
         _write("config.json", json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
                                           "n_layer": 10**9, "n_embd": 10**9, "n_head": 1, "vocab_size": 10**9})),
         r"n_layer|too large|at most|could not build", PROFILE_HF, notes="must be refused, not built layer by layer for hours"),
    # Archives ---------------------------------------------------------------------
    Case("pt2_with_pickle_payload_as_profile", "archive", _pt2_with_pickle, r"not valid JSON|\.pt2",
         PROFILE_PROFILE, markers=("PWNED-pt2-pickle",)),
    Case("pt2_with_pickle_payload_as_hf", "archive", _pt2_with_pickle, r"not valid JSON|\.pt2|config",
         PROFILE_HF, markers=("PWNED-pt2-pickle",), app=False),
    Case("zip_bomb_1gib", "archive", _zip_bomb("bomb.zip", "config.json"), r"not valid JSON|zip", PLAN_PROFILE),
    Case("pt2_zip_bomb_1gib", "archive", _zip_bomb("bomb.pt2", "bomb/models/model.json"), r"not valid JSON|\.pt2",
         PROFILE_PROFILE),
    # User Python without --allow-code: refused, never imported ------------------------------
    *[Case(f"py_{n}_without_allow_code", "code", _py_factory(n), r"--allow-code", PROFILE_FILE,
           markers=(f"job/RAN-{n}", "job/LEAKED-env.txt", "PWNED-write_outside", "PWNED-import_payload"))
      for n in ("loop_forever", "alloc_50gb", "os_exit", "write_outside", "garbage_stdout", "raises",
                "read_secret", "import_payload")],
]

SANDBOX_CASES: dict[str, str] = {
    # factory -> regex of the one-line error with --allow-code (sandboxed child process)
    "loop_forever": r"did not finish within 15 s",
    "alloc_50gb": r"(?i)memory|limit",
    "os_exit": r"(?i)exit|without|profile",
    "garbage_stdout": r"(?i)profile|output|exit",
    "raises": r"(?i)factory exploded|RuntimeError",
    "read_secret": r"(?i)environment secrets seen|RuntimeError",
    "spawn_orphan": r"sandbox blocked subprocess\.Popen.*may not start processes",
    "write_outside": r"sandbox blocked writing \S*PWNED-write_outside \(outside the factory's folder\)",
}


def by_name() -> dict[str, Case]:
    return {c.name: c for c in CASES}
