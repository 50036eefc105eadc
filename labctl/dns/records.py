"""DNS record values shared by the zone, the wire codec and the tests.

Names are plain strings of labels separated by dots, always absolute (ending in "."),
spelled exactly as they go on the wire (owner names keep the query's letter case).
"""

from __future__ import annotations

from dataclasses import dataclass

# Record types and classes (RFC 1035, 2782, 3596, 6891).
A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV, DNAME, OPT = 1, 2, 5, 6, 12, 15, 16, 28, 33, 39, 41
IXFR, AXFR, ANY = 251, 252, 255
IN = 1

# Response codes (BADVERS is the extended rcode 16 carried in the OPT record).
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, BADVERS = 0, 1, 2, 3, 4, 5, 16

TYPE_NAMES = {A: "A", NS: "NS", CNAME: "CNAME", SOA: "SOA", PTR: "PTR", MX: "MX", TXT: "TXT",
              AAAA: "AAAA", SRV: "SRV", DNAME: "DNAME", OPT: "OPT", IXFR: "IXFR",
              AXFR: "AXFR", ANY: "ANY"}
RCODE_NAMES = {NOERROR: "NOERROR", FORMERR: "FORMERR", SERVFAIL: "SERVFAIL",
               NXDOMAIN: "NXDOMAIN", NOTIMP: "NOTIMP", REFUSED: "REFUSED", BADVERS: "BADVERS"}

# Types whose data is one domain name.
NAME_TYPES = frozenset({NS, CNAME, PTR, DNAME})


@dataclass(frozen=True, slots=True)
class RR:
    """One resource record.

    `data` by type: A/AAAA the address text; NS/CNAME/PTR/DNAME the target name;
    SRV (priority, weight, port, target); TXT a tuple of strings; SOA (mname, rname,
    serial, refresh, retry, expire, minimum); anything else the raw RDATA bytes.
    """

    name: str
    type: int
    ttl: int
    data: object
    rclass: int = IN

    def text(self) -> str:
        """Zone-file form, e.g. `svc1.testns.svc.cluster.local. 5 IN A 10.96.1.1`."""
        kind = TYPE_NAMES.get(self.type, f"TYPE{self.type}")
        cls = "IN" if self.rclass == IN else f"CLASS{self.rclass}"
        return f"{self.name} {self.ttl} {cls} {kind} {self.data_text()}"

    def data_text(self) -> str:
        data = self.data
        if self.type == TXT and isinstance(data, tuple):
            return " ".join('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"' for s in data)
        if isinstance(data, tuple):
            return " ".join(str(x) for x in data)
        if isinstance(data, bytes):
            return f"\\# {len(data)} {data.hex()}"
        return str(data)


@dataclass(frozen=True, slots=True)
class Answer:
    """What the zone says about one question.

    `forward`: the name is outside the zones served — ask the upstreams (SERVFAIL when
    there are none). `fallthrough`: a reverse name with no record — the upstreams may
    know it; without upstreams this NXDOMAIN stands. `chase`: (name, type) of an
    ExternalName target outside the cluster domain; the upstreams' answer for it is
    appended after these records (without upstreams the CNAME stands alone).
    """

    rcode: int
    answer: tuple[RR, ...] = ()
    authority: tuple[RR, ...] = ()
    additional: tuple[RR, ...] = ()
    authoritative: bool = True
    forward: bool = False
    fallthrough: bool = False
    chase: tuple[str, int] | None = None

    def text(self) -> str:
        lines = [f"rcode {RCODE_NAMES.get(self.rcode, self.rcode)}"
                 f"{' aa' if self.authoritative else ''}"]
        for title, rrs in (("answer", self.answer), ("authority", self.authority),
                           ("additional", self.additional)):
            lines += [f"{title}: {rr.text()}" for rr in rrs]
        return "\n".join(lines)
