"""The planner's contracts read JSON with the same strict helpers as the Profile."""

from profiler.jsonio import build_dataclass, check_number, load_json_text

__all__ = ["build_dataclass", "check_number", "load_json_text"]
