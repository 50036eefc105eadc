"""The typed subset of the Kubernetes API that labctl understands, plus `kind: Lab`.

Objects are immutable. Each keeps where it came from: `pos` is the start of its
document and `where` maps a field path ("spec.ports[0].targetPort") to its position,
so any later stage (scheduling, IPAM, kube-proxy) can point an error at the user's text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from labctl.errors import Pos

EMPTY: Mapping[str, str] = MappingProxyType({})
NO_POS: Mapping[str, Pos] = MappingProxyType({})


def _empty() -> Mapping[str, str]:
    return EMPTY


def _no_pos() -> Mapping[str, Pos]:
    return NO_POS

PROXY_MODES = ("iptables", "nftables", "ipvs", "userspace")
# ipvsadm's schedulers (kernel modules ip_vs_<name>), kube-proxy's --ipvs-scheduler.
IPVS_SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo",
                   "ovf", "mh", "twos")


@dataclass(frozen=True)
class Source:
    """Where an object was written: its document's position and its fields' positions."""

    pos: Pos | None = None
    where: Mapping[str, Pos] = field(default_factory=_no_pos)

    def at(self, path: str) -> Pos | None:
        """Position of `path`, or of its nearest written parent, or of the document."""
        while path:
            if path in self.where:
                return self.where[path]
            cut = max(path.rfind("."), path.rfind("["))
            if cut <= 0:
                break
            path = path[:cut]
        return self.where.get(path, self.pos) if path else self.pos


@dataclass(frozen=True)
class ObjectMeta:
    name: str
    namespace: str = "default"
    labels: Mapping[str, str] = field(default_factory=_empty)
    annotations: Mapping[str, str] = field(default_factory=_empty)


# ---------------------------------------------------------------- Lab


@dataclass(frozen=True)
class NodeSpec:
    name: str
    labels: Mapping[str, str] = field(default_factory=_empty)


@dataclass(frozen=True)
class Lab:
    name: str
    nodes: tuple[NodeSpec, ...] = (NodeSpec("node1"), NodeSpec("node2"))
    pod_cidr: str = "10.244.0.0/16"
    # Prefix length of each node's share of pod_cidr (kube-controller-manager's
    # --node-cidr-mask-size): /24 holds 253 pods per node, /22 holds 1021.
    pod_cidr_per_node: int = 24
    service_cidr: str = "10.96.0.0/12"
    node_cidr: str = "172.18.0.0/24"
    load_balancer_cidr: str = "192.168.200.0/24"
    proxy_mode: str = "iptables"
    iptables_backend: str = ""  # nft | legacy; "" = what `iptables` is on this system
    ipvs_scheduler: str = "rr"  # IPVS mode: every virtual server's scheduler
    cluster_domain: str = "cluster.local"
    source: Source = field(default=Source(), compare=False)


# ---------------------------------------------------------------- Pods


@dataclass(frozen=True)
class ContainerPort:
    container_port: int
    name: str = ""
    protocol: str = "TCP"  # TCP | UDP | SCTP


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str | None = None
    value_from: Mapping[str, object] | None = None  # kept as written (fieldRef etc.)


@dataclass(frozen=True)
class Probe:
    """A probe as written, with the API's defaults; the agent runs it (kubelet/probes).

    `port` is a number or a container port name (httpGet, tcpSocket, grpc); `command`
    is exec's argv; `host` (httpGet, tcpSocket) defaults to the pod IP; `scheme` is HTTP
    or HTTPS (TLS, certificate not verified, as the kubelet does).
    """

    kind: str  # httpGet | tcpSocket | exec | grpc
    port: int | str | None = None
    path: str = "/"
    command: tuple[str, ...] = ()
    initial_delay_seconds: int = 0
    period_seconds: int = 10
    timeout_seconds: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3
    # Left out of repr: cluster.workloads.template_hash hashes the template's repr, and
    # new fields there would rename every existing Deployment pod.
    host: str = field(default="", repr=False)  # "": the pod IP
    scheme: str = field(default="HTTP", repr=False)  # HTTP | HTTPS
    http_headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class Container:
    name: str
    image: str = ""
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    ports: tuple[ContainerPort, ...] = ()
    env: tuple[EnvVar, ...] = ()
    readiness_probe: Probe | None = None
    liveness_probe: Probe | None = None
    startup_probe: Probe | None = None


@dataclass(frozen=True)
class PodDNSConfigOption:
    name: str
    value: str | None = None  # None: a bare option such as "rotate"


@dataclass(frozen=True)
class PodDNSConfig:
    """spec.dnsConfig: merged by the kubelet on top of what dnsPolicy gives."""

    nameservers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[PodDNSConfigOption, ...] = ()


@dataclass(frozen=True)
class HostAlias:
    """One spec.hostAliases entry: extra lines of the kubelet-managed /etc/hosts."""

    ip: str
    hostnames: tuple[str, ...] = ()


@dataclass(frozen=True)
class PodSpec:
    containers: tuple[Container, ...]
    node_name: str = ""
    node_selector: Mapping[str, str] = field(default_factory=_empty)
    hostname: str = ""
    subdomain: str = ""
    enable_service_links: bool = True
    restart_policy: str = "Always"
    termination_grace_period_seconds: int = 30
    dns_policy: str = "ClusterFirst"
    # Left out of repr: cluster.workloads.template_hash hashes the template's repr, and
    # new fields there would rename every existing Deployment pod.
    dns_config: PodDNSConfig | None = field(default=None, repr=False)  # None: not written
    host_aliases: tuple[HostAlias, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class PodTemplate:
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    spec: PodSpec


@dataclass(frozen=True)
class Owner:
    kind: str  # Deployment | StatefulSet
    name: str


@dataclass(frozen=True)
class Pod:
    meta: ObjectMeta
    spec: PodSpec
    owner: Owner | None = None
    pod_ip: str = ""  # status.podIP as written (used by `dns serve` snapshots)
    source: Source = field(default=Source(), compare=False)


@dataclass(frozen=True)
class LabelSelector:
    match_labels: Mapping[str, str] = field(default_factory=_empty)
    # matchExpressions: (key, operator, values)
    match_expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for key, op, values in self.match_expressions:
            if op == "In" and labels.get(key) not in values:
                return False
            if op == "NotIn" and key in labels and labels[key] in values:
                return False
            if op == "Exists" and key not in labels:
                return False
            if op == "DoesNotExist" and key in labels:
                return False
        return True


DEPLOYMENT_STRATEGIES = ("RollingUpdate", "Recreate")


@dataclass(frozen=True)
class DeploymentStrategy:
    """spec.strategy: how a template change replaces the pods (cluster/rollout.py).
    maxSurge and maxUnavailable are a pod count or a percent of replicas ("25%")."""

    type: str = "RollingUpdate"
    max_surge: int | str = "25%"
    max_unavailable: int | str = "25%"


@dataclass(frozen=True)
class Deployment:
    meta: ObjectMeta
    replicas: int
    selector: LabelSelector
    template: PodTemplate
    source: Source = field(default=Source(), compare=False)
    strategy: DeploymentStrategy = DeploymentStrategy()
    min_ready_seconds: int = 0  # a new pod counts as available once ready this long


STATEFULSET_STRATEGIES = ("RollingUpdate", "OnDelete")


@dataclass(frozen=True)
class StatefulSet:
    meta: ObjectMeta
    replicas: int
    selector: LabelSelector
    template: PodTemplate
    service_name: str = ""
    source: Source = field(default=Source(), compare=False)
    # spec.updateStrategy: RollingUpdate replaces the pods one at a time, highest
    # ordinal first, those at or above `partition`; OnDelete only when one is deleted
    update_strategy: str = "RollingUpdate"
    partition: int = 0


# ---------------------------------------------------------------- Services


@dataclass(frozen=True)
class ServicePort:
    port: int
    name: str = ""
    protocol: str = "TCP"
    target_port: int | str | None = None  # None: same as port
    node_port: int = 0  # 0: allocate when the type needs one
    app_protocol: str = ""


@dataclass(frozen=True)
class Service:
    meta: ObjectMeta
    type: str = "ClusterIP"  # ClusterIP | NodePort | LoadBalancer | ExternalName
    selector: Mapping[str, str] | None = None  # None: no selector (manual EndpointSlices)
    ports: tuple[ServicePort, ...] = ()
    cluster_ip: str = ""  # "" allocate, "None" headless, or a fixed IP
    external_ips: tuple[str, ...] = ()
    external_name: str = ""
    session_affinity: str = "None"  # None | ClientIP
    session_affinity_timeout: int = 10800
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    load_balancer_ip: str = ""
    load_balancer_source_ranges: tuple[str, ...] = ()
    load_balancer_ingress: tuple[str, ...] = ()  # status.loadBalancer.ingress[].ip as written
    publish_not_ready_addresses: bool = False
    health_check_node_port: int = 0
    source: Source = field(default=Source(), compare=False)

    @property
    def headless(self) -> bool:
        return self.cluster_ip == "None"


@dataclass(frozen=True)
class EndpointConditions:
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None


@dataclass(frozen=True)
class TargetRef:
    kind: str
    name: str
    namespace: str = ""


@dataclass(frozen=True)
class Endpoint:
    addresses: tuple[str, ...]
    conditions: EndpointConditions = EndpointConditions()
    hostname: str = ""
    node_name: str = ""
    zone: str = ""
    target_ref: TargetRef | None = None


@dataclass(frozen=True)
class EndpointPort:
    port: int | None
    name: str | None = ""
    protocol: str = "TCP"
    app_protocol: str = ""


@dataclass(frozen=True)
class EndpointSlice:
    meta: ObjectMeta  # labels carry kubernetes.io/service-name
    address_type: str = "IPv4"
    endpoints: tuple[Endpoint, ...] = ()
    ports: tuple[EndpointPort, ...] = ()
    source: Source = field(default=Source(), compare=False)

    @property
    def service_name(self) -> str:
        return self.meta.labels.get("kubernetes.io/service-name", "")


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: Mapping[str, str] = field(default_factory=_empty)
    source: Source = field(default=Source(), compare=False)


# ---------------------------------------------------------------- the whole input


@dataclass(frozen=True)
class Topology:
    """Everything one `labctl` input file (or folder) says, validated and typed."""

    lab: Lab
    namespaces: tuple[Namespace, ...] = ()
    pods: tuple[Pod, ...] = ()
    deployments: tuple[Deployment, ...] = ()
    statefulsets: tuple[StatefulSet, ...] = ()
    services: tuple[Service, ...] = ()
    endpoint_slices: tuple[EndpointSlice, ...] = ()
    files: tuple[str, ...] = ()
