"""kube-proxy's service health checks (pure): for a LoadBalancer Service with
externalTrafficPolicy Local, every node answers HTTP on the Service's
healthCheckNodePort whether it has a ready endpoint of the Service — 200 when it has,
503 when not — so that a cloud load balancer sends traffic only to nodes that will
not drop it (pkg/proxy/healthcheck/service_health.go).

The answer, as upstream writes it: `Content-Type: application/json`,
`X-Content-Type-Options: nosniff`, `X-Load-Balancing-Endpoint-Weight: <local endpoints>`
and the JSON body below, whatever the path. The kernel side (listening in the node's
namespace) is labctl/agent/health_servers.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from labctl.cluster.state import ClusterState
from labctl.proxy import base


@dataclass(frozen=True)
class HealthCheck:
    namespace: str
    name: str
    port: int  # the healthCheckNodePort
    local_endpoints: int  # ready endpoints on this node (distinct addresses)


def node_health_checks(state: ClusterState, node: str,
                       inp: base.ProxyInput | None = None) -> dict[int, HealthCheck]:
    """healthCheckNodePort → the health check this node serves there. None in userspace
    mode: its proxy never implemented externalTrafficPolicy. `inp`: the node's proxy
    input when the caller has it already (the rules were just rendered from it)."""
    if state.lab.proxy_mode == "userspace":
        return {}
    local: dict[tuple[str, str], set[str]] = {}
    ports: dict[tuple[str, str], int] = {}
    for spe in (inp or base.input_for_node(state, node)).ports:
        info = spe.info
        if not info.health_check_node_port:
            continue
        key = (info.namespace, info.name)
        ports[key] = info.health_check_node_port
        local.setdefault(key, set()).update(
            e.ip for e in spe.endpoints if e.is_local and e.ready)
    return {port: HealthCheck(ns, name, port, len(local[(ns, name)]))
            for (ns, name), port in ports.items()}


def response(check: HealthCheck, proxy_healthy: bool = True) -> bytes:
    """The whole HTTP/1.1 response kube-proxy gives a health check request."""
    ok = check.local_endpoints > 0 and proxy_healthy
    body = (
        "{\n"
        '\t"service": {\n'
        f'\t\t"namespace": "{check.namespace}",\n'
        f'\t\t"name": "{check.name}"\n'
        "\t},\n"
        f'\t"localEndpoints": {check.local_endpoints},\n'
        f'\t"serviceProxyHealthy": {"true" if proxy_healthy else "false"}\n'
        "}")
    status = "200 OK" if ok else "503 Service Unavailable"
    head = (f"HTTP/1.1 {status}\r\n"
            "Content-Type: application/json\r\n"
            "X-Content-Type-Options: nosniff\r\n"
            f"X-Load-Balancing-Endpoint-Weight: {check.local_endpoints}\r\n"
            f"Content-Length: {len(body.encode())}\r\n"
            "Connection: close\r\n\r\n")
    return (head + body).encode()
