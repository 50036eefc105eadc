"""Run a bench script inside Debian's stock kernel under qemu — for what this host's
kernel lacks (IPVS). The recipe of scripts/run-vm-tests.sh: virtme-ng, TCG (no KVM
here), the host's root shared read-only, one output folder writable. The script runs
with `inner` arguments and writes its results (JSON) to `out`."""

from __future__ import annotations

import glob
import os
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def run_in_vm(name: str, script: str, inner: list[str], out: str) -> int:
    """Boot the VM, run `python script *inner` in it, relay its output; 0 when it ran
    (the caller reads `out`), 2 when this host cannot boot the VM."""
    cache = os.environ.get("VM_CACHE", "/var/lib/labctl-vm")
    check = subprocess.run(["bash", os.path.join(REPO, "scripts", "run-vm-tests.sh"),
                            "--check"], capture_output=True, text=True, check=False)
    if check.returncode:
        print(f"{name} --vm: this host cannot boot the VM:\n{check.stderr}"
              "install what it needs with: VM=1 bash scripts/install-deps.sh",
              file=sys.stderr)
        return 2
    kernels = sorted(glob.glob(f"{cache}/kroot/boot/vmlinuz-*"))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    # The guest cannot write bytecode (read-only root) and compiles slowly: do it here.
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0",
                    os.path.join(REPO, "labctl")], capture_output=True, check=False)
    env = [f"PATH={os.path.dirname(sys.executable)}:/usr/local/sbin:/usr/local/bin:"
           "/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1",
           "LABCTL_VM=1", "HOME=/root"]
    guest = (f"cd {shlex.quote(REPO)} && mkdir -p /run/netns /run/labctl /etc/netns && "
             f"echo \"{name}: guest up after $(cut -d' ' -f1 /proc/uptime) s, "
             "kernel $(uname -r)\"; env "
             + shlex.join([*env, sys.executable, os.path.abspath(script), *inner]))
    accel = [] if os.environ.get("VM_KVM") == "1" else ["--disable-kvm"]
    timeout = int(os.environ.get("VM_TIMEOUT", "1800"))
    argv = ["timeout", "--kill-after=20", str(timeout), f"{cache}/venv/bin/vng", *accel,
            "--force-9p", "--run", kernels[0], "--memory", os.environ.get("VM_MEM", "2G"),
            "--cpus", os.environ.get("VM_CPUS", "2"), "--rwdir", os.path.dirname(out),
            "--cwd", REPO, "--exec", guest]
    print(f"{name}: booting {os.path.basename(kernels[0])} under qemu "
          f"({'kvm' if not accel else 'TCG, emulated'}), timeout {timeout}s: "
          f"{shlex.join(inner)}", flush=True)
    before = os.path.getmtime(out) if os.path.exists(out) else None
    t = time.monotonic()
    # Pipes, not files, for qemu's output: it reopens /proc/self/fd/1, which would
    # clobber a plain file. The guest's output is relayed line by line.
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace",
                            env={**os.environ, "PATH": f"{cache}/venv/bin:"
                                 + os.environ.get("PATH", "")})
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
    rc = proc.wait()
    took = time.monotonic() - t
    fresh = os.path.exists(out) and os.path.getmtime(out) != before
    if rc in (124, 137):
        print(f"{name} --vm: the VM timed out after {timeout}s (VM_TIMEOUT)")
    print(f"{name} --vm: {'wrote ' + out if fresh else 'NO results written'} "
          f"({took:.0f}s, vng exit {rc})")
    return 0
