"""Address management: node pod /24s, pod IPs, and the node network (pure, deterministic).

Every node gets the next /24 (or the Lab's podCIDRPerNode) of the pod CIDR, as
kube-controller-manager's --node-cidr-mask-size does; its cni0 bridge takes .1 and pods
take .2 upwards in namespace/name order. An address a pod had in the previous state is
kept, so applying a change does not renumber the pods that stay.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence


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
    hosts = list(subnet.hosts())[1:]  # .1 is the gateway
    taken = {previous[k] for k in pod_keys if k in previous
             and ipaddress.IPv4Address(previous[k]) in subnet}
    free = iter(str(h) for h in hosts if str(h) not in taken)
    out: dict[str, str] = {}
    for key in sorted(pod_keys):
        ip = previous.get(key)
        if ip is None or ip not in taken:
            ip = next(free, None)
            if ip is None:
                return None
        out[key] = ip
    return out


def node_network(node_cidr: str, nodes: int) -> tuple[list[str], str]:
    """(node IPs, external client IP) on the node network. The first address stays free,
    as a Docker network's gateway does in kind: nodes start at .2."""
    hosts = list(ipaddress.IPv4Network(node_cidr).hosts())
    return [str(h) for h in hosts[1:1 + nodes]], str(hosts[-1])

