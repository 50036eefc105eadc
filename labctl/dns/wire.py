"""DNS wire format, just what the responder needs (RFC 1035, 6891), fast and strict.

`parse_query` reads a query defensively (every length checked, compression pointers
may only point backwards, so loops are impossible) and raises `FormatError` — carrying
the header when one could be read — for anything malformed. `encode_reply` builds a
reply with name compression; the question is copied byte for byte from the query, so
the reply echoes the query's letter case exactly. `parse_records` reads the answer of
an upstream server (for ExternalName targets outside the cluster).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from labctl.dns.records import (
    AAAA,
    FORMERR,
    MX,
    NAME_TYPES,
    OPT,
    RR,
    SOA,
    SRV,
    TXT,
    A,
    Answer,
)

MAX_UDP = 65535
PLAIN_UDP = 512  # the UDP limit without EDNS0
MAX_NAME = 255
# Names are text, one character per octet (latin-1); a "." inside a label (legal in DNS,
# never in a cluster name) is written as this character, which no octet decodes to.
IN_LABEL_DOT = "\u2024"

# Header flag bits.
QR, AA, TC, RD, RA, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0010
OPCODE_MASK = 0x7800

_H = struct.Struct("!HHHHHH")
_QTAIL = struct.Struct("!HH")
_RRHEAD = struct.Struct("!HHIH")
_SRVHEAD = struct.Struct("!HHH")
_SOATAIL = struct.Struct("!IIIII")


class FormatError(Exception):
    """A malformed message. `header` is (id, flags) when the header could be read."""

    def __init__(self, message: str, header: tuple[int, int] | None = None) -> None:
        super().__init__(message)
        self.header = header


@dataclass(frozen=True, slots=True)
class Edns:
    udp_size: int
    version: int
    do: bool


@dataclass(frozen=True, slots=True)
class Query:
    id: int
    flags: int
    qname: str  # labels joined by "." (latin-1; a "." inside a label becomes IN_LABEL_DOT)
    qtype: int
    qclass: int
    question: bytes  # the question section exactly as received
    edns: Edns | None

    @property
    def opcode(self) -> int:
        return (self.flags & OPCODE_MASK) >> 11

    def udp_limit(self) -> int:
        if self.edns is None:
            return PLAIN_UDP
        return max(PLAIN_UDP, self.edns.udp_size)


# ---------------------------------------------------------------- reading


def read_name(data: bytes, offset: int, pointers: bool = True
              ) -> tuple[tuple[bytes, ...], int]:
    """The labels of the name at `offset` and the offset just after it.

    Compression pointers must point strictly backwards (before the name being read),
    which rules out loops; the decoded name may not exceed 255 bytes. A query's
    question has nothing before it to point at: there `pointers` is False.
    """
    labels: list[bytes] = []
    end = -1
    limit = offset  # a pointer must land before where this chain started
    total = 1
    hops = 0
    pos = offset
    size = len(data)
    while True:
        if pos >= size:
            raise FormatError("name runs past the end")
        length = data[pos]
        if length == 0:
            pos += 1
            break
        kind = length & 0xC0
        if kind == 0xC0:
            if not pointers:
                raise FormatError("compression pointer in the question")
            if pos + 1 >= size:
                raise FormatError("truncated compression pointer")
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if end < 0:
                end = pos + 2
            hops += 1
            if target >= limit or hops > 127:
                raise FormatError("compression pointer does not point backwards")
            limit = target
            pos = target
            continue
        if kind:
            raise FormatError("unknown label type")
        pos += 1
        if pos + length > size:
            raise FormatError("label runs past the end")
        total += length + 1
        if total > MAX_NAME:
            raise FormatError("name longer than 255 bytes")
        labels.append(data[pos:pos + length])
        pos += length
    return tuple(labels), (pos if end < 0 else end)


def _read_rr(data: bytes, offset: int) -> tuple[int, int, int, int, int]:
    """One resource record's (type, class, ttl, rdata offset, rdata length)."""
    _labels, pos = read_name(data, offset)
    if pos + 10 > len(data):
        raise FormatError("record header runs past the end")
    rtype, rclass, ttl, rdlen = _RRHEAD.unpack_from(data, pos)
    pos += 10
    if pos + rdlen > len(data):
        raise FormatError("record data runs past the end")
    return rtype, rclass, ttl, pos, rdlen


def parse_query(data: bytes) -> Query:
    """Parse a query (one question, optional OPT). Raises FormatError."""
    if len(data) < 12:
        raise FormatError("shorter than a header")
    qid, flags, qd, an, ns, ar = _H.unpack_from(data)
    header = (qid, flags)
    if qd != 1:
        raise FormatError(f"{qd} questions", header)
    try:
        labels, pos = read_name(data, 12, pointers=False)
        if pos + 4 > len(data):
            raise FormatError("question runs past the end")
        qtype, qclass = _QTAIL.unpack_from(data, pos)
        question = data[12:pos + 4]
        pos += 4
        edns = None
        for index in range(an + ns + ar):
            rtype, rclass, ttl, rdata, rdlen = _read_rr(data, pos)
            if rtype == OPT:
                if index < an + ns or edns is not None or data[pos] != 0:
                    raise FormatError("misplaced or repeated OPT record")
                edns = Edns(rclass, (ttl >> 16) & 0xFF, bool(ttl & 0x8000))
            pos = rdata + rdlen
    except FormatError as exc:
        raise FormatError(str(exc), header) from None
    return Query(qid, flags, _label_text(labels), qtype, qclass, question, edns)


def _label_text(labels: tuple[bytes, ...]) -> str:
    text = ".".join(label.decode("latin-1").replace(".", IN_LABEL_DOT) for label in labels)
    return text + "."


# ---------------------------------------------------------------- writing


class _Writer:
    def __init__(self, head: bytes, question: bytes, qname: str | None) -> None:
        self.buf = bytearray(head)
        self.buf += question
        self.names: dict[str, int] = {}
        if qname and qname != ".":
            # In wire form every "." of the text is the next label's length byte, so the
            # suffix starting at character i starts at byte 12 + i of the message.
            names = self.names
            names[qname] = 12
            i = qname.find(".")
            while 0 <= i < len(qname) - 1:
                names[qname[i + 1:]] = 13 + i
                i = qname.find(".", i + 1)

    def name(self, name: str) -> None:
        buf = self.buf
        rest = name
        while rest and rest != ".":
            pointer = self.names.get(rest)
            if pointer is not None:
                buf += struct.pack("!H", 0xC000 | pointer)
                return
            if len(buf) < 0x3FFF:
                self.names[rest] = len(buf)
            label, _, rest = rest.partition(".")
            raw = label.replace(IN_LABEL_DOT, ".").encode("latin-1")
            if not 0 < len(raw) < 64:
                raise ValueError(f"bad label in {name!r}")
            buf.append(len(raw))
            buf += raw
        buf.append(0)

    def rr(self, rr: RR) -> None:
        self.name(rr.name)
        buf = self.buf
        head = len(buf)
        buf += _RRHEAD.pack(rr.type, rr.rclass, rr.ttl & 0xFFFFFFFF, 0)
        start = len(buf)
        data = rr.data
        if isinstance(data, bytes):
            buf += data
        elif rr.type == A:
            buf += ipaddress.IPv4Address(data).packed  # type: ignore[arg-type]
        elif rr.type == AAAA:
            buf += ipaddress.IPv6Address(data).packed  # type: ignore[arg-type]
        elif rr.type in NAME_TYPES:
            self.name(data)  # type: ignore[arg-type]
        elif rr.type == SRV:
            prio, weight, port, target = data  # type: ignore[misc]
            buf += _SRVHEAD.pack(prio, weight, port)
            self.name(target)
        elif rr.type == MX:
            pref, exchange = data  # type: ignore[misc]
            buf += struct.pack("!H", pref)
            self.name(exchange)
        elif rr.type == SOA:
            mname, rname, *numbers = data  # type: ignore[misc]
            self.name(mname)
            self.name(rname)
            buf += _SOATAIL.pack(*numbers)
        elif rr.type == TXT:
            for text in data:  # type: ignore[union-attr]
                raw = text.encode()
                for i in range(0, max(len(raw), 1), 255):
                    chunk = raw[i:i + 255]
                    buf.append(len(chunk))
                    buf += chunk
        else:
            raise ValueError(f"cannot encode {rr.text()}")
        struct.pack_into("!H", buf, head + 8, len(buf) - start)


def reply_flags(query_flags: int, rcode: int, authoritative: bool) -> int:
    """QR set, opcode, RD and CD copied, AA as given; RA clear as CoreDNS leaves it."""
    flags = QR | (query_flags & (OPCODE_MASK | RD | CD)) | (rcode & 0xF)
    return flags | AA if authoritative else flags


def opt_record(edns: Edns, rcode: int = 0) -> bytes:
    """Our OPT: the client's buffer size (within 512..4096) and DO bit mirrored."""
    size = min(max(edns.udp_size, PLAIN_UDP), 4096)
    ttl = ((rcode >> 4) << 24) | (0x8000 if edns.do else 0)
    return b"\x00" + struct.pack("!HHIH", OPT, size, ttl, 0)


def encode_reply(qid: int, query_flags: int, question: bytes, qname: str | None,
                 answer: Answer, edns: Edns | None, limit: int = MAX_UDP) -> bytes:
    """The reply for `answer`; truncated to header + question (TC set) past `limit`."""
    rcode = answer.rcode
    counts = (1, len(answer.answer), len(answer.authority),
              len(answer.additional) + (edns is not None))
    flags = reply_flags(query_flags, rcode, answer.authoritative)
    w = _Writer(_H.pack(qid, flags, *counts), question, qname)
    for rr in answer.answer:
        w.rr(rr)
    for rr in answer.authority:
        w.rr(rr)
    for rr in answer.additional:
        w.rr(rr)
    opt = opt_record(edns, rcode) if edns is not None else b""
    if len(w.buf) + len(opt) > limit:
        head = _H.pack(qid, flags | TC, 1, 0, 0, int(edns is not None))
        return head + question + opt
    return bytes(w.buf) + opt


def error_reply(qid: int, query_flags: int, rcode: int, question: bytes = b"",
                edns: Edns | None = None) -> bytes:
    """A reply with no records: FORMERR/NOTIMP/SERVFAIL/REFUSED/BADVERS."""
    flags = reply_flags(query_flags, rcode, False)
    head = _H.pack(qid, flags, int(bool(question)), 0, 0, int(edns is not None))
    return head + question + (opt_record(edns, rcode) if edns is not None else b"")


def formerr(data: bytes) -> bytes | None:
    """FORMERR for a message whose header can be read (never for a response), else None."""
    if len(data) < 12:
        return None
    qid, flags = struct.unpack_from("!HH", data)
    if flags & QR:
        return None
    return error_reply(qid, flags, FORMERR)


def encode_query(qid: int, name: str, qtype: int, rd: bool = True) -> bytes:
    w = _Writer(_H.pack(qid, RD if rd else 0, 1, 0, 0, 0), b"", None)
    w.name(name)
    w.buf += _QTAIL.pack(qtype, 1)
    return bytes(w.buf)


def encode_name(name: str) -> bytes:
    w = _Writer(b"", b"", None)
    w.name(name)
    return bytes(w.buf)


def question_bytes(name: str, qtype: int, qclass: int = 1) -> bytes:
    """The question section for `name` (uncompressed), as a stub resolver sends it."""
    raw = bytearray()
    for label in name.rstrip(".").split(".") if name.strip(".") else ():
        encoded = label.encode("latin-1")
        raw.append(len(encoded))
        raw += encoded
    raw.append(0)
    return bytes(raw) + _QTAIL.pack(qtype, qclass)


# ---------------------------------------------------------------- upstream replies


@dataclass(frozen=True, slots=True)
class Message:
    id: int
    flags: int
    question: tuple[tuple[bytes, ...], int, int] | None
    answer: tuple[RR, ...]

    @property
    def rcode(self) -> int:
        return self.flags & 0xF


def _name_text(labels: tuple[bytes, ...]) -> str:
    return _label_text(labels) if labels else "."


def parse_records(data: bytes) -> Message:
    """The header, question and answer section of a reply (names decompressed).

    Records whose data holds names are rebuilt (SRV and SOA as the tuples RR
    describes); types whose data holds none are kept as raw bytes; MX is dropped.
    Raises FormatError.
    """
    if len(data) < 12:
        raise FormatError("shorter than a header")
    qid, flags, qd, an, _ns, _ar = _H.unpack_from(data)
    pos = 12
    question = None
    for _ in range(qd):
        labels, pos = read_name(data, pos)
        if pos + 4 > len(data):
            raise FormatError("question runs past the end")
        qtype, qclass = _QTAIL.unpack_from(data, pos)
        pos += 4
        question = question or (labels, qtype, qclass)
    records = []
    for _ in range(an):
        labels, _ = read_name(data, pos)
        rtype, rclass, ttl, rdata, rdlen = _read_rr(data, pos)
        raw = data[rdata:rdata + rdlen]
        pos = rdata + rdlen
        name = _name_text(labels)
        value: object
        if rtype in NAME_TYPES:
            value = _name_text(read_name(data, rdata)[0])
        elif rtype == A and rdlen == 4:
            value = str(ipaddress.IPv4Address(raw))
        elif rtype == AAAA and rdlen == 16:
            value = str(ipaddress.IPv6Address(raw))
        elif rtype == SRV and rdlen > _SRVHEAD.size:
            target = _name_text(read_name(data, rdata + _SRVHEAD.size)[0])
            value = (*_SRVHEAD.unpack_from(data, rdata), target)
        elif rtype == SOA:
            mname, after = read_name(data, rdata)
            rname, after = read_name(data, after)
            value = (_name_text(mname), _name_text(rname), *_SOATAIL.unpack_from(data, after))
        elif rtype == MX:
            continue  # a name inside; not needed for an address chase
        else:
            value = raw
        records.append(RR(name, rtype, ttl, value, rclass))
    return Message(qid, flags, question, tuple(records))

