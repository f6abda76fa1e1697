# Two entry points: `make run` (server on built-in defaults) and `make test` (ruff + the whole suite).
# Each sets up its own virtualenv on first use, so both work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint format bench clean lock docker-test

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

# requirements.lock: the image's runtime dependencies, pinned with hashes, re-resolved to the
# newest versions pyproject.toml allows. Resolved by the image's Python (3.11) against PyPI itself
# (PIP_CONFIG_FILE=/dev/null: whatever index or mirror this machine's pip is set up for, the
# image installs from PyPI), with pip-tools kept in a venv of its own inside $(VENV).
LOCK_VENV := $(VENV)/lock-tools
lock:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "make lock: the image runs Python 3.11; use PYTHON=python3.11")'
	test -x $(LOCK_VENV)/bin/pip-compile || ($(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install -q 'pip-tools>=7.4,<8')
	PIP_CONFIG_FILE=/dev/null CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile -q --upgrade \
		--generate-hashes --strip-extras --no-emit-index-url --no-emit-trusted-host --no-emit-find-links \
		--output-file requirements.lock pyproject.toml

# Builds the Dockerfile, runs the image and checks it (see scripts/docker_test.sh for what is
# checked, BASE_IMAGE / LOCAL_BASE for machines without a registry, BROKEN=root for a bad image).
docker-test:
	bash scripts/docker_test.sh

bench: $(VENV)/.test-installed
	$(BIN)/python bench/hub_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
