#!/usr/bin/env bash
# Run the VM test suite (tests/vm) inside Debian's stock kernel, booted under qemu with
# virtme-ng and sharing this machine's root filesystem read-only. For hosts whose kernel
# lacks what labctl's IPVS mode needs (ip_vs, dummy links). Root, Debian 12 / Ubuntu.
#
#   scripts/run-vm-tests.sh [PYTEST ARGS...]   default: -q tests/vm
#   scripts/run-vm-tests.sh --prepare          only fetch the kernel and virtme-ng (cached)
#   scripts/run-vm-tests.sh --check            say whether this host can boot the VM
#
# Exit code: pytest's, from inside the guest; 124 if the VM timed out; 2 if the host
# cannot run the VM (what is missing is printed).
#
# Environment:
#   VM_CACHE=/var/lib/labctl-vm   kernel (unpacked, never installed) + virtme-ng venv; the
#                                 guest must see it (not /var/tmp, /var/cache: tmpfs there)
#   VM_OUT=$REPO/.vm-out          host folder the guest can write: junit.xml, console.log
#   VM_TIMEOUT=1800               seconds for the whole VM run (boot included)
#   VM_MEM=2G  VM_CPUS=2          guest size
#   VM_KVM=0                      1: use KVM (a real KVM host; here /dev/kvm is nested PVM,
#                                 which hangs stock kernels, so TCG is the default)
#   VM_ENV='A=1 B=2'              variables for the guest (the host's are not forwarded)
#   PY=$REPO/.venv/bin/python     the interpreter the guest runs pytest with
#   VM_KERNEL_PKG                 a linux-image-* package (default: linux-image-amd64's)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${VM_CACHE:-/var/lib/labctl-vm}
OUT=${VM_OUT:-$REPO/.vm-out}
PY=${PY:-$REPO/.venv/bin/python}
TIMEOUT=${VM_TIMEOUT:-1800}
VNG_VERSION=${VNG_VERSION:-1.42}

say() { echo "vm-tests: $*" >&2; }
die() { say "$*"; exit 2; }

kernel_image() { compgen -G "$CACHE/kroot/boot/vmlinuz-*" | head -1; }

# virtme-ng links the guest's /lib/modules/<version> to the modules in $CACHE, so the
# guest must see $CACHE: these host paths are hidden under fresh tmpfs mounts there.
case "$CACHE/" in
  /var/tmp/*|/var/cache/*|/var/log/*|/var/lib/apt/*|/var/lib/private/*|/run/*|/dev/*)
    die "VM_CACHE=$CACHE is hidden in the guest (a tmpfs there): choose another folder" ;;
esac

prepare() {
  mkdir -p "$CACHE"
  if [ -z "$(kernel_image)" ]; then
    local pkg=${VM_KERNEL_PKG:-}
    kpkg() { apt-cache depends linux-image-amd64 2>/dev/null \
               | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
    [ -n "$pkg" ] || pkg=$(kpkg)
    [ -n "$pkg" ] || { apt-get update -qq && pkg=$(kpkg); }
    [ -n "$pkg" ] || die "cannot find Debian's kernel package (apt-cache depends" \
                         "linux-image-amd64 says nothing: run apt-get update)"
    say "fetching $pkg into $CACHE/kroot (unpacked, not installed)"
    local tmp; tmp=$(mktemp -d "$CACHE/dl.XXXXXX")
    chown _apt "$tmp" 2>/dev/null || true  # apt downloads as _apt where it can
    (cd "$tmp" && apt-get download -q "$pkg" >/dev/null && dpkg -x "$pkg"_*.deb kroot) \
      || { rm -rf "$tmp"; die "could not download or unpack $pkg"; }
    rm -rf "$CACHE/kroot" && mv "$tmp/kroot" "$CACHE/kroot" && rm -rf "$tmp"
  fi
  if [ ! -x "$CACHE/venv/bin/vng" ]; then
    say "installing virtme-ng $VNG_VERSION into $CACHE/venv"
    rm -rf "$CACHE/venv"
    python3 -m venv "$CACHE/venv"
    "$CACHE/venv/bin/pip" install -q --disable-pip-version-check "virtme-ng==$VNG_VERSION" \
      || { rm -rf "$CACHE/venv"; die "could not install virtme-ng from PyPI"; }
  fi
}

# What the host lacks to boot the VM, one line each (empty: ready).
missing() {
  [ "$(id -u)" = 0 ] || echo "root (the guest runs the tests as root on the shared root)"
  command -v qemu-system-x86_64 >/dev/null || echo "qemu-system-x86_64 (apt package qemu-system-x86)"
  command -v udevadm >/dev/null \
    || echo "udev (without it the guest's console never appears and the exit code is lost)"
  [ -x /bin/busybox ] || command -v busybox >/dev/null || echo "busybox (apt package busybox-static)"
  command -v file >/dev/null || echo "file (virtme-ng reads the kernel's version with it)"
  [ -n "$(kernel_image)" ] || echo "the guest kernel in $CACHE/kroot"
  [ -x "$CACHE/venv/bin/vng" ] || echo "virtme-ng in $CACHE/venv"
  [ -x "$PY" ] || echo "the project's python $PY"
}

case "${1:-}" in
  --prepare) prepare; say "ready: $(kernel_image), $("$CACHE/venv/bin/vng" --version 2>&1)"
             exit 0 ;;
  --check) m=$(missing); [ -z "$m" ] && { say "ready"; exit 0; }
           say "cannot boot the VM; missing:"; echo "$m" | sed 's/^/  /' >&2; exit 2 ;;
esac

m=$(missing)
if [ -n "$m" ]; then
  say "cannot boot the VM for the tests; missing:"
  echo "$m" | sed 's/^/  /' >&2
  die "install them with: VM=1 bash scripts/install-deps.sh (as root), or run make test-vm"
fi

[ $# -gt 0 ] || set -- -q tests/vm
KIMG=$(kernel_image)

# The guest cannot write bytecode (read-only root) and compiles slowly: write it here
# first — labctl's and the tests' .pyc, and pytest's assertion-rewritten test modules.
(cd "$REPO" && "$PY" -m compileall -q -j 0 labctl tests >/dev/null \
   && "$PY" -m pytest -p no:cacheprovider -q --collect-only tests/vm >/dev/null 2>&1) || true
mkdir -p "$OUT"
rm -f "$OUT/junit.xml" "$OUT/console.log" "$OUT/exit"

# The guest gets no host environment and sees the root read-only: /tmp, /etc, /var, /usr
# and /home are tmpfs overlays, /run a tmpfs of its own. labctl writes /run/netns,
# /run/labctl and /etc/netns; tests/vm/conftest.py checks they are writable.
# The guest's exit code is vng's; it is also written to $OUT/exit so a lost console
# (no udev) is told apart from a failing test run.
guest_env=(PATH="$(dirname "$PY"):/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
           LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 LABCTL_VM=1 HOME=/root)
q() { printf '%q ' "$@"; }
guest_cmd="cd $(q "$REPO") && mkdir -p /run/netns /run/labctl /etc/netns"
guest_cmd+=" && echo \"vm-tests: guest up after \$(cut -d' ' -f1 /proc/uptime) s, kernel \$(uname -r)\""
guest_cmd+="; env $(q "${guest_env[@]}") ${VM_ENV:-} $(q "$PY") -m pytest -p no:cacheprovider"
guest_cmd+=" --junitxml=$(q "$OUT/junit.xml") $(q "$@")"
guest_cmd+="; rc=\$?; echo \$rc > $(q "$OUT/exit"); exit \$rc"

accel=(--disable-kvm); [ "${VM_KVM:-0}" = 1 ] && accel=()
# 9p for the shared root: Debian 12's qemu ships the C virtiofsd, which virtme-ng tries,
# waits ~3 s for, and drops (it needs the Rust one) — skip the attempt.
export PATH="$CACHE/venv/bin:$PATH"  # vng runs virtme-run from PATH
say "booting $(basename "$KIMG") under qemu (${accel[*]:-kvm}, ${VM_CPUS:-2} cpus," \
    "${VM_MEM:-2G}), timeout ${TIMEOUT}s: pytest $*"
start=$(date +%s)
set +e
# Pipes on both streams: qemu reopens /proc/self/fd/1, which would clobber a plain file.
timeout --kill-after=20 "$TIMEOUT" vng "${accel[@]}" --force-9p --run "$KIMG" \
  --memory "${VM_MEM:-2G}" --cpus "${VM_CPUS:-2}" --rwdir="$OUT" --cwd "$REPO" \
  --exec "$guest_cmd" </dev/null 2> >(tee "$OUT/console.log" >&2) | tee -a "$OUT/console.log"
rc=${PIPESTATUS[0]}
set -e
took=$(( $(date +%s) - start ))
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
  say "FAILED: the VM timed out after ${TIMEOUT}s (VM_TIMEOUT); output in $OUT/console.log"
  exit 124
fi
guest_rc=$(cat "$OUT/exit" 2>/dev/null || true)
if [ -z "$guest_rc" ]; then
  say "FAILED: the guest never reported pytest's exit code (vng exit $rc after ${took}s):" \
      "the VM did not boot or its console was lost (is udev installed?); see $OUT/console.log"
  [ "$rc" = 0 ] && rc=1
  exit "$rc"
fi
say "exit $guest_rc after ${took}s in the VM (kernel $(basename "$KIMG"))"
exit "$guest_rc"
