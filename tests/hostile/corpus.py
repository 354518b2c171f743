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

Kind "write" (issue 18, class 2) attacks the writers instead of the parsers: the inputs are good
(`in_profile.json`, `in_plan.json` in the case folder) and `build` prepares a hostile output path
(/dev/full, a folder, a missing parent, a locked or read-only folder, a full file system, a folder
that is not a previous export). The folder must be exactly as `build` left it afterwards: no
temporary file, no half-written output. `extra["wrap"]` runs the CLI under a wrapper
(hostile.harness.wrapper): "nobody" (as root, drop to uid 65534 so a 0o500 folder refuses
writes), "ro" or "full" (a private mount namespace with a read-only, or a full, tmpfs on
`extra["mount"]`).
"""

from __future__ import annotations

import copy
import io
import json
import pickle
import re
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


def _dup_key(doc: str, name: str, where: tuple, key: str, value: Any) -> Callable[[Path, Base], Path]:
    """A base document whose object at `where` has `key` twice (the second time with `value`)."""
    marker = key + "__pipeplan_dup__"

    def build(folder: Path, base: Base) -> Path:
        d = copy.deepcopy(getattr(base, doc))
        target: Any = d
        for part in where:
            target = target[part]
        target[marker] = value
        p = folder / name
        p.write_text(json.dumps(d).replace(json.dumps(marker), json.dumps(key)))
        return p
    return build


def _stages(mutate: Callable[[list[dict]], Any], name: str) -> Callable[[Path, Base], Path]:
    """The base plan with its stages changed by `mutate` (a list of stage dicts, edited in place)."""
    def edit(d: dict) -> None:
        mutate(d["stages"])
    return _mutated("plan", name, edit)


def _move_first_of_stage1_to_stage0(stages: list[dict]) -> None:
    """stage 0 gets layers.3 and stage 1 gets layers.2: the edge layers.2 -> layers.3 runs backwards."""
    a, b = stages[0]["node_ids"], stages[1]["node_ids"]
    a[-1], b[0] = b[0], a[-1]


# -- sizes that explode (issue 18, class 1) ------------------------------------------------------

def _many(doc: str, name: str, key: str, n: int) -> Callable[[Path, Base], Path]:
    """The base document with `key` a list of n empty objects: the count must be refused before any
    entry is built (each would fail on its own, later)."""
    def build(folder: Path, base: Base) -> Path:
        d = copy.deepcopy(getattr(base, doc))
        d[key] = "__MANY__"
        p = folder / name
        p.write_text(json.dumps(d).replace('"__MANY__"', "[" + ",".join(["{}"] * n) + "]"))
        return p
    return build


def _hf(name: str, model_type: str, **fields: Any) -> Callable[[Path, Base], Path]:
    """A small config of `model_type` with some fields set absurdly large."""
    small = {
        "gpt2": {"architectures": ["GPT2LMHeadModel"], "n_layer": 2, "n_embd": 64, "n_head": 2, "vocab_size": 100},
        "llama": {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
                  "num_key_value_heads": 2, "vocab_size": 100},
        "mixtral": {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
                    "num_key_value_heads": 2, "vocab_size": 100, "num_local_experts": 4, "num_experts_per_tok": 2},
        "deepseek_v3": {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
                        "moe_intermediate_size": 32, "num_attention_heads": 2, "num_key_value_heads": 2,
                        "vocab_size": 100, "n_routed_experts": 4, "num_experts_per_tok": 2},
        "vit": {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
                "image_size": 32, "patch_size": 8},
        "llava": {"text_config": {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64,
                                  "intermediate_size": 128, "num_attention_heads": 2, "vocab_size": 100},
                  "vision_config": {"model_type": "clip_vision_model", "num_hidden_layers": 2, "hidden_size": 64,
                                    "intermediate_size": 128, "num_attention_heads": 2, "image_size": 32,
                                    "patch_size": 8}},
    }[model_type]
    doc = {"model_type": model_type, **copy.deepcopy(small)}
    for key, value in fields.items():
        target = doc
        *parents, last = key.split("__")
        for part in parents:
            target = target[part]
        target[last] = value
    return _write(name, json.dumps(doc))


# -- hostile output paths (kind "write") ------------------------------------------

WRITERS: dict[str, tuple[str, ...]] = {
    "profile": ("profile", "profile:{folder}/in_profile.json", "--quiet", "-o", "{path}"),
    "plan": ("plan", "profile:{folder}/in_profile.json", "--devices", "2", "--memory", "80GB", "-o", "{path}"),
    "html": ("simulate", "{folder}/in_plan.json", "--html", "{path}"),
    "timeline": ("simulate", "{folder}/in_plan.json", "--timeline-json", "{path}"),
    "export": ("export", "{folder}/in_plan.json", "-o", "{path}"),
    "calibrate": ("calibrate", "-o", "{path}"),
}
"""Every file pipeplan writes, and the CLI call that writes it to {path}. `calibrate` checks its output
before measuring, so every refusal but a full disk comes before torchrun starts (tests/test_writes.py
fills the disk under a stubbed measurement)."""
FILE_WRITERS = ("profile", "plan", "html", "timeline", "calibrate")


def _inputs(folder: Path, base: Base) -> None:
    (folder / "in_profile.json").write_text(json.dumps(base.profile))
    (folder / "in_plan.json").write_text(json.dumps(base.plan))


def _target(prepare: Callable[[Path, Base], Path]) -> Callable[[Path, Base], Path]:
    """Write the good inputs, then let `prepare` make the hostile output path."""
    def build(folder: Path, base: Base) -> Path:
        _inputs(folder, base)
        return prepare(folder, base)
    return build


def _dev_full(folder: Path, base: Base) -> Path:
    return Path("/dev/full")


def _existing_folder(folder: Path, base: Base) -> Path:
    (folder / "a_folder").mkdir()
    (folder / "a_folder" / "notes.txt").write_text("the user's own file\n")
    return folder / "a_folder"


def _missing_parent(folder: Path, base: Base) -> Path:
    return folder / "no_such_folder" / "out"


def _parent_is_file(folder: Path, base: Base) -> Path:
    (folder / "a_file").write_text("not a folder\n")
    return folder / "a_file" / "out"


def _locked(folder: Path, base: Base) -> Path:
    """A folder its owner may read but not write (0o500); as root the CLI runs as nobody, its owner."""
    import os

    locked = folder / "locked"
    locked.mkdir()
    (locked / "kept.txt").write_text("already here\n")
    if os.geteuid() == 0:
        os.chown(locked, 65534, 65534)
    locked.chmod(0o500)
    return locked / "out"


def _mount_point(name: str) -> Callable[[Path, Base], Path]:
    def prepare(folder: Path, base: Base) -> Path:
        (folder / name).mkdir()
        return folder / name / "out"
    return prepare


def _previous_export_with_checkpoints(folder: Path, base: Base) -> Path:
    """A real previous export that training has since written checkpoints into."""
    from planner.contracts.plan import Plan
    from planner.export import export_plan

    job = folder / "job"
    export_plan(Plan.from_dict(base.plan), job)
    (job / "checkpoints" / "step_000010").mkdir(parents=True)
    (job / "checkpoints" / "step_000010" / "model.pt").write_bytes(b"weights")
    return job


def _a_file(folder: Path, base: Base) -> Path:
    (folder / "job").write_text("a file where the job folder should go\n")
    return folder / "job"


def _zip_is_folder(folder: Path, base: Base) -> Path:
    (folder / "zjob.zip").mkdir()
    return folder / "zjob"


_WRITE_EXPECT = {  # WHAT: the writer's name for its file (_WHAT)
    "dev_full": r"cannot write WHAT to '/dev/full': no space left on the device$",
    "folder": r"cannot write WHAT to '\S*/a_folder': it is a folder",
    "missing_parent": r"cannot write WHAT to '\S*/no_such_folder/out': its folder '\S*/no_such_folder' does not exist$",
    "parent_is_file": r"cannot write WHAT to '\S*/a_file/out': '\S*/a_file' is a file, not a folder$",
    "permission": r"cannot write WHAT to '\S*/locked/out': permission denied$",
    "read_only": r"cannot write WHAT to '\S*/ro/out': it is on a read-only file system$",
    "disk_full": r"cannot write WHAT to '\S*/full/out': no space left on the device$",
}
_WHAT = {"profile": "profile JSON", "plan": "plan JSON", "html": "timeline HTML", "timeline": "timeline JSON",
         "export": "the export folder", "calibrate": "calibrated cluster JSON"}


def _write_cases() -> list[Case]:
    out: list[Case] = []

    def add(writer: str, problem: str, prepare, *, wrap: str | None = None, expect: str | None = None,
            notes: str = "") -> None:
        extra = {"wrap": wrap, "mount": prepare_mount.get(problem)} if wrap else {}
        pattern = expect or _WRITE_EXPECT[problem].replace("WHAT", _WHAT[writer])
        out.append(Case(f"write_{writer}_{problem}", "write", _target(prepare), pattern, WRITERS[writer],
                        app=False, notes=notes, extra=extra))

    prepare_mount = {"read_only": "ro", "disk_full": "full"}
    for w in ("profile", "plan", "html", "timeline"):
        add(w, "dev_full", _dev_full, notes="ENOSPC: the device refuses every byte")
    for w in FILE_WRITERS:
        add(w, "folder", _existing_folder)
    for w in WRITERS:
        add(w, "missing_parent", _missing_parent)
        add(w, "parent_is_file", _parent_is_file, notes="ENOTDIR")
        add(w, "permission", _locked, wrap="nobody", notes="EACCES: a 0o500 folder")
        add(w, "read_only", _mount_point("ro"), wrap="ro", notes="EROFS")
    for w in ("profile", "plan", "html", "timeline", "export"):
        add(w, "disk_full", _mount_point("full"), wrap="full",
            notes="ENOSPC on a real file system: the temporary file or folder is removed")
    out += [
        Case("write_export_folder_not_an_export", "write", _target(_existing_folder),
             r"cannot write the export folder to .*a_folder': it exists and is not a pipeplan export",
             WRITERS["export"], app=False, notes="the user's notes.txt must survive"),
        Case("write_export_over_previous_export_with_checkpoints", "write", _target(_previous_export_with_checkpoints),
             r"is a previous export but also holds files the export did not write \(checkpoints/\); "
             r"move them out", WRITERS["export"], app=False,
             notes="re-exporting would delete the checkpoints: refused, the old job untouched"),
        Case("write_export_target_is_a_file", "write", _target(_a_file),
             r"cannot write the export folder to .*job': it exists and is not a folder", WRITERS["export"], app=False),
        Case("write_export_to_dev_full", "write", _target(_dev_full),
             r"cannot write the export folder to '/dev/full': it exists and is not a folder", WRITERS["export"],
             app=False),
        Case("write_export_zip_path_is_a_folder", "write", _target(_zip_is_folder),
             r"cannot write the job zip to .*zjob\.zip': it is a folder",
             ("export", "{folder}/in_plan.json", "-o", "{path}", "--zip"), app=False,
             notes="checked before the folder is written: no zjob/ either"),
    ]
    return out


def _size_cases() -> list[Case]:
    """Counts a user controls, each past its core.limits bound: refused in one line within seconds and
    well under 1 GiB (tests/test_hostile_limits.py runs each under RLIMIT_AS and measures it)."""
    lim = {"limits": True}
    big = 10**9
    huge_msg = r" is more than pipeplan handles \(at most {}\)"
    hf_msg = r"^HF config {}={} is more {} than pipeplan profiles \(at most {}\); check the config\.json$"

    def hf(name, model_type, key, value, what, limit, **extra_fields):
        shown = key.replace("__", ".")
        return Case(name, "hf", _hf("config.json", model_type, **{key: value}, **extra_fields),
                    hf_msg.format(re.escape(shown), value, what, limit), PROFILE_HF, extra=lim)

    return [
        # flags
        Case("size_flag_devices_billion", "train", _write("unused", b""),
             r"^--devices asks for 1000000000 devices; pipeplan plans at most 4096 ",
             _train("--devices", str(big), "--memory", "80GB"), extra=lim,
             notes="took 100 s and 2.3 GB before the check"),
        Case("size_flag_microbatches_billion", "train", _write("unused", b""),
             r"^num_microbatches 1000000000" + huge_msg.format(4096) + "; use larger micro-batches$",
             _train("--devices", "2", "--memory", "80GB", "--microbatches", str(big)), extra=lim),
        Case("size_flag_global_batch_trillion", "train", _write("unused", b""),
             r"^global_batch 1000000000000" + huge_msg.format(2**20) + "$",
             _train("--devices", "2", "--memory", "80GB", "--global-batch", str(10**12)), extra=lim),
        Case("size_flag_virtual_stages_billion", "train", _write("unused", b""),
             r"^virtual_stages 1000000000" + huge_msg.format(64) + "$",
             _train("--devices", "2", "--memory", "80GB", "--schedule", "Interleaved1F1B", "--virtual-stages",
                    str(big)), extra=lim),
        Case("size_flag_stages_times_microbatches", "train", _write("unused", b""),
             r"^1024 stages x 4096 micro-batches is more than pipeplan simulates \(at most 262144 "
             r"stage-micro-batches per step\)",
             _train("--devices", "1024", "--memory", "80GB", "--microbatches", "4096"), extra=lim,
             notes="4096 x 4096 ran out of memory after 13 s before the check"),
        Case("size_flag_zbv_stages", "train", _write("unused", b""),
             r"^8192 pipeline stages is more than pipeplan plans \(at most 4096 devices x chunks per device\)",
             _train("--devices", "4096", "--memory", "80GB", "--schedule", "ZBV", "--microbatches", "8"), extra=lim),
        Case("size_flag_batch_size_billion", "train", _write("unused", b""),
             r"^batch size 1000000000" + huge_msg.format(2**16) + "; profile at a smaller micro-batch$",
             ("profile", "sample:gpt:tiny", "--batch-size", str(big), "-o", "{out}"), extra=lim),
        Case("size_flag_batch_size_billion_plan", "train", _write("unused", b""),
             r"^batch size 1000000000" + huge_msg.format(2**16),
             ("plan", "sample:mlp:tiny", "--devices", "2", "--memory", "80GB", "--batch-size", str(big)), extra=lim),
        Case("size_flag_volume_side_ten_million", "train", _write("unused", b""),
             r"^sequence length \(or image size\) 10000000" + huge_msg.format(2**20) + "$",
             ("profile", "sample:unet3d:tiny", "--seq-len", str(10**7), "-o", "{out}"), extra=lim),
        Case("size_flag_measure_huge_volume", "train", _write("unused", b""),
             r"^sample:unet3d:tiny ran out of memory while measuring on cpu at batch size 65536: lower "
             r"--batch-size / --seq-len, or estimate with --estimate-for PRESET$",
             ("profile", "sample:unet3d:tiny", "--batch-size", "65536", "--seq-len", "1024", "--measure", "cpu",
              "-o", "{out}"), extra=lim,
             notes="within the caps, but 2.8e17 bytes of input: --measure cpu with a huge batch was a MemoryError "
                   "traceback"),
        Case("size_flag_simulate_microbatches_billion", "plan", _mutated("plan", "in_plan.json", lambda d: None),
             r"^1000000000 micro-batches is more than pipeplan simulates \(at most 4096\)$",
             ("simulate", "{path}", "--microbatches", str(big)), extra=lim),
        Case("size_flag_calibrate_devices_billion", "train", _write("unused", b""),
             r"^--devices must be between 1 and 4096, got 1000000000$",
             ("calibrate", "--devices", str(big), "-o", "{out}"), extra=lim),
        # inside JSON files
        Case("size_profile_too_many_nodes", "profile", _many("profile", "many_nodes.json", "nodes", 200_001),
             r"^profile JSON has 200001 nodes; pipeplan plans at most 200000 \(profile at --granularity block\)$",
             PLAN_PROFILE, extra=lim),
        Case("size_profile_too_many_edges", "profile", _many("profile", "many_edges.json", "edges", 400_001),
             r"^profile JSON has 400001 edges; pipeplan plans at most 400000", PROFILE_PROFILE, extra=lim,
             notes="3,000 layers with 400k skip edges took 44 s to plan"),
        Case("size_cluster_5000_devices_in_json", "cluster",
             _mutated("cluster", "cmany.json", lambda d: d.__setitem__("devices", [d["devices"][0]] * 5000)),
             r"^the cluster has 5000 devices; pipeplan plans at most 4096 ", PLAN_CLUSTER, extra=lim),
        Case("size_plan_microbatches_billion", "plan",
             _mutated("plan", "plan_mb.json", _set("config.num_microbatches", big)),
             r"num_microbatches 1000000000 is more than pipeplan plans \(at most 4096\)", SIMULATE, extra=lim),
        Case("size_plan_virtual_stages_billion", "plan",
             _mutated("plan", "plan_v.json", lambda d: d["config"].update(schedule="Interleaved1F1B",
                                                                          virtual_stages=big)),
             r"virtual_stages 1000000000" + huge_msg.format(64), EXPORT, extra=lim),
        Case("size_plan_5000_stages", "plan", _mutated("plan", "plan_stages.json", _set("stages", [{}] * 5000)),
             r"^plan JSON has 5000 stages; pipeplan plans at most 4096; re-create the plan", SIMULATE, extra=lim,
             notes="100k stages took 17 s to read before the count was checked"),
        Case("size_plan_200k_layers_in_stages", "plan",
             _mutated("plan", "plan_layers.json", _set("stages.0.node_ids", ["layers.0"] * 200_001)),
             r"^plan JSON lists 200004 layers in its stages; pipeplan plans at most 200000", EXPORT, extra=lim),
        Case("size_plan_data_parallel_trillion", "plan",
             _mutated("plan", "plan_dp.json", _set("config.data_parallel", 10**12)),
             r"data_parallel 1000000000000" + huge_msg.format(2**16), SIMULATE, extra=lim),
        Case("size_plan_global_batch_trillion", "plan",
             _mutated("plan", "plan_gb.json", _set("config.global_batch", 10**12)),
             r"global_batch 1000000000000 is more than pipeplan plans", SIMULATE, extra=lim),
        # HF config.json: every size key, refused before transformers builds anything
        hf("size_hf_vocab_trillion", "gpt2", "vocab_size", 10**12, "vocabulary", 2**22),
        hf("size_hf_hidden_billion", "gpt2", "n_embd", big, "hidden size", 2**18),
        hf("size_hf_intermediate_trillion", "llama", "intermediate_size", 10**12, "hidden size", 2**18),
        hf("size_hf_mixtral_experts_hundred_million", "mixtral", "num_local_experts", 10**8, "experts", 2**16),
        hf("size_hf_deepseek_routed_experts_hundred_million", "deepseek_v3", "n_routed_experts", 10**8, "experts",
           2**16),
        hf("size_hf_heads_hundred_million", "llama", "num_attention_heads", 10**8, "attention heads", 2**14),
        hf("size_hf_positions_trillion", "gpt2", "n_positions", 10**12, "positions", 2**24),
        hf("size_hf_image_ten_million", "vit", "image_size", 10**7, "image size", 2**16),
        hf("size_hf_layers_billion", "llama", "num_hidden_layers", big, "layers", 1024),
        hf("size_hf_nested_text_vocab_trillion", "llava", "text_config__vocab_size", 10**12, "vocabulary", 2**22),
        hf("size_hf_nested_vision_layers_million", "llava", "vision_config__num_hidden_layers", 10**6, "layers",
           1024),
    ]

# -- the corpus ----------------------------------------------------------------

PLAN_PROFILE = ("plan", "profile:{path}", "--devices", "2", "--memory", "80GB")
PROFILE_PROFILE = ("profile", "profile:{path}", "-o", "{out}")
PLAN_CLUSTER = ("plan", "profile:{good_profile}", "--cluster", "{path}")
SIMULATE = ("simulate", "{path}")
EXPORT = ("export", "{path}", "-o", "{out_dir}")
SIMULATE_WITH_PROFILE = ("simulate", "{path}", "--profile", "{good_profile}")
EXPORT_WITH_PROFILE = ("export", "{path}", "-o", "{out_dir}", "--profile", "{good_profile}")
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
    # Plans that contradict themselves (issue 18, class 4) ---------------------------------
    Case("plan_stages_overlap", "plan", _stages(lambda st: st[1]["node_ids"].insert(0, "layers.2"), "overlap.json"),
         r"plan stage 1 repeats layer 'layers\.2' \(also in stage 0\)", SIMULATE),
    Case("plan_stages_overlap_export", "plan",
         _stages(lambda st: st[1]["node_ids"].append("layers.0"), "overlap_export.json"),
         r"plan stage 1 repeats layer 'layers\.0' \(also in stage 0\)", EXPORT,
         notes="the exporter would build a model holding layers.0 twice"),
    Case("plan_layer_twice_in_one_stage", "plan", _stages(lambda st: st[0]["node_ids"].append("layers.1"), "twice.json"),
         r"plan stage 0 lists layer 'layers\.1' twice", SIMULATE),
    Case("plan_stage_index_gap", "plan", _mutated("plan", "gap.json", _set("stages.1.index", 5)),
         r"position 1 has index 5: stages must be numbered 0\.\.1", SIMULATE),
    Case("plan_stage_indices_swapped", "plan",
         _stages(lambda st: (st[0].__setitem__("index", 1), st[1].__setitem__("index", 0)), "swapped.json"),
         r"position 0 has index 1", EXPORT),
    Case("plan_empty_stage", "plan", _mutated("plan", "empty_stage.json", _set("stages.1.node_ids", [])),
         r"plan stage 1 has no layers", SIMULATE),
    Case("plan_two_stages_on_one_device", "plan", _mutated("plan", "one_device.json", _set("stages.1.device", 0)),
         r"2 stages on 1 device\(s\), but 1F1B runs one stage per device", EXPORT),
    Case("plan_too_few_microbatches_for_its_schedule", "plan",
         _mutated("plan", "few_mb.json", _set("config.num_microbatches", 1)),
         r"schedule does not fit its stages: 1F1B needs at least as many micro-batches as devices", SIMULATE),
    Case("plan_stage_count_against_interleaving", "plan",
         _mutated("plan", "interleaved.json",
                  lambda d: d["config"].update(schedule="Interleaved1F1B", virtual_stages=2)),
         r"2 stages on 2 device\(s\), but Interleaved1F1B runs 2 stages per device: 2 device\(s\) need 4", EXPORT),
    Case("plan_feasible_without_stages", "plan", _mutated("plan", "nostages.json", _set("stages", [])),
         r"feasible but has no stages", SIMULATE),
    Case("plan_negative_stage_time", "plan", _mutated("plan", "negtime.json", _set("stages.0.fwd_ms", -3.0)),
         r"plan stage 0 fwd_ms is -3\.0; it must be >= 0", SIMULATE),
    Case("plan_zero_memory_limit", "plan", _mutated("plan", "zerolimit.json", _set("stages.1.memory_limit_bytes", 0)),
         r"plan stage 1 memory_limit_bytes is 0", SIMULATE),
    Case("plan_stage_not_an_object", "plan", _mutated("plan", "stage_str.json", _set("stages.0", "layers.0")),
         r"plan stages\[0\] must be a JSON object", SIMULATE),
    Case("plan_negative_device", "plan", _mutated("plan", "negdev.json", _set("stages.0.device", -1)),
         r"runs on device -1", EXPORT),
    Case("plan_fingerprint_is_another_profiles", "plan",
         _mutated("plan", "fingerprint.json", _set("profile_fingerprint", "0123456789abcdef")),
         r"made from another profile \(plan's profile_fingerprint '0123456789abcdef'", SIMULATE_WITH_PROFILE),
    Case("plan_fingerprint_mismatch_export", "plan",
         _mutated("plan", "fingerprint_export.json", _set("profile_fingerprint", "feedfacefeedface")),
         r"made from another profile", EXPORT_WITH_PROFILE),
    Case("plan_misses_a_profile_layer", "plan", _stages(lambda st: st[1]["node_ids"].pop(), "missing_layer.json"),
         r"profile layer 'layers\.5' is in no stage of the plan", SIMULATE_WITH_PROFILE),
    Case("plan_names_a_layer_the_profile_lacks", "plan",
         _stages(lambda st: st[1]["node_ids"].__setitem__(2, "layers.99"), "unknown_layer.json"),
         r"plan stage 1 lists layer 'layers\.99', which the profile does not have", EXPORT_WITH_PROFILE),
    Case("plan_stages_against_topological_order", "plan", _stages(_move_first_of_stage1_to_stage0, "backwards.json"),
         r"plan stage 0 holds layer 'layers\.3', which reads 'layers\.2' from stage 1, a later stage",
         SIMULATE_WITH_PROFILE),
    Case("plan_stage_layers_out_of_order", "plan", _stages(lambda st: st[0]["node_ids"].reverse(), "reversed.json"),
         r"plan stage 0 lists layer 'layers\.\d' before 'layers\.\d', which it reads", SIMULATE_WITH_PROFILE),
    # Duplicate keys (issue 18, class 3): refused, naming the key and where ------------------
    Case("profile_duplicate_key_at_top", "profile", _dup_key("profile", "dup_top.json", (), "schema", "pipeplan.profile/1"),
         r'profile JSON: duplicate key "schema" at \$;', PLAN_PROFILE),
    Case("profile_duplicate_key_in_a_node", "profile",
         _dup_key("profile", "dup_node.json", ("nodes", 2), "fwd_ms", 0.001), r'duplicate key "fwd_ms" at \$\.nodes\[2\]',
         PROFILE_PROFILE, notes="a reviewer reads the first fwd_ms; json.loads keeps the last"),
    Case("cluster_duplicate_key_memory", "cluster",
         _dup_key("cluster", "dup_cluster.json", ("devices", 1), "memory_bytes", 10**15),
         r'cluster JSON: duplicate key "memory_bytes" at \$\.devices\[1\]', PLAN_CLUSTER),
    Case("plan_duplicate_key_in_config", "plan",
         _dup_key("plan", "dup_config.json", ("config",), "num_microbatches", 64),
         r'plan JSON: duplicate key "num_microbatches" at \$\.config', SIMULATE),
    Case("plan_duplicate_key_in_a_stage", "plan", _dup_key("plan", "dup_stage.json", ("stages", 1), "device", 0),
         r'plan JSON: duplicate key "device" at \$\.stages\[1\]', EXPORT),
    Case("hf_duplicate_key", "hf",
         _write("config.json", '{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 2, '
                               '"n_embd": 64, "n_head": 2, "vocab_size": 1000, "n_layer": 2000}'),
         r'HF config JSON: duplicate key "n_layer" at \$;', PROFILE_HF),
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
                "read_secret", "import_payload", "fork_bomb", "ctypes_libc_write", "socket_loopback")],
    # Writes that fail (issue 18, class 2) ------------------------------------------------------
    *_write_cases(),
    # Sizes that explode (issue 18, class 1) ---------------------------------------------------
    *_size_cases(),
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
    "fork_bomb": r"PermissionError: the sandbox blocked os\.fork: a model factory may not start processes$",
    "ctypes_libc_write": r"PermissionError: the sandbox blocked ctypes\.dlopen: a model factory may not load or "
                         r"call native code through ctypes$",
    "socket_loopback": r"PermissionError: the sandbox blocked socket\.connect: a model factory may not use the "
                       r"network$",
}


def by_name() -> dict[str, Case]:
    return {c.name: c for c in CASES}
