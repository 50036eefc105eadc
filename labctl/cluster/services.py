"""Service address allocation: clusterIPs, NodePorts and LoadBalancer IPs (pure).

Like the API server, explicitly requested values are honoured first; the rest are
allocated. The API server picks at random; here the pick is a hash of the Service's
namespace/name probed forward, so the same file gives the same addresses and adding a
Service does not move the others. The first service IP is reserved for the
`kubernetes` Service and the tenth for cluster DNS, as in every kubeadm/kind cluster.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Mapping

from labctl.cluster.state import PortAllocation, ServiceState
from labctl.errors import Diagnostic, UserError
from labctl.model.objects import Lab, Service

NODE_PORT_RANGE = (30000, 32767)
HEALTH_CHECK = "(health check)"  # the health check node port's key (no port has this name)
KUBERNETES_SERVICE_INDEX = 1
DNS_SERVICE_INDEX = 10


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _probe(start: int, size: int, free: Callable[[int], bool]) -> int | None:
    for step in range(size):
        candidate = (start + step) % size
        if free(candidate):
            return candidate
    return None


def reserved_service_ip(service_cidr: str, index: int) -> str:
    return str(ipaddress.IPv4Network(service_cidr).network_address + index)


def needs_node_ports(svc: Service) -> bool:
    return svc.type in ("NodePort", "LoadBalancer")


def needs_health_check(svc: Service) -> bool:
    """kube-proxy serves a health check for a LoadBalancer with externalTrafficPolicy
    Local (the API server allocates its port; a value written otherwise is ignored)."""
    return svc.type == "LoadBalancer" and svc.external_traffic_policy == "Local"


def allocate(lab: Lab, services: Iterable[Service],
             previous: Mapping[str, ServiceState] | None = None) -> list[ServiceState]:
    previous = previous or {}
    services = sorted(services, key=lambda s: (s.meta.namespace, s.meta.name))
    net = ipaddress.IPv4Network(lab.service_cidr)
    errors: list[Diagnostic] = []
    used_ips = {reserved_service_ip(lab.service_cidr, KUBERNETES_SERVICE_INDEX),
                reserved_service_ip(lab.service_cidr, DNS_SERVICE_INDEX)}
    used_ports: set[int] = set()
    for svc in services:  # requested values first
        if svc.cluster_ip and svc.cluster_ip != "None":
            used_ips.add(svc.cluster_ip)
        used_ports.update(p.node_port for p in svc.ports if p.node_port)
        if svc.health_check_node_port and needs_health_check(svc):
            used_ports.add(svc.health_check_node_port)
    lb_pool = list(ipaddress.IPv4Network(lab.load_balancer_cidr).hosts())
    used_lb = {ip for s in services for ip in (s.load_balancer_ip, *s.load_balancer_ingress) if ip}

    out = []
    for svc in services:
        key = f"{svc.meta.namespace}/{svc.meta.name}"
        old = previous.get(key)
        cluster_ip = _cluster_ip(svc, key, net, used_ips, old, errors)
        ports = []
        for i, port in enumerate(svc.ports):
            node_port = port.node_port
            if not node_port and needs_node_ports(svc):
                node_port = _node_port(key, port.name, port.protocol, used_ports, old)
                if node_port is None:
                    errors.append(Diagnostic(
                        "error", svc.source.at(f"spec.ports[{i}]"),
                        f"Service {key}: spec.ports[{i}]",
                        "no free NodePort left in 30000-32767",
                        "use fewer NodePort/LoadBalancer Services or give nodePort values"))
                    node_port = 0
                used_ports.add(node_port)
            ports.append(PortAllocation(port.name, port.protocol, port.port, node_port))
        lb_ip = ""
        if svc.type == "LoadBalancer":
            # A written status.loadBalancer.ingress is an address already assigned.
            written = svc.load_balancer_ingress[0] if svc.load_balancer_ingress else ""
            lb_ip = svc.load_balancer_ip or written or (old.load_balancer_ip if old else "")
            if not lb_ip:
                lb_ip = next((str(ip) for ip in lb_pool if str(ip) not in used_lb), "")
                if not lb_ip:
                    errors.append(Diagnostic(
                        "error", svc.source.at("spec.type"), f"Service {key}: spec.type",
                        f"the LoadBalancer pool {lab.load_balancer_cidr} is exhausted",
                        "make the Lab's spec.loadBalancerCIDR larger"))
            used_lb.add(lb_ip)
        health = 0
        if needs_health_check(svc):
            health = svc.health_check_node_port or _node_port(
                key, HEALTH_CHECK, "TCP", used_ports, old)
            if health is None:
                errors.append(Diagnostic(
                    "error", svc.source.at("spec.externalTrafficPolicy"),
                    f"Service {key}: spec.healthCheckNodePort",
                    "no free NodePort left in 30000-32767 for the health check",
                    "use fewer NodePort/LoadBalancer Services or give healthCheckNodePort"))
                health = 0
            used_ports.add(health)
        out.append(ServiceState(svc, cluster_ip, tuple(ports), lb_ip, health))
    if errors:
        raise UserError(errors)
    return out


def _cluster_ip(svc: Service, key: str, net: ipaddress.IPv4Network, used: set[str],
                old: ServiceState | None, errors: list[Diagnostic]) -> str:
    if svc.type == "ExternalName":
        return ""
    if svc.cluster_ip:
        return svc.cluster_ip
    if old and old.cluster_ip and old.cluster_ip != "None":
        used.add(old.cluster_ip)
        return old.cluster_ip
    size = net.num_addresses
    # Like the API server, dynamic allocation prefers the upper part of the range.
    low = min(max(16, size // 16), 256) if size > 64 else 2
    span = size - 1 - low

    def free(offset: int) -> bool:
        return str(net.network_address + low + offset) not in used

    offset = _probe(_hash(key) % span, span, free)
    if offset is None:
        errors.append(Diagnostic("error", svc.source.at("metadata.name"), f"Service {key}",
                                 f"the service CIDR {net} is exhausted",
                                 "make the Lab's spec.serviceCIDR larger"))
        return ""
    ip = str(net.network_address + low + offset)
    used.add(ip)
    return ip


def _node_port(key: str, name: str, protocol: str, used: set[int],
               old: ServiceState | None) -> int | None:
    if old and name == HEALTH_CHECK:
        if old.health_check_node_port and old.health_check_node_port not in used:
            return old.health_check_node_port
    elif old:
        for p in old.ports:
            if p.name == name and p.protocol == protocol and p.node_port:
                return p.node_port
    lo, hi = NODE_PORT_RANGE
    size = hi - lo + 1
    offset = _probe(_hash(f"{key}:{name}/{protocol}") % size, size, lambda o: lo + o not in used)
    return None if offset is None else lo + offset
