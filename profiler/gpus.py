"""GPU presets: the numbers a roofline estimate and a Cluster need.

Peaks are dense (no sparsity) vendor datasheet figures. The efficiency factors
say what fraction of a peak real kernels reach; they are documented in
docs/cost-model.md and are the knobs a GPU calibration run tunes.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import PipeplanError

GB = 10**9
GiB = 2**30

# Roofline efficiency factors (docs/cost-model.md, "Efficiency factors").
# Defaults follow published sustained/peak ratios: large GEMMs reach 60-75% of
# dense peak on A100/H100 in bf16 (NVIDIA cuBLAS and Megatron-LM MFU reports),
# STREAM-like kernels 80-90% of HBM bandwidth. A calibration run on a real GPU
# (bench/bench_profiler.py --gpu) is how these get tuned per preset.
DEFAULT_COMPUTE_EFFICIENCY = 0.65
DEFAULT_MEMORY_EFFICIENCY = 0.80
DEFAULT_KERNEL_OVERHEAD_US = 4.0


@dataclass(frozen=True, kw_only=True, slots=True)
class GpuPreset:
    name: str
    memory_bytes: int
    bf16_tflops: float
    """Dense bf16/fp16 tensor-core peak, TFLOP/s."""
    fp32_tflops: float
    """Non-tensor-core fp32 peak, TFLOP/s (TF32 off, PyTorch's default for matmul)."""
    mem_bw_gbs: float
    """HBM/GDDR bandwidth, GB/s."""
    intra_node_bw_gbs: float
    """Per-direction point-to-point bandwidth to a peer in the same node (NVLink/xGMI, or PCIe)."""
    source: str
    """Where the numbers come from."""
    compute_efficiency: float = DEFAULT_COMPUTE_EFFICIENCY
    """Fraction of the peak FLOP/s that matmul/conv kernels reach (roofline compute roof)."""
    memory_efficiency: float = DEFAULT_MEMORY_EFFICIENCY
    """Fraction of the datasheet bandwidth that streaming kernels reach (roofline memory roof)."""
    kernel_overhead_us: float = DEFAULT_KERNEL_OVERHEAD_US
    """Fixed cost per aten op (launch + tail), microseconds; dominates for tiny layers."""

    def peak_tflops(self, dtype: str) -> float:
        return self.bf16_tflops if dtype in ("bfloat16", "float16", "bf16", "fp16", "bf16_mixed") else self.fp32_tflops


# Datasheet numbers (dense). NVLink figures are per direction.
GPU_PRESETS: dict[str, GpuPreset] = {p.name: p for p in [
    GpuPreset(name="A100-40GB", memory_bytes=40 * GiB, bf16_tflops=312, fp32_tflops=19.5, mem_bw_gbs=1555,
              intra_node_bw_gbs=300, source="NVIDIA A100 datasheet (SXM)"),
    GpuPreset(name="A100-80GB", memory_bytes=80 * GiB, bf16_tflops=312, fp32_tflops=19.5, mem_bw_gbs=2039,
              intra_node_bw_gbs=300, source="NVIDIA A100 datasheet (SXM)"),
    GpuPreset(name="H100-SXM", memory_bytes=80 * GiB, bf16_tflops=989, fp32_tflops=67, mem_bw_gbs=3350,
              intra_node_bw_gbs=450, source="NVIDIA H100 datasheet (SXM5)"),
    GpuPreset(name="H200", memory_bytes=141 * GB, bf16_tflops=989, fp32_tflops=67, mem_bw_gbs=4800,
              intra_node_bw_gbs=450, source="NVIDIA H200 datasheet (SXM)"),
    GpuPreset(name="L4", memory_bytes=24 * GiB, bf16_tflops=121, fp32_tflops=30.3, mem_bw_gbs=300,
              intra_node_bw_gbs=25, source="NVIDIA L4 datasheet (PCIe Gen4 x16)"),
    GpuPreset(name="RTX4090", memory_bytes=24 * GiB, bf16_tflops=165, fp32_tflops=82.6, mem_bw_gbs=1008,
              intra_node_bw_gbs=25, source="NVIDIA Ada whitepaper (fp32 accumulate)"),
    GpuPreset(name="V100", memory_bytes=32 * GiB, bf16_tflops=125, fp32_tflops=15.7, mem_bw_gbs=900,
              intra_node_bw_gbs=150, source="NVIDIA V100 datasheet (SXM2, fp16 tensor cores)"),
    GpuPreset(name="MI300X", memory_bytes=192 * GB, bf16_tflops=1307, fp32_tflops=163.4, mem_bw_gbs=5300,
              intra_node_bw_gbs=64, source="AMD MI300X datasheet (xGMI per peer)"),
]}


PRESET_ALIASES = {"a100": "A100-80GB", "a10080g": "A100-80GB", "a10040g": "A100-40GB", "h100": "H100-SXM",
                  "h100sxm5": "H100-SXM", "h200sxm": "H200", "4090": "RTX4090", "rtx409024gb": "RTX4090",
                  "mi300": "MI300X", "v10032gb": "V100", "l424gb": "L4"}
"""What people type for a preset (compared without case, dashes, underscores or spaces): the bare
family name means its largest common variant (an A100 is the 80 GB one, an H100 the SXM one)."""


def _preset_key(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def get_preset(name: str) -> GpuPreset:
    """Look a preset up by name, ignoring case, dashes, underscores and spaces ("a100-80gb", "H100",
    "h100 sxm"), or by a common alias (PRESET_ALIASES); the error lists the valid names and how to
    describe a device that is not in the list."""
    key = _preset_key(name)
    for preset_name, preset in GPU_PRESETS.items():
        if _preset_key(preset_name) == key:
            return preset
    if key in PRESET_ALIASES:
        return GPU_PRESETS[PRESET_ALIASES[key]]
    raise PipeplanError(f"unknown GPU preset {name!r}; choose one of {', '.join(GPU_PRESETS)} "
                        "(case and dashes do not matter), or describe your device: `pipeplan profile "
                        "--estimate-for custom:TFLOPS,BW_GBS,MEM_GB`, `pipeplan plan --memory 80GB`, or a "
                        "--cluster JSON with memory_bytes and tflops per device")


def custom_preset(*, tflops: float, mem_bw_gbs: float, memory_gb: float, name: str = "custom",
                  fp32_tflops: float | None = None, intra_node_bw_gbs: float = 25.0,
                  compute_efficiency: float = DEFAULT_COMPUTE_EFFICIENCY,
                  memory_efficiency: float = DEFAULT_MEMORY_EFFICIENCY) -> GpuPreset:
    """A device that is not in the list: give its bf16 peak, bandwidth and memory.

    fp32_tflops defaults to tflops / 8, a typical tensor-core to fp32 ratio.
    """
    values = {"tflops": tflops, "mem_bw_gbs": mem_bw_gbs, "memory_gb": memory_gb,
              "intra_node_bw_gbs": intra_node_bw_gbs}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
            raise PipeplanError(f"custom device: {key} must be a positive number, got {value!r}")
    for key, value in (("compute_efficiency", compute_efficiency), ("memory_efficiency", memory_efficiency)):
        if not 0 < value <= 1:
            raise PipeplanError(f"custom device: {key} must be in (0, 1], got {value!r}")
    return GpuPreset(name=name, memory_bytes=int(memory_gb * GB), bf16_tflops=float(tflops),
                     fp32_tflops=float(fp32_tflops if fp32_tflops else tflops / 8), mem_bw_gbs=float(mem_bw_gbs),
                     intra_node_bw_gbs=float(intra_node_bw_gbs), source="user-supplied custom device",
                     compute_efficiency=compute_efficiency, memory_efficiency=memory_efficiency)


def resolve_device(spec: str) -> GpuPreset:
    """A preset name ("A100-80GB") or "custom:TFLOPS,BANDWIDTH_GBS,MEMORY_GB" (e.g. "custom:400,2000,64")."""
    text = spec.strip()
    if not text.lower().startswith("custom:"):
        return get_preset(text)
    parts = text.split(":", 1)[1].split(",")
    try:
        tflops, bw, mem = (float(p) for p in parts)
    except ValueError:
        raise PipeplanError(f"custom device {spec!r}: write custom:TFLOPS,BANDWIDTH_GBS,MEMORY_GB, "
                            "e.g. custom:400,2000,64 (bf16 TFLOP/s, memory bandwidth in GB/s, memory in GB)") from None
    return custom_preset(tflops=tflops, mem_bw_gbs=bw, memory_gb=mem)


def roofline_ms(flops: float, nbytes: float, preset: GpuPreset, dtype: str) -> float:
    """Time of one kernel: max(compute, memory) + a fixed per-kernel overhead, in ms.

    compute = flops / (compute_efficiency * peak(dtype)); memory = bytes / (memory_efficiency * bandwidth).
    The one roofline formula of pipeplan; docs/cost-model.md writes it down.
    """
    compute_s = flops / (preset.compute_efficiency * preset.peak_tflops(dtype) * 1e12)
    memory_s = nbytes / (preset.memory_efficiency * preset.mem_bw_gbs * 1e9)
    return 1e3 * max(compute_s, memory_s) + preset.kernel_overhead_us * 1e-3


OPTIMIZER_STEP_TRAFFIC_BYTES = {"adamw": 44, "adam": 44, "sgd_momentum": 36, "sgd": 28}
"""Memory traffic of what follows the last backward, per parameter, in fp32: the gradient is read and
written when the schedule scales it by 1/M (8 B), read for the clip's norm (4 B) and read and written
when clipped (8 B); the weight is read and written (8 B), plus 8 B per state tensor (AdamW: exp_avg
and exp_avg_sq; SGD momentum: one buffer). AdamW does ~10 FLOPs per parameter: memory-bound. Profiles
hold AdamW's time (optimizer_step_ms); planner.costmodel.cost scales other optimizers by these ratios."""
ADAMW_STEP_BYTES_PER_PARAM = OPTIMIZER_STEP_TRAFFIC_BYTES["adamw"]


def optimizer_step_ms(param_count: int, preset: GpuPreset) -> float:
    """Roofline time of one AdamW step (with clipping) over `param_count` parameters: what an
    estimated profile charges a layer for its share of the optimizer step (fused multi-tensor kernels,
    so one kernel overhead per layer)."""
    if param_count <= 0:
        return 0.0
    return roofline_ms(0.0, param_count * ADAMW_STEP_BYTES_PER_PARAM, preset, "float32")

