# Two entry points: `make run` (server on built-in defaults) and `make test` (ruff + the whole suite).
# Each sets up its own virtualenv on first use, so both work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Bytecode compiled ahead (a no-op when current): start-up stays fast even where
# PYTHONDONTWRITEBYTECODE is set and nothing would be cached.
run: $(VENV)/.run-installed
	$(BIN)/python -m compileall -q bridge adapters storage plugins
	$(BIN)/momobridge serve --config config.toml

test: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.test-installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(VENV)/.test-installed
	$(BIN)/python bench/hub_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
