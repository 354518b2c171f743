"""Synthetic profiles (no torch needed) for the planner tests and benchmarks: chains, DAGs, a
U-Net-like graph and a GPT-like transformer with tied embeddings."""

from __future__ import annotations

import itertools
import random

from profiler.profile import ModelInfo, Profile, ProfileEdge, ProfileNode, Provenance


def chain_profile(times, *, params=None, acts=None, edge_bytes=None, bwd_ratio=2.0, name="chain",
                  shared=None) -> Profile:
    """A chain n0 -> n1 -> ... with the given forward times (ms)."""
    n = len(times)
    params = params or [0] * n
    acts = acts or [0] * n
    edge_bytes = edge_bytes or [1024] * max(n - 1, 0)
    nodes = [ProfileNode(id=f"n{i}", name=f"n{i}", kind="block", module_path=f"layers.{i}",
                         fwd_ms=float(t), bwd_ms=float(t) * bwd_ratio, param_count=int(params[i]),
                         param_bytes=4 * int(params[i]), activation_bytes=int(acts[i]),
                         output_bytes=int(edge_bytes[i]) if i < n - 1 else 0,
                         shared_params=list((shared or {}).get(i, [])))
             for i, t in enumerate(times)]
    edges = [ProfileEdge(src=f"n{i}", dst=f"n{i + 1}", bytes=int(edge_bytes[i])) for i in range(n - 1)]
    return Profile(model=ModelInfo(source="synthetic", name=name, param_count=sum(params), input_bytes=1024),
                   provenance=Provenance(method="estimated", device="synthetic"), nodes=nodes, edges=edges)


def random_chain_profile(n: int, seed: int) -> Profile:
    """A chain of n layers with random times (0.2-3 ms), parameters, activations and edge bytes:
    the benchmarks' planner and solver instances."""
    rng = random.Random(seed)
    return chain_profile([rng.uniform(0.2, 3.0) for _ in range(n)],
                         params=[rng.randint(10**5, 10**7) for _ in range(n)],
                         acts=[rng.randint(10**6, 5 * 10**7) for _ in range(n)],
                         edge_bytes=[rng.randint(10**5, 10**7) for _ in range(n - 1)])


def dag_profile(times, edges, *, params=None, acts=None, name="dag") -> Profile:
    """Nodes n0.. with forward times; edges as (src, dst, bytes) index triples."""
    n = len(times)
    params = params or [0] * n
    acts = acts or [0] * n
    nodes = [ProfileNode(id=f"n{i}", name=f"n{i}", kind="block", module_path=f"m{i}", fwd_ms=float(t),
                         bwd_ms=2.0 * float(t), param_count=int(params[i]), param_bytes=4 * int(params[i]),
                         activation_bytes=int(acts[i])) for i, t in enumerate(times)]
    es = [ProfileEdge(src=f"n{a}", dst=f"n{b}", bytes=int(nb)) for a, b, nb in edges]
    return Profile(model=ModelInfo(source="synthetic", name=name, param_count=sum(params), input_bytes=1024),
                   provenance=Provenance(method="estimated", device="synthetic"), nodes=nodes, edges=es)


def unet_profile(depth: int = 4, width: int = 3, seed: int = 0) -> Profile:
    """A U-Net-like DAG: `depth` encoder levels of `width` convs, a bottleneck, mirrored decoder levels,
    each decoder level reading the encoder level's output through a skip projection node (a parallel
    branch, so the topological order is not unique)."""
    rng = random.Random(seed)
    times, edges, acts, params = [], [], [], []

    def add(t, p, a):
        times.append(t)
        params.append(p)
        acts.append(a)
        return len(times) - 1

    prev, skips = None, []
    for level in range(depth):
        for _ in range(width):
            k = add(rng.uniform(0.5, 2.0), rng.randint(1000, 5000), rng.randint(10_000, 50_000) >> level)
            if prev is not None:
                edges.append((prev, k, 40_000 >> level))
            prev = k
        # a 1x1 "skip projection" on a parallel branch: the graph is no longer a chain
        proj = add(rng.uniform(0.1, 0.5), rng.randint(100, 500), rng.randint(1000, 5000) >> level)
        edges.append((prev, proj, 40_000 >> level))
        skips.append(proj)
    k = add(2.0, 8000, 5000)
    edges.append((prev, k, 5000))
    prev = k
    for level in reversed(range(depth)):
        for w in range(width):
            k = add(rng.uniform(0.5, 2.0), rng.randint(1000, 5000), rng.randint(10_000, 50_000) >> level)
            edges.append((prev, k, 40_000 >> level))
            if w == 0:
                edges.append((skips[level], k, 40_000 >> level))
            prev = k
    return dag_profile(times, edges, params=params, acts=acts, name="unet")


def gpt_like_profile(layers: int = 12, d_model: int = 768, vocab: int = 50257, seq_len: int = 1024,
                     micro_batch: int = 1, block_ms: float = 2.0) -> Profile:
    """A GPT-2-like chain: embedding, `layers` blocks, final norm, LM head tied to the embedding.
    Sizes follow GPT-2 (12 d^2 params per block); activation bytes ~ 34 s b d + 5 a s^2 b per block
    (Korthikanti et al. 2022, fp32 here), times proportional to FLOPs."""
    s, b, d, heads = seq_len, micro_batch, d_model, max(1, d_model // 64)
    hidden = 4 * s * b * d
    block_params = 12 * d * d + 13 * d
    nodes = [ProfileNode(id="wte", name="embedding", kind="embedding", module_path="wte", fwd_ms=0.05 * block_ms,
                         bwd_ms=0.1 * block_ms, param_count=vocab * d + s * d, param_bytes=4 * (vocab * d + s * d),
                         activation_bytes=hidden, output_bytes=hidden)]
    for i in range(layers):
        nodes.append(ProfileNode(id=f"h.{i}", name=f"block {i}", kind="block", module_path=f"h.{i}",
                                 fwd_ms=block_ms, bwd_ms=2 * block_ms, param_count=block_params,
                                 param_bytes=4 * block_params, activation_bytes=2 * (34 * s * b * d + 5 * heads * s * s * b),
                                 output_bytes=hidden))
    nodes.append(ProfileNode(id="ln_f", name="final norm", kind="norm", module_path="ln_f", fwd_ms=0.01 * block_ms,
                             bwd_ms=0.02 * block_ms, param_count=2 * d, param_bytes=8 * d, activation_bytes=hidden,
                             output_bytes=hidden))
    head_ms = block_ms * vocab / (6 * d)
    nodes.append(ProfileNode(id="lm_head", name="LM head", kind="head", module_path="lm_head", fwd_ms=head_ms,
                             bwd_ms=2 * head_ms, param_count=0, shared_params=["wte.weight"],
                             activation_bytes=hidden + 4 * s * b * vocab, output_bytes=4 * s * b * vocab))
    edges = [ProfileEdge(src=a.id, dst=c.id, bytes=hidden) for a, c in itertools.pairwise(nodes)]
    total = sum(n.param_count for n in nodes)
    return Profile(model=ModelInfo(source="synthetic:gpt", name=f"gpt-like-{layers}x{d_model}", param_count=total,
                                   seq_len=s, micro_batch_size=b, input_bytes=8 * s * b),
                   provenance=Provenance(method="estimated", device="synthetic"), nodes=nodes, edges=edges)
