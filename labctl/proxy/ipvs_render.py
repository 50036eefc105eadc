"""kube-proxy's IPVS syncProxyRules, restated: ProxyInput → virtual servers, ipsets and
the iptables rules IPVS mode still installs.

Follows pkg/proxy/ipvs/proxier.go and ipset.go of kubernetes/kubernetes (the
single-stack proxier with KUBE-IPVS-FILTER / KUBE-IPVS-OUT-FILTER, ~1.31; see
../shared/reference/kube-proxy.md §5): the same ipset names, types and comments, the
same virtual servers (ClusterIP, externalIPs, LoadBalancer VIPs, node IPs × NodePort)
with the same real servers — including IPVS mode's fallback to every cluster endpoint
when a Local traffic policy finds no local one — and the iptables-restore input line
for line. Pure: no I/O.

Choices, not accidents:
* Services are visited in `inp.services` order (sorted; kube-proxy walks a Go map), and
  a virtual server's real servers in kube-proxy's endpoint order ("IP:port" sorted).
* Node IPs are `ProxyConfig.node_ips` (loopback and link-local left out, as kube-proxy's
  address listing does), sorted; kube-proxy reads them from the node's interfaces.
* ipset entries are sorted, as kube-proxy adds them (`sets.List()`).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from labctl.model.objects import IPVS_SCHEDULERS
from labctl.proxy.base import (
    EndpointInfo,
    ProxyConfig,
    ProxyInput,
    ServiceKey,
    ServicePortEndpoints,
)
from labctl.proxy.iptables import Jump
from labctl.proxy.iptables_render import nodeport_cidrs

FILTER, NAT = "filter", "nat"
DUMMY_DEVICE = "kube-ipvs0"
DEFAULT_SCHEDULER = "rr"
SCHEDULERS = IPVS_SCHEDULERS  # kube-proxy passes --ipvs-scheduler on to IPVS

# utilipvs service flags
FLAG_PERSISTENT = 0x1
FLAG_HASHED = 0x2  # set by the kernel on every service; not part of what is asked for
FLAG_SOURCE_HASH = 0x10  # what kube-proxy sets for the "mh" scheduler (mh-port)

# ----------------------------------------------------------------- ipsets

LOOP_BACK = "KUBE-LOOP-BACK"
CLUSTER_IP = "KUBE-CLUSTER-IP"
EXTERNAL_IP = "KUBE-EXTERNAL-IP"
EXTERNAL_IP_LOCAL = "KUBE-EXTERNAL-IP-LOCAL"
LOAD_BALANCER = "KUBE-LOAD-BALANCER"
LOAD_BALANCER_FW = "KUBE-LOAD-BALANCER-FW"
LOAD_BALANCER_LOCAL = "KUBE-LOAD-BALANCER-LOCAL"
LOAD_BALANCER_SOURCE_IP = "KUBE-LOAD-BALANCER-SOURCE-IP"
LOAD_BALANCER_SOURCE_CIDR = "KUBE-LOAD-BALANCER-SOURCE-CIDR"
NODE_PORT_TCP = "KUBE-NODE-PORT-TCP"
NODE_PORT_LOCAL_TCP = "KUBE-NODE-PORT-LOCAL-TCP"
NODE_PORT_UDP = "KUBE-NODE-PORT-UDP"
NODE_PORT_LOCAL_UDP = "KUBE-NODE-PORT-LOCAL-UDP"
NODE_PORT_SCTP = "KUBE-NODE-PORT-SCTP-HASH"
NODE_PORT_LOCAL_SCTP = "KUBE-NODE-PORT-LOCAL-SCTP-HASH"
HEALTH_CHECK_NODE_PORT = "KUBE-HEALTH-CHECK-NODE-PORT"
IPVS_IPS = "KUBE-IPVS-IPS"

HASH_IP, HASH_IP_PORT = "hash:ip", "hash:ip,port"
HASH_IP_PORT_IP, HASH_IP_PORT_NET, BITMAP_PORT = "hash:ip,port,ip", "hash:ip,port,net", \
    "bitmap:port"
DEFAULT_PORT_RANGE = "0-65535"


@dataclass(frozen=True)
class SetSpec:
    """One of kube-proxy's ipsets (ipsetInfo): name, type and the comment its iptables
    rules carry (ipset itself is not given the comment)."""

    name: str
    type: str
    comment: str

    @property
    def create_line(self) -> str:
        """`ipset create` as kube-proxy's ipset runner builds it (defaults filled in)."""
        if self.type == BITMAP_PORT:
            return f"create {self.name} {self.type} range {DEFAULT_PORT_RANGE}"
        return f"create {self.name} {self.type} family inet hashsize 1024 maxelem 65536"


SETS = (
    SetSpec(LOOP_BACK, HASH_IP_PORT_IP,
            "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"),
    SetSpec(CLUSTER_IP, HASH_IP_PORT,
            "Kubernetes service cluster ip + port for masquerade purpose"),
    SetSpec(EXTERNAL_IP, HASH_IP_PORT,
            "Kubernetes service external ip + port for masquerade and filter purpose"),
    SetSpec(EXTERNAL_IP_LOCAL, HASH_IP_PORT,
            "Kubernetes service external ip + port with externalTrafficPolicy=local"),
    SetSpec(LOAD_BALANCER, HASH_IP_PORT, "Kubernetes service lb portal"),
    SetSpec(LOAD_BALANCER_FW, HASH_IP_PORT,
            "Kubernetes service load balancer ip + port for load balancer with sourceRange"),
    SetSpec(LOAD_BALANCER_LOCAL, HASH_IP_PORT,
            "Kubernetes service load balancer ip + port with externalTrafficPolicy=local"),
    SetSpec(LOAD_BALANCER_SOURCE_IP, HASH_IP_PORT_IP,
            "Kubernetes service load balancer ip + port + source IP for packet filter "
            "purpose"),
    SetSpec(LOAD_BALANCER_SOURCE_CIDR, HASH_IP_PORT_NET,
            "Kubernetes service load balancer ip + port + source cidr for packet filter "
            "purpose"),
    SetSpec(NODE_PORT_TCP, BITMAP_PORT, "Kubernetes nodeport TCP port for masquerade purpose"),
    SetSpec(NODE_PORT_LOCAL_TCP, BITMAP_PORT,
            "Kubernetes nodeport TCP port with externalTrafficPolicy=local"),
    SetSpec(NODE_PORT_UDP, BITMAP_PORT, "Kubernetes nodeport UDP port for masquerade purpose"),
    SetSpec(NODE_PORT_LOCAL_UDP, BITMAP_PORT,
            "Kubernetes nodeport UDP port with externalTrafficPolicy=local"),
    SetSpec(NODE_PORT_SCTP, HASH_IP_PORT,
            "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'"),
    SetSpec(NODE_PORT_LOCAL_SCTP, HASH_IP_PORT,
            "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type "
            "'hash ip:port'"),
    SetSpec(HEALTH_CHECK_NODE_PORT, BITMAP_PORT, "Kubernetes health check node port"),
    SetSpec(IPVS_IPS, HASH_IP, "Addresses on the ipvs interface"),
)
SET_BY_NAME = {s.name: s for s in SETS}
SET_NAMES = tuple(s.name for s in SETS)

NODE_PORT_SETS = {"TCP": (NODE_PORT_TCP, NODE_PORT_LOCAL_TCP),
                  "UDP": (NODE_PORT_UDP, NODE_PORT_LOCAL_UDP),
                  "SCTP": (NODE_PORT_SCTP, NODE_PORT_LOCAL_SCTP)}

# ----------------------------------------------------------------- iptables

KUBE_SERVICES = "KUBE-SERVICES"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_NODE_PORT = "KUBE-NODE-PORT"
KUBE_LOAD_BALANCER = "KUBE-LOAD-BALANCER"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBE_SOURCE_RANGES_FIREWALL = "KUBE-SOURCE-RANGES-FIREWALL"
KUBE_IPVS_FILTER = "KUBE-IPVS-FILTER"
KUBE_IPVS_OUT_FILTER = "KUBE-IPVS-OUT-FILTER"

# iptablesChains: created (EnsureChain) and declared in the restore, in this order.
NAT_CHAINS = (KUBE_SERVICES, KUBE_POSTROUTING, KUBE_NODE_PORT, KUBE_LOAD_BALANCER,
              KUBE_MARK_MASQ)
FILTER_CHAINS = (KUBE_FORWARD, KUBE_NODE_PORT, KUBE_PROXY_FIREWALL,
                 KUBE_SOURCE_RANGES_FIREWALL, KUBE_IPVS_FILTER, KUBE_IPVS_OUT_FILTER)

# iptablesJumpChain, ensured (prepended) in this order on every sync.
JUMPS = (
    Jump(NAT, "OUTPUT", KUBE_SERVICES, "kubernetes service portals"),
    Jump(NAT, "PREROUTING", KUBE_SERVICES, "kubernetes service portals"),
    Jump(NAT, "POSTROUTING", KUBE_POSTROUTING, "kubernetes postrouting rules"),
    Jump(FILTER, "FORWARD", KUBE_FORWARD, "kubernetes forwarding rules"),
    Jump(FILTER, "INPUT", KUBE_NODE_PORT, "kubernetes health check rules"),
    Jump(FILTER, "INPUT", KUBE_PROXY_FIREWALL, "kube-proxy firewall rules"),
    Jump(FILTER, "FORWARD", KUBE_PROXY_FIREWALL, "kube-proxy firewall rules"),
    Jump(FILTER, "INPUT", KUBE_IPVS_FILTER, "kubernetes ipvs access filter"),
    Jump(FILTER, "OUTPUT", KUBE_IPVS_OUT_FILTER, "kubernetes ipvs access filter"),
)


@dataclass(frozen=True)
class SetJump:
    """ipsetWithIptablesChain: `-A <src> [-p proto] -m comment --comment <set's comment>
    -m set --match-set <set> <match> -j <dst>`, written only when the set has entries."""

    set: str
    table: str
    src: str
    dst: str
    match: str
    proto: str = ""


# Note: a LOCAL set's RETURN must come before the masquerade of its non-local twin.
SET_JUMPS = (
    SetJump(LOOP_BACK, NAT, KUBE_POSTROUTING, "MASQUERADE", "dst,dst,src"),
    SetJump(LOAD_BALANCER, NAT, KUBE_SERVICES, KUBE_LOAD_BALANCER, "dst,dst"),
    SetJump(LOAD_BALANCER_LOCAL, NAT, KUBE_LOAD_BALANCER, "RETURN", "dst,dst"),
    SetJump(NODE_PORT_LOCAL_TCP, NAT, KUBE_NODE_PORT, "RETURN", "dst", "tcp"),
    SetJump(NODE_PORT_TCP, NAT, KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst", "tcp"),
    SetJump(NODE_PORT_LOCAL_UDP, NAT, KUBE_NODE_PORT, "RETURN", "dst", "udp"),
    SetJump(NODE_PORT_UDP, NAT, KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst", "udp"),
    SetJump(NODE_PORT_LOCAL_SCTP, NAT, KUBE_NODE_PORT, "RETURN", "dst,dst", "sctp"),
    SetJump(NODE_PORT_SCTP, NAT, KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst,dst", "sctp"),
    SetJump(LOAD_BALANCER_FW, FILTER, KUBE_PROXY_FIREWALL, KUBE_SOURCE_RANGES_FIREWALL,
            "dst,dst"),
    SetJump(LOAD_BALANCER_SOURCE_CIDR, FILTER, KUBE_SOURCE_RANGES_FIREWALL, "RETURN",
            "dst,dst,src"),
    SetJump(LOAD_BALANCER_SOURCE_IP, FILTER, KUBE_SOURCE_RANGES_FIREWALL, "RETURN",
            "dst,dst,src"),
)

# ----------------------------------------------------------------- IPVS objects

PROTO_OPTION = {"TCP": "-t", "UDP": "-u", "SCTP": "--sctp-service"}


@dataclass(frozen=True)
class VirtualServer:
    """An IPVS service as kube-proxy asks for it (utilipvs.VirtualServer)."""

    protocol: str  # TCP | UDP | SCTP
    address: str
    port: int
    scheduler: str = DEFAULT_SCHEDULER
    flags: int = 0
    timeout: int = 0

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.protocol, self.address, self.port)

    @property
    def string(self) -> str:
        """VirtualServer.String(): "IP:port/PROTO"."""
        return f"{self.address}:{self.port}/{self.protocol}"

    @property
    def target(self) -> str:
        """ipvsadm's service option: `-t 10.96.0.1:443`."""
        return f"{PROTO_OPTION[self.protocol]} {self.address}:{self.port}"

    def save_line(self, op: str = "-A") -> str:
        """ipvsadm-save -n's line for this service (`op`: -A add, -E edit, -D delete)."""
        if op == "-D":
            return f"-D {self.target}"
        line = f"{op} {self.target} -s {self.scheduler}"
        if self.flags & FLAG_SOURCE_HASH:
            line += f" -b {self.scheduler}-port"
        if self.flags & FLAG_PERSISTENT:
            line += f" -p {self.timeout}"
        return line


@dataclass(frozen=True)
class RealServer:
    """An IPVS destination: masquerading (NAT) forwarding, as kube-proxy uses."""

    address: str
    port: int
    weight: int = 1

    @property
    def key(self) -> tuple[str, int]:
        return (self.address, self.port)

    @property
    def string(self) -> str:
        return f"{self.address}:{self.port}"

    def save_line(self, vs: VirtualServer, op: str = "-a") -> str:
        if op == "-d":
            return f"-d {vs.target} -r {self.string}"
        return f"{op} {vs.target} -r {self.string} -m -w {self.weight}"


@dataclass(frozen=True)
class VsEntry:
    """One virtual server, its real servers, and what it is for."""

    vs: VirtualServer
    reals: tuple[RealServer, ...]
    spn: str  # the ServicePortName ("ns/name:port")
    kind: str  # cluster-ip | external-ip | load-balancer | node-port
    bind: bool  # its address goes on kube-ipvs0


# ----------------------------------------------------------------- the sync


@dataclass(frozen=True)
class Context:
    """What every Service's part depends on besides its own input."""

    config: ProxyConfig
    scheduler: str
    node_ip: str  # the primary node IP (proxier.nodeIP)
    node_addresses: tuple[str, ...]  # all local addresses except kube-ipvs0's
    nodeport_ips: tuple[str, ...]  # where NodePort virtual servers go

    @property
    def mark(self) -> str:
        return self.config.masquerade_mark


def _ipv4(text: str) -> str | None:
    try:
        return str(ipaddress.IPv4Address(text.strip()))
    except ValueError:
        return None


def _v4(values: Iterable[str]) -> list[str]:
    return [ip for ip in map(_ipv4, values) if ip]


def _cidr(text: str) -> ipaddress.IPv4Network | None:
    try:
        return ipaddress.IPv4Network(text.strip(), strict=False)
    except ValueError:
        return None


def node_addresses(config: ProxyConfig) -> tuple[str, ...]:
    """GetAllLocalAddressesExcept(kube-ipvs0): the node's addresses, without loopback and
    link-local ones (kube-proxy's address sets leave those out)."""
    out = {ip for ip in _v4(config.node_ips)
           if not ipaddress.IPv4Address(ip).is_loopback
           and not ipaddress.IPv4Address(ip).is_link_local}
    return tuple(sorted(out, key=ipaddress.IPv4Address))


def nodeport_ips(config: ProxyConfig) -> tuple[str, ...]:
    """The addresses NodePort virtual servers are made on: every node address, or with
    --nodeport-addresses those inside it (loopback never: IPVS cannot serve 127/8)."""
    cidrs = nodeport_cidrs(config)
    if not cidrs:
        return node_addresses(config)
    found = {ip for ip in _v4(config.node_ips)
             if not ipaddress.IPv4Address(ip).is_loopback
             and any(ipaddress.IPv4Address(ip) in c for c in cidrs)}
    return tuple(sorted(found, key=ipaddress.IPv4Address))


def context(inp: ProxyInput) -> Context:
    config = inp.config
    return Context(config=config, scheduler=config.ipvs_scheduler or DEFAULT_SCHEDULER,
                   node_ip=next(iter(_v4(config.node_ips)), ""),
                   node_addresses=node_addresses(config), nodeport_ips=nodeport_ips(config))


SetEntry = tuple[str, str]  # (set name, entry as ipset prints it)
NoNodeAccess = tuple[str, str, int]  # (LB VIP, protocol lower-case, port)


@dataclass(frozen=True)
class ServicePart:
    """Everything one Service (all its ServicePorts) contributes, in emission order, with
    the input it came from."""

    key: ServiceKey
    ports: tuple[ServicePortEndpoints, ...]
    entries: tuple[VsEntry, ...]
    set_entries: tuple[SetEntry, ...]
    no_node_access: tuple[NoNodeAccess, ...] = ()

    @functools.cached_property
    def binds(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for e in self.entries:
            if e.bind:
                seen.setdefault(e.vs.address, None)
        return tuple(seen)


def service_part(ctx: Context, key: ServiceKey,
                 ports: tuple[ServicePortEndpoints, ...]) -> ServicePart:
    entries: list[VsEntry] = []
    set_entries: list[SetEntry] = []
    no_node: list[NoNodeAccess] = []
    for spe in ports:
        _port(ctx, spe, entries, set_entries, no_node)
    return ServicePart(key, ports, tuple(entries), tuple(set_entries), tuple(no_node))


def _real_servers(spe: ServicePortEndpoints, only_local: bool) -> tuple[RealServer, ...]:
    """syncEndpoint: the cluster endpoints, or with a Local policy the local ones — and
    when there are none, the cluster endpoints after all (kubernetes PR 97081: pods on
    this node keep reaching the Service; iptables and nftables modes drop instead)."""
    cat = spe.categorized
    endpoints: tuple[EndpointInfo, ...] = cat.cluster
    if only_local and cat.local:
        endpoints = cat.local
    return tuple(RealServer(ep.ip, ep.port) for ep in endpoints)


def _port(ctx: Context, spe: ServicePortEndpoints, entries: list[VsEntry],
          sets: list[SetEntry], no_node: list[NoNodeAccess]) -> None:
    """The body of syncProxyRules' loop over svcPortMap, for one ServicePort."""
    info = spe.info
    proto, p = info.protocol, info.proto
    spn = info.spn
    flags, timeout = 0, 0
    if info.session_affinity:
        flags, timeout = FLAG_PERSISTENT, info.sticky_seconds
    if ctx.scheduler == "mh":
        flags |= FLAG_SOURCE_HASH

    def vs(address: str, port: int) -> VirtualServer:
        return VirtualServer(proto, address, port, ctx.scheduler, flags, timeout)

    # Hairpin: an endpoint on this node reaching its own Service gets masqueraded.
    for ep in spe.endpoints:
        if ep.is_local:
            sets.append((LOOP_BACK, f"{ep.ip},{p}:{ep.port},{ep.ip}"))

    cluster_ip = _ipv4(info.cluster_ip) or info.cluster_ip
    sets.append((CLUSTER_IP, f"{cluster_ip},{p}:{info.port}"))
    entries.append(VsEntry(vs(cluster_ip, info.port),
                           _real_servers(spe, info.internal_policy_local), spn,
                           "cluster-ip", True))

    external_reals = _real_servers(spe, info.external_policy_local)
    for ip in _v4(info.external_ips):
        entry = f"{ip},{p}:{info.port}"
        sets.append((EXTERNAL_IP_LOCAL if info.external_policy_local else EXTERNAL_IP, entry))
        # An address the node already has (on another interface) is not bound again.
        entries.append(VsEntry(vs(ip, info.port), external_reals, spn, "external-ip",
                               ip not in ctx.node_addresses))

    for vip in _v4(info.load_balancer_vips):
        entry = f"{vip},{p}:{info.port}"
        sets.append((LOAD_BALANCER, entry))
        if info.external_policy_local:
            sets.append((LOAD_BALANCER_LOCAL, entry))
        ranges = [c for c in map(_cidr, info.load_balancer_source_ranges) if c]
        if ranges:
            sets.append((LOAD_BALANCER_FW, entry))
            allow_from_node = False
            node_ip = ipaddress.IPv4Address(ctx.node_ip) if ctx.node_ip else None
            for cidr in ranges:
                sets.append((LOAD_BALANCER_SOURCE_CIDR, f"{entry},{cidr}"))
                if node_ip is not None and node_ip in cidr:
                    allow_from_node = True
            if allow_from_node:
                # A connection from this node to the VIP has the VIP as source.
                sets.append((LOAD_BALANCER_SOURCE_IP, f"{entry},{vip}"))
            else:
                no_node.append((vip, p, info.port))
        entries.append(VsEntry(vs(vip, info.port), external_reals, spn, "load-balancer",
                               vip not in ctx.node_addresses))

    if info.node_port:
        if not ctx.nodeport_ips:
            return  # kube-proxy skips the rest of this ServicePort (health check too)
        np_set, np_local = NODE_PORT_SETS[proto]
        if proto == "SCTP":  # hash:ip,port: one entry per node IP
            np_entries = [f"{ip},{p}:{info.node_port}" for ip in ctx.nodeport_ips]
        else:
            np_entries = [str(info.node_port)]
        sets += [(np_set, e) for e in np_entries]
        if info.external_policy_local:
            sets += [(np_local, e) for e in np_entries]
        for ip in ctx.nodeport_ips:
            entries.append(VsEntry(vs(ip, info.node_port), external_reals, spn, "node-port",
                                   False))

    if info.health_check_node_port:
        sets.append((HEALTH_CHECK_NODE_PORT, str(info.health_check_node_port)))


# ----------------------------------------------------------------- iptables text


@dataclass(frozen=True)
class IptablesRules:
    """The restore input of one sync: nat, then filter (kube-proxy's buffer order)."""

    nat: tuple[str, ...]  # -A lines
    filter: tuple[str, ...]

    @functools.cached_property
    def text(self) -> str:
        lines = ["*nat", *(f":{c} - [0:0]" for c in NAT_CHAINS), *self.nat, "COMMIT",
                 "*filter", *(f":{c} - [0:0]" for c in FILTER_CHAINS), *self.filter,
                 "COMMIT"]
        return "\n".join(lines) + "\n"

    def chains(self) -> dict[str, dict[str, list[str]]]:
        """table → chain → its rule lines."""
        out: dict[str, dict[str, list[str]]] = {}
        for table, chains, rules in ((NAT, NAT_CHAINS, self.nat),
                                     (FILTER, FILTER_CHAINS, self.filter)):
            out[table] = {c: [] for c in chains}
            for line in rules:
                out[table][line.split(" ", 2)[1]].append(line)
        return out


def _quoted(text: str) -> str:
    return f'"{text}"'


def iptables_rules(ctx: Context, nonempty: frozenset[str],
                   no_node_access: Iterable[NoNodeAccess], random_fully: bool = True,
                   ) -> IptablesRules:
    """writeIptablesRules: the rules for the sets that have entries, then the fixed ones."""
    nat: list[str] = [f"-A {KUBE_SERVICES} -s 127.0.0.0/8 -j RETURN"]
    filt: list[str] = []
    for j in SET_JUMPS:
        if j.set not in nonempty:
            continue
        proto = f" -p {j.proto}" if j.proto else ""
        line = (f"-A {j.src}{proto} -m comment --comment "
                f"{_quoted(SET_BY_NAME[j.set].comment)} -m set --match-set {j.set} "
                f"{j.match} -j {j.dst}")
        (filt if j.table == FILTER else nat).append(line)

    def match(name: str) -> str:
        return (f"-A {KUBE_SERVICES} -m comment --comment "
                f"{_quoted(SET_BY_NAME[name].comment)} -m set --match-set {name}")

    if CLUSTER_IP in nonempty:
        if ctx.config.masquerade_all:
            nat.append(f"{match(CLUSTER_IP)} dst,dst -j {KUBE_MARK_MASQ}")
        elif ctx.config.cluster_cidr.strip():
            # Off-cluster clients reaching a ClusterIP (a static route to the service
            # range) may be sent to another node: masquerade them.
            nat.append(f"{match(CLUSTER_IP)} dst,dst ! -s {ctx.config.cluster_cidr.strip()} "
                       f"-j {KUBE_MARK_MASQ}")
        else:
            # No local-traffic detector: masquerade node-originated traffic whose source
            # is a VIP (kube-ipvs0 holds them all, so the kernel may pick one).
            nat.append(f"{match(CLUSTER_IP)} src,dst -j {KUBE_MARK_MASQ}")

    def external_ip_rules(args: str) -> None:
        # Accept traffic to external IPs from off the machine (not from a bridge port,
        # not from a local process), and traffic to those that are local addresses.
        nat.append(f"{args} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL "
                   "-j ACCEPT")
        nat.append(f"{args} -m addrtype --dst-type LOCAL -j ACCEPT")

    if EXTERNAL_IP in nonempty:
        nat.append(f"{match(EXTERNAL_IP)} dst,dst -j {KUBE_MARK_MASQ}")
        external_ip_rules(f"{match(EXTERNAL_IP)} dst,dst")
    if EXTERNAL_IP_LOCAL in nonempty:
        external_ip_rules(f"{match(EXTERNAL_IP_LOCAL)} dst,dst")

    nat.append(f"-A {KUBE_SERVICES} -m addrtype --dst-type LOCAL -j {KUBE_NODE_PORT}")
    nat.append(f"-A {KUBE_LOAD_BALANCER} -j {KUBE_MARK_MASQ}")
    filt.append(f"-A {KUBE_SOURCE_RANGES_FIREWALL} -j DROP")
    # LoadBalancers whose source ranges leave this node out: from here the VIP is both
    # source and destination, which loadBalancerSourceRanges cannot see.
    for ip, proto, port in no_node_access:
        filt.append(f"-A {KUBE_IPVS_OUT_FILTER} -s {ip} -m ipvs --vaddr {ip} --vproto {proto} "
                    f"--vport {port} -j DROP")
    # acceptIPVSTraffic: these must be last in KUBE-SERVICES.
    for name in (CLUSTER_IP, LOAD_BALANCER):
        if name in nonempty:
            nat.append(f"-A {KUBE_SERVICES} -m set --match-set {name} dst,dst -j ACCEPT")
    mark = ctx.mark
    filt.append(f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding rules" '
                f"-m mark --mark {mark}/{mark} -j ACCEPT")
    filt.append(f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding conntrack '
                'rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT')
    filt.append(f"-A {KUBE_NODE_PORT} -m comment --comment "
                f"{_quoted(SET_BY_NAME[HEALTH_CHECK_NODE_PORT].comment)} -m set --match-set "
                f"{HEALTH_CHECK_NODE_PORT} dst -j ACCEPT")
    # Other ports on a VIP must not reach the node's own sockets (issue 72236).
    for name, how in ((LOAD_BALANCER, "dst,dst"), (CLUSTER_IP, "dst,dst"),
                      (EXTERNAL_IP, "dst,dst"), (EXTERNAL_IP_LOCAL, "dst,dst"),
                      (HEALTH_CHECK_NODE_PORT, "dst")):
        filt.append(f"-A {KUBE_IPVS_FILTER} -m set --match-set {name} {how} -j RETURN")
    filt.append(f"-A {KUBE_IPVS_FILTER} -m conntrack --ctstate NEW -m set --match-set "
                f"{IPVS_IPS} dst -j REJECT")
    nat.append(f"-A {KUBE_POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN")
    # Clear the mark so a packet that goes through the stack again is not masqueraded twice.
    nat.append(f"-A {KUBE_POSTROUTING} -j MARK --xor-mark {mark}")
    nat.append(f'-A {KUBE_POSTROUTING} -m comment --comment "kubernetes service traffic '
               f'requiring SNAT" -j MASQUERADE' + (" --random-fully" if random_fully else ""))
    nat.append(f"-A {KUBE_MARK_MASQ} -j MARK --or-mark {mark}")
    return IptablesRules(tuple(nat), tuple(filt))


# ----------------------------------------------------------------- sysctls

CONN_REUSE_MIN_KERNEL = (4, 1)  # IPVSConnReuseModeMinSupportedKernelVersion
CONN_REUSE_FIXED_KERNEL = (5, 9)  # IPVSConnReuseModeFixedKernelVersion (issue 93297)


def kernel_version(release: str) -> tuple[int, int]:
    parts = []
    for piece in release.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit()) if piece else ""
        parts.append(int(digits) if digits else 0)
    while len(parts) < 2:
        parts.append(0)
    return parts[0], parts[1]


def sysctls(kernel_release: str | None = None) -> tuple[tuple[str, str], ...]:
    """What NewProxier sets in IPVS mode. conn_reuse_mode=0 only on kernels between 4.1
    and 5.9 (from 5.9 on the kernel's default no longer stalls reused ports); without a
    kernel release it is left out."""
    out = [("net.ipv4.vs.conntrack", "1")]
    if kernel_release is not None:
        version = kernel_version(kernel_release)
        if CONN_REUSE_MIN_KERNEL <= version < CONN_REUSE_FIXED_KERNEL:
            out.append(("net.ipv4.vs.conn_reuse_mode", "0"))
    out += [("net.ipv4.vs.expire_nodest_conn", "1"),
            ("net.ipv4.vs.expire_quiescent_template", "1"),
            ("net.ipv4.ip_forward", "1")]
    return tuple(out)


def parts(ctx: Context, inp: ProxyInput) -> tuple[ServicePart, ...]:
    return tuple(service_part(ctx, key, ports) for key, ports in inp.services.items())

