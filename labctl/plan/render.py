"""ClusterState → Plan (pure)."""

from __future__ import annotations

import ipaddress

from labctl import names
from labctl.cluster.state import ClusterState
from labctl.plan.model import Address, Bridge, Namespace, Plan, Route, VethPair

NODE_SYSCTLS = (
    ("net.ipv4.ip_forward", "1"),
    # br_netfilter: bridged pod traffic must traverse iptables/nftables, or replies from
    # a Service backend on the same bridge would skip the reverse NAT.
    ("net.bridge.bridge-nf-call-iptables", "1"),
    ("net.bridge.bridge-nf-call-ip6tables", "1"),
)


def render(state: ClusterState) -> Plan:
    lab = state.lab.name
    node_len = ipaddress.IPv4Network(state.lab.node_cidr).prefixlen
    pod_len = state.lab.pod_cidr_per_node
    nss = [Namespace(state.fabric_netns, "fabric")]
    nss += [Namespace(n.netns, "node", NODE_SYSCTLS) for n in state.nodes]
    nss.append(Namespace(state.external_netns, "external"))
    nss += [Namespace(p.netns, "pod") for p in state.pods]

    bridges = [Bridge(state.fabric_netns, names.FABRIC_BRIDGE)]
    bridges += [Bridge(n.netns, names.POD_BRIDGE) for n in state.nodes]

    veths, addrs, routes = [], [], []
    for node in state.nodes:
        veths.append(VethPair(state.fabric_netns, names.veth_for(node.ip), node.netns, "eth0",
                              names.FABRIC_BRIDGE))
        addrs.append(Address(node.netns, "eth0", f"{node.ip}/{node_len}"))
        addrs.append(Address(node.netns, names.POD_BRIDGE, f"{node.pod_gateway}/{pod_len}"))
    veths.append(VethPair(state.fabric_netns, names.veth_for(state.external_ip),
                          state.external_netns, "eth0", names.FABRIC_BRIDGE))
    addrs.append(Address(state.external_netns, "eth0", f"{state.external_ip}/{node_len}"))
    for node in state.nodes:  # host-gw style: every other node's pod /24 via that node
        routes += [Route(node.netns, other.pod_cidr, other.ip)
                   for other in state.nodes if other.name != node.name]
    for pod in state.pods:
        node = state.node(pod.node)
        veths.append(VethPair(node.netns, pod.host_veth, pod.netns, "eth0", names.POD_BRIDGE))
        addrs.append(Address(pod.netns, "eth0", f"{pod.ip}/{pod_len}"))
        routes.append(Route(pod.netns, "default", node.pod_gateway))
    return Plan(lab=lab, mark=names.owner_mark(lab), namespaces=tuple(nss),
                bridges=tuple(bridges), veths=tuple(veths), addresses=tuple(addrs),
                routes=tuple(routes))
