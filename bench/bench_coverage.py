"""Coverage: how many of transformers' architectures pipeplan profiles and plans.

    python -m bench.bench_coverage [--quick] [--types a,b,...] [--workers N] [--timeout S]

Sweeps every model_type in transformers' causal-LM, seq2seq-LM, masked-LM, image-classification and
sequence-classification auto registries (issue 14). For each type:

1. config: the type's default config (`AutoConfig.for_model(model_type)`), shrunk: hidden size,
   layers, heads (kv heads keep their ratio), intermediate sizes, vocabulary, experts, per-stage
   depths, recursively into sub-configs (`shrink_config`). Fields the default config leaves None but
   every real checkpoint states (head_dim, kv heads, layer_types, expert counts; `fill_unset`, and a
   few per-type `REPAIRS`) are filled first. When transformers refuses the shrunk
   config, the sweep retries with only layers and experts shrunk, then with the default config;
   the level used is recorded. Nothing is downloaded: no weights, no remote code.
2. profile: meta-device estimate for A100-80GB (`profile_hf_config`), micro-batch 1, 64 tokens
   (image models at their config's image size), with the class picked the way an uploaded
   config without `architectures` is (profiler.hf_tasks: causal LM, seq2seq LM, masked LM, image
   classification, sequence classification, the first the type has).
3. plan: `solve` on 2 x A100-80GB, 1F1B, 8 micro-batches.
4. train (a seeded sample of `--train N` planned types, default 48, spread over the tasks): the
   config with dropout off, planned on 2 devices with 4 micro-batches, exported, and run for 3 steps
   under `torchrun --nproc-per-node 2` and with `--single-process`: per-step losses equal within 1e-5.

Each type runs in a forked worker with a time budget (`--timeout`, default 120 s): a type that
takes longer is recorded as a timeout and its worker replaced. `--quick` sweeps QUICK_TYPES
(10 types over the tasks; it trains 3 of them). Results: bench/results/coverage.json (quick: coverage-quick.json);
the full run also writes its tables into docs/benchmarks.md (section "Coverage of transformers
architectures", between markers; the rest of the page is left alone).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, environment

ROOT = Path(__file__).resolve().parent.parent
DOCS = Path(os.environ.get("PIPEPLAN_BENCH_DOCS") or ROOT / "docs") / "benchmarks.md"
QUICK_TYPES = ["gpt2", "llama", "qwen2", "mixtral", "gpt_neox", "bert", "roberta", "vit", "resnet", "t5"]
SEQ_LEN = 64
TIMEOUT_S = 120.0
REGISTRIES = {
    "causal-lm": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "seq2seq-lm": "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "masked-lm": "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "image-classification": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
    "sequence-classification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
}
BEGIN, END = "<!-- coverage:begin -->", "<!-- coverage:end -->"

# ---------------------------------------------------------------------------------------------
# Shrinking a default config

HIDDEN = 64
LAYERS = 2
HEADS = 4
INTERMEDIATE = 128
VOCAB = 1024
EXPERTS = 4
_HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model", "embed_dim", "dim", "hidden_dim", "embedding_size",
                "word_embed_proj_dim", "projection_dim")
_HEAD_KEYS = ("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads", "decoder_attention_heads",
              "n_heads", "attention_heads")
_KV_KEYS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "multi_query_group_num", "num_key_value_groups")
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "encoder_layers", "decoder_layers", "n_layers",
               "num_decoder_layers", "num_encoder_layers")
_INTER_KEYS = ("intermediate_size", "n_inner", "ffn_dim", "encoder_ffn_dim", "decoder_ffn_dim", "d_ff",
               "moe_intermediate_size", "shared_expert_intermediate_size", "ffn_hidden_size", "inner_hidden_size",
               "expert_intermediate_size", "dense_intermediate_size", "d_inner")
_EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts", "num_routed_experts")
_TOPK_KEYS = ("num_experts_per_tok", "num_experts_per_token", "moe_topk", "top_k", "num_selected_experts", "moe_k")
_HEAD_DIM_KEYS = ("head_dim", "kv_channels", "attention_head_size")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


REPAIRS: dict[str, dict[str, Any]] = {
    # its LM head asserts is_decoder; the axial position shape must multiply to the swept 64 tokens
    "reformer": {"is_decoder": True, "axial_pos_shape": [8, 8], "axial_pos_embds_dim": [32, 32], "hidden_size": 64},
}
"""Per-type values that transformers' default config leaves out but every real checkpoint states."""


def fill_unset(d: dict[str, Any]) -> dict[str, Any]:
    """A copy of a default config with the fields transformers leaves None, that real checkpoints always
    name and the model cannot be built without, filled: head_dim, kv heads, layer_types, expert counts.
    Recursive into sub-configs."""
    d = dict(d)
    hidden = next((d[k] for k in _HIDDEN_KEYS if _int(d.get(k)) and d[k] > 0), None)
    heads = next((d[k] for k in _HEAD_KEYS if _int(d.get(k)) and d[k] > 0), None)
    layers = next((d[k] for k in _LAYER_KEYS if _int(d.get(k)) and d[k] > 0), None)
    if "head_dim" in d and d["head_dim"] is None and hidden and heads:
        d["head_dim"] = hidden // heads
    if "num_key_value_heads" in d and d["num_key_value_heads"] is None and heads:
        d["num_key_value_heads"] = heads
    if "layer_types" in d and d["layer_types"] is None and layers:
        d["layer_types"] = ["full_attention"] * layers
    if any(k in d for k in _EXPERT_KEYS):
        for k in _EXPERT_KEYS:
            if k in d and d[k] is None:
                d[k] = EXPERTS
        for k in _TOPK_KEYS:
            if k in d and d[k] is None:
                d[k] = 2
        if "n_shared_experts" in d and d["n_shared_experts"] is None:
            d["n_shared_experts"] = 1
    attn = d.get("attn_config")
    if isinstance(attn, dict) and isinstance(d.get("rope_parameters"), dict):  # DBRX's attention settings
        d["attn_config"] = {**attn, "rope_theta": attn.get("rope_theta") or d["rope_parameters"].get("rope_theta"),
                            "clip_qkv": attn.get("clip_qkv") or 8.0}
    for k, v in list(d.items()):
        if isinstance(v, dict) and ("model_type" in v or any(x in v for x in _LAYER_KEYS + _HIDDEN_KEYS)):
            d[k] = fill_unset(v)
    return d


def shrink_config(d: dict[str, Any], level: int = 2) -> dict[str, Any]:
    """A shrunk copy of a config dict. level 2: everything; level 1: layers and experts only; 0: as is."""
    d = dict(d)
    if level <= 0:
        return d
    old_layers = next((d[k] for k in _LAYER_KEYS if _int(d.get(k)) and d[k] > 0), None)
    for k in _LAYER_KEYS:
        if _int(d.get(k)) and d[k] > LAYERS:
            d[k] = LAYERS
    if isinstance(d.get("depths"), list) and all(_int(x) for x in d["depths"]):
        d["depths"] = [min(x, 1) for x in d["depths"]]
    new_layers = next((d[k] for k in _LAYER_KEYS if _int(d.get(k)) and d[k] > 0), None)
    if old_layers and new_layers and old_layers != new_layers:
        for k, v in list(d.items()):  # per-layer lists (layer_types, ...) follow the layer count
            if isinstance(v, list) and len(v) == old_layers and k not in ("depths",):
                d[k] = v[:new_layers]
            elif isinstance(v, dict) and v and all(isinstance(x, str) and x.isdigit() for x in v):
                d[k] = {x: y for x, y in v.items() if int(x) < new_layers}  # per-layer overrides by index
    old_experts = next((d[k] for k in _EXPERT_KEYS if _int(d.get(k)) and d[k] > 0), None)
    for k in _EXPERT_KEYS:
        if _int(d.get(k)) and d[k] > EXPERTS:
            d[k] = EXPERTS
    if old_experts:
        for k in _TOPK_KEYS:
            if _int(d.get(k)) and d[k] > 2:
                d[k] = 2
        for k in ("n_group", "topk_group"):
            if _int(d.get(k)) and d[k] > 1:
                d[k] = 1
    for k, v in list(d.items()):
        if isinstance(v, dict) and ("model_type" in v or any(x in v for x in _LAYER_KEYS + _HIDDEN_KEYS)):
            d[k] = shrink_config(v, level)
    if level < 2:
        return d
    hidden = next((d[k] for k in _HIDDEN_KEYS if _int(d.get(k)) and d[k] > 0), None)
    heads = next((d[k] for k in _HEAD_KEYS if _int(d.get(k)) and d[k] > 0), None)
    if hidden and hidden > HIDDEN:
        for k in _HIDDEN_KEYS:
            if _int(d.get(k)) and d[k] == hidden:
                d[k] = HIDDEN
        new_heads = min(heads or HEADS, HEADS)
        for k in _HEAD_KEYS:
            if _int(d.get(k)) and d[k] > new_heads:
                d[k] = new_heads
        for k in _HEAD_DIM_KEYS:
            if _int(d.get(k)) and d[k] > 0:
                d[k] = HIDDEN // new_heads
        for k in _KV_KEYS:
            if _int(d.get(k)) and heads and d[k] > 0:
                # keep grouped-query attention grouped: kv < heads stays kv < heads, MQA stays 1
                d[k] = 1 if d[k] == 1 else (new_heads if d[k] >= heads else max(1, new_heads // 2))
        for k in _INTER_KEYS:
            if _int(d.get(k)) and d[k] > INTERMEDIATE:
                d[k] = INTERMEDIATE
    if "vocab_size" in d and d["vocab_size"] is None:
        d["vocab_size"] = VOCAB  # left for the user to fill in (ESM)
    if "pad_token_id" in d and d["pad_token_id"] is None and "vocab_size" in d:
        d["pad_token_id"] = 0  # likewise: real checkpoints name their padding token
    if _int(d.get("vocab_size")) and d["vocab_size"] > VOCAB:
        d["vocab_size"] = VOCAB
        for k, v in list(d.items()):  # special tokens must stay inside the vocabulary
            if k.endswith("token_id") and _int(v) and v >= VOCAB:
                d[k] = VOCAB - 1
            elif k.endswith("token_id") and isinstance(v, list):
                d[k] = [min(x, VOCAB - 1) if _int(x) else x for x in v]
    if _int(d.get("max_position_embeddings")) and d["max_position_embeddings"] > 4 * SEQ_LEN:
        d["max_position_embeddings"] = max(4 * SEQ_LEN, 512)
    return d


# ---------------------------------------------------------------------------------------------
# One type, in a worker


def registries() -> dict[str, list[str]]:
    from transformers.models.auto import modeling_auto

    return {task: sorted(getattr(modeling_auto, name)) for task, name in REGISTRIES.items()}


def reason_of(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    from core.errors import PipeplanError

    return (line if isinstance(exc, PipeplanError) else f"{type(exc).__name__}: {line}")[:300]


def run_type(model_type: str) -> dict[str, Any]:
    """Build, profile and plan one model_type; every outcome and the one-line reason of a failure."""
    import warnings

    import torch
    import transformers

    from planner.contracts.cluster import Cluster
    from planner.contracts.config import TrainConfig
    from planner.solvers.solve import solve
    from profiler.hf import build_hf_model, profile_hf_config

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    out: dict[str, Any] = {"model_type": model_type, "config": None, "profile": None, "plan": None}
    try:
        base = transformers.AutoConfig.for_model(model_type).to_dict()
    except Exception as exc:  # noqa: BLE001 - recorded
        out["config"] = f"default config: {reason_of(exc)}"
        return out
    base = {k: v for k, v in base.items() if k not in ("architectures", "transformers_version", "_name_or_path")}
    base = {**fill_unset(base), **REPAIRS.get(model_type, {})}
    prof = None
    errors: list[str] = []
    for level in (2, 1, 0):  # a milder shrink when transformers (or the trace) refuses the tiny config
        if level == 0 and out.get("config") == "ok":
            break  # the default config is only tried when no shrunk one builds (its depth makes it slow)
        data = shrink_config(base, level)
        data["model_type"] = model_type
        try:
            model, task, _ = build_hf_model(data, device="meta")
        except Exception as exc:  # noqa: BLE001 - try a milder shrink
            errors.append(reason_of(exc))
            continue
        out.update(config="ok", shrink_level=level, task=task, model_class=type(model).__name__,
                   params=sum(p.numel() for p in model.parameters()), profile=None)
        del model
        try:
            t1 = time.perf_counter()
            prof = profile_hf_config(data, batch_size=1, seq_len=SEQ_LEN if task != "image-classification" else None,
                                     estimate_for="A100-80GB")
            out.update(profile="ok", profile_s=round(time.perf_counter() - t1, 2), nodes=len(prof.nodes),
                       blocks=sum(1 for n in prof.nodes if n.kind == "block"))
            break
        except Exception as exc:  # noqa: BLE001 - recorded; try a milder shrink
            errors.append(reason_of(exc))
    if out.get("config") != "ok":
        out["config"] = errors[0]
        return out
    if prof is None:
        out["profile"] = next((e for e in errors if "could not build" not in e), errors[0])
        return out
    if sum(n.param_count for n in prof.nodes) != prof.model.param_count:
        out["profile"] = "parameter count of the layers differs from the model's"
        return out
    try:
        t2 = time.perf_counter()
        plan = solve(prof, Cluster.uniform(2, "A100-80GB"),
                     TrainConfig(schedule="1F1B", num_microbatches=8, micro_batch_size=1, time_limit_s=10.0))
        out["plan"] = "ok" if plan.feasible else f"infeasible: {plan.diagnosis.message if plan.diagnosis else ''}"
        out["plan_s"] = round(time.perf_counter() - t2, 2)
        if plan.feasible:
            out["stages"] = [len(s.node_ids) for s in plan.stages]
    except Exception as exc:  # noqa: BLE001 - recorded
        out["plan"] = reason_of(exc)
    return out


def _worker(conn) -> None:
    import logging

    logging.disable(logging.WARNING)
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - transformers prints; keep the pipe clean
    while True:
        model_type = conn.recv()
        if model_type is None:
            return
        try:
            result = run_type(model_type)
        except BaseException as exc:  # noqa: BLE001 - the worker must answer
            result = {"model_type": model_type, "config": f"worker: {reason_of(exc)}", "profile": None, "plan": None}
        conn.send(result)


class _Pool:
    """Forked workers that each run one type at a time; a type past its budget kills its worker."""

    def __init__(self, n: int, timeout: float) -> None:
        self.ctx = mp.get_context("fork")
        self.timeout = timeout
        self.slots = [self._start() for _ in range(n)]

    def _start(self):
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker, args=(child,), daemon=True)
        proc.start()
        return {"proc": proc, "conn": parent, "type": None, "t0": 0.0}

    def run(self, types: list[str], progress) -> list[dict]:
        todo = list(types)
        results = []
        while todo or any(s["type"] for s in self.slots):
            for i, s in enumerate(self.slots):
                if s["type"] is None and todo:
                    s["type"], s["t0"] = todo.pop(0), time.perf_counter()
                    s["conn"].send(s["type"])
                elif s["type"] is not None:
                    if s["conn"].poll(0.05):
                        try:
                            res = s["conn"].recv()
                        except EOFError:
                            res = {"model_type": s["type"], "config": "worker died (out of memory or a crash)",
                                   "profile": None, "plan": None}
                            self._replace(i)
                        res["seconds"] = round(time.perf_counter() - s["t0"], 2)
                        results.append(res)
                        progress(res)
                        self.slots[i]["type"] = None
                    elif not s["proc"].is_alive() or time.perf_counter() - s["t0"] > self.timeout:
                        dead = not s["proc"].is_alive()
                        res = {"model_type": s["type"], "profile": None, "plan": None,
                               "config": "worker died (out of memory or a crash)" if dead else
                               f"timeout: more than {self.timeout:.0f} s", "seconds": round(time.perf_counter() - s["t0"], 2)}
                        results.append(res)
                        progress(res)
                        self._replace(i)
            time.sleep(0.01)
        return results

    def _replace(self, i: int) -> None:
        s = self.slots[i]
        if s["proc"].is_alive():
            s["proc"].kill()
        s["proc"].join(5)
        self.slots[i] = self._start()

    def close(self) -> None:
        for s in self.slots:
            try:
                s["conn"].send(None)
            except OSError:
                pass
            s["proc"].join(2)
            if s["proc"].is_alive():
                s["proc"].kill()


# ---------------------------------------------------------------------------------------------
# Training equivalence on a sample: export, torchrun on 2 ranks, and --single-process


TRAIN_STEPS = 3
TRAIN_TOL = 1e-5
TRAIN_SAMPLE = 48
TRAIN_SAMPLE_QUICK = 3
TRAIN_TIMEOUT_S = 300.0


def no_dropout(d: dict[str, Any]) -> dict[str, Any]:
    """The config with every dropout probability 0 (recursively): the pipeline and the single process
    draw their dropout masks from different generators, so only a dropout-free model can match exactly."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = no_dropout(v)
        elif isinstance(v, float) and not isinstance(v, bool) and re.search(r"drop", k):
            v = 0.0
        out[k] = v
    return out


def train_sample(results: list[dict], n: int, seed: int = 14) -> list[str]:
    """n planned types, seeded, spread over the tasks: round robin over each task's shuffled types."""
    import random

    rng = random.Random(seed)
    by_task: dict[str, list[str]] = defaultdict(list)
    for r in sorted(results, key=lambda r: r["model_type"]):
        if r.get("plan") == "ok":
            by_task[r["task"]].append(r["model_type"])
    for types in by_task.values():
        rng.shuffle(types)
    picked: list[str] = []
    while len(picked) < n and any(by_task.values()):
        for task in sorted(by_task):
            if by_task[task] and len(picked) < n:
                picked.append(by_task[task].pop())
    return picked


def _first_error(text: str) -> str:
    """The worker's own error line (torchrun's ChildFailedError summary comes after it and says nothing)."""
    lines = [x.strip() for x in text.splitlines()]
    for pattern in (r"^\[rank\d+\]: \w+(Error|Exception)\b", r"^\w+(Error|Exception)\b", r"error:|refused"):
        found = [x for x in lines if re.search(pattern, x) and "ChildFailedError" not in x]
        if found:
            return found[0][:300]
    return (lines[-1] if lines else "")[:300]


def train_type(model_type: str, level: int, work: Path) -> dict[str, Any]:
    """Profile the type's config as the sweep did (dropout off), plan it on 2 devices, export the job, run
    it under torchrun on 2 ranks and with --single-process for TRAIN_STEPS steps; equal within TRAIN_TOL."""
    import subprocess
    import warnings

    import transformers

    from planner.contracts.cluster import Cluster
    from planner.contracts.config import TrainConfig
    from planner.export import export_plan
    from planner.solvers.solve import solve
    from profiler.hf import profile_hf_config

    warnings.simplefilter("ignore")
    base = transformers.AutoConfig.for_model(model_type).to_dict()
    base = {k: v for k, v in base.items() if k not in ("architectures", "transformers_version", "_name_or_path")}
    data = no_dropout(shrink_config({**fill_unset(base), **REPAIRS.get(model_type, {})}, level))
    data["model_type"] = model_type
    folder = work / model_type
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(data, default=str))
    t0 = time.perf_counter()
    try:
        image = "image" in (resolve_task(data) or "")
        prof = profile_hf_config(data, batch_size=1, seq_len=None if image else SEQ_LEN, estimate_for="A100-80GB")
        plan = solve(prof, Cluster.uniform(2, "A100-80GB"),
                     TrainConfig(schedule="1F1B", num_microbatches=4, micro_batch_size=1, time_limit_s=10.0))
        if not plan.feasible:
            return {"train": "plan infeasible"}
        export_plan(plan, folder / "job", model_source=f"hf:{folder / 'config.json'}")
    except Exception as exc:  # noqa: BLE001 - recorded
        return {"train": f"export: {reason_of(exc)}"}
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)  # the job runs without pipeplan on its path
    runs = {}
    venv_bin = Path(sys.executable).parent
    for name, cmd in (("pipeline", [str(venv_bin / "torchrun"), "--standalone", "--nproc-per-node=2", "train.py"]),
                      ("single", [sys.executable, "train.py", "--single-process"])):
        try:
            proc = subprocess.run([*cmd, "--steps", str(TRAIN_STEPS)], cwd=folder / "job", env=env,
                                  capture_output=True, text=True, timeout=TRAIN_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            return {"train": f"{name} run: timeout after {TRAIN_TIMEOUT_S:.0f} s"}
        if proc.returncode != 0:
            return {"train": f"{name} run failed: {_first_error(proc.stderr + proc.stdout)}"}
        runs[name] = [json.loads(x)["loss"] for x in proc.stdout.splitlines() if x.startswith("{") and '"loss"' in x]
    diff = max((abs(a - b) for a, b in zip(runs["pipeline"], runs["single"])), default=float("inf"))
    ok = len(runs["pipeline"]) == len(runs["single"]) == TRAIN_STEPS and diff <= TRAIN_TOL
    return {"train": "equal" if ok else f"losses differ by {diff:.3g}", "train_max_diff": diff,
            "train_s": round(time.perf_counter() - t0, 1)}


def resolve_task(data: dict[str, Any]) -> str | None:
    from profiler.hf import resolve_class

    try:
        return resolve_class(data)[0].name
    except Exception:  # noqa: BLE001 - the profile step reports it
        return None


def run_training(results: list[dict], n: int) -> list[str]:
    """Train a seeded sample of n planned types; each result gains its 'train' outcome."""
    import tempfile

    sample = train_sample(results, n)
    by_type = {r["model_type"]: r for r in results}
    with tempfile.TemporaryDirectory(prefix="pipeplan-coverage-") as tmp:
        for i, model_type in enumerate(sample, 1):
            r = by_type[model_type]
            r.update(train_type(model_type, r["shrink_level"], Path(tmp)))
            print(f"[coverage] train {i}/{len(sample)} {model_type}: {r['train']}", file=sys.stderr, flush=True)
    return sample


# ---------------------------------------------------------------------------------------------
# Results and report


def outcome(r: dict) -> str:
    """'planned', 'profiled' (plan failed), or the first step that failed."""
    if r.get("plan") == "ok":
        return "planned"
    if r.get("profile") == "ok":
        return "profiled"
    return "profile failed" if r.get("config") == "ok" else "config failed"


def cause(r: dict) -> str:
    """A failure's cause class, for grouping."""
    text = next((r[k] for k in ("config", "profile", "plan") if r.get(k) not in (None, "ok")), "")
    rules = [("timeout", r"^timeout"), ("worker crash", r"^worker"),
             ("no auto class", r"no auto class|no .* class in transformers"),
             ("import error", r"cannot import|requires the|ImportError|ModuleNotFoundError"),
             ("config refused by transformers", r"could not build|default config"),
             ("trace failure", r"cannot trace"), ("profile failure", r"cannot profile|sequence length|vocab_size"),
             ("plan infeasible", r"^infeasible"), ("layer/param mismatch", r"parameter count")]
    for name, pattern in rules:
        if re.search(pattern, text):
            return name
    return "other"


def summarize(results: list[dict], regs: dict[str, list[str]]) -> dict[str, Any]:
    by_type = {r["model_type"]: r for r in results}
    rows = {}
    for task, types in list(regs.items()) + [("all", sorted({t for v in regs.values() for t in v}))]:
        swept = [t for t in types if t in by_type]
        prof = [t for t in swept if by_type[t].get("profile") == "ok"]
        plan = [t for t in swept if by_type[t].get("plan") == "ok"]
        rows[task] = {"swept": len(swept), "profiled": len(prof), "planned": len(plan),
                      "planned_pct": round(100 * len(plan) / len(swept), 1) if swept else None}
    causes: dict[str, list[str]] = defaultdict(list)
    for r in results:
        if outcome(r) != "planned":
            causes[cause(r)].append(r["model_type"])
    trained = [r for r in results if "train" in r]
    equal = sum(1 for r in trained if r["train"] == "equal")
    training = {"sampled": len(trained), "equal": equal,
                "equal_pct": round(100 * equal / len(trained), 1) if trained else None,
                "steps": TRAIN_STEPS, "tolerance": TRAIN_TOL}
    return {"registries": rows, "failure_causes": {k: sorted(v) for k, v in sorted(causes.items())},
            "tasks_used": dict(Counter(r.get("task") for r in results if r.get("task"))), "training": training}


def _cell(text: str | None) -> str:
    return "" if text is None else str(text).replace("|", "\\|").replace("\n", " ")[:160]


def markdown(data: dict) -> str:
    s = data["summary"]
    lines = [BEGIN, "## Coverage of transformers architectures", "",
             (f"`make bench-coverage` (bench/bench_coverage.py), {data['env']['date']}, transformers "
             f"{data['transformers']}, torch {data['env']['torch']}, {data['env']['cpu_count']} CPUs. Each model_type "
             f"of the {len(REGISTRIES)} registries: its default config, with the fields transformers leaves unset "
             "filled, shrunk (2 layers, hidden 64, 4 heads, GQA ratio kept, 4 experts, vocabulary 1024), profiled on meta as an A100-80GB estimate (64 tokens or the config's image "
             "size), then planned on 2 x A100-80GB (1F1B, 8 micro-batches). A type is counted in every registry that "
             "lists it, with the class an uploaded config without `architectures` gets (causal LM, seq2seq LM, masked "
             f"LM, image classification, sequence classification: the first it has; speech-to-text models, which "
             f"take audio features, are not trained). Budget {data['timeout_s']:.0f} s per type; "
             f"sweep took {data['seconds']:.0f} s."), "",
             "| registry | swept | profiled | planned | planned % |", "|---|---:|---:|---:|---:|"]
    for task, row in s["registries"].items():
        lines.append(f"| {task} | {row['swept']} | {row['profiled']} | {row['planned']} | {row['planned_pct']} |")
    lines += ["", "Failures by cause:", "", "| cause | count | model types |", "|---|---:|---|"]
    for c, types in s["failure_causes"].items():
        lines.append(f"| {c} | {len(types)} | {', '.join(types)} |")
    t = s.get("training") or {}
    if t.get("sampled"):
        lines += ["", (f"Training equivalence: a seeded sample of {t['sampled']} planned types, spread over the tasks, "
                  f"exported and run for {t['steps']} steps under `torchrun --nproc-per-node 2` and with "
                  f"`--single-process` (dropout off): {t['equal']} of {t['sampled']} ({t['equal_pct']}%) give "
                  f"per-step losses equal within {t['tolerance']:g}."), "",
                  "| model type | task | outcome | max loss diff |", "|---|---|---|---:|"]
        for r in data["results"]:
            if "train" in r:
                d = r.get("train_max_diff")
                lines.append(f"| {r['model_type']} | {r.get('task')} | {_cell(r['train'])} | "
                             f"{'' if d is None else f'{d:.1e}'} |")
    lines += ["", "<details><summary>Every model type</summary>", "",
              "| model_type | task | class | config | profile | plan | layers | s |", "|---|---|---|---|---|---|---:|---:|"]
    for r in sorted(data["results"], key=lambda r: r["model_type"]):
        lines.append(f"| {r['model_type']} | {r.get('task') or ''} | {r.get('model_class') or ''} | "
                     f"{_cell(r.get('config'))} | {_cell(r.get('profile'))} | {_cell(r.get('plan'))} | "
                     f"{r.get('nodes') or ''} | {r.get('seconds', '')} |")
    lines += ["", "</details>", END]
    return "\n".join(lines) + "\n"


def write_docs(data: dict, path: Path = DOCS) -> None:
    """Replace (or append) the coverage section of docs/benchmarks.md, leaving the rest alone."""
    text = path.read_text() if path.exists() else ""
    block = markdown(data)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def run(quick: bool, types: list[str] | None = None, workers: int | None = None,
        timeout: float = TIMEOUT_S, docs: bool | None = None, train: int = 0) -> dict:
    import transformers

    regs = registries()
    every = sorted({t for v in regs.values() for t in v})
    chosen = types or (QUICK_TYPES if quick else every)
    workers = workers or max(1, min(len(chosen), (os.cpu_count() or 2)))
    t0 = time.perf_counter()
    pool = _Pool(workers, timeout)
    try:
        results = pool.run(chosen, lambda r: print(f"[coverage] {r['model_type']}: {outcome(r)} "
                                                   f"({r.get('seconds')} s) {'' if outcome(r) == 'planned' else cause(r)}",
                                                   file=sys.stderr, flush=True))
    finally:
        pool.close()
    if train:
        run_training(results, train)
    regs_swept = {k: [t for t in v if t in chosen] for k, v in regs.items()}
    data = {"benchmark": "coverage", "quick": quick, "env": environment(), "transformers": transformers.__version__,
            "timeout_s": timeout, "seconds": round(time.perf_counter() - t0, 1),
            "summary": summarize(results, regs_swept), "results": sorted(results, key=lambda r: r["model_type"])}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    name = "coverage-quick.json" if quick or types else "coverage.json"
    (RESULTS_DIR / name).write_text(json.dumps(data, indent=2, default=str) + "\n")
    if docs if docs is not None else not (quick or types):
        write_docs(data)
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"sweep {len(QUICK_TYPES)} types only")
    ap.add_argument("--types", help="comma-separated model types to sweep (no docs update)")
    ap.add_argument("--workers", type=int, help="parallel workers (default: CPU count)")
    ap.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per type")
    ap.add_argument("--train", type=int, default=None,
                    help=f"train a seeded sample of this many planned types (default {TRAIN_SAMPLE}, --quick "
                         f"{TRAIN_SAMPLE_QUICK}; 0: none)")
    args = ap.parse_args(argv)
    train = args.train if args.train is not None else (TRAIN_SAMPLE_QUICK if args.quick else TRAIN_SAMPLE)
    data = run(args.quick, args.types.split(",") if args.types else None, args.workers, args.timeout, train=train)
    print(json.dumps(data["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
