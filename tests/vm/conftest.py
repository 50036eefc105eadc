"""The VM suite: tests that need kernel features this host may lack (IPVS, dummy links).

`make test` runs this folder inside a stock Debian kernel under qemu
(scripts/run-vm-tests.sh) when the host kernel has no IPVS, and directly on a host that
has it. Anywhere else (`pytest tests/vm` on such a host, or without root) every test here
is skipped with the reason. Where the suite is *required* — inside the VM
(LABCTL_VM=1, set by run-vm-tests.sh) or with LABCTL_REQUIRE_IPVS=1 — a missing
capability fails the run instead, so CI never passes on a silently skipped suite.

The check runs once per session, in this process (the guest is slow to start a Python
interpreter: keep tests in-process, calling only `ip`, `ipset`, `nft`, … as programs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).parent
# What labctl writes: namespace names, per-lab state, each pod's resolv.conf and hosts.
WRITABLE = ("/run/netns", "/run/labctl", "/etc/netns")
TOOLS = ("ip", "ipset", "nft", "iptables-restore", "ipvsadm", "modprobe")


def required() -> bool:
    return os.environ.get("LABCTL_VM") == "1" or os.environ.get("LABCTL_REQUIRE_IPVS") == "1"


def _writable(path: str) -> bool:
    """Whether `path` exists or can be made, and files can be written in it."""
    p = Path(path)
    while not p.exists():
        p = p.parent
    return os.access(p, os.W_OK)


def missing_capability() -> str | None:
    """Why the VM suite cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root: creates network namespaces, IPVS services and ipsets"
    if not os.path.exists("/proc/self/ns/net"):
        return "needs network namespace support in the kernel"
    tools = [t for t in TOOLS if shutil.which(t) is None]
    if tools:
        return f"needs {', '.join(tools)} (run scripts/install-deps.sh)"
    if not os.path.exists("/proc/net/ip_vs"):
        proc = subprocess.run(["modprobe", "ip_vs"], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0 or not os.path.exists("/proc/net/ip_vs"):
            why = proc.stderr.strip() or "/proc/net/ip_vs is absent after loading it"
            return (f"needs IPVS: `modprobe ip_vs` failed ({why}) on kernel "
                    f"{os.uname().release}; run the VM suite with `make test-vm`")
    ro = [p for p in WRITABLE if not _writable(p)]
    if ro:
        return f"needs writable {', '.join(ro)} (labctl writes there)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [i for i in items if HERE in Path(str(i.fspath)).parents]
    if not ours:
        return
    reason = missing_capability()
    if reason is None:
        return
    if required():
        raise pytest.UsageError(f"the VM suite cannot run here: {reason}")
    for item in ours:
        item.add_marker(pytest.mark.skip(reason=reason))
