"""kube-proxy's iptables syncProxyRules, restated: ProxyInput → ordered chains and rules.

Follows pkg/proxy/iptables/proxier.go of kubernetes/kubernetes @ 531be812 (a recent main;
see ../shared/reference/kube-proxy.md §3), line for line where the output depends on it:
the same chains, the same argument order, the same comments quoted the same way, the same
interleaving of rules of different chains. Pure: no I/O.

Differences that are choices, not accidents:
* Services are visited in `inp.services` order (build_input sorts them by namespace,
  name, then spec.ports order; a Service's ports are kept together). kube-proxy walks
  a Go map, so its order is random; any fixed order gives the same kernel state.
* No nfacct counters: kube-proxy only adds `-m nfacct` matches (on the INVALID drop) and
  the `-d 127.0.0.0/8` localhost NodePort rule when it could create its nfacct counters.
  labctl does not, so it writes what kube-proxy writes when the counters are unavailable.
  (Localhost NodePorts still work through the `--dst-type LOCAL` tail rule.)
* nf_conntrack_tcp_be_liberal is taken as 0 (the kernel default): the INVALID drop is kept.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from labctl.proxy.base import (
    EndpointInfo,
    ProxyConfig,
    ProxyInput,
    ServiceKey,
    ServicePortEndpoints,
    endpoint_chain_hash,
    port_proto_hash,
    probability,
)

FILTER, NAT = "filter", "nat"
KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBE_PROXY_CANARY = "KUBE-PROXY-CANARY"
KUBELET_FIREWALL = "KUBE-FIREWALL"  # kubelet's chain; kube-proxy writes a copy of its rule

FILTER_TOP_CHAINS = (KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FORWARD, KUBE_NODEPORTS,
                     KUBE_PROXY_FIREWALL)
NAT_TOP_CHAINS = (KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ)
# The prefixes kube-proxy treats as its per-service chains (isServiceChainName).
SERVICE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-")
LARGE_CLUSTER_ENDPOINTS = 1000  # largeClusterEndpointsThreshold
LOOPBACK_V4 = ipaddress.IPv4Network("127.0.0.0/8")
TAIL_COMMENT = '"kubernetes service nodeports; NOTE: this must be the last rule in this chain"'


def is_service_chain(name: str) -> bool:
    return name.startswith(SERVICE_CHAIN_PREFIXES)


@dataclass(frozen=True)
class ChainDecl:
    """One `:CHAIN - [0:0]` line; `service` is the owning "ns/name" ("" = kube-proxy's own)."""

    name: str
    service: str = ""

    @property
    def line(self) -> str:
        return f":{self.name} - [0:0]"


@dataclass(frozen=True)
class Rule:
    """One `-A CHAIN args…` line, args as kube-proxy writes them (comments pre-quoted)."""

    chain: str
    args: tuple[str, ...]
    service: str = ""
    tail: bool = False  # the "must be the last rule" jump(s) to KUBE-NODEPORTS

    @property
    def line(self) -> str:
        return " ".join(("-A", self.chain, *self.args))


@dataclass
class TableData:
    chains: list[ChainDecl] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)


@dataclass
class _Writer:
    """The four LineBuffers of syncProxyRules, with each line tagged by its Service."""

    filter: TableData = field(default_factory=TableData)
    nat: TableData = field(default_factory=TableData)
    service: str = ""

    def chain(self, table: str, name: str) -> None:
        self._table(table).chains.append(ChainDecl(name, self.service))

    def rule(self, table: str, chain: str, *args: str, tail: bool = False) -> None:
        self._table(table).rules.append(Rule(chain, tuple(args), self.service, tail))

    def _table(self, table: str) -> TableData:
        return self.filter if table == FILTER else self.nat


@dataclass(frozen=True)
class SyncContext:
    """Per-sync facts shared by every Service (the Proxier fields syncProxyRules reads)."""

    config: ProxyConfig
    mark: str
    pod_cidr: str  # the ClusterCIDR local-traffic detector; "" = not implemented
    localhost_nodeports: bool
    large_cluster: bool
    node_ip: str


# ----------------------------------------------------------------- addresses


def _ipv4(text: str) -> str | None:
    """An IPv4 address as Go's net.IP.String() prints it; None for other families."""
    try:
        return str(ipaddress.IPv4Address(text.strip()))
    except ValueError:
        return None


def _ipv4_cidr(text: str) -> ipaddress.IPv4Network | None:
    try:
        return ipaddress.IPv4Network(text.strip(), strict=False)
    except ValueError:
        return None


def _v4_only(values: tuple[str, ...]) -> list[str]:
    """kube-proxy keeps only the addresses of its own family (here IPv4)."""
    return [ip for ip in map(_ipv4, values) if ip]


def nodeport_cidrs(config: ProxyConfig) -> list[ipaddress.IPv4Network]:
    """--nodeport-addresses as kube-proxy's NodePortAddresses: IPv4 CIDRs; [] = match all."""
    cidrs = [c for c in map(_ipv4_cidr, config.nodeport_addresses) if c is not None]
    if any(c.prefixlen == 0 for c in cidrs):
        return []
    return cidrs


def localhost_nodeports(config: ProxyConfig) -> bool:
    """NewProxier turns localhost NodePorts off when --nodeport-addresses excludes 127/8."""
    cidrs = nodeport_cidrs(config)
    if not cidrs:
        return config.localhost_nodeports
    loopback = any(c.network_address.is_loopback or LOOPBACK_V4.network_address in c
                   for c in cidrs)
    return config.localhost_nodeports and loopback


def nodeport_ips(config: ProxyConfig) -> list[str]:
    """GetNodeIPs: the node's addresses (and lo's 127.0.0.1) inside --nodeport-addresses.
    kube-proxy reads every interface address, so config.node_ips should list them all; it
    returns them in map order, sorted here."""
    local = {ip for ip in _v4_only(config.node_ips)} | {"127.0.0.1"}
    found = {ip for ip in local
             if any(ipaddress.IPv4Address(ip) in c for c in nodeport_cidrs(config))}
    return sorted(found, key=ipaddress.IPv4Address)


# ----------------------------------------------------------------- the sync


def sync_context(inp: ProxyInput) -> SyncContext:
    """What every Service's rules depend on besides its own input: the flags, and whether
    the sync is in large-cluster mode (more than 1000 endpoints in all)."""
    config = inp.config
    return SyncContext(
        config=config, mark=config.masquerade_mark,
        pod_cidr=config.cluster_cidr.strip(),
        localhost_nodeports=localhost_nodeports(config),
        large_cluster=inp.total_endpoints > LARGE_CLUSTER_ENDPOINTS,
        node_ip=next(iter(_v4_only(config.node_ips)), ""))


@dataclass(frozen=True)
class FixedPart:
    """kube-proxy's own chains and rules, written around the Services' in each table:
    declarations, rules before the Services' (head) and after them (tail)."""

    filter_chains: tuple[ChainDecl, ...]
    filter_head: tuple[Rule, ...]
    filter_tail: tuple[Rule, ...]
    nat_chains: tuple[ChainDecl, ...]
    nat_head: tuple[Rule, ...]
    nat_tail: tuple[Rule, ...]


def fixed_part(ctx: SyncContext, random_fully: bool) -> FixedPart:
    head = _Writer()
    _top_chains(head, ctx, random_fully)
    tail = _Writer()
    _tail(tail, ctx)
    _forward(tail, ctx)
    assert not tail.filter.chains and not tail.nat.chains
    return FixedPart(tuple(head.filter.chains), tuple(head.filter.rules),
                     tuple(tail.filter.rules), tuple(head.nat.chains), tuple(head.nat.rules),
                     tuple(tail.nat.rules))


_NAT_TOP = frozenset(NAT_TOP_CHAINS)


def _lines(rules: Iterable[Rule]) -> str:
    return "\n".join([r.line for r in rules])


@dataclass(frozen=True)
class ServicePart:
    """Everything one Service (all its ServicePorts) writes, in emission order, with the
    input it came from and its restore text precomputed ("" = no such line):

    * filter_text: its filter rules (all in top-level chains);
    * nat_top_text: its nat rules in top-level chains (KUBE-SERVICES, KUBE-NODEPORTS),
      what a partial sync writes for a Service it does not rewrite;
    * nat_text: all its nat rules (top-level and its own chains, interleaved as emitted);
    * chain_text: the declarations of its own chains.
    """

    key: ServiceKey
    ports: tuple[ServicePortEndpoints, ...]
    filter_rules: tuple[Rule, ...]
    nat_chains: tuple[ChainDecl, ...]
    nat_rules: tuple[Rule, ...]
    filter_text: str = field(default="", compare=False, repr=False)
    nat_top_text: str = field(default="", compare=False, repr=False)
    nat_text: str = field(default="", compare=False, repr=False)
    chain_text: str = field(default="", compare=False, repr=False)

    @functools.cached_property
    def contents(self) -> tuple[tuple[str, ...], tuple[Rule, ...]] | None:
        """What its own chains are and do (the unit of a partial sync); None without
        chains. Comments are left out: they only differ when large-cluster mode
        switches, and then kube-proxy does not rewrite unchanged Services either."""
        if not self.nat_chains:
            return None
        return (tuple(c.name for c in self.nat_chains),
                tuple(_uncommented(r) for r in self.nat_rules if is_service_chain(r.chain)))

    @functools.cached_property
    def chain_names(self) -> frozenset[str]:
        return frozenset(c.name for c in self.nat_chains)


def _uncommented(rule: Rule) -> Rule:
    args = rule.args
    if args[:3] == ("-m", "comment", "--comment"):
        args = args[4:]
    return Rule(rule.chain, args, rule.service)


def service_part(ctx: SyncContext, key: ServiceKey,
                 ports: tuple[ServicePortEndpoints, ...]) -> ServicePart:
    """The body of syncProxyRules' loop over svcPortMap, for one Service's ports."""
    w = _Writer(service=f"{key[0]}/{key[1]}")
    for spe in ports:
        _ServicePortWriter(w, ctx, spe).write()
    assert not w.filter.chains  # a Service's own chains are all in nat
    filter_rules, nat_chains, nat_rules = w.filter.rules, w.nat.chains, w.nat.rules
    lines = [r.line for r in nat_rules]
    nat_text = "\n".join(lines)
    top = [t for r, t in zip(nat_rules, lines, strict=True) if r.chain in _NAT_TOP]
    top_text = nat_text if len(top) == len(lines) else "\n".join(top)
    return ServicePart(
        key, ports, tuple(filter_rules), tuple(nat_chains), tuple(nat_rules),
        filter_text=_lines(filter_rules), nat_top_text=top_text, nat_text=nat_text,
        chain_text="\n".join([c.line for c in nat_chains]))


def build(inp: ProxyInput, random_fully: bool) -> tuple[FixedPart, tuple[ServicePart, ...]]:
    """A full sync's iptables-restore input, as the fixed part and one part per Service.

    kube-proxy ranges over a Go map (random order); here Services come in inp.services
    order (build_input: by namespace and name, ports in spec.ports order). Any fixed order
    programs the same kernel state."""
    ctx = sync_context(inp)
    return fixed_part(ctx, random_fully), tuple(
        service_part(ctx, key, ports) for key, ports in inp.services.items())


def _top_chains(w: _Writer, ctx: SyncContext, random_fully: bool) -> None:
    for name in FILTER_TOP_CHAINS:
        w.chain(FILTER, name)
    for name in NAT_TOP_CHAINS:
        w.chain(NAT, name)
    mark = ctx.mark
    w.rule(NAT, KUBE_POSTROUTING, "-m", "mark", "!", "--mark", f"{mark}/{mark}", "-j", "RETURN")
    # Clear the mark so a packet that goes through the stack again is not masqueraded twice.
    w.rule(NAT, KUBE_POSTROUTING, "-j", "MARK", "--xor-mark", mark)
    masq = ["-m", "comment", "--comment", '"kubernetes service traffic requiring SNAT"',
            "-j", "MASQUERADE"]
    w.rule(NAT, KUBE_POSTROUTING, *masq, *(["--random-fully"] if random_fully else []))
    w.rule(NAT, KUBE_MARK_MASQ, "-j", "MARK", "--or-mark", mark)
    if ctx.localhost_nodeports:
        # route_localnet=1 lets 127/8 be routed; this blocks martians it would let in
        # (issue 90259). A copy of kubelet's rule.
        w.chain(FILTER, KUBELET_FIREWALL)
        w.rule(FILTER, KUBELET_FIREWALL, "-m", "comment", "--comment",
               '"block incoming localnet connections"', "-d", "127.0.0.0/8", "!", "-s",
               "127.0.0.0/8", "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT",
               "-j", "DROP")


def _tail(w: _Writer, ctx: SyncContext) -> None:
    """The last KUBE-SERVICES rule(s): anything addressed to the node goes to KUBE-NODEPORTS."""
    if not nodeport_cidrs(ctx.config):
        dest = ["-m", "addrtype", "--dst-type", "LOCAL"]
        if not ctx.localhost_nodeports:
            dest += ["!", "-d", "127.0.0.0/8"]
        w.rule(NAT, KUBE_SERVICES, "-m", "comment", "--comment", TAIL_COMMENT, *dest,
               "-j", KUBE_NODEPORTS, tail=True)
        return
    for ip in nodeport_ips(ctx.config):
        if ipaddress.IPv4Address(ip).is_loopback and not ctx.localhost_nodeports:
            continue
        w.rule(NAT, KUBE_SERVICES, "-m", "comment", "--comment", TAIL_COMMENT, "-d", ip,
               "-j", KUBE_NODEPORTS, tail=True)


def _forward(w: _Writer, ctx: SyncContext) -> None:
    mark = ctx.mark
    # Out-of-window packets conntrack marks INVALID would otherwise reset connections
    # (issues 74839, 117924).
    w.rule(FILTER, KUBE_FORWARD, "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
    # Accept marked (service) traffic even when the FORWARD policy is DROP.
    w.rule(FILTER, KUBE_FORWARD, "-m", "comment", "--comment", '"kubernetes forwarding rules"',
           "-m", "mark", "--mark", f"{mark}/{mark}", "-j", "ACCEPT")
    w.rule(FILTER, KUBE_FORWARD, "-m", "comment", "--comment",
           '"kubernetes forwarding conntrack rule"', "-m", "conntrack", "--ctstate",
           "RELATED,ESTABLISHED", "-j", "ACCEPT")


# ----------------------------------------------------------------- one ServicePort


def _quoted(text: str) -> str:
    return f'"{text}"'


class _ServicePortWriter:
    """The body of syncProxyRules' loop over svcPortMap, for one ServicePort."""

    def __init__(self, w: _Writer, ctx: SyncContext, spe: ServicePortEndpoints) -> None:
        self.w, self.ctx, self.spe = w, ctx, spe
        info, cat = spe.info, spe.categorized
        self.info, self.cat = info, cat
        self.p = info.proto
        self.spn = info.spn
        h = port_proto_hash(info)
        self.svc_chain, self.svl_chain = f"KUBE-SVC-{h}", f"KUBE-SVL-{h}"
        self.ext_chain, self.fw_chain = f"KUBE-EXT-{h}", f"KUBE-FW-{h}"
        self.cluster_ip = _ipv4(info.cluster_ip) or info.cluster_ip
        self.external_ips = _v4_only(info.external_ips)
        self.vips = _v4_only(info.load_balancer_vips)
        self.ranges = [c for c in map(_ipv4_cidr, info.load_balancer_source_ranges) if c]
        self._policies()

    def _policies(self) -> None:
        info, cat = self.info, self.cat
        self.has_endpoints = cat.has_any
        self.internal_chain, self.has_internal = self.svc_chain, self.has_endpoints
        if info.internal_policy_local:
            self.internal_chain = self.svl_chain
            self.has_internal = self.has_internal and bool(cat.local)
        self.external_policy_chain, self.has_external = self.svc_chain, self.has_endpoints
        if info.external_policy_local:
            self.external_policy_chain = self.svl_chain
            self.has_external = self.has_external and bool(cat.local)
        # Built on hasEndpoints, not hasExternalEndpoints: the short-circuit rules for
        # traffic from this node and its pods are needed even with no local endpoints.
        self.uses_ext = self.has_endpoints and info.externally_accessible
        self.uses_fw = self.has_endpoints and bool(self.vips) and bool(self.ranges)
        self.lb_chain = self.fw_chain if self.uses_fw else self.ext_chain
        if not self.has_endpoints:
            reason = _quoted(f"{self.spn} has no endpoints")
            self.internal_verdict = self.external_verdict = ("REJECT", reason)
        else:
            no_local = ("DROP", _quoted(f"{self.spn} has no local endpoints"))
            self.internal_verdict = no_local
            self.external_verdict = no_local

    def write(self) -> None:
        self._capture_cluster_ip()
        self._capture_external_ips()
        self._capture_load_balancer()
        self._capture_node_port()
        self._health_check()
        # From here on, lines go to per-service chains (those a partial sync may skip).
        self._internal_masquerade()
        self._external_chain()
        self._firewall_chain()
        if self.cat.cluster and self.info.uses_cluster_endpoints:
            self._policy_chain(self.svc_chain, self.cat.cluster)
        if self.cat.local and self.info.uses_local_endpoints:
            self._policy_chain(self.svl_chain, self.cat.local)
        for ep in self.cat.all_reachable:
            self._endpoint_chain(ep)

    def _match(self, dest: str, port: int) -> tuple[str, ...]:
        return ("-m", self.p, "-p", self.p, "-d", dest, "--dport", str(port))

    # --------------------------------------------------------- capture (top-level chains)

    def _capture_cluster_ip(self) -> None:
        match = self._match(self.cluster_ip, self.info.port)
        if self.has_internal:
            self.w.rule(NAT, KUBE_SERVICES, "-m", "comment", "--comment",
                        _quoted(f"{self.spn} cluster IP"), *match, "-j", self.internal_chain)
        else:
            target, comment = self.internal_verdict
            self.w.rule(FILTER, KUBE_SERVICES, "-m", "comment", "--comment", comment, *match,
                        "-j", target)

    def _capture_external_ips(self) -> None:
        for ip in self.external_ips:
            match = self._match(ip, self.info.port)
            if self.has_endpoints:
                self.w.rule(NAT, KUBE_SERVICES, "-m", "comment", "--comment",
                            _quoted(f"{self.spn} external IP"), *match, "-j", self.ext_chain)
            if not self.has_external:
                # REJECT (no endpoints at all) or DROP whatever the EXT chain did not
                # short-circuit (no local endpoints).
                self._external_filter(match)

    def _capture_load_balancer(self) -> None:
        for vip in self.vips:
            match = self._match(vip, self.info.port)
            if self.has_endpoints:
                self.w.rule(NAT, KUBE_SERVICES, "-m", "comment", "--comment",
                            _quoted(f"{self.spn} loadbalancer IP"), *match, "-j", self.lb_chain)
            if self.uses_fw:
                # What KUBE-FW-… did not accept was not DNATed: it still has the VIP.
                self.w.rule(FILTER, KUBE_PROXY_FIREWALL, "-m", "comment", "--comment",
                            _quoted(f"{self.spn} traffic not accepted by {self.fw_chain}"),
                            *match, "-j", "DROP")
        if not self.has_external:
            for vip in self.vips:
                self._external_filter(self._match(vip, self.info.port))

    def _capture_node_port(self) -> None:
        node_port = self.info.node_port
        if not node_port:
            return
        if self.has_endpoints:
            # NodePorts are not subject to loadBalancerSourceRanges (upstream, on purpose).
            # The `-d 127.0.0.0/8 -m nfacct` copy of this rule needs nfacct: not written.
            self.w.rule(NAT, KUBE_NODEPORTS, "-m", "comment", "--comment", self.spn,
                        "-m", self.p, "-p", self.p, "--dport", str(node_port),
                        "-j", self.ext_chain)
        if not self.has_external:
            target, comment = self.external_verdict
            self.w.rule(FILTER, KUBE_EXTERNAL_SERVICES, "-m", "comment", "--comment", comment,
                        "-m", "addrtype", "--dst-type", "LOCAL", "-m", self.p, "-p", self.p,
                        "--dport", str(node_port), "-j", target)

    def _health_check(self) -> None:
        port = self.info.health_check_node_port
        if port:
            # Accepted whether or not this node has endpoints: the answer is the point.
            self.w.rule(FILTER, KUBE_NODEPORTS, "-m", "comment", "--comment",
                        _quoted(f"{self.spn} health check node port"), "-m", "tcp", "-p", "tcp",
                        "--dport", str(port), "-j", "ACCEPT")

    def _external_filter(self, match: tuple[str, ...]) -> None:
        target, comment = self.external_verdict
        self.w.rule(FILTER, KUBE_EXTERNAL_SERVICES, "-m", "comment", "--comment", comment,
                    *match, "-j", target)

    # --------------------------------------------------------- per-service chains

    def _internal_masquerade(self) -> None:
        if not self.has_internal:
            return
        args = ("-m", "comment", "--comment", _quoted(f"{self.spn} cluster IP"),
                *self._match(self.cluster_ip, self.info.port))
        if self.ctx.config.masquerade_all:
            self.w.rule(NAT, self.internal_chain, *args, "-j", KUBE_MARK_MASQ)
        elif self.ctx.pod_cidr:
            # Off-cluster clients reaching a ClusterIP (a static route to the service
            # range) may be forwarded to another node: masquerade them.
            self.w.rule(NAT, self.internal_chain, *args, "!", "-s", self.ctx.pod_cidr,
                        "-j", KUBE_MARK_MASQ)

    def _external_chain(self) -> None:
        if not self.uses_ext:
            return
        w, spn, ext = self.w, self.spn, self.ext_chain
        w.chain(NAT, ext)
        if not self.info.external_policy_local:
            # Endpoints may be on other nodes: masquerade so replies come back here.
            w.rule(NAT, ext, "-m", "comment", "--comment",
                   _quoted(f"masquerade traffic for {spn} external destinations"),
                   "-j", KUBE_MARK_MASQ)
        else:
            if self.ctx.pod_cidr:
                # Pods reaching an external address act as if they went out to the LB
                # and back: neither traffic policy applies to them.
                w.rule(NAT, ext, "-m", "comment", "--comment",
                       _quoted(f"pod traffic for {spn} external destinations"),
                       "-s", self.ctx.pod_cidr, "-j", self.svc_chain)
            # The node itself picks a local address (maybe the VIP) as source: masquerade.
            w.rule(NAT, ext, "-m", "comment", "--comment",
                   _quoted(f"masquerade LOCAL traffic for {spn} external destinations"),
                   "-m", "addrtype", "--src-type", "LOCAL", "-j", KUBE_MARK_MASQ)
            w.rule(NAT, ext, "-m", "comment", "--comment",
                   _quoted(f"route LOCAL traffic for {spn} external destinations"),
                   "-m", "addrtype", "--src-type", "LOCAL", "-j", self.svc_chain)
        if self.has_external:
            w.rule(NAT, ext, "-j", self.external_policy_chain)

    def _firewall_chain(self) -> None:
        if not self.uses_fw:
            return
        w, fw = self.w, self.fw_chain
        w.chain(NAT, fw)
        head = ("-m", "comment", "--comment", _quoted(f"{self.spn} loadbalancer IP"))
        allow_from_node = False
        for cidr in self.ranges:
            w.rule(NAT, fw, *head, "-s", str(cidr), "-j", self.ext_chain)
            node_ip = _ipv4(self.ctx.node_ip) if self.ctx.node_ip else None
            if node_ip and ipaddress.IPv4Address(node_ip) in cidr:
                allow_from_node = True
        if allow_from_node:
            # A VIP-like LB often makes the VIP a local address: a connection from this
            # node then loops back with the VIP as source. Let it in.
            for vip in self.vips:
                w.rule(NAT, fw, *head, "-s", vip, "-j", self.ext_chain)
        # Falling off the end means no DNAT: KUBE-PROXY-FIREWALL drops it in filter.
        w.rule(NAT, fw, "-m", "comment", "--comment", _quoted(
            f"other traffic to {self.spn} will be dropped by KUBE-PROXY-FIREWALL"))

    def _comment(self, text: str) -> tuple[str, ...]:
        """appendServiceCommentLocked: no comment in large-cluster mode (~40% smaller)."""
        return () if self.ctx.large_cluster else ("-m", "comment", "--comment", text)

    def _policy_chain(self, chain: str, endpoints: tuple[EndpointInfo, ...]) -> None:
        """writeServiceToEndpointRules: affinity checks first, then the random spread."""
        self.w.chain(NAT, chain)
        if self.info.session_affinity:
            for ep in endpoints:
                sep = self._sep(ep)
                self.w.rule(NAT, chain, *self._comment(_quoted(f"{self.spn} -> {ep.string}")),
                            "-m", "recent", "--name", sep, "--rcheck", "--seconds",
                            str(self.info.sticky_seconds), "--reap", "-j", sep)
        n = len(endpoints)
        for i, ep in enumerate(endpoints):
            # Rule i matches 1/(n-i) of what reaches it; the last one takes the rest.
            stat = ("-m", "statistic", "--mode", "random", "--probability",
                    probability(n - i)) if i < n - 1 else ()
            self.w.rule(NAT, chain, *self._comment(_quoted(f"{self.spn} -> {ep.string}")),
                        *stat, "-j", self._sep(ep))

    def _endpoint_chain(self, ep: EndpointInfo) -> None:
        sep = self._sep(ep)
        self.w.chain(NAT, sep)
        head = self._comment(self.spn)
        # Hairpin: an endpoint reaching its own Service must not see itself as source.
        self.w.rule(NAT, sep, *head, "-s", ep.ip, "-j", KUBE_MARK_MASQ)
        affinity = ("-m", "recent", "--name", sep, "--set") if self.info.session_affinity \
            else ()
        self.w.rule(NAT, sep, *head, *affinity, "-m", self.p, "-p", self.p, "-j", "DNAT",
                    "--to-destination", ep.string)

    def _sep(self, ep: EndpointInfo) -> str:
        return "KUBE-SEP-" + endpoint_chain_hash(self.info, ep.string)
