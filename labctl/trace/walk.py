"""From every traced namespace's events to one walk of the probe's packet (pure).

The request is the probe's first packet (a TCP SYN, the UDP datagram, the ICMP echo
request), the reply the first packet back (SYN-ACK or RST, the datagram, the echo
reply). Each namespace's monitor gives its own events in order; across namespaces the
order comes from the IP TTL, which every routed hop lowers by one: a namespace entered
with a higher TTL was crossed earlier. At one TTL — a pod and its node, or a hop through
the bridge, which does not lower it — the namespace that made the packet comes first
and a pod it arrives in last; a namespace entered twice (a hairpin) gives two runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from labctl.trace.events import Packet, Visit, visits
from labctl.trace.rulebook import TRACE_PREFIX, RuleBook

# The probe's DSCP (an unassigned codepoint): NAT and forwarding keep it, so the request
# is recognised at every hop even after a masquerade changed its source port.
DSCP = 0x2D

RouteLookup = Callable[[str, str, str, str], dict[str, object]]  # ns, dst, src, iif


@dataclass(frozen=True)
class Place:
    """One traced namespace and what was read from it."""

    where: str  # "node1", "pod default/client"
    kind: str  # node | pod
    netns: str
    lines: Sequence[str]
    rules: RuleBook = field(default_factory=RuleBook)
    conntrack: Sequence[str] = ()


@dataclass(frozen=True)
class Flow:
    """What the trace follows: the probe's protocol, its source port (TCP, UDP) or echo
    id (ICMP), and the DSCP its packets carry."""

    protocol: str  # tcp | udp | icmp
    port: int
    dscp: int = DSCP

    @property
    def dscp_text(self) -> str:
        """The DSCP as `nft monitor trace` prints it (an unnamed value: hex)."""
        return f"0x{self.dscp:02x}"


@dataclass
class RuleHit:
    table: str  # "ip nat"
    chain: str
    rule: str  # as the ruleset shows it (iptables-save for iptables-nft rules)
    handle: int
    verdict: str
    target: str
    action: str  # in words: "jump KUBE-SVC-…", "DNAT to 10.244.1.2:8080", "REJECT …"
    element: str = ""  # the verdict map element that matched (nftables mode), as listed


@dataclass
class ChainPass:
    """One base chain's pass: the rules that matched and how it ended."""

    table: str  # "ip nat"
    chain: str
    priority: int
    rules: list[RuleHit]
    end: str  # "policy accept", "accept", "drop", "" (not seen)


@dataclass
class Step:
    n: int
    where: str
    kind: str  # node | pod
    netns: str
    hook: str
    iif: str
    oif: str
    packet: str  # addresses and ports as this hook saw them
    ttl: int
    chains: list[ChainPass]
    notes: list[str] = field(default_factory=list)
    headers: Packet | None = None  # every header field this hook saw, parsed


@dataclass
class Direction:
    name: str  # request | reply
    packet: str  # "TCP SYN", …
    steps: list[Step]
    result: str  # arrived | delivered | rejected | dropped | redirected | left | not-seen
    summary: str


@dataclass
class Walk:
    request: Direction
    reply: Direction
    conntrack: dict[str, list[str]]
    notes: list[str]


# ------------------------------------------------------------------ choosing the packets


def _ours(p: Packet, flow: Flow) -> bool:
    """The probe's own request: it carries the probe's DSCP (kept through NAT and
    forwarding), or — output captured without it — its source port / echo id."""
    if p.dscp == flow.dscp_text:
        return True
    return (p.icmp_id if flow.protocol == "icmp" else p.sport) == flow.port


def is_request(p: Packet, flow: Flow) -> bool:
    if p.protocol not in ("", flow.protocol) or not _ours(p, flow):
        return False
    if flow.protocol == "icmp":
        return p.icmp_type == "echo-request"
    return flow.protocol != "tcp" or p.tcp_flags == "syn"


def is_reply(p: Packet, flow: Flow) -> bool:
    """The first answer. Only the probe's flow is traced (its port, or the conntrack
    label its request put on the connection, which a masquerade's new port keeps), so
    any traced packet going back is the reply — but for the end marker (127.0.0.1)."""
    if p.protocol not in ("", flow.protocol) or p.dscp == flow.dscp_text or \
            "127.0.0.1" in (p.saddr, p.daddr):
        return False
    if flow.protocol == "icmp":
        return p.icmp_type == "echo-reply"
    # SYN-ACK is 0x12; a reset (no listener, a proxy with no endpoint) rst or 0x14
    return flow.protocol != "tcp" or p.tcp_flags in ("0x12", "rst", "0x14")


TCP_FLAGS = {"syn": "TCP SYN", "0x12": "TCP SYN-ACK", "rst": "TCP RST", "0x14": "TCP RST-ACK"}
FIRST_PACKET = {"tcp": ("TCP SYN", "TCP SYN-ACK (or RST)"), "udp": ("UDP datagram", "UDP reply"),
                "icmp": ("ICMP echo request", "ICMP echo reply")}


# ------------------------------------------------------------------ building the walk


def build(places: Sequence[Place], flow: Flow, pods_by_ip: dict[str, str],
          route: RouteLookup | None = None, mode: str = "") -> Walk:
    """The walk of the request and the reply. `pods_by_ip`: pod IP → how to name it
    ("default/web on node2"); `route`: the kernel's route lookup in a namespace."""
    parsed = {pl.netns: visits(pl.lines) for pl in places}
    names = FIRST_PACKET[flow.protocol]
    # A retransmitted SYN is another packet: keep the first one's IP id (forwarding and
    # NAT keep it), as the first namespace that saw a request — the pod — recorded it.
    first_id = next((v.packet.ip_id for pl in places for v in parsed[pl.netns]
                     if v.packet and is_request(v.packet, flow)), -1)
    request = _direction("request", names[0], places, parsed,
                         lambda p: is_request(p, flow) and p.ip_id == first_id, pods_by_ip,
                         route)
    reply = _direction("reply", names[1], places, parsed,
                       lambda p: is_reply(p, flow), pods_by_ip, route)
    for step in reply.steps:
        step.n += len(request.steps)
    if request.result == "rejected" and not reply.steps:
        reply.summary = ("none: the REJECT rule answers in its place (an ICMP error, or a "
                         "TCP reset), which the pod's socket reports as connection refused")
    conntrack = {}
    for pl in places:
        seen = next((s.headers for s in request.steps if s.netns == pl.netns and s.headers),
                    None)
        mine = [describe_conntrack(c) for c in pl.conntrack if seen and same_flow(c, seen)]
        if mine:
            conntrack[pl.where] = mine
    return Walk(request, reply, conntrack, mode_notes(mode, request))


def _direction(name: str, packet_name: str, places: Sequence[Place],
               parsed: dict[str, list[Visit]], wanted: Callable[[Packet], bool],
               pods_by_ip: dict[str, str], route: RouteLookup | None) -> Direction:
    runs: list[tuple[int, int, Place, list[Visit]]] = []
    for pl in places:
        chosen = [v for v in parsed[pl.netns] if v.packet is not None and wanted(v.packet)]
        for run in _split_runs(chosen, pl.rules):
            # At one TTL (a bridged hop does not lower it) the run where the packet was
            # made (output) comes first, a pod it arrives in (prerouting) last.
            hook = pl.rules.hook(run[0].family, run[0].table, run[0].chain)[0]
            rank = -1 if hook == "output" else 1 if pl.kind == "pod" else 0
            runs.append((-(run[0].packet.ttl if run[0].packet else 0), rank, pl, run))
    runs.sort(key=lambda r: (r[0], r[1]))
    steps: list[Step] = []
    for _ttl, _rank, pl, run in runs:
        for group in _by_hook(run, pl.rules):
            steps.append(_step(len(steps) + 1, pl, group))
        _note_route(steps[-1] if steps else None, pl, run, route)
    first = next((v.packet for _t, _r, _p, run in runs for v in run if v.packet), None)
    if first is not None and first.tcp_flags:
        packet_name = TCP_FLAGS.get(first.tcp_flags, f"TCP flags {first.tcp_flags}")
    result, summary = _ending(steps, pods_by_ip)
    if steps:
        steps[-1].notes.append(summary)
    return Direction(name, packet_name, steps, result, summary)


def _split_runs(chosen: list[Visit], rules: RuleBook) -> list[list[Visit]]:
    """A namespace entered twice (a packet that came back, a hairpin through the node)
    gives two runs: a new one starts when the TTL goes up or the packet is at
    prerouting again after a later hook."""
    runs: list[list[Visit]] = []
    last_ttl, last_hook = -1, ""
    for v in chosen:
        ttl = v.packet.ttl if v.packet else 0
        hook = rules.hook(v.family, v.table, v.chain)[0]
        if not runs or ttl > last_ttl or (hook == "prerouting" and last_hook not in
                                          ("", "prerouting")):
            runs.append([])
        runs[-1].append(v)
        last_ttl, last_hook = ttl, hook
    return runs


def _by_hook(run: list[Visit], rules: RuleBook) -> list[list[Visit]]:
    """Consecutive visits of one hook (its base chains in priority order). A base chain
    met again at the same hook and TTL is a copy of the packet (a retransmission): left out."""
    groups: list[list[Visit]] = []
    last = None
    for v in run:
        hook = rules.hook(v.family, v.table, v.chain)[0]
        if not groups or hook != last:
            groups.append([])
        elif any((g.family, g.table, g.chain) == (v.family, v.table, v.chain)
                 for g in groups[-1]):
            continue
        groups[-1].append(v)
        last = hook
    return groups


def _step(n: int, pl: Place, group: list[Visit]) -> Step:
    first = group[0].packet
    assert first is not None
    chains = []
    for v in group:
        if v.table.startswith(TRACE_PREFIX):
            continue  # labctl's own trace table: it only marks the packet
        hook, prio = pl.rules.hook(v.family, v.table, v.chain)
        p = v.packet or first
        key = (p.daddr, p.protocol, p.dport) if p.dport else (p.daddr, p.protocol)
        hits = [RuleHit(f"{e.family} {e.table}", e.chain,
                        pl.rules.quote(e.family, e.table, e.chain, e.handle, e.rule),
                        e.handle, e.verdict, e.target, action(e.rule, e.verdict, e.target),
                        pl.rules.element(e.family, e.table, e.rule, e.target, key))
                for e in v.rules]
        end = v.end
        ending = "" if end is None else (f"policy {end.verdict}" if end.kind == "policy"
                                         else end.verdict)
        chains.append(ChainPass(f"{v.family} {v.table}", v.chain, prio, hits, ending))
    hook = pl.rules.hook(group[0].family, group[0].table, group[0].chain)[0]
    last = group[-1].packet or first
    return Step(n, pl.where, pl.kind, pl.netns, hook, first.iif, last.oif or first.oif,
                first.endpoints(), first.ttl, chains, headers=first)


_ACTIONS = [
    (re.compile(r"\bdnat to (\S+)"), "DNAT to {}"),
    (re.compile(r"\bsnat to (\S+)"), "SNAT to {}"),
    (re.compile(r"\bredirect to :?(\S+)"), "REDIRECT to local port {}"),
    (re.compile(r"\bmasquerade\b"), "MASQUERADE (SNAT to the address of the interface out)"),
    (re.compile(r"\breject( with [\w -]+)?"), "REJECT{}"),
    (re.compile(r"\bmeta mark set (.+?)(?:\s+counter|\s*$)"), "sets the mark: {}"),
]


def action(rule: str, verdict: str, target: str) -> str:
    """What a matched rule did, in words (a jump names its chain, whatever the chain's
    name says — `jump mark-for-masquerade` only marks)."""
    if verdict in ("jump", "goto"):
        return f"{verdict} {target}"
    for pattern, text in _ACTIONS:
        m = pattern.search(rule)
        if m:
            return text.format((m.group(1) or "").strip() if m.groups() else "")
    return verdict


def _note_route(step: Step | None, pl: Place, run: list[Visit],
                route: RouteLookup | None) -> None:
    """The kernel's route for the packet as it was forwarded (after DNAT, before SNAT)."""
    if step is None or route is None or pl.kind != "node":
        return
    forwarded = next((v.packet for v in run if v.packet and v.packet.iif and v.packet.oif), None)
    if forwarded is None:
        return
    r = route(pl.netns, forwarded.daddr, forwarded.saddr, forwarded.iif)
    if not r:
        return
    via = f" via {r['gateway']}" if r.get("gateway") else ""
    step.notes.append(f"route: {forwarded.daddr}{via} dev {r.get('dev', '?')}")


def _ending(steps: list[Step], pods_by_ip: dict[str, str]) -> tuple[str, str]:
    if not steps:
        return "not-seen", "not seen in any traced namespace"
    last = steps[-1]
    for chain in reversed(last.chains):
        if chain.end == "drop":
            rule = chain.rules[-1] if chain.rules else None
            how = "rejected" if rule and rule.action.startswith("REJECT") else "dropped"
            where = (f"{rule.table} {rule.chain} rule '{rule.rule}'" if rule
                     else f"{chain.table} {chain.chain} (policy)")
            return how, f"{how} by {where}"
    if last.kind == "pod":
        if last.hook == "prerouting":
            return "arrived", f"arrived at {last.where}"
        return "left", f"left {last.where} by {last.oif or 'eth0'}; no node saw it"
    if last.hook == "input":
        here = [s for s in steps if s.netns == last.netns]
        redirect = next((r for s in here for c in s.chains for r in c.rules
                         if r.action.startswith("REDIRECT")), None)
        if redirect:
            return "redirected", (f"redirected to {last.where}'s own kube-proxy process "
                                  f"({redirect.action}); the proxy opens a new connection "
                                  "to an endpoint, which this trace does not follow")
        return "delivered", f"delivered to {last.where} itself (input hook)"
    daddr = last.packet.split(" → ")[-1].rsplit(":", 1)[0]
    pod = pods_by_ip.get(daddr)
    if pod and last.oif and last.oif != "eth0":
        return "arrived", f"left by {last.oif}: arrived at pod {pod} ({daddr})"
    return "left", f"left {last.where} by {last.oif or '?'} toward {daddr} (not seen again)"


# ------------------------------------------------------------------ conntrack and notes

_TUPLE = re.compile(r"src=(\S+) dst=(\S+)(?: sport=(\d+) dport=(\d+))?")
_ICMP_ID = re.compile(r"\bid=(\d+)")


def same_flow(line: str, p: Packet) -> bool:
    """Whether a `conntrack -L` line is the connection whose request looked like `p`
    when it entered that namespace (its original tuple)."""
    m = _TUPLE.search(line)
    if not m or (m.group(1), m.group(2)) != (p.saddr, p.daddr):
        return False
    if p.icmp_id >= 0:
        ident = _ICMP_ID.search(line)
        return ident is not None and int(ident.group(1)) == p.icmp_id
    return m.group(3) is not None and (int(m.group(3)), int(m.group(4))) == (p.sport, p.dport)


def describe_conntrack(line: str) -> str:
    """A `conntrack -L` line in words: the tuple and the NAT it records."""
    words = line.split()
    tuples = _TUPLE.findall(line)
    if len(tuples) < 2:
        return line.strip()
    (osrc, odst, osport, odport), (rsrc, rdst, rsport, rdport) = tuples[:2]
    o_s = f"{osrc}:{osport}" if osport else osrc
    o_d = f"{odst}:{odport}" if odport else odst
    r_s = f"{rsrc}:{rsport}" if rsport else rsrc
    r_d = f"{rdst}:{rdport}" if rdport else rdst
    nat = []
    if (rsrc, rsport) != (odst, odport):
        nat.append(f"DNAT {o_d} → {r_s}")
    if (rdst, rdport) != (osrc, osport):
        nat.append(f"SNAT {o_s} → {r_d}")
    state = next((w for w in words[3:5] if w.isupper()), "")
    head = f"{words[0]} {o_s} → {o_d}" + (f" [{state}]" if state else "")
    return head + ": " + (", ".join(nat) if nat else "no NAT")


def mode_notes(mode: str, request: Direction) -> list[str]:
    if mode == "ipvs":
        return ["IPVS mode: the translation to an endpoint happens in IPVS's own hooks, not "
                "in an nftables or iptables rule, so no rule above shows the DNAT: the "
                "packet enters INPUT for the Service address on kube-ipvs0 and leaves with "
                "the endpoint's address (conntrack shows the translation; `labctl rules "
                "NODE` shows `ipvsadm -Ln`)"]
    if mode == "userspace":
        return ["userspace mode (deprecated): kube-proxy's iptables portals REDIRECT the "
                "packet to the node's proxy process; the trace ends there — the proxy's own "
                "connection to an endpoint is a second connection"]
    return []
