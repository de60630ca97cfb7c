PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_ARGS ?=

.PHONY: install test test-unit check demo bench clean

# The OpenFeature provider (clients/openfeature-python) is a distribution of its own; the demo and tests use it.
$(STAMP): pyproject.toml clients/openfeature-python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,embedded,browser]'
	$(BIN)/pip install --quiet -e clients/openfeature-python
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS)

# Pure tests only (no database, no server): seconds to a minute.
test-unit: $(STAMP)
	$(BIN)/pytest -q tests/unit $(PYTEST_ARGS)

# The house rules: lint (with the complexity cap), types (tests too, relaxed), and the layers' import contracts.
check: $(STAMP)
	$(BIN)/ruff check worker tests bench deploy clients
	$(BIN)/ruff format --check worker tests bench deploy clients
	$(BIN)/mypy worker
	$(BIN)/mypy --strict clients/openfeature-python/src
	$(BIN)/mypy tests
	$(BIN)/lint-imports

demo: $(STAMP)
	$(BIN)/autopromote demo $(DEMO_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/bench_stats.py
	$(BIN)/python bench/bench_metrics.py
	$(BIN)/python bench/bench_daemon.py
	$(BIN)/python bench/bench_scan.py
	$(BIN)/python bench/bench_replicas.py
	$(BIN)/python bench/bench_serving.py
	$(BIN)/python bench/bench_chaos.py
	$(BIN)/python bench/bench_rollout.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
