"""Hand-made synthetic profiles for the planner tests (no torch needed)."""

from __future__ import annotations

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
