# computenet: `make up` runs a node with a local agent; `make test` runs the test suite.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: up test test-heavy test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

up: $(STAMP)
	bash scripts/install_sandbox.sh
	$(BIN)/cnet up

# The suite runs against SQLite and PostgreSQL (each database is a fixture parameter).
# Suites that start whole engines (Ray, Slurm), tens of agents, move GiBs between data
# servers or kill and restart processes are `test-heavy`; CI runs both.
test: $(STAMP) lint
	bash scripts/install_sandbox.sh
	$(BIN)/python -m pytest -q -m "not heavy" --durations=15

test-heavy: $(STAMP)
	bash scripts/install_sandbox.sh
	bash bench/peers/install_slurm.sh
	$(BIN)/python -m pytest -q -m heavy --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

bench: $(STAMP)
	bash bench/peers/install_slurm.sh
	bash bench/peers/install_transfer.sh
	$(BIN)/python bench/jobs.py
	$(BIN)/python bench/sandbox.py
	$(BIN)/python bench/discovery.py
	$(BIN)/python bench/resolve.py
	$(BIN)/python bench/functions.py
	$(BIN)/python bench/backends.py
	$(BIN)/python bench/transfer.py
	$(BIN)/python bench/sparse.py
	$(BIN)/python bench/delta.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
