# make run ARGS="task=minimize optim.lr=0.1"   set up .venv if needed, then run the pipeline
# make test                                   set up .venv if needed, then run the test suite
# TORCH picks the torch requirement: the CPU build by default; TORCH=torch for a CUDA build.
# WORKERS: test processes in parallel (pytest-xdist; each test file stays in one of them,
# in the order tests/conftest.py gives: the modules that wait longest first).
VENV ?= .venv
PYTHON ?= python3
TORCH ?= torch==2.13.0
ARGS ?=
WORKERS ?= 2

.PHONY: setup run test lint

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q "$(TORCH)"
	$(VENV)/bin/pip install -q -e ".[dev,sweeps,server]"
	touch $@

run: setup
	$(VENV)/bin/python -m experiments $(ARGS)

test: setup
	$(VENV)/bin/python -m pytest -n $(WORKERS) --dist loadfile --no-loadscope-reorder

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
