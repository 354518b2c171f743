"""pipeplan profiler: model sources, tracing into a layer graph, and the cost
and memory of every layer (the Profile contract).

    from profiler import load_profile
    prof = load_profile("sample:gpt:124M", seq_len=1024, estimate_for="A100-80GB")
"""

from profiler.profile import ModelInfo, Profile, ProfileEdge, ProfileNode, Provenance

__all__ = [
    "ModelInfo",
    "Profile",
    "ProfileEdge",
    "ProfileNode",
    "Provenance",
    "load_profile",
    "profile_hf_config",
    "profile_model",
]


def __getattr__(name: str):
    # Lazy: importing the contracts must not pull in torch.export machinery.
    if name == "load_profile":
        from profiler.sources import load_profile
        return load_profile
    if name == "profile_model":
        from profiler.profile_model import profile_model
        return profile_model
    if name == "profile_hf_config":
        from profiler.hf import profile_hf_config
        return profile_hf_config
    raise AttributeError(f"module 'profiler' has no attribute {name!r}")
