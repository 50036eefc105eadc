"""ClusterState → Plan (pure)."""

from __future__ import annotations

import hashlib
import ipaddress

from labctl import names
from labctl.cluster.state import ClusterState, NodeState, ServiceState
from labctl.plan.model import Address, Bridge, Namespace, Plan, Route, VethPair

NODE_SYSCTLS = (
    ("net.ipv4.ip_forward", "1"),
    # br_netfilter: bridged pod traffic must traverse iptables/nftables, or replies from
    # a Service backend on the same bridge would skip the reverse NAT.
    ("net.bridge.bridge-nf-call-iptables", "1"),
    ("net.bridge.bridge-nf-call-ip6tables", "1"),
)


def bridge_mac(netns: str, ifname: str) -> str:
    """A stable, locally administered unicast MAC for a lab bridge."""
    import hashlib

    digest = hashlib.sha256(f"{netns}/{ifname}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def render(state: ClusterState) -> Plan:
    lab = state.lab.name
    node_len = ipaddress.IPv4Network(state.lab.node_cidr).prefixlen
    pod_len = state.lab.pod_cidr_per_node
    nss = [Namespace(state.fabric_netns, "fabric")]
    node_sysctls = NODE_SYSCTLS
    if state.lab.proxy_mode == "iptables":  # kube-proxy: NodePorts on 127.0.0.1 need this
        node_sysctls += (("net.ipv4.conf.all.route_localnet", "1"),)
    nss += [Namespace(n.netns, "node", node_sysctls) for n in state.nodes]
    nss.append(Namespace(state.external_netns, "external"))
    nss += [Namespace(p.netns, "pod") for p in state.pods]

    bridges = [Bridge(state.fabric_netns, names.FABRIC_BRIDGE,
                      bridge_mac(state.fabric_netns, names.FABRIC_BRIDGE))]
    bridges += [Bridge(n.netns, names.POD_BRIDGE, bridge_mac(n.netns, names.POD_BRIDGE))
                for n in state.nodes]

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
        # A real node's default route lets a packet to a Service address pass the route
        # lookup that precedes kube-proxy's DNAT; these two on-link routes do the same
        # without giving the lab a way out (the node network is a closed bridge).
        routes += [Route(node.netns, state.lab.service_cidr, dev="eth0"),
                   Route(node.netns, state.lab.load_balancer_cidr, dev="eth0")]
    routes += external_routes(state)
    for pod in state.pods:
        node = state.node(pod.node)
        veths.append(VethPair(node.netns, pod.host_veth, pod.netns, "eth0", names.POD_BRIDGE,
                              hairpin=True))
        addrs.append(Address(pod.netns, "eth0", f"{pod.ip}/{pod_len}"))
        routes.append(Route(pod.netns, "default", node.pod_gateway))
    return Plan(lab=lab, mark=names.owner_mark(lab), namespaces=tuple(nss),
                bridges=tuple(bridges), veths=tuple(veths), addresses=tuple(addrs),
                routes=tuple(routes))


def announcing_node(state: ClusterState, svc: ServiceState) -> NodeState:
    """The node the external network sends a Service's LoadBalancer/external IPs to.

    Like MetalLB's layer-2 mode, one node answers for each address: with
    externalTrafficPolicy Local a node that has a ready endpoint (traffic to a node
    without one is dropped), otherwise a node picked by a hash of the Service's name.
    """
    if svc.service.external_traffic_policy == "Local":
        hosts = sorted({ep.node_name for es in state.endpoint_slices
                        if es.meta.namespace == svc.namespace and es.service_name == svc.name
                        for ep in es.endpoints if ep.conditions.ready is not False})
        for node in state.nodes:
            if node.name in hosts:
                return node
    digest = hashlib.sha256(svc.key.encode()).digest()
    return state.nodes[int.from_bytes(digest[:4], "big") % len(state.nodes)]


def external_routes(state: ClusterState) -> list[Route]:
    """The external client's routes to LoadBalancer IPs and externalIPs, one /32 each."""
    out = []
    seen: set[str] = set()
    for svc in state.services:
        addresses = [svc.load_balancer_ip] if svc.load_balancer_ip else []
        addresses += list(svc.service.external_ips)
        for ip in addresses:
            if ip in seen:
                continue
            seen.add(ip)
            out.append(Route(state.external_netns, f"{ip}/32", announcing_node(state, svc).ip))
    return out
