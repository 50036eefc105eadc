#!/usr/bin/env bash
# `make test-vagrant`: check vagrant/Vagrantfile (or the one in the folder given as $1)
# offline — no box is downloaded, no VM started, no provider needed. Two passes:
#   1. `vagrant validate --ignore-provider`: Ruby syntax and every non-provider setting
#      (box, synced folder, provisioner, …).
#   2. `vagrant validate` with VirtualBox's settings too. Vagrant validates a provider's
#      block only when that provider is usable; where VirtualBox is not installed, a
#      stand-in VBoxManage that answers `--version` (all Vagrant asks before validating)
#      makes it so. Blocks of providers whose plugin is absent (libvirt, parallels, utm)
#      are ignored by Vagrant, as its documentation says: only their Ruby is checked.
set -euo pipefail
cd "${1:-$(dirname "$0")/../vagrant}"
export VAGRANT_CHECKPOINT_DISABLE=1  # no version check over the network
if ! command -v vagrant >/dev/null; then
  echo "validate-vagrant: vagrant is not installed (scripts/install-deps.sh installs it)" >&2
  exit 1
fi
vagrant validate --ignore-provider
if command -v VBoxManage >/dev/null; then
  vagrant validate
else
  shim=$(mktemp -d)
  trap 'rm -rf "$shim"' EXIT
  printf '#!/bin/sh\n[ "$1" = --version ] && echo 7.0.10r158379\n' >"$shim/VBoxManage"
  chmod +x "$shim/VBoxManage"
  PATH="$shim:$PATH" vagrant validate
fi
