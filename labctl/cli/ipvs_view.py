"""`labctl rules NODE` in IPVS mode: the node's virtual servers (`ipvsadm -Ln`),
kube-ipvs0's addresses, ipsets and iptables rules, read back from the kernel —
optionally only what belongs to one Service."""

from __future__ import annotations

import re
import subprocess

from labctl.cluster.state import ClusterState
from labctl.errors import NotFoundError
from labctl.net import ipvs as ipvs_net
from labctl.net import netfilter, netns
from labctl.proxy import sync
from labctl.proxy.ipvs_render import DUMMY_DEVICE


def _run_in(ns: str, argv: list[str]) -> str:
    with netns.entered(ns):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    return proc.stdout if proc.returncode == 0 else proc.stderr


def show_ipvs_rules(state: ClusterState, node: str, service: str | None) -> str:
    ns = state.node(node).netns
    ipvs_text = ipvs_net.list_text(ns)
    addrs = _run_in(ns, ["ip", "-o", "-4", "addr", "show", "dev", DUMMY_DEVICE])
    sets = _run_in(ns, ["ipset", "save"])
    iptables = netfilter.iptables_save(ns, sync.iptables_backend(state))
    if service is not None:
        namespace, name = service.split("/", 1) if "/" in service else ("default", service)
        if not any(s.namespace == namespace and s.name == name for s in state.services):
            raise NotFoundError(f'services "{name}" not found in namespace {namespace}')
        rs = sync.render_node(state, node, "ipvs")
        part = rs.by_key.get((namespace, name))
        entries = part.entries if part else ()
        targets = {f"{e.vs.protocol} {e.vs.address}:{e.vs.port}" for e in entries}
        ips = {e.vs.address for e in entries}
        set_entries = {f"add {s} {e}" for s, e in part.set_entries} if part else set()
        ipvs_text = _filter_ipvs(ipvs_text, targets)
        addrs = "".join(line + "\n" for line in addrs.splitlines()
                        if any(f" {ip}/" in line for ip in ips))
        sets = "".join(line + "\n" for line in sets.splitlines() if line in set_entries)
        iptables = _filter_iptables(iptables, ips)
    return (f"# ipvsadm -Ln\n{ipvs_text}"
            f"# ip -o addr show dev {DUMMY_DEVICE}\n{addrs}"
            f"# ipset save\n{sets}"
            f"# iptables-save\n{iptables}")


def _filter_ipvs(text: str, targets: set[str]) -> str:
    """Keep the header and the blocks (a virtual server and its `->` lines) of `targets`
    ("TCP 10.96.0.10:53")."""
    out, keep = [], False
    for line in text.splitlines():
        if line.startswith("  ->") and not line.startswith("  -> RemoteAddress"):
            if keep:
                out.append(line)
            continue
        words = line.split()
        if len(words) >= 2 and words[0] in ("TCP", "UDP", "SCTP"):
            keep = f"{words[0]} {words[1]}" in targets
            if keep:
                out.append(line)
            continue
        out.append(line)  # the header
    return "\n".join(out) + "\n"


def _filter_iptables(text: str, ips: set[str]) -> str:
    """IPVS mode's rules name ipsets, not Services: keep the table structure and the
    rules that name one of the Service's addresses."""
    pattern = re.compile("|".join(rf"\b{re.escape(ip)}\b" for ip in sorted(ips))) if ips \
        else None
    out = []
    for line in text.splitlines():
        named = line.startswith("-A") and pattern is not None and pattern.search(line)
        if named or line.startswith(("*", "COMMIT", "#")):
            out.append(line)
    return "\n".join(out) + "\n"
