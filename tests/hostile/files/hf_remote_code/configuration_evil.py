# Remote code shipped next to a hostile config.json. pipeplan must never import it.
from pathlib import Path

(Path(__file__).resolve().parent / "PWNED-remote-code").write_text("modeling_evil.py ran")


class EvilConfig:  # pragma: no cover - never imported
    pass
