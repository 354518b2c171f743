"""Hybrid parallelism (PP x DP x TP): the device mesh and the cost terms of tensor and data parallelism.

Every formula of the hybrid cost model is written once here (docs/hybrid.md, "Hybrid cost model and
search"); memory under DDP / ZeRO-1 / FSDP is in planner.costmodel.memory (stage_memory_bytes).

The integration is one transform: `rank_profile(profile, config, cluster)` turns the user's profile into
the profile ONE GPU of the mesh runs (its TP share of every layer's time, bytes and parameters, the TP
all-reduces added to forward and backward, FSDP's per-layer all-gathers overlapped with compute, and its
share of the after-drain work: optimizer step plus data-parallel gradient sync). The pipeline solvers,
the exact finish and the simulator then plan that profile on `pipeline_cluster` (one device per pipeline
rank) exactly as they plan a PP-only job, and `to_mesh_plan` maps the result back onto the whole
cluster. planner.solvers.solve.solve and planner.solvers.evaluate.evaluate_partition are the two entries
that apply it (only when config.data_parallel * config.tensor_parallel > 1: PP-only planning is unchanged).

Rank layout (the export uses the same function): mesh dims ("pp", "dp", "tp"), tp fastest,

    global rank = (pp_rank * dp + dp_rank) * tp + tp_rank

the cluster's devices are in rank order, a TP group is tp consecutive devices inside one node, and
StagePlan.device is the first device of the stage's dp_rank-0 TP group (mesh_rank(pp_rank, 0, 0)).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from core.errors import PipeplanError
from planner.contracts.cluster import Cluster, Link
from planner.contracts.config import TrainConfig
from planner.costmodel.cost import backward_split_ms
from planner.costmodel.memory import activation_scale
from profiler.gpus import OPTIMIZER_STEP_TRAFFIC_BYTES
from profiler.profile import Profile, ProfileNode

MESH_DIMS = ("pp", "dp", "tp")
"""torch DeviceMesh dimension names, outermost first (tp varies fastest over global ranks)."""


# -- the rank layout ---------------------------------------------------------------------------------

def mesh_rank(pp_rank: int, dp_rank: int, tp_rank: int, dp: int, tp: int) -> int:
    """Global rank (= cluster device index) of a mesh coordinate: (pp_rank * dp + dp_rank) * tp + tp_rank."""
    return (pp_rank * dp + dp_rank) * tp + tp_rank


def mesh_coords(rank: int, dp: int, tp: int) -> tuple[int, int, int]:
    """(pp_rank, dp_rank, tp_rank) of a global rank: the inverse of mesh_rank."""
    return rank // (dp * tp), (rank // tp) % dp, rank % tp


def tp_group(pp_rank: int, dp_rank: int, dp: int, tp: int) -> list[int]:
    """Devices of one TP group: tp consecutive ranks."""
    return [mesh_rank(pp_rank, dp_rank, t, dp, tp) for t in range(tp)]


def dp_group(pp_rank: int, tp_rank: int, dp: int, tp: int) -> list[int]:
    """Devices of one data-parallel group (the replicas of one TP shard of one pipeline stage)."""
    return [mesh_rank(pp_rank, d, tp_rank, dp, tp) for d in range(dp)]


def stage_groups(pp_rank: int, dp: int, tp: int) -> list[list[int]]:
    """Devices of pipeline rank pp_rank: one TP group per dp_rank (dp lists of tp devices)."""
    return [tp_group(pp_rank, d, dp, tp) for d in range(dp)]


def pipeline_devices(pp: int, dp: int, tp: int) -> list[int]:
    """StagePlan.device of each pipeline rank: the first device of its dp_rank-0 TP group."""
    return [mesh_rank(p, 0, 0, dp, tp) for p in range(pp)]


def is_mesh(config: TrainConfig) -> bool:
    """True when the config asks for data or tensor parallelism: the cluster is then the whole mesh."""
    return config.data_parallel * config.tensor_parallel > 1


@dataclass(frozen=True, slots=True)
class Mesh:
    pp: int
    dp: int
    tp: int
    gpus_per_node: int

    @property
    def devices(self) -> int:
        return self.pp * self.dp * self.tp


def gpus_per_node(cluster: Cluster) -> int:
    """Devices per host (Device.node): the largest count on one node."""
    count: dict[int, int] = {}
    for d in cluster.devices:
        count[d.node] = count.get(d.node, 0) + 1
    return max(count.values())


def check_uniform(cluster: Cluster, what: str = "data or tensor parallelism") -> None:
    """PipeplanError unless every device is the same kind (memory, speed, overhead): the hybrid cost model
    gives every replica and TP rank the same times."""
    kinds = {d.kind() for d in cluster.devices}
    if len(kinds) > 1:
        raise PipeplanError(f"{what} needs devices of one kind; this cluster mixes {len(kinds)} kinds "
                            "(memory, GPU type or speed): plan pipeline parallelism only (dp = tp = 1) on it, "
                            "or use identical devices")


def check_mesh(cluster: Cluster, config: TrainConfig) -> Mesh:
    """The mesh a config asks for on a cluster (its devices in rank order), or one clear PipeplanError:
    devices a multiple of dp x tp, identical devices, TP groups inside one node."""
    dp, tp = config.data_parallel, config.tensor_parallel
    n = cluster.num_devices
    if n % (dp * tp):
        raise PipeplanError(f"{n} devices cannot be split into data-parallel {dp} x tensor-parallel {tp} groups: "
                            f"the device count must be a multiple of dp x tp = {dp * tp}")
    check_uniform(cluster)
    per_node = gpus_per_node(cluster)
    if tp > 1:
        if per_node % tp:
            raise PipeplanError(f"tensor parallel {tp} does not divide the {per_node} GPUs per node: a TP group "
                                "must stay inside one node; use a tp that divides the GPUs per node")
        for start in range(0, n, tp):
            nodes = {cluster.devices[i].node for i in range(start, start + tp)}
            if len(nodes) > 1:
                raise PipeplanError(f"devices {start}..{start + tp - 1} form a tensor-parallel group but sit on nodes "
                                    f"{sorted(nodes)}: a TP group must stay inside one node (devices in rank order)")
    return Mesh(pp=n // (dp * tp), dp=dp, tp=tp, gpus_per_node=per_node)


def pipeline_cluster(cluster: Cluster, mesh: Mesh) -> Cluster:
    """The cluster the pipeline solvers plan on: one device per pipeline rank (pipeline_devices), with the
    whole cluster's links (boundaries between ranks on different nodes cross the inter-node link)."""
    idx = pipeline_devices(mesh.pp, mesh.dp, mesh.tp)
    return dataclasses.replace(cluster, devices=[cluster.devices[i] for i in idx])


# -- collectives (alpha-beta, ring algorithms) --------------------------------------------------------

def ring_allreduce_ms(nbytes: float, n: int, link: Link, collectives: int = 1) -> float:
    """Ring all-reduce of nbytes over n ranks (Patarasuk & Yuan 2009; Thakur et al. 2005):
    2 (n-1)/n * bytes * beta + 2 (n-1) * alpha per collective. 0 for n = 1 or no bytes."""
    if n <= 1 or nbytes <= 0:
        return 0.0
    return 2.0 * (n - 1) / n * nbytes * link.ms_per_byte + 2.0 * (n - 1) * link.latency_ms * collectives


def reduce_scatter_ms(nbytes: float, n: int, link: Link, collectives: int = 1) -> float:
    """Ring reduce-scatter of nbytes (the full, unsharded size) over n ranks: (n-1)/n * bytes * beta +
    (n-1) * alpha: half of a ring all-reduce."""
    if n <= 1 or nbytes <= 0:
        return 0.0
    return (n - 1) / n * nbytes * link.ms_per_byte + (n - 1) * link.latency_ms * collectives


def all_gather_ms(nbytes: float, n: int, link: Link, collectives: int = 1) -> float:
    """Ring all-gather of nbytes (the full, gathered size) over n ranks: the same cost as reduce_scatter_ms."""
    return reduce_scatter_ms(nbytes, n, link, collectives)


# -- tensor parallelism -------------------------------------------------------------------------------

def tp_share(total: float, split: float, tp: int) -> float:
    """What one TP rank holds or runs of a quantity of which `split` is sharded: total - split + split / tp."""
    split = min(split, total)
    return total - split + split / tp


def tp_compute_fraction(node: ProfileNode, tp: int) -> float:
    """One TP rank's share of the layer's compute: (fwd_flops - split + split / tp) / fwd_flops; the backward
    splits in the same proportion (its FLOPs follow the forward's matmuls)."""
    if tp <= 1 or node.tp_split_flops <= 0 or node.fwd_flops <= 0:
        return 1.0
    return tp_share(node.fwd_flops, node.tp_split_flops, tp) / node.fwd_flops


def tp_collectives(node: ProfileNode) -> int:
    """All-reduces per direction of a layer: one per row-wise module (Megatron: the output of attention's and
    the MLP's row-wise projection in forward; the input gradient of the matching column-wise group in
    backward), at least 1 when the layer all-reduces anything."""
    return max(1, len(node.tp_rowwise))


def tp_allreduce_ms(node: ProfileNode, tp: int, link: Link, scale: float = 1.0) -> tuple[float, float]:
    """(forward, backward) ms of a layer's TP all-reduces per micro-batch on the intra-node link:
    ring_allreduce_ms(scale * tp_allreduce_{fwd,bwd}_bytes, tp, link), alpha paid once per collective.
    scale = memory.activation_scale (the profile's bytes in the training precision: 1/2 for bf16_mixed
    on an fp32 profile)."""
    if tp <= 1:
        return 0.0, 0.0
    k = tp_collectives(node)
    return (ring_allreduce_ms(scale * node.tp_allreduce_fwd_bytes, tp, link, k),
            ring_allreduce_ms(scale * node.tp_allreduce_bwd_bytes, tp, link, k))


def check_tp_degree(profile: Profile, tp: int) -> None:
    """PipeplanError when a layer's tp_max_degree (if the profiler set it; 0 = no limit) is not a multiple
    of tp (e.g. attention heads or key/value heads not divisible by tp)."""
    if tp <= 1:
        return
    for n in profile.nodes:
        limit = int(getattr(n, "tp_max_degree", 0) or 0)
        if limit and limit % tp:
            raise PipeplanError(f"tensor parallel {tp} does not divide layer {n.id!r}'s split dimension "
                                f"(its heads or features allow TP degrees dividing {limit})")


def max_tp_degree(profile: Profile) -> int:
    """The gcd of the layers' tp_max_degree (0 = no limit): every valid tp divides it."""
    g = 0
    for n in profile.nodes:
        limit = int(getattr(n, "tp_max_degree", 0) or 0)
        if limit:
            g = math.gcd(g, limit)
    return g


def has_tp_plan(profile: Profile) -> bool:
    """True when some layer has TP facts (something to split)."""
    return any(n.tp_split_flops > 0 or n.tp_split_param_count > 0 for n in profile.nodes)


# -- data parallelism ----------------------------------------------------------------------------------

def dp_link(cluster: Cluster, mesh: Mesh) -> Link:
    """The slowest link between the replicas of any stage: inter-node when one data-parallel group spans
    nodes (dp x tp > GPUs per node with this layout), else intra-node."""
    if mesh.dp <= 1:
        return cluster.intra_node
    for p in range(mesh.pp):
        for t in range(mesh.tp):
            group = dp_group(p, t, mesh.dp, mesh.tp)
            if len({cluster.devices[i].node for i in group}) > 1:
                return cluster.inter_node
    return cluster.intra_node


def dp_sync_ms(param_count: float, config: TrainConfig, link: Link, collectives: int = 1) -> float:
    """Data-parallel traffic of one TP rank's `param_count` parameters per step, after the pipeline drains
    (the export syncs gradients once, after the last backward, like the optimizer step):

        ddp:   ring all-reduce of the gradients             2 (n-1)/n * G * beta + 2 (n-1) * alpha
        zero1: reduce-scatter of the gradients + all-gather of the updated weights
                                                            (n-1)/n * (G + Wt) * beta + 2 (n-1) * alpha
        fsdp:  reduce-scatter of the gradients               (n-1)/n * G * beta + (n-1) * alpha
               (its weight all-gathers run per layer in forward and backward: fsdp_gather_ms)

    with n = dp, G = param_count * gradient bytes, Wt = param_count * weight bytes of the precision
    (memory.bytes_per_param: bf16 grads and weights under bf16_mixed), alpha once per collective
    (one bucket per layer)."""
    from planner.costmodel.memory import bytes_per_param

    n = config.data_parallel
    if n <= 1 or param_count <= 0:
        return 0.0
    w, g, _ = bytes_per_param(config.precision, config.optimizer)
    grads = param_count * g
    if config.dp_sharding == "ddp":
        return ring_allreduce_ms(grads, n, link, collectives)
    if config.dp_sharding == "zero1":
        return reduce_scatter_ms(grads, n, link, collectives) + all_gather_ms(param_count * w, n, link, collectives)
    return reduce_scatter_ms(grads, n, link, collectives)


def fsdp_gather_ms(param_count: float, config: TrainConfig, link: Link) -> float:
    """FSDP's all-gather of one layer's weights (one TP rank's share), paid in the forward and again in the
    backward of every micro-batch (reshard after forward, FSDP2's default): all_gather_ms(params * weight
    bytes, dp). FSDP2 prefetches the next layer's gather during this layer's compute, so a layer takes
    max(compute, gather) (rank_profile)."""
    from planner.costmodel.memory import bytes_per_param

    if config.dp_sharding != "fsdp" or config.data_parallel <= 1 or param_count <= 0:
        return 0.0
    w, _, _ = bytes_per_param(config.precision, config.optimizer)
    return all_gather_ms(param_count * w, config.data_parallel, link)


def optimizer_state_divisor(config: TrainConfig) -> int:
    """How many ranks share one parameter's optimizer step: dp under zero1 and fsdp (each rank updates its
    shard), 1 under ddp (every replica updates everything)."""
    return config.data_parallel if config.dp_sharding in ("zero1", "fsdp") else 1


# -- the transform ---------------------------------------------------------------------------------------

def node_dp_sync_ms(rank_param_count: float, config: TrainConfig, link: Link) -> float:
    """One layer's share of dp_sync_ms (one collective per layer with parameters)."""
    return dp_sync_ms(rank_param_count, config, link, collectives=1)


def rank_profile(profile: Profile, config: TrainConfig, cluster: Cluster, mesh: Mesh | None = None) -> Profile:
    """The profile one GPU of the mesh runs, in the profile's reference-device units, for the pipeline
    solvers (identity when dp = tp = 1). Per layer, with f = tp_compute_fraction and s = speed factor:

        fwd_ms  = fwd_ms * f + s * AR_fwd            AR = tp_allreduce_ms on cluster.intra_node, in the
                                                     training precision's bytes
        B       = B * f + s * AR_bwd                 (the input-gradient all-reduce belongs to B)
        W       = W * f
        fsdp:   fwd_ms = max(fwd_ms, s * AG), B += max(0, s * AG - (B + W))     AG = fsdp_gather_ms
        params  = tp_share(param_count, tp_split_param_count, tp)   (param_bytes likewise)
        activation_bytes = tp_share(activation_bytes, tp_split_activation_bytes, tp)
        FLOPs   = FLOPs * f
        optimizer_ms = optimizer_ms * params/param_count / optimizer_state_divisor
                       + s * node_dp_sync_ms(params) * traffic(adamw) / traffic(optimizer)

    Times on the intra/inter-node links are multiplied by s because the solvers divide every reference time
    by the device's speed factor. The after-drain work (optimizer step + DP gradient sync) is carried in
    optimizer_ms so the solvers' bounds and the simulator see it exactly; to_mesh_plan splits the sync back
    out into StagePlan.dp_sync_ms. Edge bytes stay whole: without sequence parallelism every TP rank holds
    and sends the full hidden states. The TP facts are consumed (set to zero) in the result."""
    dp, tp = config.data_parallel, config.tensor_parallel
    if dp * tp <= 1:
        return profile
    mesh = mesh or check_mesh(cluster, config)
    check_tp_degree(profile, tp)
    speed = cluster.speed_factor(0, profile)
    ar_link, sync_link = cluster.intra_node, dp_link(cluster, mesh)
    divisor = optimizer_state_divisor(config)
    traffic = OPTIMIZER_STEP_TRAFFIC_BYTES["adamw"] / OPTIMIZER_STEP_TRAFFIC_BYTES[config.optimizer]
    act_scale = activation_scale(profile.model.dtype, config.precision)
    consumed = {"tp_max_degree": 0} if "tp_max_degree" in {f.name for f in dataclasses.fields(ProfileNode)} else {}
    nodes = []
    for n in profile.nodes:
        f = tp_compute_fraction(n, tp)
        ar_f, ar_b = tp_allreduce_ms(n, tp, ar_link, act_scale)
        b_in, b_w = backward_split_ms(n)
        params = tp_share(n.param_count, n.tp_split_param_count, tp) if tp > 1 else float(n.param_count)
        p_frac = params / n.param_count if n.param_count else 1.0
        fwd = n.fwd_ms * f + speed * ar_f
        b_in, b_w = b_in * f + speed * ar_b, b_w * f
        gather = speed * fsdp_gather_ms(params, config, sync_link)
        if gather > 0:
            fwd = max(fwd, gather)
            b_in += max(0.0, gather - (b_in + b_w))
        opt = (n.optimizer_ms or 0.0) * p_frac / divisor + speed * node_dp_sync_ms(params, config, sync_link) * traffic
        nodes.append(dataclasses.replace(
            n, fwd_ms=fwd, bwd_ms=b_in + b_w, bwd_input_ms=b_in, bwd_weight_ms=b_w,
            fwd_flops=n.fwd_flops * f, bwd_flops=n.bwd_flops * f,
            param_count=round(params), param_bytes=round(n.param_bytes * p_frac),
            activation_bytes=round(tp_share(n.activation_bytes, n.tp_split_activation_bytes, tp)),
            optimizer_ms=opt if (n.optimizer_ms is not None or opt > 0) else None,
            tp_colwise=[], tp_rowwise=[], tp_split_param_count=0, tp_split_flops=0.0,
            tp_split_activation_bytes=0, tp_allreduce_fwd_bytes=0, tp_allreduce_bwd_bytes=0, **consumed))
    return Profile(model=profile.model, provenance=profile.provenance, nodes=nodes, edges=profile.edges)


def largest_layer_params(profile_or_counts) -> int:
    """The largest layer's parameter count (of a rank profile: one TP rank's share): FSDP's all-gather
    buffer holds it unsharded (memory.stage_memory_bytes)."""
    if isinstance(profile_or_counts, Profile):
        return max((n.param_count for n in profile_or_counts.nodes), default=0)
    return int(max(profile_or_counts, default=0))


def to_mesh_plan(plan, cluster: Cluster, config: TrainConfig, rank_prof: Profile, mesh: Mesh | None = None):
    """A plan the pipeline solvers made on pipeline_cluster, put back on the whole mesh, in place: the
    plan's cluster is the whole cluster, each StagePlan.device the first device of its dp_rank-0 TP group,
    and each stage's DP gradient sync moved out of optimizer_ms into dp_sync_ms (the sum, and so every
    step time, is unchanged)."""
    mesh = mesh or check_mesh(cluster, config)
    first = pipeline_devices(mesh.pp, mesh.dp, mesh.tp)
    link = dp_link(cluster, mesh)
    params = {n.id: n.param_count for n in rank_prof.nodes}
    plan.cluster = cluster
    for st in plan.stages:
        st.device = first[st.device]
        sync = sum(node_dp_sync_ms(params[i], config, link) for i in st.node_ids)
        st.dp_sync_ms = sync
        st.optimizer_ms = max(0.0, st.optimizer_ms - sync)
    return plan


# -- throughput ------------------------------------------------------------------------------------------

def model_flops_per_sample(profile: Profile) -> float:
    """Model FLOPs of one training sample: the profile's forward + backward FLOPs (recompute not counted:
    a re-run forward is not model work) over its micro-batch size."""
    return profile.total_flops / max(1, profile.model.micro_batch_size or 1)


@dataclass(frozen=True, slots=True)
class Throughput:
    samples_per_s: float
    tokens_per_s: float | None
    mfu: float | None
    """Model FLOPs per step / (step time * GPUs * peak FLOP/s)."""
    model_flops_per_step: float


def throughput(profile: Profile, cluster: Cluster, global_batch: int, step_ms: float) -> Throughput:
    """samples/s = global batch / step; tokens/s = samples/s * seq_len for sequence models;
    MFU = model_flops_per_sample * global batch / (step s * N GPUs * peak FLOP/s) (Chowdhery et al. 2022,
    PaLM, appendix B), with peak = Device.tflops (None when the devices have no peak)."""
    step_s = step_ms / 1000.0
    samples = global_batch / step_s if step_s > 0 else 0.0
    seq = profile.model.seq_len
    flops = model_flops_per_sample(profile) * global_batch
    peak = sum((d.tflops or 0.0) for d in cluster.devices) * 1e12
    mfu = flops / (step_s * peak) if peak > 0 and step_s > 0 and all(d.tflops for d in cluster.devices) else None
    return Throughput(samples_per_s=samples, tokens_per_s=samples * seq if seq else None, mfu=mfu,
                      model_flops_per_step=flops)
