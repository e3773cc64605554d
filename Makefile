# make run ARGS="task=minimize optim.lr=0.1"   set up .venv for runs if needed, then run the pipeline
# make test                                   add the tests' extras to .venv if needed, then run the tests
# make lint                                   ruff check and ruff format --check
# TORCH picks the torch requirement: the CPU build by default; TORCH=torch for a CUDA build.
# WORKERS: test processes in parallel (pytest-xdist; the modules whose tests share a server or
# a cluster run whole on one worker each, first: see tests/conftest.py).
VENV ?= .venv
PYTHON ?= python3
TORCH ?= torch==2.13.0
ARGS ?=
WORKERS ?= 2

# pip byte-compiles what it installs one file at a time; the venv's packages are compiled here
# instead, on every core. (A file this Python cannot compile is never imported: not an error.)
COMPILE = $(VENV)/bin/python -m compileall -q -j 0 $(VENV)/lib >/dev/null || true

.PHONY: setup setup-tests run test lint

setup: $(VENV)/.installed
setup-tests: $(VENV)/.installed-tests

# What a run needs: torch, the package, and the sweeps' launchers and sweeper.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --no-compile "$(TORCH)"
	$(VENV)/bin/pip install -q --no-compile -e ".[sweeps]"
	@# hydra-optuna-sweeper (in the sweeps extra before the project's own) also registers
	@# hydra/sweeper=optuna, and pins optuna<3: a venv made before keeps neither.
	$(VENV)/bin/pip uninstall -y -q hydra-optuna-sweeper 2>/dev/null || true
	$(COMPILE)
	touch $@

# And what the tests need: pytest and its plugins, ruff, playwright, the server's drivers,
# and the worked example of a task of one's own (examples/digits, with scikit-learn).
$(VENV)/.installed-tests: $(VENV)/.installed examples/digits/pyproject.toml
	$(VENV)/bin/pip install -q --no-compile -e ".[sweeps,server,dev]" -e examples/digits
	$(COMPILE)
	touch $@

run: setup
	$(VENV)/bin/python -m experiments $(ARGS)

# Python reads src's and tests' byte code from __pycache__ even where PYTHONDONTWRITEBYTECODE
# stops it writing there: compiled once here, each of the hundreds of processes the tests
# start loads it instead of compiling the project's modules again (~0.3 CPU-s a run). A file
# that does not compile is printed, and left for pytest to report.
test: setup-tests
	$(VENV)/bin/python -m compileall -q src tests || true
	$(VENV)/bin/python -m pytest -n $(WORKERS) --dist loadscope --no-loadscope-reorder --durations=15 -m "not alone"
	$(VENV)/bin/python -m pytest -n 0 -m alone

lint: setup-tests
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
