"""pipeplan profiler: model sources, tracing into a layer graph, and the cost
and memory of every layer (the Profile contract)."""

from profiler.errors import PipeplanError
from profiler.profile import Profile, ProfileEdge, ProfileNode

__all__ = ["PipeplanError", "Profile", "ProfileEdge", "ProfileNode"]
