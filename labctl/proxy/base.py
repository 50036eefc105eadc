"""What every proxy mode shares, as kube-proxy's pkg/proxy does: the per-ServicePort view
of Services, the endpoints of each ServicePort and their categories, and chain names.

Pure: no I/O. Each mode's `render(ProxyInput) -> ruleset` builds on this.
See ../shared/reference/kube-proxy.md §1–2 for the upstream behaviour restated here.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from labctl.cluster.state import ClusterState, ServiceState
from labctl.model.objects import EndpointSlice

MASQUERADE_BIT = 14  # kube-proxy's --iptables-masquerade-bit default
DEFAULT_AFFINITY_TIMEOUT = 10800


@dataclass(frozen=True)
class ProxyConfig:
    """The kube-proxy flags that change what is programmed (names follow kube-proxy's)."""

    node_name: str
    node_ips: tuple[str, ...]  # the node's own addresses (for firewall / nodeport-addresses)
    cluster_cidr: str = ""  # --cluster-cidr: "" means no local-traffic detector
    service_cidr: str = ""  # the service range (nftables: drop unallocated ClusterIPs)
    nodeport_addresses: tuple[str, ...] = ()  # --nodeport-addresses; () = all local addresses
    masquerade_all: bool = False  # --masquerade-all
    localhost_nodeports: bool = True  # --iptables-localhost-nodeports
    masquerade_bit: int = MASQUERADE_BIT
    ipvs_scheduler: str = "rr"  # --ipvs-scheduler (IPVS mode only)

    @property
    def masquerade_mark(self) -> str:
        """The mark as kube-proxy writes it: fmt.Sprintf("%#08x", 1<<bit) → 0x00004000."""
        return f"{1 << self.masquerade_bit:#010x}"


@dataclass(frozen=True)
class ServicePortInfo:
    """One `spec.ports[]` entry of a programmed Service (kube-proxy's ServicePort)."""

    namespace: str
    name: str
    port_name: str
    protocol: str  # TCP | UDP | SCTP
    cluster_ip: str
    port: int
    node_port: int = 0
    external_ips: tuple[str, ...] = ()
    load_balancer_vips: tuple[str, ...] = ()
    load_balancer_source_ranges: tuple[str, ...] = ()
    session_affinity: bool = False  # ClientIP
    sticky_seconds: int = DEFAULT_AFFINITY_TIMEOUT
    external_policy_local: bool = False
    internal_policy_local: bool = False
    health_check_node_port: int = 0

    @property
    def spn(self) -> str:
        """ServicePortName.String(): "ns/name" plus ":portName" when the port is named."""
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{self.port_name}" if self.port_name else base

    @property
    def proto(self) -> str:
        return self.protocol.lower()

    @property
    def externally_accessible(self) -> bool:
        return bool(self.node_port or self.load_balancer_vips or self.external_ips)

    @property
    def uses_cluster_endpoints(self) -> bool:
        return not self.internal_policy_local or self.externally_accessible

    @property
    def uses_local_endpoints(self) -> bool:
        return self.internal_policy_local or (self.external_policy_local
                                              and self.externally_accessible)


@dataclass(frozen=True)
class EndpointInfo:
    ip: str
    port: int
    ready: bool
    serving: bool
    terminating: bool
    is_local: bool
    node_name: str = ""
    zone: str = ""

    @property
    def string(self) -> str:
        """The endpoint string kube-proxy sorts and hashes: "IP:port"."""
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class Categorized:
    """kube-proxy's CategorizeEndpoints result for one ServicePort on one node."""

    cluster: tuple[EndpointInfo, ...]
    local: tuple[EndpointInfo, ...]
    all_reachable: tuple[EndpointInfo, ...]
    has_any: bool


@dataclass(frozen=True)
class ServicePortEndpoints:
    info: ServicePortInfo
    endpoints: tuple[EndpointInfo, ...]  # sorted by endpoint string
    categorized: Categorized


ServiceKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class ServiceSource:
    """What one Service's ServicePorts were built from (build_input's memo: the ports are
    a pure function of the Service, its EndpointSlices and the node's name)."""

    node_name: str
    service: ServiceState
    slices: tuple[EndpointSlice, ...]
    ports: tuple[ServicePortEndpoints, ...]

    def reuse(self, node_name: str, service: ServiceState,
              slices: tuple[EndpointSlice, ...]) -> ServiceSource | None:
        """This memo (or one with the same ports for equal copies of its objects), if
        the ports of `service` with `slices` on `node_name` are known; else None."""
        if node_name != self.node_name:
            return None
        if service is self.service and len(slices) == len(self.slices) and all(
                a is b for a, b in zip(slices, self.slices, strict=True)):
            return self  # the same objects as last time: O(1)
        if service == self.service and slices == self.slices:
            # Equal copies (a state compiled again from the files): remember the new
            # objects, so that the next sync finds them identical.
            return ServiceSource(node_name, service, slices, self.ports)
        return None


@dataclass(frozen=True)
class ProxyInput:
    """Everything a mode renders from: the node's flags and each ServicePort's endpoints.

    `services` groups the ports per Service; `sources` (from build_input) lets the next
    build_input reuse the ports of Services whose objects did not change. Neither takes
    part in equality."""

    config: ProxyConfig
    ports: tuple[ServicePortEndpoints, ...] = field(default=())
    sources: Mapping[ServiceKey, ServiceSource] = field(
        default_factory=dict, compare=False, repr=False)

    @functools.cached_property
    def services(self) -> dict[ServiceKey, tuple[ServicePortEndpoints, ...]]:
        """ServiceKey → its ServicePorts, in `ports` order (a Service's ports adjacent, as
        build_input emits them; otherwise grouped at the Service's first port)."""
        grouped: dict[ServiceKey, list[ServicePortEndpoints]] = {}
        for pe in self.ports:
            grouped.setdefault((pe.info.namespace, pe.info.name), []).append(pe)
        return {k: tuple(v) for k, v in grouped.items()}

    @functools.cached_property
    def total_endpoints(self) -> int:
        return sum(len(p.endpoints) for p in self.ports)


# ----------------------------------------------------------------- Services → ServicePorts


def _is_externally_accessible_type(svc: ServiceState) -> bool:
    spec = svc.service
    return spec.type in ("LoadBalancer", "NodePort") or (
        spec.type == "ClusterIP" and bool(spec.external_ips))


def service_ports(svc: ServiceState) -> list[ServicePortInfo]:
    """The ServicePorts kube-proxy programs for one Service (none: headless/ExternalName)."""
    spec = svc.service
    if spec.type == "ExternalName" or not svc.cluster_ip or svc.cluster_ip == "None":
        return []
    vips = (svc.load_balancer_ip,) if svc.load_balancer_ip else ()
    etp_local = spec.external_traffic_policy == "Local" and _is_externally_accessible_type(svc)
    out = []
    for port, alloc in zip(spec.ports, svc.ports, strict=True):
        out.append(ServicePortInfo(
            namespace=svc.namespace, name=svc.name, port_name=port.name,
            protocol=port.protocol, cluster_ip=svc.cluster_ip, port=port.port,
            node_port=alloc.node_port, external_ips=tuple(spec.external_ips),
            load_balancer_vips=vips if spec.type == "LoadBalancer" else (),
            load_balancer_source_ranges=tuple(r.strip()
                                              for r in spec.load_balancer_source_ranges),
            session_affinity=spec.session_affinity == "ClientIP",
            sticky_seconds=spec.session_affinity_timeout,
            external_policy_local=etp_local,
            internal_policy_local=spec.internal_traffic_policy == "Local",
            health_check_node_port=((svc.health_check_node_port or spec.health_check_node_port)
                                    if spec.type == "LoadBalancer" and etp_local else 0)))
    return out


# ----------------------------------------------------------------- endpoints


def endpoints_for(info: ServicePortInfo, slices: Iterable[EndpointSlice],
                  node_name: str) -> tuple[EndpointInfo, ...]:
    """Endpoints of one ServicePort from the Service's EndpointSlices, as kube-proxy reads
    them: port matched by name and protocol, first address only, duplicates merged (a
    non-terminating copy wins), sorted by the "IP:port" string."""
    found: dict[str, EndpointInfo] = {}
    for es in slices:
        if es.meta.namespace != info.namespace or es.service_name != info.name:
            continue
        if es.address_type != "IPv4":
            continue
        port = next((p.port for p in es.ports
                     if (p.name or "") == info.port_name and p.protocol == info.protocol
                     and p.port), None)
        if port is None:
            continue
        for ep in es.endpoints:
            if not ep.addresses:
                continue
            c = ep.conditions
            item = EndpointInfo(
                ip=ep.addresses[0], port=port,
                ready=c.ready is not False, serving=c.serving is not False,
                terminating=c.terminating is True,
                is_local=ep.node_name == node_name, node_name=ep.node_name, zone=ep.zone)
            old = found.get(item.string)
            if old is None or (old.terminating and not item.terminating):
                found[item.string] = item
    return tuple(found[k] for k in sorted(found))


def categorize(info: ServicePortInfo, endpoints: Sequence[EndpointInfo]) -> Categorized:
    cluster: tuple[EndpointInfo, ...] = ()
    local: tuple[EndpointInfo, ...] = ()
    if info.uses_cluster_endpoints:
        cluster = tuple(e for e in endpoints if e.ready) or tuple(
            e for e in endpoints if e.serving and e.terminating)
    if info.uses_local_endpoints:
        local = tuple(e for e in endpoints if e.is_local and e.ready) or tuple(
            e for e in endpoints if e.is_local and e.serving and e.terminating)
    has_any = any(e.ready or (e.serving and e.terminating) for e in endpoints)
    seen = {e.string for e in cluster}
    reachable = cluster + tuple(e for e in local if e.string not in seen)
    return Categorized(cluster, local, tuple(sorted(reachable, key=lambda e: e.string)), has_any)


def build_input(config: ProxyConfig, services: Iterable[ServiceState],
                slices: Sequence[EndpointSlice], previous: ProxyInput | None = None,
                ) -> ProxyInput:
    """The node's view of every Service. With `previous` (the last input of the same
    node), a Service whose ServiceState and EndpointSlices are the same objects as then
    (or equal ones) keeps its ServicePortEndpoints objects: nothing is rebuilt for it,
    and the renderers see at once (by identity) that it did not change."""
    by_service: dict[tuple[str, str], list[EndpointSlice]] = {}
    for es in slices:  # index once: looking through every slice per port is quadratic
        by_service.setdefault((es.meta.namespace, es.service_name), []).append(es)
    memo = previous.sources if previous is not None else {}
    node = config.node_name
    ports: list[ServicePortEndpoints] = []
    grouped: dict[ServiceKey, tuple[ServicePortEndpoints, ...]] = {}
    sources: dict[ServiceKey, ServiceSource] = {}
    twice: set[ServiceKey] = set()
    keyed = [((svc.namespace, svc.name), svc) for svc in services]
    keyed.sort(key=lambda pair: pair[0])
    for key, svc in keyed:
        own = tuple(by_service.get(key, ()))
        src = memo.get(key)
        if src is not None:
            src = src.reuse(node, svc, own)
        if src is None:
            built = []
            for info in service_ports(svc):
                eps = endpoints_for(info, own, node)
                built.append(ServicePortEndpoints(info, eps, categorize(info, eps)))
            src = ServiceSource(node, svc, own, tuple(built))
        ports += src.ports
        if key in sources:  # the same Service twice (invalid): keep both, memo neither
            twice.add(key)
            if src.ports:
                grouped[key] = grouped.get(key, ()) + src.ports
            continue
        sources[key] = src
        if src.ports:
            grouped[key] = src.ports
    for key in twice:
        del sources[key]
    inp = ProxyInput(config, tuple(ports), sources)
    inp.__dict__["services"] = grouped  # the cached_property's value, known already
    return inp


def config_for_node(state: ClusterState, node_name: str) -> ProxyConfig:
    """The flags a lab's kube-proxy on `node_name` runs with (kind/kubeadm-like). The
    node's addresses are its node-network IP (first: the node IP) and its cni0
    gateway, as kube-proxy would find them on the node's interfaces."""
    node = state.node(node_name)
    return ProxyConfig(node_name=node.name, node_ips=(node.ip, node.pod_gateway),
                       cluster_cidr=state.lab.pod_cidr, service_cidr=state.lab.service_cidr,
                       ipvs_scheduler=state.lab.ipvs_scheduler or "rr")


def input_for_node(state: ClusterState, node_name: str) -> ProxyInput:
    return build_input(config_for_node(state, node_name), state.services,
                       state.endpoint_slices)


@contextlib.contextmanager
def no_gc_pauses() -> Iterator[None]:
    """Render without the cyclic garbage collector.

    A 10 000-Service render allocates millions of short-lived, acyclic objects; the
    collector's repeated full passes over that heap doubled the render time. Reference
    counting frees them all the same; the collector runs again afterwards.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# ----------------------------------------------------------------- names


B32_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"  # RFC 4648, as Go's base32.StdEncoding


@functools.lru_cache(maxsize=1 << 16)
def _b32(text: str, chars: int) -> str:
    """The first `chars` characters of base32(sha256(text)).

    Each base32 character is the next 5 bits of the digest, so the prefix is computed
    from the leading bits alone (much faster than base64.b32encode of the whole digest;
    it matters at 10 000 Services, where every name is hashed several times).
    """
    bits = int.from_bytes(hashlib.sha256(text.encode()).digest()[:(chars * 5 + 7) // 8], "big")
    shift = ((chars * 5 + 7) // 8) * 8 - 5
    return "".join(B32_ALPHABET[(bits >> (shift - 5 * i)) & 31] for i in range(chars))


def port_proto_hash(info: ServicePortInfo) -> str:
    """iptables: base32(sha256(spn + lower(protocol)))[:16]."""
    return _b32(info.spn + info.proto, 16)


def endpoint_chain_hash(info: ServicePortInfo, endpoint: str) -> str:
    """iptables: base32(sha256(spn + lower(protocol) + "IP:port"))[:16]."""
    return _b32(info.spn + info.proto + endpoint, 16)


def nft_base_name(info: ServicePortInfo) -> str:
    """nftables: "<ns>/<name>/<proto>/<portName>", hashed and truncated."""
    return hash_and_truncate(f"{info.namespace}/{info.name}/{info.proto}/{info.port_name}")


def nft_endpoint_name(info: ServicePortInfo, ep: EndpointInfo) -> str:
    ip = ep.ip.replace(":", ".")
    base = f"{info.namespace}/{info.name}/{info.proto}/{info.port_name}__{ip}/{ep.port}"
    return hash_and_truncate(base)


def hash_and_truncate(base: str, limit: int = 240) -> str:
    name = _b32(base, 8) + "-" + base
    if len(name) > limit:
        name = name[:limit - 3] + "..."
    return name


def probability(n: int) -> str:
    """computeProbability: Go's %0.10f of 1/n."""
    return f"{1.0 / n:.10f}"
