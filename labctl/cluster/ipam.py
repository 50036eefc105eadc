"""Address management: node pod /24s, pod IPs, and the node network (pure, deterministic).

Every node gets the next /24 (or the Lab's podCIDRPerNode) of the pod CIDR, as
kube-controller-manager's --node-cidr-mask-size does; its cni0 bridge takes .1 and pods
take .2 upwards in namespace/name order. An address a pod had in the previous state is
kept, so applying a change does not renumber the pods that stay.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping, Sequence


def node_subnets(pod_cidr: str, count: int, prefix: int = 24) -> list[ipaddress.IPv4Network]:
    net = ipaddress.IPv4Network(pod_cidr)
    subnets = net.subnets(new_prefix=prefix) if net.prefixlen <= prefix else iter(())
    out = []
    for subnet in subnets:
        if len(out) == count:
            break
        out.append(subnet)
    return out


def pod_capacity(subnet: ipaddress.IPv4Network) -> int:
    return subnet.num_addresses - 3  # network, gateway (.1), broadcast


def assign_pod_ips(subnet: ipaddress.IPv4Network, pod_keys: Sequence[str],
                   previous: Mapping[str, str]) -> dict[str, str] | None:
    """Addresses for the pods of one node, or None when the subnet is exhausted."""
    first = int(subnet.network_address) + 2  # .1 is the gateway
    last = int(subnet.broadcast_address) - 1
    taken: set[str] = set()
    for k in pod_keys:
        ip = previous.get(k)
        if ip is not None and first <= _int(ip) <= last:
            taken.add(ip)

    def free_addresses() -> Iterator[str]:
        for n in range(first, last + 1):
            ip = _str(n)
            if ip not in taken:
                yield ip

    free = free_addresses()
    out: dict[str, str] = {}
    for key in sorted(pod_keys):
        ip = previous.get(key)
        if ip is None or ip not in taken:
            ip = next(free, None)
            if ip is None:
                return None
        out[key] = ip
    return out


def _int(ip: str) -> int:
    a, b, c, d = (int(x) for x in ip.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


def _str(n: int) -> str:
    return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def node_network(node_cidr: str, nodes: int) -> tuple[list[str], str]:
    """(node IPs, external client IP) on the node network. The first address stays free,
    as a Docker network's gateway does in kind: nodes start at .2."""
    hosts = list(ipaddress.IPv4Network(node_cidr).hosts())
    return [str(h) for h in hosts[1:1 + nodes]], str(hosts[-1])

