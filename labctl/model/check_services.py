"""Checks of Services and EndpointSlices: ports, types, addresses, and what they select."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from labctl.model import checks
from labctl.model.check_lab import in_network
from labctl.model.context import Context, PodShape, label_of, network, show_labels
from labctl.model.objects import EndpointSlice, Service

EXTERNAL_TYPES = ("NodePort", "LoadBalancer")
# Addresses of the service CIDR that labctl gives to its own Services (DESIGN.md §3).
RESERVED = {1: ("default", "kubernetes", "the kubernetes Service"),
            10: ("kube-system", "kube-dns", "cluster DNS")}
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def check_service(ctx: Context, svc: Service) -> None:
    """Checks that need nothing but the Service itself (as the API server does)."""
    check_service_ports(ctx, svc)
    check_service_type(ctx, svc)
    check_policies(ctx, svc)


def check_service_ports(ctx: Context, svc: Service) -> None:
    if not svc.ports and svc.type != "ExternalName" and not svc.headless:
        ctx.error(svc, "spec.ports", "expected at least one port, found none",
                  "add ports: [{port: 80, targetPort: 8080}]")
    check_port_names(ctx, svc)
    # Ports, and nodePorts, are unique per protocol (DNS serves 53 over TCP and UDP).
    check_unique(ctx, svc, "port", [(p.port, p.protocol) for p in svc.ports],
                 "a Service listens on each port and protocol once")
    if svc.type in ("ClusterIP", "ExternalName"):
        for i, port in enumerate(svc.ports):
            if port.node_port:
                ctx.error(svc, f"spec.ports[{i}].nodePort",
                          f"nodePort is only allowed for type NodePort or LoadBalancer, not "
                          f"{svc.type}", "set spec.type: NodePort, or remove nodePort")
    else:
        check_unique(ctx, svc, "nodePort", [(p.node_port, p.protocol) for p in svc.ports],
                     "give each port its own nodePort, or omit it to have one allocated")


def check_port_names(ctx: Context, svc: Service) -> None:
    names: dict[str, int] = {}
    for i, port in enumerate(svc.ports):
        path = f"spec.ports[{i}]"
        if len(svc.ports) > 1 and not port.name:
            ctx.error(svc, path, "a Service with several ports must name each of them",
                      "add name: <port name>, e.g. name: http")
        elif port.name in names:
            first = ctx.where(svc, f"spec.ports[{names[port.name]}].name")
            ctx.error(svc, f"{path}.name",
                      f'duplicate port name "{port.name}" (first at {first})',
                      "give each port its own name")
        else:
            names[port.name] = i


def check_unique(ctx: Context, svc: Service, field: str, keys: list[tuple[int, str]],
                 hint: str) -> None:
    """Each (number, protocol) of spec.ports[*].<field> once; 0 is unset (or reported)."""
    first: dict[tuple[int, str], int] = {}
    for i, (number, protocol) in enumerate(keys):
        if not number:
            continue
        if (number, protocol) in first:
            where = ctx.where(svc, f"spec.ports[{first[number, protocol]}].{field}")
            ctx.error(svc, f"spec.ports[{i}].{field}", f"{field} {number}/{protocol} is "
                      f"listed twice (first at {where})", hint)
        else:
            first[number, protocol] = i


def check_service_type(ctx: Context, svc: Service) -> None:
    spec_type = "spec.type"
    if svc.headless and svc.type in EXTERNAL_TYPES:
        ctx.error(svc, spec_type, f"a headless Service (clusterIP: None) cannot be of type "
                  f"{svc.type}", "remove clusterIP: None, or use type ClusterIP")
    if svc.type == "ExternalName":
        if not svc.external_name:
            ctx.error(svc, spec_type, "type ExternalName needs spec.externalName, found none",
                      "add externalName: <DNS name>, e.g. externalName: db.example.com")
        elif problem := checks.DNS_SUBDOMAIN(svc.external_name.lower().rstrip(".")):
            host = re.sub(r"^[a-z]+://|[:/].*$", "", svc.external_name.lower())
            hint = f'externalName is a DNS name only, e.g. "{host}"' if host and \
                host != svc.external_name.lower() else problem.hint
            ctx.error(svc, "spec.externalName", problem.message, hint)
        if svc.cluster_ip and not svc.headless:
            ctx.error(svc, "spec.clusterIP", "an ExternalName Service has no clusterIP",
                      "remove clusterIP")
    elif svc.external_name:
        ctx.warning(svc, "spec.externalName", f"externalName is only used by type "
                    f"ExternalName; this {svc.type} Service ignores it",
                    "remove externalName, or set type: ExternalName")
    if ctx.written(svc, "spec.loadBalancerIP") and svc.type != "LoadBalancer":
        ctx.warning(svc, "spec.loadBalancerIP",
                    f"loadBalancerIP is only used by type LoadBalancer, not {svc.type}",
                    "remove loadBalancerIP, or set type: LoadBalancer")


def check_policies(ctx: Context, svc: Service) -> None:
    if ctx.written(svc, "spec.sessionAffinityConfig") and svc.session_affinity != "ClientIP":
        ctx.error(svc, "spec.sessionAffinityConfig",
                  "sessionAffinityConfig only applies with sessionAffinity: ClientIP",
                  "add sessionAffinity: ClientIP, or remove sessionAffinityConfig")
    external = svc.type in EXTERNAL_TYPES or bool(svc.external_ips)
    if ctx.written(svc, "spec.externalTrafficPolicy") and not external:
        ctx.error(svc, "spec.externalTrafficPolicy",
                  f"externalTrafficPolicy only applies to NodePort and LoadBalancer Services "
                  f"(or ones with externalIPs), not {svc.type}",
                  "remove externalTrafficPolicy, or set type: NodePort")
    if svc.health_check_node_port and not (
            svc.type == "LoadBalancer" and svc.external_traffic_policy == "Local"):
        ctx.error(svc, "spec.healthCheckNodePort",
                  "healthCheckNodePort only applies to type LoadBalancer with "
                  "externalTrafficPolicy: Local", "remove healthCheckNodePort")


# ---------------------------------------------------------------- cross-object


def check_service_addresses(ctx: Context) -> None:
    """clusterIPs, nodePorts and loadBalancerIPs: inside their ranges, and each used once."""
    lab = ctx.top.lab
    cluster_ips: dict[str, Service] = {}
    node_ports: dict[int, Service] = {}
    lb_ips: dict[str, Service] = {}
    for svc in ctx.top.services:
        if svc.cluster_ip and not svc.headless and svc.type != "ExternalName" and \
                not checks.ipv4(svc.cluster_ip):
            check_cluster_ip(ctx, svc, lab.service_cidr)
            _claim(ctx, cluster_ips, svc.cluster_ip, svc, "spec.clusterIP", "clusterIP",
                   "remove clusterIP to have one allocated")
        if svc.type in EXTERNAL_TYPES:
            # One Service may use a nodePort for TCP and UDP (checked per Service above);
            # across Services each nodePort belongs to one.
            for i, port in enumerate(svc.ports):
                if port.node_port and node_ports.get(port.node_port) is not svc:
                    _claim(ctx, node_ports, port.node_port, svc, f"spec.ports[{i}].nodePort",
                           "nodePort", "omit nodePort to have a free one allocated")
        if svc.type == "LoadBalancer" and svc.load_balancer_ip and \
                not checks.ipv4(svc.load_balancer_ip):
            if not in_network(svc.load_balancer_ip, lab.load_balancer_cidr):
                ctx.error(svc, "spec.loadBalancerIP",
                          f"loadBalancerIP {svc.load_balancer_ip} is outside the lab's "
                          f"loadBalancerCIDR {lab.load_balancer_cidr}",
                          "pick an address in loadBalancerCIDR, or remove loadBalancerIP")
            _claim(ctx, lb_ips, svc.load_balancer_ip, svc, "spec.loadBalancerIP",
                   "loadBalancerIP", "remove loadBalancerIP to have one allocated")


def _claim(ctx: Context, used: dict[Any, Service], value: object, svc: Service, path: str,
           what: str, hint: str) -> None:
    owner = used.get(value)
    if owner is None:
        used[value] = svc
    elif owner is not svc:
        ctx.error(svc, path, f"{what} {value} is already used by {label_of(owner)} (at "
                  f"{ctx.where(owner, path_of(owner, what, value))})", hint)


def path_of(svc: Service, what: str, value: object) -> str:
    if what == "nodePort":
        for i, port in enumerate(svc.ports):
            if port.node_port == value:
                return f"spec.ports[{i}].nodePort"
    return "spec.loadBalancerIP" if what == "loadBalancerIP" else "spec.clusterIP"


def check_cluster_ip(ctx: Context, svc: Service, service_cidr: str) -> None:
    net = network(service_cidr)
    if net is None:
        return
    address = ipaddress.IPv4Address(svc.cluster_ip)
    if address not in net:
        ctx.error(svc, "spec.clusterIP",
                  f"clusterIP {address} is outside the lab's serviceCIDR {net}",
                  "pick an address in serviceCIDR, or remove clusterIP to have one allocated")
        return
    if address in (net.network_address, net.broadcast_address):
        ctx.error(svc, "spec.clusterIP",
                  f"clusterIP {address} is the network or broadcast address of {net}",
                  "pick another address, or remove clusterIP")
        return
    offset = int(address) - int(net.network_address)
    if offset in RESERVED:
        namespace, name, what = RESERVED[offset]
        if (svc.meta.namespace, svc.meta.name) != (namespace, name):
            ctx.error(svc, "spec.clusterIP", f"clusterIP {address} is reserved for {what}",
                      "pick another address, or remove clusterIP to have one allocated")


def check_selectors(ctx: Context, svc: Service) -> None:
    """A selector that matches nothing is a warning; a named targetPort nobody declares
    is an error (kube-proxy would have no endpoint to send to)."""
    if svc.selector is None or svc.type == "ExternalName":
        return
    ns = svc.meta.namespace
    here = [s for s in ctx.pod_shapes() if s.owner.meta.namespace == ns]
    selected = [s for s in here if all(s.labels.get(k) == v for k, v in svc.selector.items())]
    if not selected:
        ctx.warning(svc, "spec.selector",
                    f"selects no Pod or pod template in namespace {ns} "
                    f"({show_labels(svc.selector)})", _selector_hint(ns, here))
        return
    for i, port in enumerate(svc.ports):
        if isinstance(port.target_port, str):
            check_named_target_port(ctx, svc, i, port.target_port, port.protocol, selected)


def _selector_hint(ns: str, here: list[PodShape]) -> str:
    if not here:
        return (f"namespace {ns} has no Pods or workloads; a Service selects pods of its own "
                "namespace only")
    shown = [f"{label_of(s.owner)} ({show_labels(s.labels)})" for s in here[:3]]
    more = f" and {len(here) - 3} more" if len(here) > 3 else ""
    return f"pod labels here: {', '.join(shown)}{more}"


def check_named_target_port(ctx: Context, svc: Service, index: int, name: str, protocol: str,
                            selected: list[PodShape]) -> None:
    declared = {(p.name, p.protocol) for s in selected for c in s.spec.containers
                for p in c.ports if p.name}
    if (name, protocol) in declared:
        return
    other = sorted(proto for n, proto in declared if n == name)
    owners = ", ".join(label_of(s.owner) for s in selected[:3])
    path = f"spec.ports[{index}].targetPort"
    if other:
        ctx.error(svc, path, f'the selected pods declare port "{name}" for {other[0]}, not '
                  f"{protocol}", f"set protocol: {other[0]} on this Service port")
        return
    ctx.error(svc, path, f'no container of the selected pods ({owners}) declares a port '
              f'named "{name}"',
              f'add name: {name} to a containerPort of those pods, or use the port number')


# ---------------------------------------------------------------- endpoint slices


def check_endpoint_slice(ctx: Context, eps: EndpointSlice) -> None:
    if eps.address_type != "IPv4":
        if eps.address_type in ("IPv6", "FQDN"):
            ctx.error(eps, "addressType", f'labctl builds an IPv4 network; addressType '
                      f'"{eps.address_type}" is not supported', "use addressType: IPv4")
        return
    for i, endpoint in enumerate(eps.endpoints):
        for j, address in enumerate(endpoint.addresses):
            if problem := checks.ipv4(address):
                ctx.error(eps, f"endpoints[{i}].addresses[{j}]", problem.message, problem.hint)
    names: dict[str | None, int] = {}
    for i, port in enumerate(eps.ports):
        if port.name in names:
            ctx.error(eps, f"ports[{i}].name", f'duplicate port name "{port.name}"',
                      "each port of an EndpointSlice needs its own name")
        names[port.name] = i
    if not eps.service_name:
        ctx.warning(eps, "metadata.labels",
                    f"no {SERVICE_NAME_LABEL} label: kube-proxy ignores this EndpointSlice",
                    f"add the label {SERVICE_NAME_LABEL}: <service name>")


def check_endpoint_slice_refs(ctx: Context, eps: EndpointSlice) -> None:
    ns = eps.meta.namespace
    if eps.service_name and not any(s.meta.namespace == ns and s.meta.name == eps.service_name
                                    for s in ctx.top.services):
        ctx.warning(eps, f"metadata.labels[{SERVICE_NAME_LABEL}]",
                    f'no Service "{eps.service_name}" in namespace {ns}',
                    "create the Service (without a selector) or fix the label")
    nodes = {node.name for node in ctx.nodes}
    for i, endpoint in enumerate(eps.endpoints):
        if endpoint.node_name and endpoint.node_name not in nodes:
            ctx.warning(eps, f"endpoints[{i}].nodeName",
                        f'no node "{endpoint.node_name}" in this lab',
                        f"the lab's nodes are {', '.join(n.name for n in ctx.nodes)}")
