"""What `labctl trace SOURCE DEST[:PORT]` names, resolved against a lab's ClusterState
(pure).

SOURCE is a pod, a node, or `external` (the client outside the cluster). DEST is an IPv4
address, a node (its IP: with a NodePort), a Service (`web`, `ns/web`: its ClusterIP —
from outside, the address outside traffic uses: its LoadBalancer IP, an externalIP, or
the NodePort on the first node) or a pod (its IP); PORT a number or a port's name, by
default the Service's first port (a pod's first containerPort). Anything that names
nothing is a user error (exit 2) raised before the trace touches the kernel.
"""

from __future__ import annotations

import difflib
import ipaddress
from dataclasses import dataclass

from labctl.cluster.state import ClusterState, PodState, ServiceState
from labctl.errors import Diagnostic, UserError

PROTOCOLS = ("tcp", "udp", "icmp")


@dataclass(frozen=True)
class Destination:
    ip: str
    port: int  # 0 for ICMP
    protocol: str  # tcp | udp | icmp
    what: str  # in words: "Service default/web (port http)", "pod default/web-0", "10.1.2.3"
    service: str = ""  # ns/name when DEST is (or its address belongs to) a Service
    pod: str = ""  # ns/name when DEST is a pod's address


@dataclass(frozen=True)
class Source:
    """Where the probe leaves from."""

    kind: str  # pod | node | external
    name: str  # ns/name for a pod, the node's name, or "external"
    netns: str
    ip: str
    node: str = ""  # the pod's node, or the node itself


def resolve_source(state: ClusterState, name: str, namespace: str = "default") -> Source:
    """SOURCE: `external`, a node's name, or a pod (NAME or NS/NAME)."""
    if name == "external":
        return Source("external", "external", state.external_netns, state.external_ip)
    node = next((n for n in state.nodes if n.name == name), None)
    if node is not None:
        return Source("node", node.name, node.netns, node.ip, node.name)
    pod = _find_pod(state, name, namespace)
    if pod is None or pod.terminating:
        nodes = ", ".join(n.name for n in state.nodes)
        raise user_error("SOURCE", f"no pod, node or client named {name!r}"
                         + (f" in namespace {namespace}" if "/" not in name else ""),
                         f"the probe leaves from a pod (see `labctl get pods`), a node "
                         f"({nodes}) or `external`")
    return Source("pod", pod.key, pod.netns, pod.ip, pod.node)


def user_error(field: str, message: str, hint: str) -> UserError:
    return UserError(Diagnostic("error", None, field, message, hint))


def split_port(dest: str) -> tuple[str, str]:
    """`web:http` → (web, http); `10.96.0.10:53` → (10.96.0.10, 53); `web` → (web, "")."""
    host, sep, port = dest.rpartition(":")
    if not sep:
        return dest, ""
    if not host or not port:
        raise user_error("DEST", f"{dest!r} is not DEST[:PORT]",
                         "e.g. web, default/web:80, web:http, 10.96.0.10:53")
    return host, port


def _is_ip(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv4Address)
    except ValueError:
        return False


def _find_service(state: ClusterState, name: str, namespace: str) -> ServiceState | None:
    ns, _, short = name.rpartition("/")
    ns = ns or namespace
    return next((s for s in state.services if (s.namespace, s.name) == (ns, short)), None)


def _find_pod(state: ClusterState, name: str, namespace: str) -> PodState | None:
    ns, _, short = name.rpartition("/")
    ns = ns or namespace
    return next((p for p in state.pods if (p.namespace, p.name) == (ns, short)), None)


def _service_port(svc: ServiceState, port: str, proto: str | None) -> tuple[int, str, str]:
    """(port number, protocol, port name) of a Service port named by `port`."""
    ports = svc.ports
    if not ports:
        raise user_error("DEST", f"Service {svc.key} has no ports", "give one: DEST:PORT")
    if port == "":
        chosen = next((p for p in ports if proto in (None, p.protocol.lower())), ports[0])
        return chosen.port, chosen.protocol.lower(), chosen.name
    if port.isdigit():
        match = [p for p in ports if p.port == int(port)]
        chosen = next((p for p in match if proto in (None, p.protocol.lower())), None)
        if chosen is None and match:
            chosen = match[0]
        if chosen is None:  # a port the Service does not expose: still a fair probe
            return int(port), proto or "tcp", ""
        return chosen.port, chosen.protocol.lower(), chosen.name
    chosen = next((p for p in ports if p.name == port), None)
    if chosen is None:
        names = ", ".join(f"{p.name or '(unnamed)'} ({p.port}/{p.protocol})" for p in ports)
        raise user_error("DEST", f"Service {svc.key} has no port named {port!r}",
                         f"its ports: {names}")
    return chosen.port, chosen.protocol.lower(), chosen.name


def _pod_port(pod: PodState, port: str) -> tuple[int, str]:
    declared = [cp for c in pod.spec.containers for cp in c.ports]
    if port.isdigit():
        match = next((cp for cp in declared if cp.container_port == int(port)), None)
        return int(port), (match.protocol.lower() if match else "tcp")
    if port:
        match = next((cp for cp in declared if cp.name == port), None)
        if match is None:
            names = ", ".join(f"{cp.name or '(unnamed)'} ({cp.container_port})"
                              for cp in declared) or "none declared"
            raise user_error("DEST", f"pod {pod.key} has no port named {port!r}",
                             f"its containerPorts: {names}")
        return match.container_port, match.protocol.lower()
    if not declared:
        raise user_error("DEST", f"pod {pod.key} declares no containerPort",
                         f"give one: {pod.name}:PORT")
    return declared[0].container_port, declared[0].protocol.lower()


def _by_address(state: ClusterState, ip: str) -> tuple[ServiceState | None, PodState | None]:
    svc = next((s for s in state.services if ip in (s.cluster_ip, s.load_balancer_ip)
                or ip in s.service.external_ips), None)
    pod = next((p for p in state.pods if p.ip == ip), None)
    return svc, pod


def _check_protocol(protocol: str, dest: str) -> str:
    if protocol not in PROTOCOLS:
        raise user_error("DEST", f"{dest}: protocol {protocol.upper()} cannot be traced",
                         "trace tcp, udp or icmp (--proto)")
    return protocol


def resolve(state: ClusterState, dest: str, proto: str | None,
            namespace: str = "default", outside: bool = False) -> Destination:
    """Resolve DEST[:PORT] (and --proto, None: the port's own protocol). `outside`: the
    probe comes from the external client, which has no route to ClusterIPs."""
    host, port = split_port(dest)
    node = next((n for n in state.nodes if n.name == host), None)
    if node is not None:
        host = node.ip
    elif outside and not _is_ip(host):
        svc = _find_service(state, host, namespace)
        if svc is not None:
            return _from_outside(state, svc, dest, port, proto)
    if proto == "icmp":
        if port:
            raise user_error("DEST", f"{dest!r}: ICMP has no ports",
                             f"trace {host} with --proto icmp")
        return _resolve_icmp(state, host, namespace)
    if _is_ip(host):
        svc, pod = _by_address(state, host)
        if svc is not None and svc.cluster_ip not in ("", "None"):
            number, protocol, name = _service_port(svc, port, proto)
            return Destination(host, number, _check_protocol(proto or protocol, dest),
                               f"Service {svc.key}" + (f" (port {name})" if name else ""),
                               service=svc.key)
        if pod is not None:
            number, protocol = _pod_port(pod, port)
            return Destination(host, number, _check_protocol(proto or protocol, dest),
                               f"pod {pod.key}", pod=pod.key)
        if not port.isdigit():
            raise user_error("DEST", f"{host} is no Service's or pod's address, so it needs a "
                             "port number", f"e.g. {host}:80 (or --proto icmp)")
        node = next((n for n in state.nodes if n.ip == host), None)
        for svc in state.services if node else ():
            for p in svc.ports:
                if p.node_port == int(port) and proto in (None, p.protocol.lower()):
                    return Destination(host, p.node_port, p.protocol.lower(),
                                       f"NodePort {p.node_port} of Service {svc.key} "
                                       f"on {node.name}", service=svc.key)
        return Destination(host, int(port), proto or "tcp", host)
    svc = _find_service(state, host, namespace)
    if svc is not None:
        if svc.cluster_ip in ("", "None"):
            kind = "headless" if svc.cluster_ip == "None" else "an ExternalName Service"
            raise user_error("DEST", f"Service {svc.key} is {kind}: it has no ClusterIP and no "
                             "rules to trace", "trace one of its pods instead (DNS names them)")
        number, protocol, name = _service_port(svc, port, proto)
        return Destination(svc.cluster_ip, number, _check_protocol(proto or protocol, dest),
                           f"Service {svc.key}" + (f" (port {name})" if name else ""),
                           service=svc.key)
    pod = _find_pod(state, host, namespace)
    if pod is not None:
        number, protocol = _pod_port(pod, port)
        return Destination(pod.ip, number, _check_protocol(proto or protocol, dest),
                           f"pod {pod.key}", pod=pod.key)
    raise _unknown(state, host, namespace)


def _from_outside(state: ClusterState, svc: ServiceState, dest: str, port: str,
                  proto: str | None) -> Destination:
    """A Service as the external client reaches it: its LoadBalancer IP, else an
    externalIP, else a NodePort on the first node."""
    if proto == "icmp":
        raise user_error("DEST", f"{dest!r}: a Service is not pinged from outside",
                         "trace a TCP or UDP port (the default)")
    number, protocol, name = _service_port(svc, port, proto)
    protocol = _check_protocol(proto or protocol, dest)
    named = f" (port {name})" if name else ""
    address = svc.load_balancer_ip or next(iter(svc.service.external_ips), "")
    if address:
        kind = "LoadBalancer IP" if address == svc.load_balancer_ip else "externalIP"
        return Destination(address, number, protocol, f"Service {svc.key}{named}, {kind}",
                           service=svc.key)
    chosen = next((p for p in svc.ports if p.port == number and p.node_port), None)
    if chosen is None:
        raise user_error("DEST", f"Service {svc.key} is not reachable from outside the "
                         f"cluster (type {svc.service.type}: no NodePort, LoadBalancer IP "
                         "or externalIP)",
                         "trace it from a pod or a node, or make it a NodePort or "
                         "LoadBalancer Service")
    node = state.nodes[0]
    return Destination(node.ip, chosen.node_port, protocol,
                       f"NodePort {chosen.node_port} of Service {svc.key} on {node.name}",
                       service=svc.key)


def _resolve_icmp(state: ClusterState, host: str, namespace: str) -> Destination:
    if _is_ip(host):
        svc, pod = _by_address(state, host)
        what = f"Service {svc.key}" if svc else f"pod {pod.key}" if pod else host
        return Destination(host, 0, "icmp", what, service=svc.key if svc else "",
                           pod=pod.key if pod else "")
    svc = _find_service(state, host, namespace)
    if svc is not None and svc.cluster_ip not in ("", "None"):
        return Destination(svc.cluster_ip, 0, "icmp", f"Service {svc.key}", service=svc.key)
    pod = _find_pod(state, host, namespace)
    if pod is not None:
        return Destination(pod.ip, 0, "icmp", f"pod {pod.key}", pod=pod.key)
    raise _unknown(state, host, namespace)


def _unknown(state: ClusterState, host: str, namespace: str) -> UserError:
    ns, _, short = host.rpartition("/")
    ns = ns or namespace
    names = [s.name for s in state.services if s.namespace == ns] + \
        [p.name for p in state.pods if p.namespace == ns]
    close = difflib.get_close_matches(short, names, n=3)
    hint = (f"did you mean {', '.join(close)}? " if close else "") + \
        "DEST is an IP address, a Service (NAME or NS/NAME) or a pod; see `labctl get svc` " \
        "and `labctl get pods`"
    return user_error("DEST", f"no Service or pod named {short!r} in namespace {ns}", hint)
