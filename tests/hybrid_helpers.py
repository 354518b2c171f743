"""Synthetic profiles with tensor-parallel facts set by hand (Megatron-style GPT blocks), for the hybrid tests."""

from __future__ import annotations

import dataclasses

from planner.contracts.cluster import Cluster, Device, Link
from profiler.profile import Profile
from profiler.synthetic import gpt_like_profile


def tp_gpt(layers: int = 4, d_model: int = 256, seq_len: int = 128, vocab: int = 1000, micro_batch: int = 1,
           block_ms: float = 2.0, optimizer_ms: float | None = 0.1, split_share: float = 0.9) -> Profile:
    """gpt_like_profile with FLOPs and TP facts: blocks split `split_share` of their FLOPs, all their matmul
    weights (12 d^2) and 60% of their activations, and all-reduce 2 x hidden bytes in forward and backward."""
    prof = gpt_like_profile(layers=layers, d_model=d_model, vocab=vocab, seq_len=seq_len, micro_batch=micro_batch,
                            block_ms=block_ms)
    s, b, d = seq_len, micro_batch, d_model
    hidden = 4 * s * b * d
    nodes = []
    for n in prof.nodes:
        flops = 1e9 * n.fwd_ms
        kw = {"fwd_flops": flops, "bwd_flops": 2 * flops, "optimizer_ms": optimizer_ms}
        if n.kind == "block":
            kw.update(tp_colwise=["attn.c_attn", "mlp.c_fc"], tp_rowwise=["attn.c_proj", "mlp.c_proj"],
                      tp_split_param_count=12 * d * d, tp_split_flops=split_share * flops,
                      tp_split_activation_bytes=int(0.6 * n.activation_bytes),
                      tp_allreduce_fwd_bytes=2 * hidden, tp_allreduce_bwd_bytes=2 * hidden)
        nodes.append(dataclasses.replace(n, **kw))
    return dataclasses.replace(prof, nodes=nodes)


def mesh_cluster(n: int, per_node: int, memory_gib: float = 16.0, intra_gbs: float = 100.0,
                 inter_gbs: float = 10.0) -> Cluster:
    """n identical devices (speed 1), per_node to a host, with round link numbers."""
    return Cluster(devices=[Device(name=f"gpu{i}", memory_bytes=int(memory_gib * 2**30), speed=1.0, node=i // per_node)
                            for i in range(n)],
                   intra_node=Link(bandwidth_bytes_per_s=intra_gbs * 1e9, latency_s=5e-6),
                   inter_node=Link(bandwidth_bytes_per_s=inter_gbs * 1e9, latency_s=10e-6))
