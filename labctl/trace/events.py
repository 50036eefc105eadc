"""Parse `nft -a monitor trace` output into events, and events into hook visits.

Each line is one trace event of one packet at one netfilter hook:

    trace id 0120c10a ip kube-proxy nat-prerouting packet: iif "cni0" … ip daddr …
    trace id 0120c10a ip kube-proxy services rule ip daddr . … vmap @service-ips # handle 53 (…)
    trace id 0120c10a ip filter FORWARD policy accept

A *visit* is one pass of a packet through one base chain: a `packet:` line (the headers
as that hook saw them), the rules that matched — in that chain and the chains it jumped
to — and the end: the base chain's policy or a rule's final verdict (accept, drop —
REJECT shows as drop —, queue). The trace id is the kernel's hash of the packet buffer:
stable within one hook but not across hooks (NAT or bridging may change it) and reused
by later packets, so it only ties a visit's lines together.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

# The verdicts that end a base chain's pass (anything else goes on in the chain).
FINAL_VERDICTS = frozenset({"accept", "drop", "queue", "stolen"})

_HEAD = re.compile(r"^trace id (?P<id>[0-9a-f]+) (?P<family>\S+) (?P<table>\S+) "
                   r"(?P<chain>\S+) (?P<kind>packet:|rule|policy|verdict)\s?(?P<rest>.*)$")
_RULE_TAIL = re.compile(r"^(?P<rule>.*?)\s*(?:# handle (?P<handle>\d+))?\s*"
                        r"\(verdict (?P<verdict>\w+)(?: (?P<target>\S+))?\)\s*$")
_FIELDS = {
    "iif": re.compile(r'\biif "([^"]*)"'),
    "oif": re.compile(r'\boif "([^"]*)"'),
    "saddr": re.compile(r"\bip saddr (\S+)"),
    "daddr": re.compile(r"\bip daddr (\S+)"),
    "ttl": re.compile(r"\bip ttl (\d+)"),
    "dscp": re.compile(r"\bip dscp (\S+)"),
    "ip_id": re.compile(r"\bip id (\d+)"),
    "protocol": re.compile(r"\bip protocol (\S+)"),
    "sport": re.compile(r"\b(?:tcp|udp|sctp) sport (\d+)"),
    "dport": re.compile(r"\b(?:tcp|udp|sctp) dport (\d+)"),
    "tcp_flags": re.compile(r"\btcp flags == (\S+)"),
    "icmp_type": re.compile(r"\bicmp type (\S+)"),
    "icmp_id": re.compile(r"\bicmp id (\d+)"),
}
_L4 = re.compile(r"\b(tcp|udp|icmp|sctp) ")


@dataclass(frozen=True)
class Packet:
    """The headers a hook saw (the fields a walk needs; the rest stay in `text`)."""

    text: str
    iif: str = ""
    oif: str = ""
    saddr: str = ""
    daddr: str = ""
    ttl: int = 0
    dscp: str = ""  # as nft prints it: cs0, ef, 0x2d
    ip_id: int = -1
    protocol: str = ""
    sport: int = 0
    dport: int = 0
    tcp_flags: str = ""
    icmp_type: str = ""
    icmp_id: int = -1

    @classmethod
    def parse(cls, text: str) -> Packet:
        values: dict[str, str | int] = {}
        for name, pattern in _FIELDS.items():
            m = pattern.search(text)
            if m:
                kind = cls.__dataclass_fields__[name].type
                values[name] = int(m.group(1)) if kind == "int" else m.group(1)
        if "protocol" not in values:  # an `ip` family chain leaves out `ip protocol`
            m = _L4.search(text.split(" ip ", 1)[-1])
            if m:
                values["protocol"] = m.group(1)
        return cls(text.strip(), **values)  # type: ignore[arg-type]

    def endpoints(self) -> str:
        """`10.244.0.2:45682 → 10.100.195.26:80` (no ports for ICMP)."""
        if self.sport or self.dport:
            return f"{self.saddr}:{self.sport} → {self.daddr}:{self.dport}"
        return f"{self.saddr} → {self.daddr}"


@dataclass(frozen=True)
class Event:
    """One line of `nft monitor trace`."""

    trace_id: str
    family: str
    table: str
    chain: str
    kind: str  # packet | rule | policy | verdict
    packet: Packet | None = None
    rule: str = ""  # the rule as nft prints it (no handle)
    handle: int = 0
    verdict: str = ""  # continue, jump, goto, return, accept, drop, …
    target: str = ""  # the chain of a jump/goto

    @property
    def final(self) -> bool:
        return self.kind == "policy" or self.verdict in FINAL_VERDICTS


def parse_line(line: str) -> Event | None:
    """One event, or None for a line that is not a trace event."""
    m = _HEAD.match(line.rstrip("\n"))
    if not m:
        return None
    head = (m["id"], m["family"], m["table"], m["chain"])
    rest = m["rest"].strip()
    if m["kind"] == "packet:":
        return Event(*head, "packet", packet=Packet.parse(rest))
    if m["kind"] == "policy":
        return Event(*head, "policy", verdict=rest.split()[0] if rest else "")
    if m["kind"] == "verdict":
        words = rest.split()
        return Event(*head, "verdict", verdict=words[0] if words else "",
                     target=words[1] if len(words) > 1 else "")
    t = _RULE_TAIL.match(rest)
    if not t:
        return Event(*head, "rule", rule=rest)
    return Event(*head, "rule", rule=t["rule"].strip(), handle=int(t["handle"] or 0),
                 verdict=t["verdict"], target=t["target"] or "")


@dataclass
class Visit:
    """One pass of a packet through one base chain, in the order the monitor saw it."""

    family: str
    table: str
    chain: str  # the base chain
    packet: Packet | None
    events: list[Event] = field(default_factory=list)
    seq: int = 0  # position in the monitor's output

    @property
    def rules(self) -> list[Event]:
        return [e for e in self.events if e.kind == "rule"]

    @property
    def end(self) -> Event | None:
        return self.events[-1] if self.events and self.events[-1].final else None


def visits(lines: Iterable[str]) -> list[Visit]:
    """Group a monitor's lines into visits. Events of several packets may interleave
    (another CPU): each trace id has at most one open visit, which a `packet:` line
    starts and a final verdict closes."""
    out: list[Visit] = []
    open_: dict[str, Visit] = {}
    for line in lines:
        event = parse_line(line)
        if event is None:
            continue
        visit = open_.get(event.trace_id)
        if event.kind == "packet" or visit is None:
            visit = Visit(event.family, event.table, event.chain, event.packet, seq=len(out))
            out.append(visit)
            open_[event.trace_id] = visit
        if event.kind != "packet":
            visit.events.append(event)
        if event.final:
            open_.pop(event.trace_id, None)
    return out
