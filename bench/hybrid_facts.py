"""Megatron-style tensor-parallel facts for transformer profiles that have none yet (bench only).

The profiler fills ProfileNode.tp_* from the model's own TP plan (profiler/tp.py). Where a profile has
no TP facts (older profiles, or before that code runs on a model), the hybrid benchmark sets them by the
Megatron-LM rules (Shoeybi et al. 2019; Korthikanti et al. 2022, Table 2), per micro-batch, for a block of
hidden size h at s tokens x b samples and activations of `e` bytes per element:

- blocks: every matmul and the attention are split (tp_split_flops = the block's forward FLOPs), every
  weight but the two norms' (tp_split_param_count = params - 2h), 24 of the 34 s b h bytes of saved
  activations (the ones inside the column-to-row-wise regions); two all-reduces of s b h e bytes in
  forward and two in backward;
- embeddings, norms and the LM head replicate (as profiler/tp.py plans pipeplan's sample models; Megatron
  splits the vocabulary too, which this model does not credit).
"""

from __future__ import annotations

import dataclasses

from planner.costmodel.parallel import has_tp_plan
from profiler.profile import Profile

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def with_megatron_tp_facts(profile: Profile, *, replace: bool = False) -> Profile:
    """The profile with Megatron TP facts on its blocks; unchanged if it has TP facts, unless `replace`
    (the GPT sample splits only its MLP, its qkv being one fused Linear; the published GPT systems split
    the attention per head, and the benchmark compares with them)."""
    if has_tp_plan(profile) and not replace:
        return profile
    e = _DTYPE_BYTES.get(profile.model.dtype, 4)
    s, b = profile.model.seq_len or 1, profile.model.micro_batch_size or 1
    blocks = [n for n in profile.nodes if n.kind == "block"]
    if not blocks:
        return profile
    h = blocks[0].output_bytes // (s * b * e)
    nodes = []
    for n in profile.nodes:
        if n.kind == "block":
            n = dataclasses.replace(
                n, tp_colwise=["attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3"],
                tp_rowwise=["attention.wo", "feed_forward.w2"], tp_split_param_count=max(0, n.param_count - 2 * h),
                tp_split_flops=n.fwd_flops, tp_split_activation_bytes=int(n.activation_bytes * 24 / 34),
                tp_allreduce_fwd_bytes=2 * s * b * h * e, tp_allreduce_bwd_bytes=2 * s * b * h * e)
        nodes.append(n)
    return dataclasses.replace(profile, nodes=nodes)
