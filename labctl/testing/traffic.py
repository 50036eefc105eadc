"""Real traffic from inside a lab namespace, without a process per request.

A socket opened while the calling thread is inside a namespace belongs to that
namespace for life, so a test can make hundreds of connections from a pod quickly.
Requests are bounded in count and time and only go to addresses inside the lab.
"""

from __future__ import annotations

import errno
import socket
import time
from collections import Counter
from dataclasses import dataclass

from labctl.net import netns


@dataclass(frozen=True)
class Reply:
    fields: dict[str, str]
    local: tuple[str, int]  # the client's own address:port as its kernel saw it

    @property
    def pod(self) -> str:
        return self.fields.get("pod", "")

    @property
    def client_ip(self) -> str:
        return self.fields.get("client", ":").rsplit(":", 1)[0]


def parse_fields(text: str) -> dict[str, str]:
    out = {}
    for word in text.split():
        if "=" in word:
            key, _, value = word.partition("=")
            out[key] = value
    return out


def socket_in(ns: str, kind: int = socket.SOCK_STREAM) -> socket.socket:
    with netns.entered(ns):
        return socket.socket(socket.AF_INET, kind)


def http_get(ns: str, ip: str, port: int, path: str = "/", timeout: float = 3.0) -> Reply:
    """One HTTP/1.0 request on a new TCP connection from namespace `ns`."""
    s = socket_in(ns)
    try:
        s.settimeout(timeout)
        s.connect((ip, port))
        local = s.getsockname()
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        body = data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")
        return Reply(parse_fields(body), local)
    finally:
        s.close()


def udp_echo(ns: str, ip: str, port: int, payload: str = "ping",
             timeout: float = 3.0) -> Reply:
    s = socket_in(ns, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.sendto(payload.encode(), (ip, port))
        data, _ = s.recvfrom(65536)
        return Reply(parse_fields(data.decode(errors="replace")), s.getsockname())
    finally:
        s.close()


def spread(ns: str, ip: str, port: int, count: int) -> Counter[str]:
    """Which pod answered each of `count` new connections."""
    return Counter(http_get(ns, ip, port).pod for _ in range(count))


def connect_error(ns: str, ip: str, port: int, timeout: float = 2.0) -> tuple[int, float]:
    """(errno of a failed connect or 0, seconds it took)."""
    s = socket_in(ns)
    s.settimeout(timeout)
    t = time.perf_counter()
    try:
        s.connect((ip, port))
        code = 0
    except TimeoutError:
        code = errno.ETIMEDOUT
    except OSError as exc:
        code = exc.errno or -1
    finally:
        s.close()
    return code, time.perf_counter() - t


def chi_square(counts: Counter[str], categories: int) -> float:
    """Pearson's statistic against a uniform spread over `categories` outcomes."""
    total = sum(counts.values())
    expected = total / categories
    observed = list(counts.values()) + [0] * (categories - len(counts))
    return sum((o - expected) ** 2 / expected for o in observed)


@dataclass(frozen=True)
class DnsReply:
    rcode: str  # NOERROR, NXDOMAIN, …
    answers: list[str]  # each answer record's data, in order: addresses, CNAME targets, …

    def __bool__(self) -> bool:
        return bool(self.answers)


def dns_query(ns: str, server: str, name: str, rtype: str = "A",
              timeout: float = 3.0) -> DnsReply:
    """One DNS question over UDP from namespace `ns` to `server` (no search path:
    `name` is asked as written)."""
    import random

    from labctl.dns import records, wire

    qtype = next(k for k, v in records.TYPE_NAMES.items() if v == rtype.upper())
    qid = random.randrange(1 << 16)
    s = socket_in(ns, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.sendto(wire.encode_query(qid, name, qtype), (server, 53))
        while True:
            data = s.recv(65535)
            message = wire.parse_records(data)
            if message.id == qid:
                break
    finally:
        s.close()
    return DnsReply(records.RCODE_NAMES.get(message.rcode, str(message.rcode)),
                    [rr.data_text() for rr in message.answer])
