"""GPU presets: the numbers a roofline estimate and a Cluster need.

Peaks are dense (no sparsity) vendor datasheet figures. The efficiency factors
say what fraction of a peak real kernels reach; they are documented in
docs/cost-model.md and are the knobs a GPU calibration run tunes.
"""

from __future__ import annotations

from dataclasses import dataclass

from profiler.errors import PipeplanError

GB = 10**9
GiB = 2**30


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


def get_preset(name: str) -> GpuPreset:
    """Look a preset up by name, case-insensitively; the error lists the valid names."""
    for key, preset in GPU_PRESETS.items():
        if key.lower() == name.strip().lower():
            return preset
    raise PipeplanError(f"unknown GPU preset {name!r}; choose one of {', '.join(GPU_PRESETS)} "
                        "or describe a custom device (memory, TFLOP/s, bandwidth)")
