"""The cluster DNS zone: a pure function of a cluster snapshot, answering like CoreDNS.

    zone = Zone.from_state(state, ttl=5)          # or Zone.build(services, slices, ...)
    zone.answer("web.default.svc.cluster.local.", A)   # -> Answer(rcode, answer, ...)

The rules are CoreDNS's `kubernetes` plugin as kubeadm deploys it (`pods insecure`,
zones `cluster.local in-addr.arpa ip6.arpa`), restated in
shared/reference/cluster-dns.md §1–§2 and followed function by function here:

* a query name is parsed right to left (parse.go): `svc|pod`, namespace, service, then
  one label (an endpoint name) or two (`_port._proto`); more labels, or a first label
  that is not `svc`/`pod`, is NXDOMAIN; the apex, `svc.ZONE`, `pod.ZONE` and existing
  `NS.svc.ZONE` / `NS.pod.ZONE` are NODATA;
* the records behind a name are found as `findServices` / `findPods` find them (a list
  of host/port/key items), then A, AAAA, SRV, TXT, CNAME and PTR answers are built from
  those items as plugin/backend_lookup.go builds them (SRV priority 0, weight
  floor(100/N), de-duplicated on target and port, addresses in the additional section);
* every other type is CoreDNS's "fake A lookup": NODATA when the name exists, else
  NXDOMAIN; every negative answer carries the SOA; AXFR/IXFR are REFUSED.

Two deliberate differences from the Go code, both as the reference states them: TXT for
a name that does not exist is NXDOMAIN (CoreDNS answers NODATA for every TXT name), and
names that exist only with a non-address type (`dns-version.ZONE`, `ns.dns.ZONE`) are
NODATA, not NXDOMAIN, for the other types. Owner names echo the query's spelling; the
zone part of generated names (SRV targets, SOA) takes the query's case too.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from labctl.dns.records import (
    AAAA,
    AXFR,
    CNAME,
    IXFR,
    NOERROR,
    NS,
    NXDOMAIN,
    PTR,
    REFUSED,
    RR,
    SERVFAIL,
    SOA,
    SRV,
    TXT,
    A,
    Answer,
)
from labctl.model.objects import EndpointSlice

if TYPE_CHECKING:
    from labctl.cluster.state import ClusterState, ServiceState

SCHEMA_VERSION = "1.1.0"
SCHEMA_TTL = 28800
REVERSE_ZONES = ("in-addr.arpa.", "ip6.arpa.")
POD_MODES = ("insecure", "verified", "disabled")
# The types precomputed for every name the zone holds (the server's fast path).
PRECOMPUTED_TYPES = (A, AAAA, SRV, PTR, TXT, SOA, NS, CNAME)

_CLUSTER_IP, _HEADLESS, _EXTERNAL = "ClusterIP", "Headless", "ExternalName"
_NO_PORT = -1  # CoreDNS's sentinel port for a slice without ports


class PodAddress(Protocol):
    """What the zone needs of a pod (PodState fits)."""

    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def ip(self) -> str: ...


class _NameError(Exception):
    """The name does not exist (NXDOMAIN)."""


@dataclass(frozen=True, slots=True)
class _Port:
    name: str  # lower case
    protocol: str  # lower case
    port: int


@dataclass(frozen=True, slots=True)
class _Address:
    ip: str  # as written in the EndpointSlice
    hostname: str  # the endpoint's hostname, else its dashed IP (CoreDNS endpointHostname)
    kind: int  # A or AAAA


@dataclass(frozen=True, slots=True)
class _Subset:  # one EndpointSlice: its published addresses × its ports
    addresses: tuple[_Address, ...]
    ports: tuple[_Port, ...]


@dataclass(frozen=True, slots=True)
class _Service:
    namespace: str
    name: str
    kind: str  # _CLUSTER_IP | _HEADLESS | _EXTERNAL
    ips: tuple[tuple[str, int], ...]  # cluster IPs and their record type
    ports: tuple[_Port, ...]
    external_name: str
    subsets: tuple[_Subset, ...]


@dataclass(frozen=True, slots=True)
class _Item:
    """One thing behind a name (CoreDNS's msg.Service): an address, a name or a text."""

    host: str
    kind: int  # A, AAAA, CNAME (host is a name) or TXT (host is the text)
    port: int
    key: str  # the record's own name: SRV target, additional-section owner
    ttl: int


@dataclass(frozen=True, slots=True)
class _Request:
    """A query name taken apart (CoreDNS parse.go recordRequest), lower case."""

    pod_or_svc: str = ""
    namespace: str = ""
    service: str = ""
    endpoint: str = ""
    port: str = ""
    protocol: str = ""


@dataclass(frozen=True, slots=True)
class _Query:
    name: str  # as asked (absolute)
    lower: str
    zone: str  # the zone served that holds it, lower case
    zq: str  # that zone as spelled in the query


def _ip_kind(text: str) -> tuple[str, int] | None:
    """(normalised address, A or AAAA), or None when `text` is not an address.

    Like Go's net.IP.To4, an IPv4-mapped IPv6 address is an IPv4 address.
    """
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped), A
        return str(ip), AAAA
    return str(ip), A


def _endpoint_hostname(hostname: str, ip: str) -> str:
    if hostname:
        return hostname
    if "." in ip:
        return ip.replace(".", "-")
    dashed = ip.replace(":", "-")
    return dashed + "0" if dashed.endswith("-") else dashed


def _published(service_publishes_unready: bool, ready: bool | None) -> bool:
    # An endpoint is published while ready (unset counts as ready, as in CoreDNS), or
    # always when the Service tolerates unready endpoints (the spec's definition).
    return service_publishes_unready or ready is None or ready


def _strip_underscore(label: str) -> str:
    return label[1:] if label.startswith("_") else label


def _fqdn(name: str) -> str:
    return name if name.endswith(".") else name + "."


def _in_zone(lower: str, zone: str) -> bool:
    return lower == zone or lower.endswith("." + zone)


def reverse_name(ip: str) -> str:
    """The in-addr.arpa / ip6.arpa name of an address."""
    return ipaddress.ip_address(ip).reverse_pointer + "."


def address_from_reverse(lower: str) -> str | None:
    """The address a reverse name stands for (CoreDNS ExtractAddressFromReverse)."""
    if lower.endswith(".in-addr.arpa."):
        labels = lower[: -len(".in-addr.arpa.")].split(".")
        try:
            return str(ipaddress.IPv4Address(".".join(reversed(labels))))
        except ValueError:
            return None
    if lower.endswith(".ip6.arpa."):
        nibbles = "".join(reversed(lower[: -len(".ip6.arpa.")].split(".")))
        groups = ":".join(nibbles[i:i + 4] for i in range(0, len(nibbles), 4))
        try:
            return str(ipaddress.IPv6Address(groups))
        except ValueError:
            return None
    return None


def pod_label(ip: str) -> str:
    """The first label of a pod record: a-b-c-d (IPv6: ':' → '-')."""
    return ip.replace(".", "-") if "." in ip else ip.replace(":", "-")


class Zone:
    """An immutable snapshot of the cluster's DNS data with CoreDNS's answers.

    Build it with `Zone.build(...)` or `Zone.from_state(state)`; ask with `answer()`;
    `names()` lists every name it holds (lower case) so a server can precompute replies.
    """

    def __init__(self, *, domain: str, ttl: int, services: Mapping[tuple[str, str], _Service],
                 namespaces: frozenset[str], reverse: Mapping[str, tuple[str, ...]],
                 pods: Mapping[str, frozenset[str]], pod_mode: str,
                 nameservers: tuple[tuple[str, str, int], ...], serial: int,
                 reverse_zones: bool) -> None:
        self.domain = domain
        self.ttl = ttl
        self.serial = serial
        self.pod_mode = pod_mode
        self._services = services
        self._namespaces = namespaces
        self._reverse = reverse
        self._pods = pods
        self._nameservers = nameservers  # (name relative to the zone, address, A|AAAA)
        self.zones = (domain, *REVERSE_ZONES) if reverse_zones else (domain,)
        self._soa_ttl = min(ttl, 300)

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, services: Iterable[ServiceState], slices: Iterable[EndpointSlice],
              pods: Iterable[PodAddress], namespaces: Iterable[str],
              domain: str = "cluster.local", ttl: int = 5, *, serial: int = 1,
              pod_mode: str = "insecure",
              dns_service: tuple[str, str] | None = ("kube-system", "kube-dns"),
              ns_ips: Iterable[str] = (), reverse_zones: bool = True) -> Zone:
        """A zone from Services, EndpointSlices, pods and the namespaces that exist.

        `dns_service` names the Service in front of the DNS responders: the apex NS
        record points at it (as CoreDNS's does when its pods back that Service);
        without it, at `ns.dns.ZONE` with the addresses `ns_ips`. `serial` is the SOA
        serial (CoreDNS: the last change, in unix seconds).
        """
        if not 0 <= ttl <= 3600:
            raise ValueError(f"ttl must be 0..3600, got {ttl}")
        if pod_mode not in POD_MODES:
            raise ValueError(f"pod_mode must be one of {', '.join(POD_MODES)}")
        domain = domain.strip(".").lower() + "."
        by_service: dict[tuple[str, str], list[EndpointSlice]] = {}
        for eps in slices:
            if eps.address_type in ("IPv4", "IPv6") and eps.service_name:
                by_service.setdefault((eps.meta.namespace, eps.service_name), []).append(eps)

        table: dict[tuple[str, str], _Service] = {}
        reverse_svc: dict[str, str] = {}
        reverse_ep: dict[str, set[str]] = {}
        for st in services:
            svc = _service(st, by_service.get((st.namespace, st.name), ()))
            table[(svc.namespace, svc.name)] = svc
            base = f"{svc.name}.{svc.namespace}.svc.{domain}"
            for ip, _kind in svc.ips:
                reverse_svc.setdefault(ip, base)
            for subset in svc.subsets:
                for addr in subset.addresses:
                    norm = _ip_kind(addr.ip)
                    if norm:
                        reverse_ep.setdefault(norm[0], set()).add(f"{addr.hostname}.{base}")
        reverse: dict[str, tuple[str, ...]] = {}
        for ip in reverse_svc.keys() | reverse_ep.keys():
            # A Service's own address names the Service alone (the first match);
            # any other address names every endpoint carrying it.
            reverse[ip] = (reverse_svc[ip],) if ip in reverse_svc else \
                tuple(sorted(reverse_ep[ip]))

        pod_index: dict[str, set[str]] = {}
        for pod in pods:
            norm = _ip_kind(pod.ip) if pod.ip else None
            if norm:
                pod_index.setdefault(norm[0], set()).add(pod.namespace)

        nameservers: list[tuple[str, str, int]] = []
        dns_svc = table.get(dns_service) if dns_service else None
        if dns_svc and dns_svc.kind == _CLUSTER_IP and dns_svc.ips:
            nameservers = [(f"{dns_svc.name}.{dns_svc.namespace}.svc", ip, kind)
                           for ip, kind in dns_svc.ips]
        else:
            for text in ns_ips:
                norm = _ip_kind(text)
                if norm:
                    nameservers.append(("ns.dns", *norm))
        return cls(domain=domain, ttl=ttl, services=table,
                   namespaces=frozenset(n.lower() for n in namespaces), reverse=reverse,
                   pods={ip: frozenset(nss) for ip, nss in pod_index.items()},
                   pod_mode=pod_mode, nameservers=tuple(nameservers), serial=serial,
                   reverse_zones=reverse_zones)

    @classmethod
    def from_state(cls, state: ClusterState, ttl: int = 5, **options: object) -> Zone:
        """The zone of a compiled lab (its cluster domain, Services, slices, pods)."""
        return cls.build(state.services, state.endpoint_slices, state.pods, state.namespaces,
                         state.lab.cluster_domain, ttl, **options)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ asking

    def zone_of(self, qname: str) -> str | None:
        """The zone served that holds `qname` (lower case), or None."""
        lower = _fqdn(qname).lower()
        for zone in self.zones:
            if _in_zone(lower, zone):
                return zone
        return None

    def answer(self, qname: str, qtype: int) -> Answer:
        """The reply CoreDNS would give to `qname` (any case, dot optional) `qtype`."""
        name = _fqdn(qname)
        lower = name.lower()
        zone = next((z for z in self.zones if _in_zone(lower, z)), None)
        if zone is None:
            return Answer(SERVFAIL, authoritative=False, forward=True)
        q = _Query(name, lower, zone, name[len(name) - len(zone):])
        if qtype in (AXFR, IXFR):
            return Answer(REFUSED, authoritative=False)
        extra: list[RR] = []
        chase = None
        try:
            if qtype in (A, AAAA, TXT):
                records, chase = self._follow(q, qtype, [])
            elif qtype == SRV:
                records, extra = self._srv(q)
            elif qtype == PTR:
                records = self._ptr(q)
            elif qtype == CNAME:
                records = self._cname(q)
            elif qtype == SOA and lower == zone:
                records = [self.soa(q.zq)]
            elif qtype == NS and lower == zone:
                records, extra = self._ns(q)
            else:  # CoreDNS's "fake A lookup": only tells NODATA from NXDOMAIN
                self._follow(q, A, [])
                records = []
        except _NameError:
            return Answer(NXDOMAIN, authority=(self.soa(q.zq),),
                          fallthrough=zone in REVERSE_ZONES)
        if not records:
            return Answer(NOERROR, authority=(self.soa(q.zq),))
        return Answer(NOERROR, tuple(records), (), tuple(extra), chase=chase)

    def soa(self, zq: str) -> RR:
        return RR(zq, SOA, self._soa_ttl,
                  (f"ns.dns.{zq}", f"hostmaster.{zq}", self.serial, 7200, 1800, 86400,
                   self.ttl))

    def names(self) -> Iterator[str]:
        """Every name the zone holds data or a NODATA answer for (lower case)."""
        d = self.domain
        yield from (d, f"dns-version.{d}", f"ns.dns.{d}", f"svc.{d}", f"pod.{d}")
        for ns in sorted(self._namespaces):
            yield f"{ns}.svc.{d}"
            yield f"{ns}.pod.{d}"
        for svc in self._services.values():
            base = f"{svc.name}.{svc.namespace}.svc.{d}"
            yield base
            ports = set(svc.ports)
            for subset in svc.subsets:
                ports.update(subset.ports)
                for addr in subset.addresses:
                    yield f"{addr.hostname.lower()}.{base}"
            for p in ports:
                if p.name and p.protocol:
                    yield f"_{p.name}._{p.protocol}.{base}"
        for ip in self._reverse:
            yield reverse_name(ip)
        if self.pod_mode != "disabled":
            for ip, nss in self._pods.items():
                for ns in nss & self._namespaces:
                    yield f"{pod_label(ip)}.{ns}.pod.{d}"
        if len(self.zones) > 1:
            yield from REVERSE_ZONES

    # ------------------------------------------------------------------ CoreDNS's lookup

    def _items(self, q: _Query, qtype: int) -> list[_Item]:
        """CoreDNS Kubernetes.Services: what stands behind the name (raises _NameError)."""
        base = q.lower[: len(q.lower) - len(q.zone)].rstrip(".")
        if base == "dns-version":
            return [_Item(SCHEMA_VERSION, TXT, 0, q.name, SCHEMA_TTL)]
        if base == "ns.dns" or (qtype == NS and base == ""):
            kinds = (A, AAAA) if qtype == NS else (qtype,)
            return [_Item(ip, kind, 0, f"{rel}.{q.zq}" if qtype == NS else q.name, self.ttl)
                    for rel, ip, kind in self._nameservers if kind in kinds]
        items = self._records(q, base)
        if qtype == SRV:  # SRV for ExternalName services is not implemented in CoreDNS
            items = [it for it in items if it.kind != CNAME]
        return items

    def _records(self, q: _Query, base: str) -> list[_Item]:
        req = _parse(base)
        if not req.pod_or_svc:
            return []
        if q.zone in REVERSE_ZONES or req.namespace not in self._namespaces:
            raise _NameError
        if req.pod_or_svc == "pod":
            return self._find_pods(req, q.zq)
        return self._find_services(req, q.zq)

    def _find_services(self, req: _Request, zq: str) -> list[_Item]:
        if not req.service:
            return []  # NS.svc.ZONE: NODATA
        svc = self._services.get((req.namespace, req.service))
        if svc is None:
            raise _NameError
        ttl = self.ttl
        if svc.kind == _EXTERNAL:
            # Nothing lives below an ExternalName, and an IP literal is no CNAME target.
            if req.endpoint or req.port or req.protocol or not svc.external_name \
                    or _ip_kind(svc.external_name):
                raise _NameError
            return [_Item(svc.external_name, CNAME, 0, f"{svc.name}.{svc.namespace}.svc.{zq}",
                          ttl)]
        items: list[_Item] = []
        if svc.kind == _HEADLESS or req.endpoint:
            for subset in svc.subsets:
                for addr in subset.addresses:
                    if req.endpoint and req.endpoint != addr.hostname.lower():
                        continue
                    key = f"{addr.hostname}.{svc.name}.{svc.namespace}.svc.{zq}"
                    items += [_Item(addr.ip, addr.kind, p.port, key, ttl)
                              for p in subset.ports if _port_matches(req, p)]
            if not items:
                raise _NameError  # headless without ready endpoints, unknown endpoint
            return items
        matched = False
        key = f"{svc.name}.{svc.namespace}.svc.{zq}"
        for p in svc.ports:
            if _port_matches(req, p):
                matched = True
                items += [_Item(ip, kind, p.port, key, ttl) for ip, kind in svc.ips]
        if not matched:
            raise _NameError  # no such _port._proto
        return items

    def _find_pods(self, req: _Request, zq: str) -> list[_Item]:
        if self.pod_mode == "disabled":
            raise _NameError
        label = req.service
        if not label:
            return []  # NS.pod.ZONE: NODATA
        if label.count("-") == 3 and "--" not in label:
            text = label.replace("-", ".")
        else:
            text = label.replace("-", ":")
        norm = _ip_kind(text)
        if norm is None:
            raise _NameError
        ip, kind = norm
        if self.pod_mode == "verified" and req.namespace not in self._pods.get(ip, ()):
            raise _NameError
        return [_Item(ip, kind, 0, f"{label}.{req.namespace}.pod.{zq}", self.ttl)]

    # ------------------------------------------------------------------ per-type answers

    def _follow(self, q: _Query, qtype: int, previous: list[RR]
                ) -> tuple[list[RR], tuple[str, int] | None]:
        """A, AAAA and TXT (backend_lookup.go A/AAAA/TXT): records, CNAMEs chased."""
        records: list[RR] = []
        chase: tuple[str, int] | None = None
        seen: set[str] = set()
        for it in self._items(q, qtype):
            if it.kind == CNAME:
                target = _fqdn(it.host)
                tlower = target.lower()
                if tlower == q.lower or len(previous) > 7:
                    continue  # a direct loop, or a chain too long
                cname = RR(q.name, CNAME, it.ttl, target)
                if any(r.name == cname.name and r.data == target for r in previous):
                    continue
                if _in_zone(tlower, q.zone):
                    inner = _Query(target, tlower, q.zone, target[len(target) - len(q.zone):])
                    try:
                        more, inner_chase = self._follow(inner, qtype, [*previous, cname])
                    except _NameError:
                        continue
                    if more:
                        records += [cname, *more]
                        chase = chase or inner_chase
                else:
                    records.append(cname)
                    chase = chase or (target, qtype)
            elif it.kind == qtype and it.host not in seen:
                seen.add(it.host)
                data = (it.host,) if qtype == TXT else it.host
                records.append(RR(q.name, qtype, it.ttl, data))
        return records, chase

    def _srv(self, q: _Query) -> tuple[list[RR], list[RR]]:
        items = self._items(q, SRV)
        if not items:
            return [], []
        # Every item weighs 100 within priority 0; floor(100 / total * 100), at least 1.
        weight = max(1, math.floor(100.0 / (100 * len(items)) * 100))
        records: list[RR] = []
        extra: list[RR] = []
        seen: set[tuple[str, str, int]] = set()
        for it in items:
            if it.port == _NO_PORT or it.kind not in (A, AAAA):
                continue
            if (it.key, "", it.port) not in seen:
                seen.add((it.key, "", it.port))
                records.append(RR(q.name, SRV, it.ttl, (0, weight, it.port, it.key)))
            if (it.key, it.host, 0) not in seen:
                seen.add((it.key, it.host, 0))
                extra.append(RR(it.key, it.kind, it.ttl, it.host))
        return records, extra

    def _ptr(self, q: _Query) -> list[RR]:
        ip = address_from_reverse(q.lower)
        if ip is None:
            self._items(q, PTR)  # only tells NODATA from NXDOMAIN
            return []
        targets = self._reverse.get(ip)
        if not targets:
            raise _NameError
        return [RR(q.name, PTR, self.ttl, t) for t in targets]

    def _cname(self, q: _Query) -> list[RR]:
        items = self._items(q, CNAME)
        if items and items[0].kind == CNAME:
            return [RR(q.name, CNAME, items[0].ttl, _fqdn(items[0].host))]
        return []

    def _ns(self, q: _Query) -> tuple[list[RR], list[RR]]:
        records: list[RR] = []
        extra: list[RR] = []
        for it in self._items(q, NS):
            if not any(r.data == it.key for r in records):
                records.append(RR(q.name, NS, it.ttl, it.key))
            extra.append(RR(it.key, it.kind, it.ttl, it.host))
        return records, extra


def _parse(base: str) -> _Request:
    """CoreDNS parseRequest on the name without its zone (lower case)."""
    if base in ("", "svc", "pod"):
        return _Request()
    segs = base.split(".")
    if segs[-1] not in ("svc", "pod"):
        raise _NameError
    if len(segs) > 5:
        raise _NameError  # "query too long"
    padded = [""] * (5 - len(segs)) + segs
    first, second, service, namespace, kind = padded
    if len(segs) == 5:
        return _Request(kind, namespace, service, port=_strip_underscore(first),
                        protocol=_strip_underscore(second))
    return _Request(kind, namespace, service, endpoint=second)


def _port_matches(req: _Request, port: _Port) -> bool:
    return (not req.port or req.port == port.name) and \
        (not req.protocol or req.protocol == port.protocol)


def _service(st: ServiceState, slices: Iterable[EndpointSlice]) -> _Service:
    spec = st.service
    if spec.type == "ExternalName":
        return _Service(st.namespace.lower(), st.name.lower(), _EXTERNAL, (), (),
                        spec.external_name, ())
    headless = st.cluster_ip == "None"
    ips: list[tuple[str, int]] = []
    if not headless and st.cluster_ip:
        norm = _ip_kind(st.cluster_ip)
        if norm:
            ips.append(norm)
    ports = tuple(_Port(p.name.lower(), p.protocol.lower(), p.port) for p in st.ports)
    subsets = []
    for eps in slices:
        sp = tuple(_Port((p.name or "").lower(), p.protocol.lower(),
                         _NO_PORT if p.port is None else p.port) for p in eps.ports)
        addresses = []
        for ep in eps.endpoints:
            if not _published(spec.publish_not_ready_addresses, ep.conditions.ready):
                continue
            for ip in ep.addresses:
                norm = _ip_kind(ip)
                if norm:
                    addresses.append(_Address(ip, _endpoint_hostname(ep.hostname, ip), norm[1]))
        subsets.append(_Subset(tuple(addresses), sp or (_Port("", "", _NO_PORT),)))
    return _Service(st.namespace.lower(), st.name.lower(), _HEADLESS if headless else _CLUSTER_IP,
                    tuple(ips), ports, "", tuple(subsets))
