"""The DNS server on the wire: IDs, letter case, flags, EDNS0, truncation and TCP,
error replies, hostile packets, forwarding and zone updates.

Queries are built and replies parsed with dnslib, independently of labctl's own codec.
All traffic stays on 127.0.0.1: fake upstreams are tiny responders started here.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, DNSError, DNSHeader, DNSQuestion, DNSRecord
from dnslib import PTR as PTRRecord
from dnslib import A as ARecord

from labctl.cluster.state import PortAllocation, ServiceState
from labctl.dns.responder import Responder
from labctl.dns.server import DnsServer, open_sockets
from labctl.dns.snapshot import zone_from_files
from labctl.dns.wire import parse_records
from labctl.dns.zone import Zone
from labctl.model.objects import Endpoint, EndpointPort, EndpointSlice, ObjectMeta, Service
from tests.unit.test_dns_zone import SNAPSHOT

S1 = "svc1.testns.svc.cluster.local"
BIG = "big.testns.svc.cluster.local"


@pytest.fixture(scope="module")
def zone(tmp_path_factory: pytest.TempPathFactory) -> Zone:
    path = Path(tmp_path_factory.mktemp("dnswire")) / "snapshot.yaml"
    path.write_text(SNAPSHOT)
    base, _state, _ = zone_from_files([str(path)])
    return base


@pytest.fixture(scope="module")
def big_zone() -> Zone:
    """A headless Service with 60 ready endpoints: its A answer does not fit 512 bytes."""
    svc = ServiceState(Service(ObjectMeta("big", "testns"), cluster_ip="None"), "None")
    eps = EndpointSlice(ObjectMeta("big-1", "testns", {"kubernetes.io/service-name": "big"}),
                        "IPv4", tuple(Endpoint((f"10.244.50.{i}",)) for i in range(1, 61)),
                        (EndpointPort(80, "http", "TCP"),))
    return Zone.build([svc], [eps], [], ["testns"])


def query(name: str, qtype: str = "A", *, qid: int = 4242, rd: bool = True,
          edns: int | None = None, do: bool = False, version: int = 0) -> bytes:
    q = DNSRecord(DNSHeader(id=qid, rd=int(rd)), q=DNSQuestion(name, getattr(QTYPE, qtype)))
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns, flags="do" if do else "", version=version))
    return q.pack()


def opt_of(reply: DNSRecord) -> RR | None:
    return next((rr for rr in reply.ar if rr.rtype == QTYPE.OPT), None)


# ---------------------------------------------------------------- the packet handler


def test_reply_patches_the_id_and_echoes_the_letter_case(zone: Zone) -> None:
    server = DnsServer(zone)
    for qid in (1, 0xFFFF, 1):  # the second 1 comes from the precomputed/cached reply
        reply = DNSRecord.parse(server.respond(query(S1, qid=qid)))
        assert reply.header.id == qid
        assert [str(rr.rdata) for rr in reply.rr] == ["10.96.1.1"]
    mixed = "SvC1.TeStNs.SvC.cLuStEr.LoCaL"
    for qid in (7, 8):  # slow path, then the cached reply
        raw = server.respond(query(mixed, qid=qid))
        reply = DNSRecord.parse(raw)
        assert reply.header.id == qid
        assert str(reply.q.qname) == mixed + "."
        assert [str(rr.rname) for rr in reply.rr] == [mixed + "."]
        assert raw.count(b"SvC1") == 1  # the answer's owner is a pointer to the question
    srv = DNSRecord.parse(server.respond(query("_HtTp._TcP.sVc1.TeStNs.SvC.cLuStEr.LoCaL",
                                               "SRV")))
    assert str(srv.rr[0].rdata.target) == "svc1.testns.svc.cLuStEr.LoCaL."


def test_flags_aa_set_rd_copied_ra_clear(zone: Zone) -> None:
    server = DnsServer(zone)
    for rd in (True, False):
        for name in (S1, "nope.testns.svc.cluster.local"):
            reply = DNSRecord.parse(server.respond(query(name, rd=rd)))
            assert (reply.header.qr, reply.header.aa, reply.header.rd, reply.header.ra) == \
                (1, 1, int(rd), 0)
            assert reply.header.opcode == 0


def test_precomputed_replies_equal_the_slow_path(zone: Zone, big_zone: Zone) -> None:
    for z in (zone, big_zone):
        fast = Responder(z, forwarding=False)
        slow = Responder(z, forwarding=False)
        slow.fast = {}
        assert len(fast.fast) > 100
        for key, body in fast.fast.items():
            data = b"\x12\x34" + key
            assert slow.respond(data) == data[:2] + body, DNSRecord.parse(data).q


def test_udp_truncates_and_tcp_carries_the_whole_answer(big_zone: Zone) -> None:
    server = DnsServer(big_zone)
    plain = server.respond(query(BIG))
    reply = DNSRecord.parse(plain)
    assert len(plain) <= 512 and reply.header.tc == 1 and reply.rr == []
    whole = DNSRecord.parse(server.respond(query(BIG), tcp=True))
    assert whole.header.tc == 0 and len(whole.rr) == 60
    # EDNS0: the client's buffer size decides; the reply carries an OPT record.
    for size, fits in ((4096, True), (1232, True), (600, False), (100, False)):
        raw = server.respond(query(BIG, edns=size))
        reply = DNSRecord.parse(raw)
        assert len(raw) <= max(size, 512)
        assert reply.header.tc == int(not fits)
        assert len(reply.rr) == (60 if fits else 0)
        assert opt_of(reply) is not None
    srv = DNSRecord.parse(server.respond(query(f"_http._tcp.{BIG}", "SRV"), tcp=True))
    assert len(srv.rr) == 60 and len(srv.ar) == 60


def test_edns_opt_is_mirrored_and_unknown_versions_refused(zone: Zone) -> None:
    server = DnsServer(zone)
    assert opt_of(DNSRecord.parse(server.respond(query(S1)))) is None
    reply = DNSRecord.parse(server.respond(query(S1, edns=1232, do=True)))
    opt = opt_of(reply)
    assert opt is not None and opt.rclass == 1232 and opt.ttl & 0x8000
    assert [str(rr.rdata) for rr in reply.rr] == ["10.96.1.1"]
    bad = DNSRecord.parse(server.respond(query(S1, edns=1232, version=1)))
    opt = opt_of(bad)
    assert opt is not None and (opt.ttl >> 24) == 1 and bad.header.rcode == 0  # BADVERS=16
    assert bad.rr == []


def test_notimp_refused_and_formerr(zone: Zone) -> None:
    server = DnsServer(zone)
    notify = DNSRecord(DNSHeader(id=9, opcode=4), q=DNSQuestion(S1)).pack()
    reply = DNSRecord.parse(server.respond(notify))
    assert (reply.header.id, reply.header.rcode) == (9, RCODE.NOTIMP)
    for transfer in ("AXFR", "IXFR"):
        for tcp in (False, True):
            reply = DNSRecord.parse(server.respond(query("cluster.local", transfer), tcp=tcp))
            assert reply.header.rcode == RCODE.REFUSED and reply.rr == []
    header = struct.pack("!HHHHHH", 77, 0x0100, 1, 0, 0, 0)
    for garbage in (header, header + b"\x05ab", header + b"\xc0\x00\x00\x01\x00\x01",
                    header + b"\x40abc\x00\x00\x01\x00\x01",
                    struct.pack("!HHHHHH", 77, 0x0100, 0, 0, 0, 0),
                    struct.pack("!HHHHHH", 77, 0x0100, 2, 0, 0, 0) + query(S1)[12:] * 2,
                    struct.pack("!HHHHHH", 77, 0x0100, 1, 0, 0, 65535) + query(S1)[12:],
                    # an additional record whose name points at itself: a loop
                    query(S1, qid=77)[:11] + b"\x01" + query(S1)[12:] + b"\xc0\x2f"
                    + b"\x00" * 10):
        reply = DNSRecord.parse(server.respond(garbage))
        assert (reply.header.id, reply.header.rcode, reply.header.qr) == (77, RCODE.FORMERR, 1)
    assert server.respond(b"\x00\x01\x02") is None  # no header: dropped
    response = DNSRecord.parse(server.respond(query(S1))).pack()
    assert server.respond(response) is None  # never answer a response


def _mutations(rng: random.Random, seeds: list[bytes]) -> Iterator[bytes]:
    for i in range(3000):
        kind = i % 6
        if kind == 0:
            yield rng.randbytes(rng.randrange(0, 600))
        base = bytearray(rng.choice(seeds))
        if kind == 1:
            for _ in range(rng.randrange(1, 6)):
                base[rng.randrange(len(base))] = rng.randrange(256)
        elif kind == 2:
            del base[rng.randrange(len(base)):]
        elif kind == 3:
            struct.pack_into("!HHHH", base, 4, *(rng.choice((0, 1, 2, 255, 65535))
                                                 for _ in range(4)))
        elif kind == 4:  # compression pointers anywhere, loops included
            pos = rng.randrange(12, len(base))
            base[pos:pos + 2] = struct.pack("!H", 0xC000 | rng.randrange(0, len(base) + 4))
        else:
            base += rng.randbytes(rng.randrange(1, 40))
        yield bytes(base)


def test_fuzz_the_packet_handler(zone: Zone, big_zone: Zone,
                                 caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(20240611)
    seeds = [query(S1), query("_http._tcp.hdls1.testns.svc.cluster.local", "SRV", edns=1232),
             query("example.org", "AAAA"), query("1.1.96.10.in-addr.arpa", "PTR"),
             query(BIG, edns=4096), query("SvC1.testns.svc.cluster.local", "TXT")]
    caplog.set_level(logging.ERROR, logger="labctl.dns")
    for z in (zone, big_zone):
        server = DnsServer(z)
        answered = 0
        for packet in _mutations(rng, seeds):
            for tcp in (False, True):
                out = server.respond(packet, tcp=tcp)
                if out is None:
                    continue
                answered += 1
                assert out[:2] == packet[:2]
                assert tcp or len(out) <= 4096
                try:
                    DNSRecord.parse(out)  # always a well-formed message
                except DNSError:
                    # dnslib refuses labels with odd octets, which DNS allows: the
                    # question echoed must then be the query's, byte for byte.
                    labels = parse_records(out).question[0]
                    assert b"".join(bytes((len(x),)) + x for x in labels) in packet
        assert answered > 1000
        assert [r.getMessage() for r in caplog.records] == []  # no handler ever raised
        reply = DNSRecord.parse(server.respond(query(S1, qid=5)))
        assert reply.header.id == 5 and (reply.rr or z is big_zone)


# ---------------------------------------------------------------- over real sockets


class Running:
    """A DnsServer on 127.0.0.1 (UDP and TCP on one free port)."""

    def __init__(self, zone: Zone, upstreams: list[str] | None = None,
                 forward_timeout: float = 1.8) -> None:
        self.server = DnsServer(zone, upstreams or [], forward_timeout=forward_timeout)
        udp, tcp = open_sockets("127.0.0.1", 0)
        self.port = udp.getsockname()[1]
        self.server.serve_udp(udp)
        self.server.serve_tcp(tcp)

    def udp(self, data: bytes, timeout: float = 3.0) -> DNSRecord:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.sendto(data, ("127.0.0.1", self.port))
            while True:
                reply = sock.recv(65535)
                if reply[:2] == data[:2]:
                    return DNSRecord.parse(reply)

    def tcp(self, *messages: bytes) -> list[DNSRecord]:
        with socket.create_connection(("127.0.0.1", self.port), timeout=3) as sock:
            sock.sendall(b"".join(len(m).to_bytes(2, "big") + m for m in messages))
            replies = []
            stream = sock.makefile("rb")
            for _ in messages:
                size = int.from_bytes(stream.read(2), "big")
                replies.append(DNSRecord.parse(stream.read(size)))
            return replies

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()


def test_udp_and_tcp_serve_and_stop(big_zone: Zone) -> None:
    with Running(big_zone) as running:
        assert running.udp(query(BIG)).header.tc == 1
        first, second = running.tcp(query(BIG, qid=1), query(f"x.{BIG}", qid=2))
        assert (first.header.id, len(first.rr)) == (1, 60)
        assert (second.header.id, second.header.rcode) == (2, RCODE.NXDOMAIN)
        threads = list(running.server._threads)
    assert not any(t.is_alive() for t in threads)


def test_fuzz_over_udp_then_a_valid_query_is_answered(zone: Zone) -> None:
    rng = random.Random(7)
    seeds = [query(S1), query("hdls1.testns.svc.cluster.local", edns=1232)]
    with Running(zone) as running, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for count, packet in enumerate(_mutations(rng, seeds)):
            sock.sendto(packet, ("127.0.0.1", running.port))
            if count % 200 == 0:
                time.sleep(0.01)  # let the server keep up: measure survival, not drops
        reply = running.udp(query(S1, qid=31337), timeout=5)
        assert reply.header.id == 31337 and [str(r.rdata) for r in reply.rr] == ["10.96.1.1"]
        assert running.tcp(query(S1, qid=9))[0].header.id == 9


def test_an_update_is_visible_at_once(zone: Zone) -> None:
    svc = ServiceState(Service(ObjectMeta("svc1", "testns")), "10.96.9.9",
                       (PortAllocation("http", "TCP", 80),))
    with Running(zone) as running:
        assert str(running.udp(query(S1)).rr[0].rdata) == "10.96.1.1"
        running.server.update(Zone.build([svc], [], [], ["testns"]))
        assert str(running.udp(query(S1)).rr[0].rdata) == "10.96.9.9"
        assert running.tcp(query(f"hdls1.{S1[5:]}"))[0].header.rcode == RCODE.NXDOMAIN


class FakeUpstream:
    """A tiny dnslib responder on 127.0.0.1 (UDP): fixed answers, or silence."""

    ANSWERS = {"example.test.": "A 192.0.2.1", "ext.interwebs.test.": "A 1.2.3.4",
               "9.9.9.9.in-addr.arpa.": "PTR host.example.test."}

    def __init__(self, silent: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.seen: list[str] = []
        self.silent = silent
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                return
            if not data:
                return
            q = DNSRecord.parse(data)
            self.seen.append(f"{q.q.qname} {QTYPE[q.q.qtype]}")
            if self.silent:
                continue
            reply = q.reply(ra=1, aa=0)
            found = self.ANSWERS.get(str(q.q.qname).lower())
            if found:
                kind, value = found.split()
                rdata = ARecord(value) if kind == "A" else PTRRecord(value)
                reply.add_answer(RR(q.q.qname, getattr(QTYPE, kind), rdata=rdata, ttl=60))
            else:
                reply.header.rcode = RCODE.NXDOMAIN
            self.sock.sendto(reply.pack(), addr)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(2)
        self.sock.close()


def test_forwarding_to_an_upstream(zone: Zone) -> None:
    upstream = FakeUpstream()
    try:
        with Running(zone, [upstream.address]) as running:
            reply = running.udp(query("example.test", qid=1001))
            assert reply.header.id == 1001 and reply.header.rcode == RCODE.NOERROR
            assert [str(rr.rdata) for rr in reply.rr] == ["192.0.2.1"]
            assert running.tcp(query("example.test", qid=1002))[0].header.rcode == \
                RCODE.NOERROR  # TCP clients too: over UDP, TCP only for a truncated reply
            missing = running.udp(query("missing.test"))
            assert missing.header.rcode == RCODE.NXDOMAIN
            # An ExternalName outside the cluster: our CNAME, then the upstream's A.
            ext = running.udp(query("ext.testns.svc.cluster.local"))
            assert [(QTYPE[rr.rtype], str(rr.rdata)) for rr in ext.rr] == \
                [("CNAME", "ext.interwebs.test."), ("A", "1.2.3.4")]
            # A reverse name without a record falls through to the upstream.
            ptr = running.udp(query("9.9.9.9.in-addr.arpa", "PTR"))
            assert [str(rr.rdata) for rr in ptr.rr] == ["host.example.test."]
            # Cluster names never leave the server.
            assert running.udp(query(S1)).header.aa == 1
        assert "svc1.testns.svc.cluster.local. A" not in upstream.seen
        assert "example.test. A" in upstream.seen
    finally:
        upstream.close()


def test_silent_upstream_gets_servfail_and_blocks_nothing(zone: Zone) -> None:
    """The server's own forwarding deadline ends in SERVFAIL (the client's generous
    timeout only guards against a hang); a cluster name asked while a forward is still
    pending is answered first. No wall-clock bound is asserted."""
    upstream = FakeUpstream(silent=True)
    try:
        with Running(zone, [upstream.address]) as running, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as outside, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as inside:
            outside.sendto(query("example.test", qid=77), ("127.0.0.1", running.port))
            inside.settimeout(5)
            inside.sendto(query(S1, qid=78), ("127.0.0.1", running.port))
            assert DNSRecord.parse(inside.recv(65535)).rr  # answered while 77 waits
            outside.setblocking(False)
            with pytest.raises(BlockingIOError):
                outside.recv(65535)  # the forward is still pending upstream
            outside.settimeout(5)
            reply = DNSRecord.parse(outside.recv(65535))
            assert reply.header.rcode == RCODE.SERVFAIL and reply.header.id == 77
            # A reverse name nobody knows: the upstream is asked, then NXDOMAIN stands.
            ptr = running.udp(query("8.8.8.8.in-addr.arpa", "PTR"), timeout=5)
            assert ptr.header.rcode == RCODE.NXDOMAIN
    finally:
        upstream.close()


def test_without_upstreams_outside_names_fail_at_once(zone: Zone) -> None:
    with Running(zone, forward_timeout=30.0) as running:
        # with a 30 s forwarding budget, a reply inside the client's 3 s means nothing
        # was waited for: there is nobody to ask
        reply = running.udp(query("example.org"), timeout=3)
        assert reply.header.rcode == RCODE.SERVFAIL
        nx = running.udp(query("9.9.9.9.in-addr.arpa", "PTR"))
        assert nx.header.rcode == RCODE.NXDOMAIN
