"""ClusterState: the one immutable snapshot every other part is a pure function of.

Produced by `cluster.compile.compile_state(topology, previous, runtime)`: pods expanded
from workloads, placed on nodes, given IPs; Services given clusterIPs, NodePorts and
LoadBalancer IPs; EndpointSlices derived from selectors (or taken as written).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from labctl.model.objects import (
    EndpointSlice,
    Lab,
    Owner,
    PodSpec,
    Service,
    Source,
)


@dataclass(frozen=True)
class NodeState:
    name: str
    index: int  # 0-based position in the Lab's node list
    ip: str  # on the node network (eth0 of the node namespace)
    pod_cidr: str  # this node's pod /24
    pod_gateway: str  # .1 of pod_cidr, on the node's cni0 bridge
    labels: Mapping[str, str] = field(default_factory=dict)
    netns: str = ""


@dataclass(frozen=True)
class PodState:
    namespace: str
    name: str
    node: str
    ip: str
    labels: Mapping[str, str]
    spec: PodSpec
    netns: str  # name under /run/netns
    host_veth: str  # the pod's veth end in its node namespace (≤ 15 characters)
    owner: Owner | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    source: Source = field(default=Source(), compare=False)
    # The replica slot of a workload's pod (a StatefulSet pod's ordinal); -1: a bare Pod.
    slot: int = -1
    # Being deleted gracefully: still running with its node, IP and namespace, still in
    # its Services' EndpointSlices (conditions.terminating), its IP not handed out.
    terminating: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PortAllocation:
    """What was allocated for one Service port (port name, protocol, port → nodePort)."""

    name: str
    protocol: str
    port: int
    node_port: int = 0


@dataclass(frozen=True)
class ServiceState:
    service: Service  # as written
    cluster_ip: str  # allocated or as written; "None" for headless; "" for ExternalName
    ports: tuple[PortAllocation, ...] = ()
    load_balancer_ip: str = ""  # allocated from the lab's pool (type LoadBalancer)
    # type LoadBalancer with externalTrafficPolicy Local: kube-proxy's health check port
    # (as written or allocated from the NodePort range); 0 for every other Service
    health_check_node_port: int = 0

    @property
    def namespace(self) -> str:
        return self.service.meta.namespace

    @property
    def name(self) -> str:
        return self.service.meta.name

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ClusterState:
    lab: Lab
    nodes: tuple[NodeState, ...]
    pods: tuple[PodState, ...]
    services: tuple[ServiceState, ...]
    endpoint_slices: tuple[EndpointSlice, ...]
    namespaces: tuple[str, ...]
    fabric_netns: str
    external_netns: str
    external_ip: str
    warnings: tuple[str, ...] = ()

    def node(self, name: str) -> NodeState:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def pods_on(self, node: str) -> tuple[PodState, ...]:
        return tuple(p for p in self.pods if p.node == node)

    def pods_of(self, kind: str, namespace: str, name: str) -> tuple[PodState, ...]:
        """The pods of the Deployment or StatefulSet `namespace/name` (terminating too)."""
        return tuple(p for p in self.pods if p.owner is not None and p.owner.kind == kind
                     and p.owner.name == name and p.namespace == namespace)

    def pod(self, namespace: str, name: str) -> PodState:
        for pod in self.pods:
            if pod.namespace == namespace and pod.name == name:
                return pod
        raise KeyError(f"{namespace}/{name}")
