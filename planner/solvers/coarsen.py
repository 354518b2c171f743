"""Coarsening: plan a layer graph too large for the exact solvers as blocks of consecutive nodes.

An op-granularity profile of a big model has tens of thousands of nodes; the chain DP's interval
tables grow as N x (N / S) and would exhaust the machine (dp.TABLE_BUDGET_BYTES). Such a profile is
planned in blocks of k consecutive nodes of its topological order: every edge goes from a block to
the same or a later block, so the blocks form a DAG whose contiguous partitions are the fine
graph's contiguous partitions with cuts at block boundaries. The block plan's stages are mapped
back to the fine nodes and scored on the fine graph by the cost model (evaluate.evaluate_partition),
so every number of the returned Plan is the fine graph's. The optimum over block boundaries is not a
bound for cuts anywhere, so the Plan's status is "feasible" with no gap, and SolverInfo.note says
that it was coarsened and how.
"""

from __future__ import annotations

import math

import numpy as np

from planner.costmodel.cost import closed_form_step_ms
from planner.costmodel.memory import memory_coefficients
from planner.solvers.dp import (
    TABLE_BUDGET_BYTES,
    ChainProblem,
    cut_bytes,
    held_output_bytes,
    interval_table_bytes,
    relay_matrix_bytes,
)
from profiler.profile import Profile, ProfileEdge, ProfileNode


def dp_table_bytes(num_nodes: int, num_stages: int) -> int:
    """An upper estimate of the DP's tables for a graph of this size: intervals up to 4 N / S nodes
    (a stage rarely needs more than 4x its fair share; dp.band_length decides the real length)."""
    max_len = max(1, min(num_nodes - num_stages + 1, math.ceil(4 * num_nodes / num_stages)))
    return interval_table_bytes(num_nodes, num_stages, max_len)


def block_size(num_nodes: int, num_stages: int, budget_bytes: int = TABLE_BUDGET_BYTES) -> int:
    """1 when the exact solvers plan the graph within the budget; else the smallest block size k
    whose coarse graph (ceil(N / k) nodes, at least S) they plan within it."""
    k = 1
    while dp_table_bytes(max(num_stages, math.ceil(num_nodes / k)), num_stages) > budget_bytes:
        if math.ceil(num_nodes / (k + 1)) < num_stages:
            break
        k += 1
    return k


def _sum_or_none(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else float(sum(values))


def coarsen(profile: Profile, k: int) -> tuple[Profile, list[list[str]]]:
    """The profile with every k consecutive nodes merged into one block, and the fine node ids of each
    block. A block sums its nodes' times, FLOPs, parameters, saved activations and optimizer time.
    Edges inside a block vanish; a fine tensor (one producer, its byte count) read in later blocks
    becomes one coarse edge to each of them, and tensors between the same two blocks add up."""
    nodes = profile.nodes
    groups = [nodes[i:i + k] for i in range(0, len(nodes), k)]
    block_of = {n.id: b for b, group in enumerate(groups) for n in group}
    coarse_nodes = []
    for b, group in enumerate(groups):
        first, last = group[0], group[-1]
        coarse_nodes.append(ProfileNode(
            id=f"block{b}", name=first.name if len(group) == 1 else f"{first.name}..{last.name}",
            kind="block", module_path=first.module_path,
            fwd_flops=sum(n.fwd_flops for n in group), bwd_flops=sum(n.bwd_flops for n in group),
            fwd_ms=sum(n.fwd_ms for n in group), bwd_ms=sum(n.bwd_ms for n in group),
            bwd_input_ms=_sum_or_none([n.bwd_input_ms for n in group]),
            bwd_weight_ms=_sum_or_none([n.bwd_weight_ms for n in group]),
            param_bytes=sum(n.param_bytes for n in group), param_count=sum(n.param_count for n in group),
            shared_params=sorted({p for n in group for p in n.shared_params}),
            activation_bytes=sum(n.activation_bytes for n in group), output_bytes=last.output_bytes,
            optimizer_ms=_sum_or_none([n.optimizer_ms for n in group])))
    # one fine tensor = one producer, byte count and grad flag (cost.build_tables groups edges so)
    readers: dict[tuple[str, int, bool], set[int]] = {}
    saver_blocks: dict[tuple[str, int, bool], set[int]] = {}
    by_producer: dict[tuple[str, int, bool], bool] = {}
    for e in profile.edges:
        key = (e.src, int(e.bytes), bool(e.requires_grad))
        readers.setdefault(key, set()).add(block_of[e.dst])
        by_producer[key] = by_producer.get(key, True) and e.saved_by_src
        if e.saved_by_dst:
            saver_blocks.setdefault(key, set()).add(block_of[e.dst])
    # per coarse edge: [bytes, saved inside the source block (all of its tensors), saved by the reader block
    # (any of them)]: the memory terms then err towards more (cost.AssignmentCost)
    coarse: dict[tuple[int, int, bool], list] = {}
    for key, blocks in readers.items():
        src, nbytes, grad = key
        a = block_of[src]
        saved_in_a = by_producer[key] or a in saver_blocks.get(key, ())
        for b in blocks - {a}:
            entry = coarse.setdefault((a, b, grad), [0, True, False])
            entry[0] += nbytes
            entry[1] = entry[1] and saved_in_a
            entry[2] = entry[2] or b in saver_blocks.get(key, ())
    edges = [ProfileEdge(src=f"block{a}", dst=f"block{b}", bytes=nbytes, requires_grad=grad, saved_by_src=by_src,
                         saved_by_dst=by_dst)
             for (a, b, grad), (nbytes, by_src, by_dst) in sorted(coarse.items())]
    return (Profile(model=profile.model, provenance=profile.provenance, nodes=coarse_nodes, edges=edges),
            [[n.id for n in group] for group in groups])


def refine_cuts(problem: ChainProblem, cuts: list[int], recompute: list[bool], window: int) -> list[int]:
    """The best cuts of a one-stage-per-device chain plan with each cut at most `window` nodes from where
    it is (the stages' recompute flags kept), by the DP's own method on that small space: the lowest
    feasible bottleneck t* by bisection, then for a few bottlenecks from t* up to the given plan's, the
    least sum of c under it, keeping the best closed-form step. Never worse than the given cuts (they
    are in the space). Every term comes from the cost model (the problem's StageTimeCoefficients,
    memory_coefficients) through prefix sums. Graphs with tied parameters or tensors that skip a node
    are returned as they are (their per-stage terms are not prefix sums)."""
    tb = problem.tables
    if tb.shared or relay_matrix_bytes(tb) or not tb.is_chain():
        return cuts
    N, S, M = tb.num_nodes, problem.num_stages, problem.num_microbatches
    prefix = {name: np.concatenate([[0.0], np.cumsum(a)]) for name, a in
              (("fwd", tb.fwd), ("bwd", tb.bwd), ("w", tb.bwd_weight), ("params", tb.params.astype(float)),
               ("acts", tb.activation))}
    fwd_cut, _ = cut_bytes(tb)
    inputs = fwd_cut.copy()
    inputs[0] = tb.model_input_bytes
    held_cut, _ = held_output_bytes(tb, False)  # memory as the DP counts it (AssignmentCost)
    copy_in = np.zeros(N + 1)  # on a chain a stage's saved copy is the tensor it receives, if its reader saves it
    for t in tb.tensors:
        if t.copy_savers:
            copy_in[t.producer + 1] += t.nbytes
    # candidate positions of every cut; cut 0 is 0 and cut S is N
    where = [np.array([0])] + [np.arange(max(1, cuts[b] - window), min(N - 1, cuts[b] + window) + 1)
                                for b in range(1, S)] + [np.array([N])]
    T, C = [], []
    for s in range(S):
        i, j = where[s][:, None], where[s + 1][None, :]
        span = {name: prefix[name][j] - prefix[name][i] for name in prefix}
        m = memory_coefficients(in_flight=problem.stage_in_flight[s], config=problem.config, profile_dtype=tb.dtype,
                                recompute=recompute[s], largest_layer_params=int(tb.params.max(initial=0)))
        acts = span["acts"] + copy_in[i]
        need = m.total_bytes(span["params"], acts, inputs[i], 0.0, held_cut[j])
        comm = problem.comm_ms_per_cut[s][j] if s < S - 1 else 0.0
        t, c = problem.time_coefficients(s).cycle_and_fill_ms(span["fwd"], span["bwd"], span["w"], recompute[s], comm)
        bad = (i >= j) | (need > problem.stage_limit[s])
        T.append(np.where(bad, np.inf, t))
        C.append(np.where(bad, np.inf, c))

    def least_fill(t_cap: float):
        """(sum of c, cuts) of the best placement with every stage's T <= t_cap; (inf, None) if none."""
        F, args = np.zeros(1), []
        for s in range(S):
            cand = F[:, None] + np.where(T[s] <= t_cap, C[s], np.inf)
            args.append(np.argmin(cand, axis=0))
            F = cand[args[-1], np.arange(cand.shape[1])]
        if not np.isfinite(F[0]):
            return np.inf, None
        pos, out = 0, [N]
        for s in range(S - 1, 0, -1):
            pos = int(args[s][pos])
            out.append(int(where[s][pos]))
        return float(F[0]), [0] + out[::-1]

    given_t = max(float(T[s][np.searchsorted(where[s], cuts[s]), np.searchsorted(where[s + 1], cuts[s + 1])])
                  for s in range(S))
    levels = np.unique(np.concatenate([t[np.isfinite(t)].ravel() for t in T]))
    levels = levels[levels <= given_t]
    lo, hi = 0, len(levels) - 1  # the given plan's bottleneck is feasible: bisect for the lowest one
    while lo < hi:
        mid = (lo + hi) // 2
        if least_fill(float(levels[mid]))[1] is None:
            lo = mid + 1
        else:
            hi = mid
    best, best_cuts = np.inf, list(cuts)
    for t_cap in np.unique(np.linspace(levels[lo], given_t, 9)):
        fill, placed = least_fill(float(t_cap))
        if placed is not None:
            bottleneck = max(float(T[s][np.searchsorted(where[s], placed[s]),
                                        np.searchsorted(where[s + 1], placed[s + 1])]) for s in range(S))
            value = closed_form_step_ms(M, 1, bottleneck, fill)
            if value < best:
                best, best_cuts = value, placed
    return best_cuts
