#!/usr/bin/env bash
# Install what labctl needs on Debian/Ubuntu: system packages, then a Python venv.
# Idempotent; used by the Makefile, CI and the Vagrant VM (vagrant/Vagrantfile; the
# vagrant package is here for `make test-vagrant`, which validates that file offline).
#   scripts/install-deps.sh            system packages + .venv with labctl (editable) and dev deps
#   SKIP_APT=1 scripts/install-deps.sh venv only
#   VM=1 scripts/install-deps.sh       also what `make test-vm` needs: qemu, udev, … and
#                                      (scripts/run-vm-tests.sh --prepare) the guest kernel
#                                      and virtme-ng, cached in /var/lib/labctl-vm
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

pkgs=(iproute2 iptables nftables conntrack ipset ipvsadm tcpdump iputils-ping curl netcat-openbsd
      procps kmod dnsutils python3-venv graphviz vagrant bash-completion zsh fish)
[ "${BENCH:-0}" = 1 ] && pkgs+=(mininet bridge-utils dnsperf dnsmasq-base)
# The VM suite (scripts/run-vm-tests.sh): qemu and what virtme-ng needs on the host (udev
# for the guest's virtio console, busybox-static for its init, file to read the kernel's
# version). The guest uses the host's tools (ipvsadm, ipset, nft) from the shared root.
[ "${VM:-0}" = 1 ] && pkgs+=(qemu-system-x86 udev busybox-static file)

if [ "${SKIP_APT:-0}" != 1 ]; then
  missing=()
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "install-deps: need root to install: ${missing[*]}" >&2; exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check -e '.[dev]' \
    --config-settings editable_mode=compat  # a plain path in a .pth: no import hook to load at every start
[ "${BENCH:-0}" = 1 ] && "$VENV/bin/pip" install -q --disable-pip-version-check matplotlib
# Put `labctl` on root's PATH (a symlink into this checkout's venv; LINK_BIN=0 skips it).
if [ "$(id -u)" = 0 ] && [ "${LINK_BIN:-1}" = 1 ]; then
  ln -sfn "$PWD/$VENV/bin/labctl" /usr/local/bin/labctl
fi
# The guest kernel and virtme-ng: downloaded once into a cache, never installed.
if [ "${VM:-0}" = 1 ]; then
  bash scripts/run-vm-tests.sh --prepare
fi
echo "install-deps: ok ($("$VENV/bin/python" --version), venv $VENV)"
