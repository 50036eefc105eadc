"""kube-proxy's userspace mode — the deprecated original — as a pure renderer.

    rs = userspace.render(input_for_node(state, "node1"))
    rs.proxies             # what the node's proxy process listens for: one port per ServicePort
    rs.payload()           # the portal rules, as `iptables-restore --noflush` input
    rs.jump_rules()        # the jumps into them kube-proxy ensures (iptablesInit)
    rs, text = userspace.render_update(old, inp)   # "" when no rule changed

The oldest kube-proxy did not forward packets itself: it ran a proxy *process* on every
node, listening on one port per Service port, and wrote iptables rules ("portals") that
send the Service's traffic to that port. The process picks an endpoint (round robin,
ClientIP affinity honoured), opens its own connection to it and copies bytes both ways.
Unlike the iptables mode that replaced it, a failed connect is retried on the next
endpoint (timeouts 250 ms, 500 ms, 1 s, 2 s) — the client never sees a dead pod. The
price: every byte crosses the kernel/user boundary twice, through one process per
node, and the backend sees the node, not the client, as its peer. Kubernetes deprecated
it in 1.23 and removed it in 1.26 (pkg/proxy/userspace).

The rules are those of upstream's proxier.go (kubernetes/kubernetes, pkg/proxy/userspace,
the last releases that had it), restated — never copied:

* nat `KUBE-PORTALS-CONTAINER` (from PREROUTING, prepended) and `KUBE-PORTALS-HOST`
  (from OUTPUT, prepended), comment "handle ClusterIPs; NOTE: this must be before the
  NodePort rules"; nat `KUBE-NODEPORT-CONTAINER` / `KUBE-NODEPORT-HOST` (appended to
  PREROUTING / OUTPUT, `-m addrtype --dst-type LOCAL`, comment "handle service NodePorts;
  NOTE: this must be the last rule in the chain"); filter `KUBE-NODEPORT-NON-LOCAL`
  (from INPUT, prepended, "Ensure that non-local NodePort traffic can flow").
* Per portal (the ClusterIP, each externalIP, each LoadBalancer ingress IP, on the
  Service port) and per NodePort: `-m comment --comment <ns/name[:port]> -p <proto> -m
  <proto> --dport <port> [-d <ip>/32]`. Traffic from containers (PREROUTING) is
  REDIRECTed to the proxy port when the proxy listens on 0.0.0.0 (kube-proxy's default
  --bind-address: REDIRECT picks the address of the interface the packet came in on, so
  the reply leaves from it and un-NATs), or DNATed to the bind address otherwise.
  Traffic from the node itself (OUTPUT) is always DNATed to the node IP: REDIRECT there
  would go to 127.0.0.1, whose replies do not un-NAT.
* externalIPs are portals only for packets not bridged from a local pod (`-m physdev !
  --physdev-is-in`) or addressed to the node itself (`-m addrtype --dst-type LOCAL`).
* KUBE-NODEPORT-NON-LOCAL accepts NEW connections to the proxy port (`-m state --state
  NEW -j ACCEPT`) for hosts whose INPUT policy drops.
* The proxy holds the NodePorts (and any portal IP:port that is the node's own) open
  with real sockets, so nothing else on the node can take them.

What labctl chooses where upstream left it to the host:
* Proxy ports: upstream asked the kernel for a free port (or took one from
  --proxy-port-range). Here they are a pure function of the Services, so the rules and
  the proxy process compute the same ones: sha256("ns/name:port/PROTO") into
  PORT_RANGE (below the NodePort range and the ephemeral ports), probing forward past
  ports taken, in ServicePort order.
* Endpoints: the ready addresses (what the Endpoints API that mode read listed).
  Traffic policies, loadBalancerSourceRanges and SCTP did not exist for it, and do
  not here either.

Pure: no I/O. labctl/proxy/userspace_daemon.py is the proxy process.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from labctl.proxy.base import ProxyConfig, ProxyInput, ServicePortEndpoints, ServicePortInfo

NAT, FILTER = "nat", "filter"
CONTAINER_PORTALS = "KUBE-PORTALS-CONTAINER"
HOST_PORTALS = "KUBE-PORTALS-HOST"
CONTAINER_NODEPORTS = "KUBE-NODEPORT-CONTAINER"
HOST_NODEPORTS = "KUBE-NODEPORT-HOST"
NON_LOCAL_NODEPORTS = "KUBE-NODEPORT-NON-LOCAL"
NAT_CHAINS = (CONTAINER_PORTALS, HOST_PORTALS, CONTAINER_NODEPORTS, HOST_NODEPORTS)
FILTER_CHAINS = (NON_LOCAL_NODEPORTS,)

PORTALS_COMMENT = "handle ClusterIPs; NOTE: this must be before the NodePort rules"
NODEPORTS_COMMENT = "handle service NodePorts; NOTE: this must be the last rule in the chain"
NON_LOCAL_COMMENT = "Ensure that non-local NodePort traffic can flow"

PROTOCOLS = ("TCP", "UDP")  # the only ones the userspace proxy could open sockets for
PORT_RANGE = (20000, 29999)  # labctl's --proxy-port-range (inclusive)
ANY = "0.0.0.0"  # --bind-address default: listen on every address, REDIRECT
DIAL_TIMEOUTS = (0.25, 0.5, 1.0, 2.0)  # one connect attempt each, then give up
UDP_IDLE_TIMEOUT = 0.25  # --udp-timeout default: a UDP "connection" idle this long ends
UDP_BUFFER = 4096  # bytes read per datagram, as upstream


@dataclass(frozen=True)
class Portal:
    """An address:port whose traffic the rules send to the proxy."""

    ip: str
    port: int
    external: bool = False  # an externalIP: not for traffic bridged from local pods


@dataclass(frozen=True)
class ProxiedPort:
    """One ServicePort as the node's proxy serves it."""

    info: ServicePortInfo
    proxy_port: int
    endpoints: tuple[str, ...]  # ready "IP:port", sorted
    portals: tuple[Portal, ...]

    @property
    def spn(self) -> str:
        return self.info.spn

    @property
    def protocol(self) -> str:
        return self.info.protocol

    @property
    def key(self) -> str:
        """What the proxy port is hashed from: "ns/name[:port]/PROTO"."""
        return port_key(self.info)

    @property
    def node_port(self) -> int:
        return self.info.node_port

    @property
    def affinity(self) -> bool:
        return self.info.session_affinity

    @property
    def sticky_seconds(self) -> int:
        return self.info.sticky_seconds


@dataclass(frozen=True)
class Claim:
    """A port the proxy holds open so that nothing else binds it (ip "" = every address)."""

    ip: str
    port: int
    protocol: str
    owner: str  # the ServicePortName


@dataclass(frozen=True)
class Rule:
    table: str
    chain: str
    args: tuple[str, ...]
    service: str = ""  # "ns/name"

    @property
    def line(self) -> str:
        return " ".join(("-A", self.chain, *(_quote(a) for a in self.args)))


def port_key(info: ServicePortInfo) -> str:
    return f"{info.spn}/{info.protocol}"


def _slot(key: str, size: int) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % size


def assign_ports(keys: Iterable[str], reserved: Iterable[int] = (),
                 port_range: tuple[int, int] = PORT_RANGE) -> dict[str, int]:
    """A proxy port per key: its hash slot in `port_range`, or the next free one after
    it (wrapping), skipping `reserved`. Keys are placed in the order given."""
    low, high = port_range
    size = high - low + 1
    taken = {p for p in reserved if low <= p <= high}
    out: dict[str, int] = {}
    for key in keys:
        if key in out:
            continue
        if len(taken) >= size:
            raise ValueError(f"no free proxy port left in {low}-{high} for {key}")
        slot = _slot(key, size)
        while low + slot in taken:
            slot = (slot + 1) % size
        out[key] = low + slot
        taken.add(low + slot)
    return out


def render(inp: ProxyInput, *, bind_address: str = ANY) -> UserspaceRuleset:
    """What kube-proxy's userspace mode programs on the node `inp` describes, and what
    its proxy process serves there. `bind_address`: kube-proxy's --bind-address."""
    ports = [pe for pe in inp.ports if pe.info.protocol in PROTOCOLS]
    assigned = assign_ports((port_key(pe.info) for pe in ports),
                            reserved=[pe.info.node_port for pe in inp.ports])
    proxies = tuple(_proxied(pe, assigned[port_key(pe.info)]) for pe in ports)
    config = inp.config
    host_ip = config.node_ips[0] if config.node_ips else ANY
    rules: list[Rule] = []
    claims: list[Claim] = []
    for p in proxies:
        rules += _portal_rules(p, bind_address, host_ip)
        claims += _claims(p, config)
    return UserspaceRuleset(config, bind_address, host_ip, proxies, tuple(rules),
                            tuple(claims))


def render_update(old: UserspaceRuleset, inp: ProxyInput, *, bind_address: str = ANY,
                  ) -> tuple[UserspaceRuleset, str]:
    """The ruleset for `inp` and what to load after `old`: nothing when the portal
    rules are the same (endpoints are the proxy's business, not the kernel's), else
    the whole of kube-proxy's chains again."""
    new = render(inp, bind_address=bind_address)
    return new, new.partial_payload(old)


def _proxied(pe: ServicePortEndpoints, proxy_port: int) -> ProxiedPort:
    info = pe.info
    portals = [Portal(info.cluster_ip, info.port)]
    portals += [Portal(ip, info.port, external=True) for ip in info.external_ips]
    portals += [Portal(ip, info.port) for ip in info.load_balancer_vips]
    ready = tuple(sorted(e.string for e in pe.endpoints if e.ready))
    return ProxiedPort(info, proxy_port, ready, tuple(portals))


def _match(p: ProxiedPort, port: int, ip: str = "", physdev: bool = False,
           dst_local: bool = False) -> list[str]:
    """iptablesCommonPortalArgs: comment, protocol, port, then the optional matches."""
    proto = p.info.proto
    args = ["-m", "comment", "--comment", p.spn, "-p", proto, "-m", proto,
            "--dport", str(port)]
    if ip:
        args += ["-d", f"{ip}/32"]
    if physdev:
        args += ["-m", "physdev", "!", "--physdev-is-in"]
    if dst_local:
        args += ["-m", "addrtype", "--dst-type", "LOCAL"]
    return args


def _to_proxy(p: ProxiedPort, bind_address: str) -> list[str]:
    """Where traffic from containers goes (iptablesContainerPortalArgs)."""
    if bind_address == ANY:
        return ["-j", "REDIRECT", "--to-ports", str(p.proxy_port)]
    return ["-j", "DNAT", "--to-destination", f"{bind_address}:{p.proxy_port}"]


def _to_proxy_from_host(p: ProxiedPort, bind_address: str, host_ip: str) -> list[str]:
    """Where the node's own traffic goes (iptablesHostPortalArgs): always a DNAT."""
    ip = host_ip if bind_address == ANY else bind_address
    return ["-j", "DNAT", "--to-destination", f"{ip}:{p.proxy_port}"]


def _portal_rules(p: ProxiedPort, bind_address: str, host_ip: str) -> list[Rule]:
    svc = f"{p.info.namespace}/{p.info.name}"
    container = _to_proxy(p, bind_address)
    host = _to_proxy_from_host(p, bind_address, host_ip)
    out = []
    for portal in p.portals:
        if portal.external:
            out += [Rule(NAT, CONTAINER_PORTALS,
                         (*_match(p, portal.port, portal.ip, physdev=True), *container), svc),
                    Rule(NAT, CONTAINER_PORTALS,
                         (*_match(p, portal.port, portal.ip, dst_local=True), *container), svc),
                    Rule(NAT, HOST_PORTALS,
                         (*_match(p, portal.port, portal.ip, dst_local=True), *host), svc)]
        else:
            out += [Rule(NAT, CONTAINER_PORTALS, (*_match(p, portal.port, portal.ip),
                                                  *container), svc),
                    Rule(NAT, HOST_PORTALS, (*_match(p, portal.port, portal.ip), *host), svc)]
    if p.node_port:
        out += [Rule(NAT, CONTAINER_NODEPORTS, (*_match(p, p.node_port), *container), svc),
                Rule(NAT, HOST_NODEPORTS, (*_match(p, p.node_port), *host), svc),
                Rule(FILTER, NON_LOCAL_NODEPORTS,
                     (*_match(p, p.proxy_port), "-m", "state", "--state", "NEW",
                      "-j", "ACCEPT"), svc)]
    return out


def _claims(p: ProxiedPort, config: ProxyConfig) -> list[Claim]:
    local = set(config.node_ips)
    out = [Claim(portal.ip, portal.port, p.protocol, p.spn)
           for portal in p.portals if portal.ip in local]
    if p.node_port:
        out.append(Claim("", p.node_port, p.protocol, p.spn))
    return out


def _quote(arg: str) -> str:
    return f'"{arg}"' if (" " in arg or not arg) else arg


# (table, operation, chain, extra args, comment, target): iptablesInit, in its order.
_JUMPS = (
    (NAT, "-I", "PREROUTING", (), PORTALS_COMMENT, CONTAINER_PORTALS),
    (NAT, "-I", "OUTPUT", (), PORTALS_COMMENT, HOST_PORTALS),
    (NAT, "-A", "PREROUTING", ("-m", "addrtype", "--dst-type", "LOCAL"), NODEPORTS_COMMENT,
     CONTAINER_NODEPORTS),
    (NAT, "-A", "OUTPUT", ("-m", "addrtype", "--dst-type", "LOCAL"), NODEPORTS_COMMENT,
     HOST_NODEPORTS),
    (FILTER, "-I", "INPUT", (), NON_LOCAL_COMMENT, NON_LOCAL_NODEPORTS),
)


def _jump_argv(op: str) -> list[list[str]]:
    return [["-t", table, op if op == "-D" else verb, chain, *extra,
             "-m", "comment", "--comment", comment, "-j", target]
            for table, verb, chain, extra, comment, target in _JUMPS]


@dataclass(frozen=True)
class UserspaceRuleset:
    """The node's portal rules and what its proxy process serves."""

    config: ProxyConfig
    bind_address: str
    host_ip: str
    proxies: tuple[ProxiedPort, ...]
    rules: tuple[Rule, ...]
    claims: tuple[Claim, ...]

    @functools.cached_property
    def by_key(self) -> dict[str, ProxiedPort]:
        return {p.key: p for p in self.proxies}

    def proxy_port(self, spn: str, protocol: str = "TCP") -> int:
        return self.by_key[f"{spn}/{protocol}"].proxy_port

    # ------------------------------------------------------------- restore input

    def payload(self) -> str:
        """kube-proxy's chains, declared (so emptied) and filled: a full sync."""
        return _restore(self._tables(self.rules))

    def partial_payload(self, old: UserspaceRuleset) -> str:
        """"" when the rules are those `old` loaded, else the full payload."""
        if old.rules == self.rules:
            return ""
        return self.payload()

    def update_payload(self, old: UserspaceRuleset) -> str:
        """partial_payload, under the name the nftables and IPVS rulesets use."""
        return self.partial_payload(old)

    def _tables(self, rules: Sequence[Rule]) -> list[tuple[str, list[str], list[str]]]:
        return [(NAT, [f":{c} - [0:0]" for c in NAT_CHAINS],
                 [r.line for r in rules if r.table == NAT]),
                (FILTER, [f":{c} - [0:0]" for c in FILTER_CHAINS],
                 [r.line for r in rules if r.table == FILTER])]

    def jump_rules(self) -> list[list[str]]:
        """The jumps iptablesInit ensures (EnsureRule: -C first, then -I or -A)."""
        return _jump_argv("")

    def ensure_chains(self) -> list[list[str]]:
        """`-N` for each chain a jump targets (EnsureChain)."""
        return [["-t", table, "-N", target] for table, *_r, target in _JUMPS]

    def cleanup_payload(self) -> tuple[str, list[list[str]]]:
        """What `kube-proxy --cleanup` did for this mode (CleanupLeftovers): delete the
        jumps (the argv; "does not exist" is success), then flush and delete the
        chains (the restore text)."""
        text = _restore([(NAT, [f":{c} - [0:0]" for c in NAT_CHAINS],
                          [f"-X {c}" for c in NAT_CHAINS]),
                         (FILTER, [f":{c} - [0:0]" for c in FILTER_CHAINS],
                          [f"-X {c}" for c in FILTER_CHAINS])])
        return text, _jump_argv("-D")

    # ------------------------------------------------------------- views

    def for_service(self, namespace: str, name: str) -> str:
        """The rules of one Service as restore text ("" if it has none)."""
        mine = [r for r in self.rules if r.service == f"{namespace}/{name}"]
        if not mine:
            return ""
        tables = []
        for table, chains, _lines in self._tables(mine):
            lines = [r.line for r in mine if r.table == table]
            if lines:
                used = {r.chain for r in mine if r.table == table}
                tables.append((table, [c for c in chains if c[1:].split()[0] in used], lines))
        return _restore(tables)

    def chains(self) -> dict[str, dict[str, list[str]]]:
        """table → chain → its rule lines."""
        out: dict[str, dict[str, list[str]]] = {NAT: {c: [] for c in NAT_CHAINS},
                                                FILTER: {c: [] for c in FILTER_CHAINS}}
        for r in self.rules:
            out[r.table][r.chain].append(r.line)
        return out

    def describe(self) -> str:
        """The proxy process's side, as `#` comment lines (iptables-restore skips them):
        each proxy port, its Service port, protocol and endpoints."""
        lines = [f"# kube-proxy userspace mode (deprecated, removed in Kubernetes 1.26): "
                 f"the proxy process on {self.config.node_name} listens on "
                 f"{self.bind_address}"]
        for p in self.proxies:
            eps = ", ".join(p.endpoints) or "none (connections are reset)"
            extra = " sessionAffinity=ClientIP" if p.affinity else ""
            lines.append(f"#   :{p.proxy_port}/{p.protocol} {p.spn}{extra} -> {eps}")
        return "\n".join(lines) + "\n"


def _restore(tables: list[tuple[str, list[str], list[str]]]) -> str:
    lines: list[str] = []
    for name, chains, rules in tables:
        lines += [f"*{name}", *chains, *rules, "COMMIT"]
    return "\n".join(lines) + "\n"
