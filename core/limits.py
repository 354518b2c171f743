"""Every size limit of pipeplan, in one place, with why each number is what it is.

A count a user controls (a CLI flag, a field of a Profile/Cluster/TrainConfig/Plan JSON, a key of
an HF config.json, an app widget) is checked against these before anything proportional to it is
allocated, so an absurd count is one line (PipeplanError) within seconds, not minutes of work and
gigabytes of memory. The numbers were measured on a 2-core, 23 GiB machine (issue 18; the table is
in docs/security.md, "Size limits"); each is far above what a real model or cluster needs.

Limits that are enforced elsewhere because they live with their parser: the JSON byte cap
(core.jsonio.MAX_JSON_BYTES, 50 MiB) and the upload cap (ui.uploads.MAX_UPLOAD_BYTES, 5 MiB).
"""

from __future__ import annotations

from typing import Any

from core.errors import PipeplanError

# -- cluster and training settings --------------------------------------------------------------
MAX_DEVICES = 4096
"""Devices in one cluster (pipeline stages per chunk). A pipeline rarely has more than a few dozen
stages; 10^9 devices took 100 s and 2.3 GB before it was checked."""
MAX_MICROBATCHES = 4096
"""Micro-batches per step (M): the simulator and the schedules are O(stages x M)."""
MAX_GLOBAL_BATCH = 1 << 20
"""Samples per step per pipeline replica (1M): more than any published run per replica."""
MAX_VIRTUAL_STAGES = 64
"""Chunks per device (Interleaved1F1B): each chunk is a stage, so stages = devices x chunks."""
MAX_STAGE_MICROBATCHES = 1 << 18
"""Stages x micro-batches of one step (262144): the simulator keeps ~3 events per (stage, micro-batch)
(F, B, W) and their memory timeline. Measured: 64 stages x 4096 micro-batches simulates in ~5 s and
550 MB; 4096 x 4096 (16.7M) ran out of memory after 13 s before this check."""
MAX_STAGES = 4096
"""Pipeline stages (devices x chunks per device): the planner's tables grow with layers x stages (4096 GPipe
stages on 5000 layers already exceed their 1 GiB budget), and reading a plan builds every stage: a Plan JSON
with 100k stages took 17 s before its stage count was checked."""
MAX_DATA_PARALLEL = 1 << 16
"""Pipeline replicas (data-parallel degree): a multiplier in formulas, never allocated per replica."""
MAX_TENSOR_PARALLEL = 64
"""Tensor-parallel degree: a TP group stays inside one node, and nodes have at most a few dozen GPUs."""

# -- profiles (the layer graph) -----------------------------------------------------------------
MAX_PROFILE_NODES = 200_000
"""Layers in a profile. A 50 MiB Profile JSON holds at most ~200k nodes; the solvers coarsen graphs
above ~10k nodes (planner.solvers.coarsen), so this is what the JSON cap allows anyway, said up front."""
MAX_PROFILE_EDGES = 400_000
"""Edges in a profile. Real graphs have ~1-3 edges per node; dense skip edges make every cut carry
many tensors. Measured: 3,000 nodes with 122k edges plan in ~5 s, 400k edges took 44 s."""

# -- model shapes (profiling) --------------------------------------------------------------------
MAX_BATCH_SIZE = 1 << 16
"""Samples per micro-batch (65536)."""
MAX_SHAPE = 1 << 20
"""Sequence length in tokens, or image/volume side in pixels (1M tokens: the longest contexts)."""

# -- HF config.json ------------------------------------------------------------------------------
MAX_HF_LAYERS = 1024
"""More layers than any real model: building a million-layer config on meta took > 2 minutes."""
MAX_HF_WIDTH = 1 << 18
"""Hidden and feed-forward sizes (262144): the largest real models use ~25k hidden, ~100k FFN."""
MAX_HF_VOCAB = 1 << 22
"""Vocabulary (4M entries): real models use up to ~260k."""
MAX_HF_EXPERTS = 1 << 16
"""MoE experts per layer (65536): most real models use up to a few hundred routed experts, Doge's
default config 16384 tiny ones; transformers stores experts as one fused tensor, so the count is cheap
on meta, but a per-expert Python loop (older MoE classes) would not be."""
MAX_HF_HEADS = 1 << 14
"""Attention heads (and key/value heads)."""
MAX_HF_POSITIONS = 1 << 24
"""max_position_embeddings and the like (16M positions; the longest real context is ~10M)."""
MAX_HF_IMAGE = 1 << 16
"""image_size of vision configs, in pixels per side."""

HF_KEY_LIMITS: dict[str, tuple[int, str]] = {
    **{k: (MAX_HF_LAYERS, "layers") for k in (
        "num_hidden_layers", "n_layer", "num_layers", "depths", "encoder_layers", "decoder_layers",
        "num_decoder_layers", "num_encoder_layers", "n_layers")},
    **{k: (MAX_HF_WIDTH, "hidden size") for k in (
        "hidden_size", "n_embd", "d_model", "dim", "embed_dim", "intermediate_size", "n_inner", "d_ff",
        "ffn_dim", "encoder_ffn_dim", "decoder_ffn_dim", "moe_intermediate_size", "shared_expert_intermediate_size",
        "hidden_sizes", "embed_dims", "d_kv", "head_dim", "kv_lora_rank", "q_lora_rank")},
    **{k: (MAX_HF_VOCAB, "vocabulary") for k in ("vocab_size", "type_vocab_size")},
    **{k: (MAX_HF_EXPERTS, "experts") for k in (
        "num_local_experts", "n_routed_experts", "num_experts", "n_shared_experts", "num_experts_per_tok",
        "moe_num_experts", "num_shared_experts")},
    **{k: (MAX_HF_HEADS, "attention heads") for k in (
        "num_attention_heads", "n_head", "num_heads", "num_key_value_heads", "encoder_attention_heads",
        "decoder_attention_heads")},
    **{k: (MAX_HF_POSITIONS, "positions") for k in ("max_position_embeddings", "n_positions", "n_ctx",
                                                      "max_seq_len", "seq_length")},
    **{k: (MAX_HF_IMAGE, "image size") for k in ("image_size",)},
}
"""HF config keys that size the model, with their limit and what they count. A list value (e.g. Swin's
`depths`) of layers counts its sum, of sizes its largest; nested sub-configs (text_config, vision_config, ...) are checked too."""


def _count(value: Any, total: bool) -> int | None:
    """An int, or a list of ints: their sum (`total`, e.g. Swin's depths per stage) or their largest
    (e.g. Gemma 3n's intermediate_size per layer)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return sum(value) if total else max(value)
    return None


def check_count(value: Any, limit: int, what: str, hint: str = "") -> None:
    """PipeplanError when an integer count is above `limit`: "<what> 10000000 is more than pipeplan
    handles (at most 4096)<hint>". Non-integers are left to the field's own type check."""
    if isinstance(value, int) and not isinstance(value, bool) and value > limit:
        raise PipeplanError(f"{what} {value} is more than pipeplan handles (at most {limit}){hint}")


def check_hf_config_sizes(data: dict[str, Any], where: str = "HF config") -> None:
    """Refuse an HF config whose sizes exceed HF_KEY_LIMITS, naming the key: `HF config vocab_size=10^12
    is more vocabulary than pipeplan profiles (at most 4194304); check the config.json`."""
    stack: list[tuple[str, dict]] = [("", data)]  # linear in the JSON, which is capped (4 MiB, 5 MB upload)
    while stack:
        prefix, d = stack.pop()
        for key, value in d.items():
            if isinstance(value, dict):
                stack.append((f"{prefix}{key}.", value))
                continue
            if key not in HF_KEY_LIMITS:
                continue
            limit, what = HF_KEY_LIMITS[key]
            count = _count(value, total=what == "layers")
            if count is not None and count > limit:
                raise PipeplanError(f"{where} {prefix}{key}={count} is more {what} than pipeplan profiles "
                                    f"(at most {limit}); check the config.json")


def check_shape(batch_size: Any, seq_len: Any) -> None:
    """Refuse a micro-batch size or sequence length (image/volume side) above MAX_BATCH_SIZE / MAX_SHAPE."""
    check_count(batch_size, MAX_BATCH_SIZE, "batch size", "; profile at a smaller micro-batch")
    check_count(seq_len, MAX_SHAPE, "sequence length (or image size)", "")


def check_pipeline_size(num_stages: int, num_microbatches: int) -> None:
    """Refuse more stages than MAX_STAGES, or a step of more stage x micro-batch pairs than the simulator
    handles (MAX_STAGE_MICROBATCHES)."""
    if num_stages > MAX_STAGES:
        raise PipeplanError(f"{num_stages} pipeline stages is more than pipeplan plans (at most {MAX_STAGES} "
                            "devices x chunks per device); use fewer devices or chunks")
    if num_stages * num_microbatches > MAX_STAGE_MICROBATCHES:
        raise PipeplanError(f"{num_stages} stages x {num_microbatches} micro-batches is more than pipeplan "
                            f"simulates (at most {MAX_STAGE_MICROBATCHES} stage-micro-batches per step); "
                            "use fewer micro-batches (larger ones) or fewer devices")
