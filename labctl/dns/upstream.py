"""Asking the upstream resolvers, always within a deadline.

Each upstream is tried in turn with a fresh random ID and an equal share of the time
left, so a silent one cannot use up the whole budget; a reply counts only if its ID and
question match what was sent.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from collections.abc import Sequence

from labctl.dns.records import NOERROR, RR
from labctl.dns.wire import QR, TC, FormatError, encode_query, parse_records, read_name

Address = tuple[str, int]


def parse_address(text: str, default_port: int = 53, any_port: bool = False) -> Address:
    """"IP", "IP:PORT", "[IPv6]:PORT" or a bare IPv6 address → (ip, port).

    `any_port`: port 0 (pick a free one) is allowed, for listening.
    """
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad address {text!r}")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    ipaddress.ip_address(host)
    if not (0 if any_port else 1) <= port < 65536:
        raise ValueError(f"bad port in {text!r}")
    return host, port


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _matches(reply: bytes, qid: bytes, question: bytes) -> bool:
    return (len(reply) >= 12 + len(question) and reply[:2] == qid and bool(reply[2] & (QR >> 8))
            and reply[12:12 + len(question)] == question)


def _udp(address: Address, packet: bytes, question: bytes, timeout: float) -> bytes | None:
    deadline = time.monotonic() + timeout
    with socket.socket(_family(address[0]), socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.send(packet)
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            reply = sock.recv(65535)  # timeouts and ICMP refusals raise OSError
            if _matches(reply, packet[:2], question):
                return reply
    return None


def _recv_exact(sock: socket.socket, size: int, deadline: float) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _tcp(address: Address, packet: bytes, question: bytes, timeout: float) -> bytes | None:
    deadline = time.monotonic() + timeout
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(len(packet).to_bytes(2, "big") + packet)
        head = _recv_exact(sock, 2, deadline)
        reply = _recv_exact(sock, int.from_bytes(head, "big"), deadline) if head else None
    return reply if reply and _matches(reply, packet[:2], question) else None


def exchange(query: bytes, question: bytes, upstreams: Sequence[Address], deadline: float,
             whole: bool = False) -> bytes | None:
    """The first matching reply to `query` (its own ID restored), or None by `deadline`.

    Over UDP first; with `whole` (the client asked over TCP) a truncated reply is asked
    again over TCP.
    """
    for index, address in enumerate(upstreams):
        left = deadline - time.monotonic()
        if left <= 0.005:
            break
        share = left / (len(upstreams) - index)
        packet = os.urandom(2) + query[2:]
        try:
            reply = _udp(address, packet, question, share)
            if reply is not None and whole and reply[2] & (TC >> 8):
                left = deadline - time.monotonic()
                reply = _tcp(address, packet, question, left / (len(upstreams) - index)) \
                    if left > 0.005 else None
        except (OSError, ValueError):
            continue
        if reply is not None:
            return query[:2] + reply[2:]
    return None


def lookup(name: str, qtype: int, upstreams: Sequence[Address], deadline: float
           ) -> tuple[RR, ...]:
    """The answer records the upstreams give for `name` `qtype` (empty on failure)."""
    try:
        query = encode_query(0, name, qtype)
    except ValueError:
        return ()
    _labels, end = read_name(query, 12)
    reply = exchange(query, query[12:end + 4], upstreams, deadline)
    if reply is None:
        return ()
    try:
        message = parse_records(reply)
    except (FormatError, ValueError):
        return ()
    return message.answer if message.rcode == NOERROR else ()
