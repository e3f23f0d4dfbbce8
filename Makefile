# Two commands on a fresh machine: `make run` (the quick start) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORKFLOW ?= workflows/quickstart.yaml
PYTEST_ARGS ?=

.PHONY: run test lint venv clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/mm1 run $(WORKFLOW)

lint: $(STAMP)
	$(BIN)/ruff check mm1 services tests benchmarks
	$(BIN)/ruff format --check mm1 services tests benchmarks

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/serve.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
