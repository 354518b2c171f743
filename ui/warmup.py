"""Import what an HF upload needs while the user reads the first page.

An HF config.json's first profile pays for importing transformers and its auto registries (about
0.8 s on 2 shared cores) before any tracing starts. The app starts one daemon thread per server
process after its first page has rendered, so that cost is gone by the time a file arrives. Nothing
runs that the user did not ask for: it only imports libraries the server already depends on.
"""

from __future__ import annotations

import threading

_started = threading.Event()


def _import_hf() -> None:
    try:
        from profiler.hf_tasks import architectures

        architectures()  # imports transformers and reads its auto registries
    except Exception:  # noqa: BLE001, S110 - a missing transformers is reported when an upload needs it
        pass


def start_background_imports() -> bool:
    """Start the imports once per process; True when this call started them."""
    if _started.is_set():
        return False
    _started.set()
    threading.Thread(target=_import_hf, name="pipeplan-warmup", daemon=True).start()
    return True
