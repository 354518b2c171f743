"""Shared helpers for the app tests (not a test module: pytest does not collect it)."""

from __future__ import annotations

from profiler.profile import ModelInfo, Profile, ProfileEdge, ProfileNode, Provenance


def synthetic_profile(n: int = 12, *, act_bytes: int = 200_000_000, source: str = "sample:gpt:tiny") -> Profile:
    """A chain of n blocks with growing cost: enough to make cuts matter."""
    nodes = [ProfileNode(id=f"layers.{i}", name=f"block {i}", kind="block", module_path=f"layers.{i}",
                         fwd_flops=1e12, bwd_flops=2e12, fwd_ms=1.0 + 0.1 * i, bwd_ms=2.0 + 0.2 * i,
                         param_bytes=40_000_000, param_count=10_000_000, activation_bytes=act_bytes,
                         output_bytes=4_000_000) for i in range(n)]
    edges = [ProfileEdge(src=f"layers.{i}", dst=f"layers.{i + 1}", bytes=4_000_000) for i in range(n - 1)]
    return Profile(model=ModelInfo(source=source, name="synthetic", param_count=n * 10_000_000,
                                   micro_batch_size=2, seq_len=128, input_bytes=1000),
                   provenance=Provenance(method="estimated", device="A100-80GB", reference_tflops=312),
                   nodes=nodes, edges=edges)
