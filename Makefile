# labctl — see README.md. Every target installs what it needs first.
VENV    ?= .venv
PY      := $(VENV)/bin/python
LABCTL  := $(VENV)/bin/labctl
PYTEST  := $(PY) -m pytest

.PHONY: setup demo test test-unit test-integration test-ipvs test-vm bench bench-up bench-sync bench-dns bench-datapath bench-datapath-vm bench-sync-vm lint clean bench-live test-vagrant

STAMP   := $(VENV)/.installed

$(STAMP): pyproject.toml scripts/install-deps.sh
	bash scripts/install-deps.sh
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(LABCTL) down quickstart -q
	$(LABCTL) up topologies/quickstart --tour

# One pytest run on the host, so its closing line counts every host test; then the
# suite that needs IPVS (tests/vm): here if this kernel has it, else in a VM.
test: $(STAMP) lint test-vagrant
	$(PYTEST) -q tests/unit tests/integration
	@$(MAKE) --no-print-directory test-ipvs

# Does this kernel have IPVS (loaded, or a module modprobe can load)?
HOST_IPVS := $(shell { test -e /proc/net/ip_vs || modprobe -n -q ip_vs; } 2>/dev/null && echo yes)
VM_TESTS  ?= tests/vm

ifeq ($(HOST_IPVS),yes)
test-ipvs: $(STAMP)
	LABCTL_REQUIRE_IPVS=1 $(PYTEST) -q -rs $(VM_TESTS)
else
test-ipvs: test-vm
endif

# tests/vm inside Debian's stock kernel under qemu (virtme-ng, the host's root shared
# read-only); pytest's exit code comes back. Installs qemu & co. and caches the kernel
# in /var/lib/labctl-vm the first time. One file: make test-vm VM_TESTS=tests/vm/x.py
test-vm: $(STAMP)
	@bash scripts/run-vm-tests.sh --check >/dev/null 2>&1 || VM=1 bash scripts/install-deps.sh
	bash scripts/run-vm-tests.sh -q -rs $(VM_TESTS)

# vagrant/Vagrantfile, validated offline (no box, no VM; scripts/validate-vagrant.sh).
test-vagrant: $(STAMP)
	bash scripts/validate-vagrant.sh

test-unit: $(STAMP)
	$(PYTEST) -q tests/unit

test-integration: $(STAMP)
	$(PYTEST) -q tests/integration

lint: $(STAMP)
	$(PY) -m ruff check labctl tests bench examples

bench: bench-up bench-sync bench-dns bench-live bench-datapath

bench-up: $(STAMP)
	BENCH=1 bash scripts/install-deps.sh
	$(PY) bench/bench_up.py

clean: $(STAMP)
	$(LABCTL) clean --all

bench-sync: $(STAMP)
	BENCH=1 bash scripts/install-deps.sh
	$(PY) bench/bench_sync.py

# bench-sync's IPVS column, measured in the VM (qemu TCG, ~15 min): bench/out/sync-ipvs.json
bench-sync-vm: $(STAMP)
	@bash scripts/run-vm-tests.sh --check >/dev/null 2>&1 || VM=1 bash scripts/install-deps.sh
	$(PY) bench/bench_sync.py --vm

bench-dns: $(STAMP)
	BENCH=1 bash scripts/install-deps.sh
	$(PY) bench/bench_dns.py

bench-live: $(STAMP)
	BENCH=1 bash scripts/install-deps.sh
	$(PY) bench/bench_live.py

# Pod → pod on another node, direct vs ClusterIP in iptables, nftables and userspace mode
# (~1 min). Its IPVS column comes from bench/out/datapath-ipvs.json when present.
bench-datapath: $(STAMP)
	BENCH=1 bash scripts/install-deps.sh
	$(PY) bench/bench_datapath.py

# That file: the same script inside the VM of make test-vm (qemu without KVM: emulated,
# 5-10 min here), IPVS and iptables modes; a later make bench-datapath shows it.
bench-datapath-vm: $(STAMP)
	@bash scripts/run-vm-tests.sh --check >/dev/null 2>&1 || VM=1 bash scripts/install-deps.sh
	$(PY) bench/bench_datapath.py --vm
