"""Replies for one zone: precomputed wire replies, a bounded cache, and the slow path.

A `Responder` is made whenever the zone changes. It precomputes the UDP reply to the
query a stub resolver sends (one question, no EDNS, RD set or clear, AD set or clear)
for every name the zone holds and every type in PRECOMPUTED_TYPES, keyed by the query
minus its ID. The server's per-packet path is then one dict lookup and an ID patch.
Everything else goes through `respond()` — parse, ask the zone, encode — and its reply
is kept in a bounded LRU under the same key (exact bytes, so other letter cases and
EDNS variants are cached as asked and echo the query's case).
"""

from __future__ import annotations

import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from labctl.dns.records import (
    BADVERS,
    NOTIMP,
    REFUSED,
    SERVFAIL,
    Answer,
)
from labctl.dns.wire import (
    MAX_UDP,
    PLAIN_UDP,
    RD,
    FormatError,
    Query,
    encode_reply,
    error_reply,
    formerr,
    parse_query,
    question_bytes,
)
from labctl.dns.zone import PRECOMPUTED_TYPES, Zone

LRU_SIZE = 8192
AD = 0x0020  # dig sets AD in its queries by default
_COUNTS = struct.pack("!HHHH", 1, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class Pending:
    """A query the upstream servers must help answer.

    kind "forward": outside the zones served, relay it; "fallthrough": a reverse name
    with no record, relay it but answer `answer` (NXDOMAIN) if they fail; "chase": an
    ExternalName target outside the cluster, append their answer to `answer`.
    """

    kind: str
    query: Query
    data: bytes
    answer: Answer | None
    limit: int
    received: float


def precompute(zone: Zone, forwarding: bool) -> dict[bytes, bytes]:
    """Query-minus-ID → reply-minus-ID for every name and common type the zone holds."""
    table: dict[bytes, bytes] = {}
    for name in set(zone.names()):
        wire_name = question_bytes(name, 0, 0)[:-4]
        for qtype in PRECOMPUTED_TYPES:
            answer = zone.answer(name, qtype)
            if answer.forward or (forwarding and (answer.chase or answer.fallthrough)):
                continue  # the upstreams have a say
            question = wire_name + struct.pack("!HH", qtype, 1)
            reply = encode_reply(0, RD, question, name, answer, None, PLAIN_UDP)[2:]
            no_rd = bytes((reply[0] & ~(RD >> 8),)) + reply[1:]
            for flags, body in ((RD, reply), (RD | AD, reply), (0, no_rd), (AD, no_rd)):
                table[struct.pack("!H", flags) + _COUNTS + question] = body
    return table


class Responder:
    """A zone, its precomputed replies (`fast`) and the slow path with its cache."""

    def __init__(self, zone: Zone, forwarding: bool, lru_size: int = LRU_SIZE) -> None:
        self.zone = zone
        self.forwarding = forwarding
        self.fast = precompute(zone, forwarding)
        self._lru: OrderedDict[bytes, bytes] = OrderedDict()
        self._lru_size = lru_size
        self._lock = threading.Lock()

    def respond(self, data: bytes, tcp: bool = False) -> bytes | Pending | None:
        """The reply to one message (None: send nothing), or what upstreams must do."""
        data = bytes(data)
        key = data[2:]
        if not tcp:
            cached = self.fast.get(key) or self._cached(key)
            if cached is not None:
                return data[:2] + cached
        try:
            query = parse_query(data)
        except FormatError as exc:
            return formerr(data) if exc.header else None
        if query.flags & 0x8000:
            return None  # a response: never answer those
        if query.opcode != 0:
            return error_reply(query.id, query.flags, NOTIMP, query.question)
        if query.edns is not None and query.edns.version != 0:
            return error_reply(query.id, query.flags, BADVERS, query.question, query.edns)
        limit = MAX_UDP if tcp else query.udp_limit()
        answer = self.answer(query)
        if answer.forward or (self.forwarding and (answer.fallthrough or answer.chase)):
            if not self.forwarding:
                reply = error_reply(query.id, query.flags, SERVFAIL, query.question,
                                    query.edns)
            else:
                kind = "forward" if answer.forward else \
                    "fallthrough" if answer.fallthrough else "chase"
                return Pending(kind, query, data, answer, limit, time.monotonic())
        else:
            reply = encode_reply(query.id, query.flags, query.question, query.qname, answer,
                                 query.edns, limit)
        if not tcp:
            self._remember(key, reply[2:])
        return reply

    def answer(self, query: Query) -> Answer:
        if query.qclass not in (1, 255):  # only class IN is ours; others go upstream
            if self.zone.zone_of(query.qname) is None:
                return Answer(SERVFAIL, authoritative=False, forward=True)
            return Answer(REFUSED, authoritative=False)
        return self.zone.answer(query.qname, query.qtype)

    def finish(self, pending: Pending, upstream_reply: bytes | None,
               extra: tuple = ()) -> bytes:
        """The reply once the upstreams answered (`upstream_reply`/`extra`) or failed."""
        q = pending.query
        if pending.kind != "chase" and upstream_reply is not None:
            return upstream_reply
        if pending.kind == "forward" or pending.answer is None:
            return error_reply(q.id, q.flags, SERVFAIL, q.question, q.edns)
        answer = pending.answer
        if pending.kind == "chase":
            answer = Answer(answer.rcode, answer.answer + tuple(extra), answer.authority,
                            answer.additional)
        return encode_reply(q.id, q.flags, q.question, q.qname, answer, q.edns, pending.limit)

    def _cached(self, key: bytes) -> bytes | None:
        with self._lock:
            value = self._lru.get(key)
            if value is not None:
                self._lru.move_to_end(key)
            return value

    def _remember(self, key: bytes, value: bytes) -> None:
        with self._lock:
            self._lru[key] = value
            if len(self._lru) > self._lru_size:
                self._lru.popitem(last=False)

