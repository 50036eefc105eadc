"""A node's connection-tracking table, parsed: what NAT kube-proxy's rules did.

`conntrack -L` prints one flow per line: protocol, timeout, TCP state, the original
direction's tuple, the reply direction's tuple, flags and counters. A DNAT shows as a
reply that comes from somewhere other than where the original went; an SNAT as a reply
that goes to somewhere other than where the original came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from labctl.testing.runner import netns_exec

TUPLE_KEYS = ("src", "dst", "sport", "dport", "type", "code", "id")


@dataclass(frozen=True)
class FlowTuple:
    src: str
    dst: str
    sport: int | None = None  # TCP/UDP; for ICMP the id is in `id`
    dport: int | None = None
    id: int | None = None

    def __str__(self) -> str:
        if self.sport is None:
            return f"{self.src} -> {self.dst}"
        return f"{self.src}:{self.sport} -> {self.dst}:{self.dport}"


@dataclass(frozen=True)
class Entry:
    proto: str  # tcp | udp | icmp | …
    timeout: int
    state: str  # TCP's state (ESTABLISHED, SYN_SENT, …); "" for other protocols
    orig: FlowTuple
    reply: FlowTuple
    flags: frozenset[str] = frozenset()  # ASSURED, UNREPLIED, …
    extra: dict[str, str] = field(default_factory=dict, compare=False)  # mark, use, zone, …

    @property
    def dnat(self) -> bool:
        """The destination was rewritten (e.g. a Service address to a pod's)."""
        return (self.reply.src, self.reply.sport) != (self.orig.dst, self.orig.dport)

    @property
    def snat(self) -> bool:
        """The source was rewritten (e.g. masqueraded to a node's address)."""
        return (self.reply.dst, self.reply.dport) != (self.orig.src, self.orig.sport)

    def __str__(self) -> str:
        nat = [w for w, on in (("DNAT", self.dnat), ("SNAT", self.snat)) if on]
        return (f"{self.proto} {self.state or '-'} {self.orig} | reply {self.reply}"
                f"{' [' + ','.join(nat) + ']' if nat else ''}")


def _tuple(values: dict[str, str]) -> FlowTuple:
    def num(key: str) -> int | None:
        return int(values[key]) if key in values else None

    return FlowTuple(values.get("src", ""), values.get("dst", ""), num("sport"), num("dport"),
                     num("id"))


def parse_line(line: str) -> Entry | None:
    """One line of `conntrack -L` (None for lines that are not a flow)."""
    words = line.split()
    if len(words) < 4 or not words[1].isdigit():
        return None
    proto, rest = words[0], words[2:]
    timeout = int(rest.pop(0)) if rest and rest[0].isdigit() else 0
    state = rest.pop(0) if rest and "=" not in rest[0] and not rest[0].startswith("[") else ""
    tuples: list[dict[str, str]] = [{}]
    flags, extra = set(), {}
    for word in rest:
        if word.startswith("["):
            flags.add(word.strip("[]"))
            continue
        key, eq, value = word.partition("=")
        if not eq:
            continue
        if key in TUPLE_KEYS:
            if key == "src" and "src" in tuples[-1] and len(tuples) == 1:
                tuples.append({})  # the reply direction starts
            if key not in tuples[-1]:
                tuples[-1][key] = value
                continue
        extra[key] = value
    if len(tuples) != 2:
        return None
    return Entry(proto, timeout, state, _tuple(tuples[0]), _tuple(tuples[1]),
                 frozenset(flags), extra)


def parse(text: str) -> list[Entry]:
    return [e for e in map(parse_line, text.splitlines()) if e is not None]


def read(ns: str) -> list[Entry]:
    """The conntrack table of namespace `ns` (a node's, usually)."""
    proc = netns_exec(ns, ["conntrack", "-L"])
    if proc.returncode != 0:
        raise RuntimeError(f"conntrack -L in {ns} failed: {proc.stderr.strip()}")
    return parse(proc.stdout)


def matching(entries: list[Entry], proto: str | None = None, src: str | None = None,
             dst: str | None = None, sport: int | None = None,
             dport: int | None = None) -> list[Entry]:
    """Entries whose original direction matches every field given."""
    want = {"src": src, "dst": dst, "sport": sport, "dport": dport}
    return [e for e in entries if (proto is None or e.proto == proto)
            and all(v is None or getattr(e.orig, k) == v for k, v in want.items())]
