"""The Plan: an ordered, printable description of every kernel object of a lab.

Order of application (the executor in labctl.net.apply follows it):
namespaces (each with lo up, the ownership mark and its sysctls) → bridges →
veth pairs (created in `netns` with the peer put straight into `peer_netns`) →
addresses → routes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Namespace:
    name: str
    role: str  # fabric | node | external | pod
    sysctls: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Bridge:
    netns: str
    ifname: str
    # A fixed MAC: without one a Linux bridge takes its lowest port's, and changes it
    # when that port goes — every neighbour's ARP entry for the gateway goes stale.
    mac: str = ""


@dataclass(frozen=True)
class VethPair:
    netns: str
    ifname: str
    peer_netns: str
    peer_ifname: str
    master: str = ""  # bridge in `netns` to enslave `ifname` to
    hairpin: bool = False  # bridge port hairpin mode (kubelet's hairpin-veth)


@dataclass(frozen=True)
class Address:
    netns: str
    ifname: str
    cidr: str  # "10.244.0.2/24"


@dataclass(frozen=True)
class Route:
    netns: str
    dst: str  # "default" or a CIDR
    via: str = ""  # a gateway, or "" for a route straight out of `dev`
    dev: str = ""


@dataclass(frozen=True)
class Plan:
    lab: str
    mark: str  # the ifalias every link and every namespace's lo carries
    namespaces: tuple[Namespace, ...]
    bridges: tuple[Bridge, ...]
    veths: tuple[VethPair, ...]
    addresses: tuple[Address, ...]
    routes: tuple[Route, ...]

    def links_in(self, netns: str) -> list[str]:
        """Every link the plan puts in one namespace (besides lo)."""
        out = [b.ifname for b in self.bridges if b.netns == netns]
        out += [v.ifname for v in self.veths if v.netns == netns]
        out += [v.peer_ifname for v in self.veths if v.peer_netns == netns]
        return out
