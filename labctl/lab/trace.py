"""`labctl trace`: one probe from a pod, a node or the external client, traced through
every namespace it may cross.

The order: the probe's socket is opened in the source's namespace (its source port is
then known), trace tables and `nft monitor trace` go into it and every node's, the
probe is sent, the monitors are read up to an end marker, then everything temporary is removed
(labctl/net/nftrace) and the walk is built from the events, each node's ruleset (to
quote rules as `iptables-save` shows them), its conntrack entries and route lookups.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from labctl.cluster.state import ClusterState
from labctl.errors import CapabilityError
from labctl.net import nftrace
from labctl.proxy import sync
from labctl.trace import walk
from labctl.trace.rulebook import RuleBook
from labctl.trace.target import Destination, Source


@dataclass
class Trace:
    lab: str
    mode: str
    source: dict[str, Any]
    destination: Destination
    outcome: nftrace.Outcome
    walk: walk.Walk

    def to_json(self) -> dict[str, Any]:
        return {"lab": self.lab, "proxyMode": self.mode, "source": self.source,
                "destination": asdict(self.destination), "outcome": asdict(self.outcome),
                **asdict(self.walk)}


def check_traceable(state: ClusterState) -> None:
    """nftrace sees nftables and iptables-nft rules, not iptables-legacy ones."""
    mode = state.lab.proxy_mode
    if mode != "nftables" and sync.iptables_backend(state) == "legacy":
        raise CapabilityError(
            f"lab {state.lab.name!r} runs kube-proxy's {mode} mode with iptablesBackend "
            "legacy: the kernel's nftables trace (nft monitor trace) cannot see "
            "iptables-legacy rules, and the legacy TRACE target logs only through the "
            "host's kernel log (a host setting labctl does not change). Trace with "
            "`iptablesBackend: nft` or proxyMode nftables (`labctl proxy-mode nftables`); "
            "`labctl rules NODE` shows the legacy rules")


def udp_payload(dest: Destination, domain: str) -> bytes:
    """What a UDP probe carries: to port 53 a DNS query (A kubernetes.default.svc.<domain>,
    so a DNS server answers), else a line the built-in echo server echoes."""
    if dest.port != 53:
        return b"labctl trace\n"
    import struct

    name = b"".join(bytes([len(part)]) + part.encode()
                    for part in f"kubernetes.default.svc.{domain}".split(".") if part)
    return struct.pack("!HHHHHH", 0x1ab5, 0x0100, 1, 0, 0, 0) + name + b"\0" + \
        struct.pack("!HH", 1, 1)


def run(lab: str, state: ClusterState, src: Source, dest: Destination,
        timeout: float = 2.0) -> Trace:
    check_traceable(state)
    # A client namespace (pod, external) ends or starts a walk as a pod does.
    first = [] if src.kind == "node" else [
        (f"pod {src.name}" if src.kind == "pod" else "external", "pod", src.netns)]
    places = first + [(node.name, "node", node.netns) for node in state.nodes]
    probe = nftrace.Probe.open(src.netns, src.ip, dest.protocol)
    try:
        with nftrace.tracing([ns for _w, _k, ns in places], probe.flow,
                             unlabelled=[ns for _w, _k, ns in first]) as monitors:
            outcome = probe.send(dest.ip, dest.port, timeout,
                                 udp_payload(dest, state.lab.cluster_domain))
            nftrace.settle(monitors)
            lines = {m.ns: list(m.lines) for m in monitors}
    finally:
        probe.close()
    read: list[walk.Place] = []
    for where, kind, ns in places:
        book, conntrack = RuleBook(), []
        if kind == "node":
            book = RuleBook.of(*nftrace.ruleset(ns))
            conntrack = nftrace.conntrack_entries(ns, dest.protocol)
        read.append(walk.Place(where, kind, ns, lines.get(ns, []), book, conntrack))
    pods_by_ip = {p.ip: f"{p.key} on {p.node}" for p in state.pods}
    the_walk = walk.build(read, probe.flow, pods_by_ip, nftrace.route_get,
                          state.lab.proxy_mode)
    source = {"kind": src.kind, src.kind if src.kind != "external" else "name": src.name,
              "node": src.node, "ip": src.ip,
              ("port" if dest.protocol != "icmp" else "icmpId"): probe.port}
    return Trace(lab, state.lab.proxy_mode, source, dest, outcome, the_walk)
