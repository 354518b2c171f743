"""The one error type every pipeplan layer raises for bad input.

The CLI and the app catch `PipeplanError` and show its message as one line;
anything else escaping is a bug. Keep messages actionable: say what is wrong
and how to fix it.
"""

from __future__ import annotations


class PipeplanError(ValueError):
    """Bad input or an impossible request, with a message meant for the user."""
