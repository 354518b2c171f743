"""What every pipeplan layer shares: the one user-facing error type (core.errors) and strict JSON
reading for the contracts (core.jsonio). profiler/ and planner/ both import it; it imports neither."""
