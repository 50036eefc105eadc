"""A snapshot of the host's own network configuration, to prove labs never touch it.

It covers the root namespace's links, addresses, routes, policy rules, the sysctls
under net.ipv4/ipv6/bridge/core, and the firewall (iptables-save for both backends,
nft list ruleset). Counters and other values the kernel changes on its own are left out.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

# Values the kernel changes by itself, or that are write-only.
VOLATILE = re.compile(r"(nf_conntrack_count|/flush$|stable_secret|"
                      r"base_reachable_time|neigh/.*/(gc|reachable)|tcp_fastopen_key)")
SYSCTL_DIRS = ("net/ipv4", "net/ipv6", "net/bridge", "net/core", "net/netfilter")


def _run(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return f"<{argv[0]} not installed>"
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    return proc.stdout + proc.stderr


def _strip_comments(text: str) -> str:
    # iptables-save prints a timestamp comment and per-chain packet counters.
    lines = [re.sub(r"\[\d+:\d+\]", "", ln) for ln in text.splitlines()
             if not ln.startswith("#")]
    return "\n".join(lines)


def sysctls() -> dict[str, str]:
    out = {}
    for top in SYSCTL_DIRS:
        for root, _dirs, files in os.walk(f"/proc/sys/{top}"):
            for name in files:
                path = os.path.join(root, name)
                if VOLATILE.search(path):
                    continue
                try:
                    with open(path) as f:
                        out[path[len("/proc/sys/"):]] = f.read().strip()
                except OSError:
                    continue
    return out


def snapshot() -> dict[str, object]:
    """Everything of the host's own network that a lab must leave exactly as it was."""
    return {
        "links": _run(["ip", "-o", "link", "show"]),
        "addresses": _run(["ip", "-o", "addr", "show"]),
        "routes4": _run(["ip", "-4", "route", "show", "table", "all"]),
        "routes6": _run(["ip", "-6", "route", "show", "table", "all"]),
        "rules": _run(["ip", "rule", "show"]),
        "iptables-nft": _strip_comments(_run(["iptables-nft-save"])),
        "iptables-legacy": _strip_comments(_run(["iptables-legacy-save"])),
        "nft": _run(["nft", "list", "ruleset"]),
        "sysctls": sysctls(),
    }


def diff(before: dict[str, object], after: dict[str, object]) -> list[str]:
    """Human-readable differences (empty: unchanged)."""
    out = []
    for key in before:
        if before[key] == after[key]:
            continue
        if isinstance(before[key], dict):
            b, a = before[key], after[key]
            assert isinstance(b, dict) and isinstance(a, dict)
            for k in sorted(set(b) | set(a)):
                if b.get(k) != a.get(k):
                    out.append(f"{key}: {k}: {b.get(k)!r} -> {a.get(k)!r}")
        else:
            out.append(f"{key} changed:\n--- before\n{before[key]}\n--- after\n{after[key]}")
    return out
