"""One bounded probe from inside a lab namespace: a TCP connect (and an HTTP request to
learn which pod answered), a UDP datagram, a DNS question — each classified the way a
learner reads it (ok / refused / timeout / unreachable).

Sockets are opened while the calling thread is inside the namespace (the socket then
belongs to it for life), so probes from many threads run at once without a process each.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from dataclasses import dataclass

from labctl.dns import records
from labctl.dns.upstream import exchange
from labctl.dns.wire import FormatError, encode_query, parse_records, read_name
from labctl.kubelet.podfiles import parse_resolv_conf
from labctl.lab.etcnetns import ETC_NETNS
from labctl.net import netns
from labctl.testing.traffic import parse_fields, socket_in

UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH}


@dataclass(frozen=True)
class Outcome:
    result: str  # ok | refused | timeout | unreachable | error
    pod: str = ""  # the answering pod, when the server said (the echo server's pod=)
    detail: str = ""


def _failed(exc: OSError, what: str) -> Outcome:
    if isinstance(exc, TimeoutError) or exc.errno == errno.ETIMEDOUT:
        return Outcome("timeout", detail=f"no answer to the {what}")
    if isinstance(exc, ConnectionRefusedError):
        return Outcome("refused", detail=f"{what}: connection refused")
    if exc.errno in UNREACHABLE:
        return Outcome("unreachable", detail=f"{what}: {os.strerror(exc.errno or 0)}")
    return Outcome("error", detail=f"{what}: {exc.strerror or exc}")


def tcp(ns: str, ip: str, port: int, timeout: float) -> Outcome:
    """Connect; then ask `GET /` and read the reply (the echo server names its pod)."""
    deadline = time.monotonic() + timeout
    s = socket_in(ns)
    try:
        s.settimeout(timeout)
        try:
            s.connect((ip, port))
        except OSError as exc:
            return _failed(exc, "connect")
        data = b""
        try:
            s.sendall(f"GET / HTTP/1.0\r\nHost: {ip}\r\n\r\n".encode())
            while (left := deadline - time.monotonic()) > 0:
                s.settimeout(max(left, 0.2))
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            if not data:  # accepted, then reset: what userspace mode does without endpoints
                return Outcome("refused", detail="connection reset after connect")
        except TimeoutError:
            pass
        except OSError as exc:
            return _failed(exc, "request")
        body = data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")
        pod = parse_fields(body).get("pod", "")
        return Outcome("ok", pod, "" if data else "connected; no reply to GET /")
    finally:
        s.close()


def udp(ns: str, ip: str, port: int, timeout: float) -> Outcome:
    """One datagram; a reply is ok, an ICMP port unreachable is refused."""
    s = socket_in(ns, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        try:
            s.connect((ip, port))
            s.send(b"ping\n")
            data = s.recv(65536)
        except OSError as exc:
            return _failed(exc, "datagram")
        return Outcome("ok", parse_fields(data.decode(errors="replace")).get("pod", ""))
    finally:
        s.close()


# ---------------------------------------------------------------- DNS


@dataclass(frozen=True)
class DnsReply:
    rcode: str  # NOERROR, NXDOMAIN, …, or TIMEOUT
    answers: tuple[str, ...]  # as `dig +short` shows them, without trailing dots

    @property
    def shown(self) -> str:
        if self.rcode != "NOERROR":
            return self.rcode
        return ", ".join(self.answers) if self.answers else "NODATA"


def _answer_text(rr: records.RR) -> str:
    if rr.type == records.TXT and isinstance(rr.data, tuple):
        return " ".join(str(s) for s in rr.data)
    return rr.data_text().rstrip(".")


def ask(ns: str, server: str, name: str, qtype: str, timeout: float) -> DnsReply:
    """One question to `server`:53 from namespace `ns` (UDP, TCP when truncated)."""
    code = next(k for k, v in records.TYPE_NAMES.items() if v == qtype)
    query = encode_query(0, name, code)
    _labels, end = read_name(query, 12)
    with netns.entered(ns):  # the sockets exchange() opens belong to `ns`
        reply = exchange(query, query[12:end + 4], [(server, 53)],
                         time.monotonic() + timeout, whole=True)
    if reply is None:
        return DnsReply("TIMEOUT", ())
    try:
        message = parse_records(reply)
    except (FormatError, ValueError):
        return DnsReply("FORMERR", ())
    return DnsReply(records.RCODE_NAMES.get(message.rcode, str(message.rcode)),
                    tuple(_answer_text(rr) for rr in message.answer))


@dataclass(frozen=True)
class Resolver:
    nameservers: tuple[str, ...]
    searches: tuple[str, ...] = ()
    ndots: int = 1


def resolver_of(pod_netns: str | None, cluster_dns: str) -> Resolver:
    """A pod's resolver as the kubelet wrote it (/etc/netns/<netns>/resolv.conf); for a
    node or `external`, the cluster DNS alone."""
    if pod_netns:
        try:
            with open(os.path.join(ETC_NETNS, pod_netns, "resolv.conf")) as f:
                servers, searches, options = parse_resolv_conf(f.read())
        except OSError:
            servers, searches, options = [], [], []
        ndots = next((int(o.split(":", 1)[1]) for o in options
                      if o.startswith("ndots:") and o[6:].isdigit()), 1)
        if servers:
            return Resolver(tuple(servers), tuple(searches), ndots)
    return Resolver((cluster_dns,) if cluster_dns else ())


def lookup_address(ns: str, resolver: Resolver, name: str, timeout: float
                   ) -> tuple[str, str]:
    """(first IPv4 address, how it was found) — with the search path, as libc's
    resolver applies it for `curl NAME`; ("", why not) when the name does not resolve."""
    if name.endswith("."):
        candidates = [name]
    else:
        searched = [f"{name}.{s}" for s in resolver.searches]
        absolute_first = name.count(".") >= resolver.ndots
        candidates = [name, *searched] if absolute_first else [*searched, name]
    if not resolver.nameservers:
        return "", "no nameserver to ask"
    deadline = time.monotonic() + timeout
    last = "NXDOMAIN"
    for candidate in candidates:
        left = deadline - time.monotonic()
        if left <= 0:
            return "", f"{name}: DNS timeout"
        reply = ask(ns, resolver.nameservers[0], candidate.rstrip("."), "A", left)
        addresses = [a for a in reply.answers if a.count(".") == 3 and
                     a.replace(".", "").isdigit()]
        if addresses:
            return addresses[0], f"{candidate.rstrip('.')} → {addresses[0]}"
        if reply.rcode == "TIMEOUT":
            return "", f"{name}: DNS timeout"
        last = reply.shown
    return "", f"{name}: {last}"
