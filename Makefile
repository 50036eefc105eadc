# labctl — see README.md. Every target installs what it needs first.
VENV    ?= .venv
PY      := $(VENV)/bin/python
LABCTL  := $(VENV)/bin/labctl
PYTEST  := $(PY) -m pytest

.PHONY: setup demo test test-unit test-integration test-vm bench bench-up lint clean

$(PY): pyproject.toml scripts/install-deps.sh
	bash scripts/install-deps.sh
	@touch $(PY)

setup: $(PY)

demo: $(PY)
	$(LABCTL) up topologies/quickstart --tour

test: $(PY) lint test-unit test-integration

test-unit: $(PY)
	$(PYTEST) -q tests/unit

test-integration: $(PY)
	$(PYTEST) -q tests/integration

lint: $(PY)
	$(PY) -m ruff check labctl tests bench

bench: bench-up

bench-up: $(PY)
	BENCH=1 bash scripts/install-deps.sh
	$(PY) bench/bench_up.py

clean: $(PY)
	$(LABCTL) clean --all
