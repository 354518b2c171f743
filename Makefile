# Two commands set up a fresh machine: `make app` and `make test`.
# Both create .venv when it is missing and install pipeplan into it.
#
# torch: installed as $(TORCH_SPEC) only when the venv cannot import torch.
# To keep a CUDA torch you already have, either create the venv yourself with
# `python3 -m venv --system-site-packages .venv` (your torch is then visible),
# or point VENV at an environment that has it: `make app VENV=/path/to/env`.

VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PORT ?= 8501

.PHONY: install app test test-fast bench bench-quick bench-coverage lint clean

$(VENV)/.pipeplan-installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e ".[dev,hf]"
	@touch $@

install: $(VENV)/.pipeplan-installed

app: install
	$(VENV)/bin/streamlit run app.py --server.address 127.0.0.1 --server.port $(PORT)

test: install
	$(PY) -m pytest -q

# The quick loop: every test not marked slow (no torchrun, browser or subprocess-heavy tests).
test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) -m bench.run

# The quick smoke run writes its results and page under bench/results/quick/, so it
# never overwrites the full run's results or docs/benchmarks.md.
bench-quick: install
	PIPEPLAN_BENCH_RESULTS=bench/results/quick PIPEPLAN_BENCH_DOCS=bench/results/quick $(PY) -m bench.run --quick

# Every model_type of transformers' causal-LM, masked-LM, image- and sequence-classification registries:
# profile (meta estimate) and plan on 2 devices; writes bench/results/coverage.json and its section of
# docs/benchmarks.md. `make bench-coverage ARGS=--quick` sweeps 10 types.
bench-coverage: install
	$(PY) -m bench.bench_coverage $(ARGS)

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
