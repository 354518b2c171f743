"""Test-suite layout.

- tests/test_*.py: the tests. pytest's default "prepend" import mode puts tests/ on sys.path
  (tests/ has no __init__.py), so they import the shared helpers directly; no test edits sys.path.
- tests/helpers_*.py: shared helpers, never collected (helpers_export: hand-built plans and
  running exported jobs; helpers_app: a synthetic profile for the app tests).
- this file: the `load_job` fixture and the marker hook below.
- tests/hostile/: the corpus and harness of the hostile-input tests (test_hostile_*.py).
- tests/golden/, tests/artifacts/: data files; artifacts/ holds the browser test's screenshots.

Markers (registered in pyproject.toml):
- slow: multi-process (torchrun), subprocess-heavy or browser tests; `make test-fast` runs
  `pytest -m "not slow"`, `make test` runs everything.
- torchrun, browser: what makes a test slow. The hook below adds `slow` to any test carrying
  one of them, so marking a test torchrun or browser is enough to keep it out of test-fast.

Hypothesis runs derandomized (the same examples on every machine and every run, no example
database), so a red CI run can be reproduced and a green one means the same thing twice. To
hunt for new counterexamples, run with HYPOTHESIS_PROFILE=explore (new random examples each run).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import settings

settings.register_profile("pipeplan", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "pipeplan"))

IMPLIES_SLOW = ("torchrun", "browser")


def pytest_itemcollected(item: pytest.Item) -> None:
    if item.get_closest_marker("slow") is None and any(item.get_closest_marker(m) for m in IMPLIES_SLOW):
        item.add_marker(pytest.mark.slow)


@pytest.fixture
def load_job(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], ModuleType]]:
    """load_job(job) imports an exported job's train.py in this process, finding its imports the way
    `python train.py` does (the job's model/ package, pipeline_runtime.py, ...): the job folder goes
    first on sys.path for this test only (monkeypatch undoes it), and the job's modules are dropped
    from sys.modules before each load and when the test ends, so jobs never see each other's code."""
    names: set[str] = set()

    def forget() -> None:
        for name in [m for m in sys.modules if m.split(".")[0] in names]:
            del sys.modules[name]

    def load(job: Path) -> ModuleType:
        names.update(p.stem for p in job.glob("*.py"))
        names.update(p.parent.name for p in job.glob("*/__init__.py"))
        forget()
        monkeypatch.syspath_prepend(str(job))
        return importlib.import_module("train")

    yield load
    forget()
