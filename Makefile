PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_ARGS ?=

.PHONY: install test check demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,embedded,browser]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS)

check: $(STAMP)
	$(BIN)/ruff check worker tests bench deploy
	$(BIN)/mypy worker

demo: $(STAMP)
	$(BIN)/autopromote demo $(DEMO_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/bench_stats.py
	$(BIN)/python bench/bench_daemon.py
	$(BIN)/python bench/bench_replicas.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
