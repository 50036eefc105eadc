# labctl — see README.md. Every target installs what it needs first.
VENV    ?= .venv
PY      := $(VENV)/bin/python
LABCTL  := $(VENV)/bin/labctl
PYTEST  := $(PY) -m pytest

.PHONY: setup demo test test-unit test-integration bench bench-up bench-sync bench-dns lint clean

STAMP   := $(VENV)/.installed

$(STAMP): pyproject.toml scripts/install-deps.sh
	bash scripts/install-deps.sh
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(LABCTL) down quickstart -q
	$(LABCTL) up topologies/quickstart --tour

# One pytest run, so its closing line counts every test.
test: $(STAMP) lint
	$(PYTEST) -q tests/unit tests/integration

test-unit: $(STAMP)
	$(PYTEST) -q tests/unit

test-integration: $(STAMP)
	$(PYTEST) -q tests/integration

lint: $(STAMP)
	$(PY) -m ruff check labctl tests bench

bench: bench-up bench-sync bench-dns bench-live

bench-up: $(STAMP)
	BENCH=1 bash scripts/install-deps.sh
	$(PY) bench/bench_up.py

clean: $(STAMP)
	$(LABCTL) clean --all

bench-sync: $(STAMP)
	BENCH=1 bash scripts/install-deps.sh
	$(PY) bench/bench_sync.py

bench-dns: $(STAMP)
	BENCH=1 bash scripts/install-deps.sh
	$(PY) bench/bench_dns.py

bench-live: $(STAMP)
	BENCH=1 bash scripts/install-deps.sh
	$(PY) bench/bench_live.py
