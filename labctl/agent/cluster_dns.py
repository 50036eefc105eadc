"""The lab's cluster DNS, served by the pod host in the coredns pods' network namespaces.

One responder (labctl.dns) answers for every replica: each replica's UDP and TCP
sockets on port 53 are opened inside that pod's namespace and handed to it, so queries
reach them only through the kube-dns Service and the nodes' kube-proxy rules, as in a
cluster. Names outside the cluster are forwarded to the host's own resolvers (the agent
runs in the host's namespace, as CoreDNS forwards to its node's resolv.conf).
"""

from __future__ import annotations

import logging
import socket
import time

from labctl.agent.workloads import Container, Pod
from labctl.dns.server import DnsServer
from labctl.dns.zone import Zone
from labctl.net import netns

log = logging.getLogger("labctl.agent")

DNS_PORT = 53


def host_upstreams(path: str = "/etc/resolv.conf") -> list[str]:
    from labctl.kubelet.podfiles import parse_resolv_conf

    try:
        with open(path) as f:
            nameservers, _search, _options = parse_resolv_conf(f.read())
    except OSError:
        return []
    return [f"{ns}:53" for ns in nameservers if ":" not in ns]


def open_dns_sockets(pod: Pod, container: Container) -> list[socket.socket]:
    """The container's port-53 sockets, opened inside its pod and bound (TCP listening),
    so queries queue in the kernel even before the responder reads them."""
    out = []
    for port in container.ports:
        if port.port != DNS_PORT or port.protocol not in ("UDP", "TCP"):
            continue
        kind = socket.SOCK_DGRAM if port.protocol == "UDP" else socket.SOCK_STREAM
        with netns.entered(pod.netns):
            sock = socket.socket(socket.AF_INET, kind)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", DNS_PORT))
            if kind == socket.SOCK_STREAM:
                sock.listen(128)
        except OSError:
            sock.close()
            for other in out:
                other.close()
            raise
        out.append(sock)
        log.info("cluster DNS socket %s:%d/%s (pod %s)", pod.ip, DNS_PORT, port.protocol,
                 pod.key)
    return out


class ClusterDns:
    """One responder for every replica; built after the pod host reported ready (the
    replicas' sockets are already open, so no query is lost meanwhile). Its data is the
    lab's current ClusterState, which the agent saves whenever it changes."""

    def __init__(self, state_dir: str, sockets: list[socket.socket]) -> None:
        self.state_dir = state_dir
        self.server = DnsServer(self._zone(), upstreams=host_upstreams())
        self.serve(sockets)

    def _zone(self) -> Zone:
        from labctl.lab.store import current_state

        return Zone.from_state(current_state(self.state_dir), serial=int(time.time()))

    def serve(self, sockets: list[socket.socket]) -> None:
        for sock in sockets:
            if sock.type == socket.SOCK_DGRAM:
                self.server.serve_udp(sock)
            else:
                self.server.serve_tcp(sock)

    def reload(self) -> None:
        """Answer from the cluster as it is now (visible to the next query)."""
        self.server.update(self._zone())

    def stop(self) -> None:
        self.server.stop()
