"""A running lab as a test sees it — what the pytest plugin's `lab` fixture yields.

Lookups come from the lab's state (`/run/labctl/<lab>/state.pickle`, read afresh on
each call, so they follow scale-ups and replaced pods); traffic and crafted packets go
out from inside the lab's namespaces; rules and conntrack are read back from the
kernel. `running(files, name)` brings a lab up with `labctl up --name` and always takes
it down again, also when the body fails, the bring-up fails half-way, or on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from labctl.cluster.state import ClusterState, NodeState, PodState, ServiceState
from labctl.lab import store
from labctl.testing import conntrack, packets, traffic
from labctl.testing.runner import labctl


class LabSetupError(Exception):
    """The lab could not be brought up (its message is what labctl said)."""


@dataclass(frozen=True)
class Endpoint:
    """One address of a Service's EndpointSlices, with its conditions."""

    ip: str
    pod: str  # the targetRef's name ("" for a hand-written endpoint)
    node: str
    ready: bool
    serving: bool
    terminating: bool
    ports: Mapping[str, int] = field(default_factory=dict)  # port name → number


class Lab:
    """A running lab: pods, nodes and Services by name; traffic, packets, rules and
    conntrack from inside it. Targets are a pod (`NAME` in namespace default, or
    `NAMESPACE/NAME`), a node name, or `external` (the client outside the cluster)."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"Lab({self.name!r})"

    # ------------------------------------------------------------ lookups

    @property
    def state(self) -> ClusterState:
        """The ClusterState the lab runs now (as its agent last saved it)."""
        return store.state_of(self.name)

    def pod(self, name: str, namespace: str = "default") -> PodState:
        """A pod (`.ip`, `.node`, `.netns`, `.labels`); `name` may be NAMESPACE/NAME."""
        from labctl.cli.targets import find_pod

        return find_pod(self.state, name, namespace)

    def pods(self, selector: Mapping[str, str] | None = None,
             namespace: str | None = "default") -> list[PodState]:
        """Pods whose labels include `selector` (namespace None: every namespace)."""
        return [p for p in self.state.pods
                if (namespace is None or p.namespace == namespace)
                and all(p.labels.get(k) == v for k, v in (selector or {}).items())]

    def node(self, name: str) -> NodeState:
        """A node (`.ip` on the node network, `.netns`, `.pod_cidr`, `.pod_gateway`)."""
        state = self.state
        try:
            return state.node(name)
        except KeyError:
            raise KeyError(f"no node {name!r} in lab {self.name}; nodes: "
                           f"{', '.join(n.name for n in state.nodes)}") from None

    @property
    def nodes(self) -> list[NodeState]:
        return list(self.state.nodes)

    def service(self, name: str, namespace: str = "default") -> ServiceState:
        """A Service (`.cluster_ip`, `.ports` with `.node_port`, `.load_balancer_ip`,
        `.service` as written); `name` may be NAMESPACE/NAME."""
        if "/" in name:
            namespace, name = name.split("/", 1)
        state = self.state
        for svc in state.services:
            if (svc.namespace, svc.name) == (namespace, name):
                return svc
        raise KeyError(f"no Service {namespace}/{name} in lab {self.name}; Services: "
                       f"{', '.join(s.key for s in state.services)}")

    def endpoints(self, service: str, namespace: str = "default") -> list[Endpoint]:
        """The addresses the Service's EndpointSlices hold, ready or not."""
        svc = self.service(service, namespace)
        out = []
        for es in self.state.endpoint_slices:
            if (es.meta.namespace, es.service_name) != (svc.namespace, svc.name):
                continue
            ports = {p.name or "": p.port for p in es.ports if p.port is not None}
            for ep in es.endpoints:
                c = ep.conditions
                out += [Endpoint(ip, ep.target_ref.name if ep.target_ref else "",
                                 ep.node_name, c.ready is not False, c.serving is not False,
                                 bool(c.terminating), ports) for ip in ep.addresses]
        return out

    @property
    def external_ip(self) -> str:
        return self.state.external_ip

    def netns(self, target: str) -> str:
        """The network namespace of a pod, a node or `external`."""
        from labctl.cli.targets import resolve

        return resolve(self.state, target, "default", None)[0]

    def address(self, target: str) -> str:
        """The IP of a pod, a node (its node-network address) or `external`."""
        state = self.state
        if target == "external":
            return state.external_ip
        if "/" not in target and target in {n.name for n in state.nodes}:
            return state.node(target).ip
        return self.pod(target).ip

    def _ip(self, target: str) -> str:
        """An IP as given, or a Service's ClusterIP (`NAME` or `NAMESPACE/NAME`)."""
        try:
            return str(ipaddress.ip_address(target))
        except ValueError:
            return self.service(target).cluster_ip

    # ------------------------------------------------------------ commands and traffic

    def exec(self, target: str, argv: Sequence[str], container: str | None = None,
             timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the target's namespace, as `labctl exec` does (a pod's
        /etc/netns files and its container's environment)."""
        from labctl.cli.targets import resolve

        ns, env = resolve(self.state, target, "default", container, store.state_dir(self.name))
        return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True,
                              text=True, timeout=timeout, env=env, check=False)

    def http_get(self, client: str, target: str, port: int = 80, path: str = "/",
                 timeout: float = 3.0) -> traffic.Reply:
        """One HTTP request from `client` to `target` (an IP or a Service name) on a new
        connection; the reply names the pod that answered and the client it saw."""
        return traffic.http_get(self.netns(client), self._ip(target), port, path, timeout)

    def udp(self, client: str, target: str, port: int, payload: str = "ping",
            timeout: float = 3.0) -> traffic.Reply:
        """One datagram to the echo server behind `target` (an IP or a Service name)."""
        return traffic.udp_echo(self.netns(client), self._ip(target), port, payload, timeout)

    def dns(self, client: str, name: str, rtype: str = "A",
            timeout: float = 3.0) -> traffic.DnsReply:
        """Ask the nameserver of the client's resolv.conf for `name` as written (a
        fully qualified name; no search path)."""
        ns = self.netns(client)
        server = ""
        with contextlib.suppress(OSError), open(f"/etc/netns/{ns}/resolv.conf") as f:
            server = next((ln.split()[1] for ln in f if ln.startswith("nameserver ")), "")
        if not server:
            raise LookupError(f"{client} has no nameserver in /etc/netns/{ns}/resolv.conf")
        return traffic.dns_query(ns, server, name, rtype, timeout)

    def rules(self, node: str, service: str | None = None) -> str:
        """What `labctl rules NODE [--service NS/NAME]` prints: kube-proxy's rules
        read back from the node's kernel."""
        from labctl.cli.rules_view import node_rules

        return node_rules(self.state, self.node(node).name, service)

    def conntrack(self, node: str, proto: str | None = None, src: str | None = None,
                  dst: str | None = None, sport: int | None = None,
                  dport: int | None = None) -> list[conntrack.Entry]:
        """The node's conntrack entries whose original direction matches the fields
        given; each has `.orig` and `.reply` tuples and `.dnat` / `.snat`."""
        return conntrack.matching(conntrack.read(self.node(node).netns), proto, src, dst,
                                  sport, dport)

    # ------------------------------------------------------------ packets (scapy)

    def capture(self, target: str, iface: str = "eth0",
                match: Callable[[Any], bool] | None = None, count: int = 200,
                timeout: float = 10.0) -> contextlib.AbstractContextManager[packets.Capture]:
        """Sniff `iface` of a pod, node (e.g. `cni0`) or `external` during a with-block;
        stops by itself after `count` packets or `timeout` seconds."""
        return packets.capture(self.netns(target), iface, match, count, timeout)

    def send(self, client: str, packet: Any) -> Any:
        """Send a crafted scapy IP packet from the client's namespace (source: the
        client's address unless the packet sets one). Returns it as sent."""
        return packets.send_from(self.netns(client), packet, self.address(client))

    def sr1(self, client: str, packet: Any, timeout: float = 2.0) -> Any | None:
        """Send a crafted packet from the client and return the first answer seen on
        its eth0, or None."""
        return packets.sr1_from(self.netns(client), packet, self.address(client),
                                timeout=timeout)


@contextlib.contextmanager
def running(files: Sequence[str | os.PathLike[str]], name: str, keep: bool = False,
            proxy_mode: str | None = None) -> Iterator[Lab]:
    """Bring the lab `files` describe up as `name` (switched to `proxy_mode` if given,
    as `labctl proxy-mode` does), yield it, take it down — whatever happens in the
    body (unless `keep`). A failed bring-up leaves nothing behind and raises
    LabSetupError with labctl's message. A lab of that name that exists already is
    refused and left alone: it is not ours."""
    if store.load(name) is not None or os.path.exists(store.state_dir(name)):
        raise LabSetupError(f"a lab named {name!r} is already up (not brought up by this "
                            f"test run); take it down with `labctl down {name}` or give "
                            "the test's lab another name")
    paths = [os.fspath(f) for f in files]
    up_ok = False
    try:
        steps = [["up", *paths, "--name", name, "-q"]]
        if proxy_mode:
            steps.append(["proxy-mode", proxy_mode, "--lab", name])
        for argv in steps:
            proc = labctl(*argv, check=False)
            if proc.returncode != 0:
                raise LabSetupError(f"`labctl {' '.join(argv)}` failed (exit "
                                    f"{proc.returncode}):\n"
                                    f"{(proc.stderr or proc.stdout).rstrip()}")
        up_ok = True
        yield Lab(name)
    finally:
        if not (keep and up_ok):
            labctl("down", name, "-q", check=False)
