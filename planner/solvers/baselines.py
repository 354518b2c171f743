"""The partitioners people use today, scored by pipeplan's cost model.

- uniform_layers: equal layer counts, remainder to the first stages (DeepSpeed
  `partition_uniform`, torchtitan's even split).
- param_balanced: contiguous blocks minimising the largest parameter count per
  stage (DeepSpeed's default `partition_method='parameters'`, in its min-max form).
- time_balanced: contiguous blocks minimising the largest fwd+bwd time per stage on
  the reference device (torchgpipe `balance_by_time`; we solve its min-max problem
  exactly, which is at least as good as torchgpipe's block-partition heuristic).
All three ignore memory, device speeds and communication, as those tools do; the
cost model then says what their partitions really cost.
"""

from __future__ import annotations

from core.errors import PipeplanError
from planner.contracts.cluster import Cluster
from planner.contracts.config import TrainConfig
from planner.contracts.plan import Plan
from profiler.profile import Profile

BASELINES = ("uniform_layers", "param_balanced", "time_balanced")


def uniform_blocks(n: int, parts: int) -> list[int]:
    """Block sizes: n // parts each, the remainder one extra to the first blocks."""
    q, r = divmod(n, parts)
    return [q + (1 if k < r else 0) for k in range(parts)]


def min_max_blocks(weights: list[float], parts: int) -> list[int]:
    """Block sizes of a contiguous split into `parts` non-empty blocks minimising the largest block sum
    (bisection on the bottleneck with a greedy feasibility check)."""
    n = len(weights)

    def greedy(cap: float) -> list[int] | None:
        sizes, k = [], 0
        for p in range(parts):
            remaining_parts = parts - p - 1
            start, total = k, 0.0
            while k < n - remaining_parts and (k == start or total + weights[k] <= cap):
                total += weights[k]
                k += 1
                if total > cap:
                    return None
            sizes.append(k - start)
        return sizes if k == n else None

    lo, hi = max(weights), sum(weights)
    if greedy(lo) is not None:
        return greedy(lo)
    for _ in range(100):
        mid = (lo + hi) / 2
        if greedy(mid) is None:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(hi, 1.0):
            break
    return greedy(hi) or uniform_blocks(n, parts)


def _blocks_to_ids(ids: list[str], sizes: list[int]) -> list[list[str]]:
    out, k = [], 0
    for size in sizes:
        out.append(ids[k:k + size])
        k += size
    return out


def baseline_partitions(profile: Profile, num_stages: int) -> dict[str, list[list[str]]]:
    ids = [n.id for n in profile.nodes]
    if len(ids) < num_stages:
        raise PipeplanError(f"the model has {len(ids)} layers, fewer than the {num_stages} stages asked for; "
                            "use fewer devices or profile at a finer granularity")
    return {
        "uniform_layers": _blocks_to_ids(ids, uniform_blocks(len(ids), num_stages)),
        "param_balanced": _blocks_to_ids(ids, min_max_blocks([float(n.param_count) for n in profile.nodes],
                                                             num_stages)),
        "time_balanced": _blocks_to_ids(ids, min_max_blocks([n.train_ms for n in profile.nodes], num_stages)),
    }


def baseline_plans(profile: Profile, cluster: Cluster, config: TrainConfig, *,
                   fingerprint: str | None = None) -> dict[str, Plan]:
    """Each baseline's partition as a Plan under the same cost model (feasible=False when it does not fit):
    the one place baselines are scored (solve() lists these next to its plan)."""
    from planner.solvers.evaluate import evaluate_pipeline_partition

    S = cluster.num_devices * config.virtual_stages
    fingerprint = fingerprint or profile.fingerprint()
    return {name: evaluate_pipeline_partition(profile, cluster, config, parts, backend=name, fingerprint=fingerprint)
            for name, parts in baseline_partitions(profile, S).items()}
