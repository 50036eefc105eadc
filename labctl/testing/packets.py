"""scapy helpers for packet-level checks inside lab namespaces.

`capture(ns, iface)` sniffs on an interface of a lab namespace: the capture socket is
opened while the calling thread is inside that namespace, so it sees that namespace's
`eth0`, not the host's. Captures are bounded by time and count and stop by themselves.
`send_from` / `sr1_from` put a crafted IP packet on the wire from inside a namespace
(a raw socket opened there: the namespace's own routes and neighbours, never scapy's
view of the host's). `assert_dnat` / `assert_snat` / `assert_packet` check captured
packets' addresses and say what was seen when they fail.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from labctl.net import netns


class Capture:
    def __init__(self, sniffer: Any):
        self._sniffer = sniffer
        self.packets: list[Any] = []

    def stop(self) -> list[Any]:
        if self._sniffer.running:
            self._sniffer.stop()
        self.packets = list(self._sniffer.results or [])
        return self.packets

    def wait(self, timeout: float) -> list[Any]:
        """Wait until the capture has its `count` packets (or `timeout`), then stop it."""
        thread = getattr(self._sniffer, "thread", None)
        if thread is not None:
            thread.join(timeout)
        return self.stop()


@contextlib.contextmanager
def capture(ns: str, iface: str = "eth0", match: Callable[[Any], bool] | None = None,
            count: int = 200, timeout: float = 10.0) -> Iterator[Capture]:
    """Sniff `iface` in namespace `ns` for the duration of the with-block."""
    from scapy.all import AsyncSniffer, conf

    with netns.entered(ns):
        # promisc=False: scapy would look the interface index up in the host namespace
        sock = conf.L2listen(iface=iface, promisc=False)
    sniffer = AsyncSniffer(opened_socket=sock, lfilter=match, count=count, store=True)
    sniffer.start()
    guard = threading.Timer(timeout, lambda: sniffer.running and sniffer.stop(join=False))
    guard.daemon = True
    guard.start()  # a capture never outlives its time bound, even if the body hangs
    time.sleep(0.05)  # let the sniffer thread reach its first read
    cap = Capture(sniffer)
    try:
        yield cap
        time.sleep(0.1)  # the last frames of the exchange
    finally:
        guard.cancel()
        cap.stop()
        sock.close()


def tcp_to(port: int) -> Callable[[Any], bool]:
    from scapy.layers.inet import TCP

    return lambda p: p.haslayer(TCP) and (p[TCP].dport == port or p[TCP].sport == port)


def syns(packets: list[Any]) -> list[Any]:
    from scapy.layers.inet import TCP

    return [p for p in packets if p.haslayer(TCP) and p[TCP].flags == "S"]


def syn_acks(packets: list[Any]) -> list[Any]:
    from scapy.layers.inet import TCP

    return [p for p in packets if p.haslayer(TCP) and p[TCP].flags == "SA"]


# ---------------------------------------------------------------- sending


def _with_source(packet: Any, src: str | None) -> Any:
    from scapy.layers.inet import IP

    ip = packet[IP]
    if src and "src" not in ip.fields:
        ip = ip.copy()
        ip.src = src
    return ip


def _send_raw(ns: str, ip: Any) -> None:
    with netns.entered(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        sock.sendto(bytes(ip), (ip.dst, 0))
    finally:
        sock.close()


def send_from(ns: str, packet: Any, src: str | None = None) -> Any:
    """Send `packet` (an scapy IP packet, with its payload) from namespace `ns`.

    The IP header goes out as built (IP_HDRINCL); a source the packet does not set
    explicitly becomes `src` (the pod's address) — scapy's own default would be looked
    up in the host's routes. Returns the packet as sent."""
    ip = _with_source(packet, src)
    _send_raw(ns, ip)
    return ip


def sr1_from(ns: str, packet: Any, src: str | None = None, iface: str = "eth0",
             timeout: float = 2.0) -> Any | None:
    """Send `packet` from namespace `ns` and return the first packet that answers it
    on `iface` (scapy's `answers`), or None after `timeout` seconds."""
    from scapy.layers.inet import IP

    ip = _with_source(packet, src)  # complete before sending: the answer may be quick

    def answers(p: Any) -> bool:
        return bool(p.haslayer(IP) and p[IP].answers(ip))

    with capture(ns, iface, match=answers, count=1, timeout=timeout + 1) as cap:
        _send_raw(ns, ip)
        got = cap.wait(timeout)
    return got[0] if got else None


# ---------------------------------------------------------------- asserting


def _address(text: str) -> tuple[str, int | None]:
    """"10.0.0.1" or "10.0.0.1:80" → (ip, port or None)."""
    ip, colon, port = text.rpartition(":")
    return (ip, int(port)) if colon else (text, None)


def _ends(p: Any) -> tuple[tuple[str, int | None], tuple[str, int | None]] | None:
    from scapy.layers.inet import IP, TCP, UDP

    if not p.haslayer(IP):
        return None
    l4 = p[TCP] if p.haslayer(TCP) else p[UDP] if p.haslayer(UDP) else None
    sport = l4.sport if l4 is not None else None
    dport = l4.dport if l4 is not None else None
    return (p[IP].src, sport), (p[IP].dst, dport)


def _is(end: tuple[str, int | None], want: str | None) -> bool:
    if want is None:
        return True
    ip, port = _address(want)
    return end[0] == ip and (port is None or end[1] == port)


def find(packets: list[Any], src: str | None = None, dst: str | None = None,
         flags: str | None = None) -> list[Any]:
    """Packets whose source / destination ("ip" or "ip:port") and TCP flags (e.g. "S",
    "SA") are the ones given."""
    from scapy.layers.inet import TCP

    out = []
    for p in packets:
        ends = _ends(p)
        if ends is None or not (_is(ends[0], src) and _is(ends[1], dst)):
            continue
        if flags is not None and not (p.haslayer(TCP) and p[TCP].flags == flags):
            continue
        out.append(p)
    return out


def _seen(packets: list[Any]) -> str:
    lines = [f"  {p.summary()}" for p in packets[:20]]
    more = f"\n  … and {len(packets) - 20} more" if len(packets) > 20 else ""
    return "\n".join(lines) + more if lines else "  (no packets captured)"


def assert_packet(packets: list[Any], src: str | None = None, dst: str | None = None,
                  flags: str | None = None, what: str = "") -> Any:
    """The first packet matching every field given; fails listing what was captured."""
    found = find(packets, src, dst, flags)
    if not found:
        want = ", ".join(f"{k}={v}" for k, v in (("src", src), ("dst", dst), ("flags", flags))
                         if v is not None)
        raise AssertionError(f"{what or 'no packet with ' + want}\ncaptured:\n{_seen(packets)}")
    return found[0]


def assert_dnat(packets: list[Any], to: str, src: str | None = None,
                original: str | None = None, flags: str | None = None) -> Any:
    """Packets (captured after the rewrite, e.g. at the backend pod) went to `to`
    ("ip" or "ip:port") — the destination NAT happened; with `original` (the Service
    address), none still went there. Returns the first such packet."""
    pkt = assert_packet(packets, src=src, dst=to, flags=flags,
                        what=f"no packet{' from ' + src if src else ''} was DNAT-ed to {to}")
    if original and (left := find(packets, src=src, dst=original)):
        raise AssertionError(f"packets still addressed to {original} (not DNAT-ed):\n"
                             f"{_seen(left)}")
    return pkt


def assert_snat(packets: list[Any], to: str, dst: str | None = None,
                original: str | None = None, flags: str | None = None) -> Any:
    """Packets (captured after the rewrite) came from `to` ("ip" or "ip:port") — the
    source NAT happened; with `original` (the client's address), none still came from
    it. Returns the first such packet."""
    pkt = assert_packet(packets, src=to, dst=dst, flags=flags,
                        what=f"no packet{' to ' + dst if dst else ''} was SNAT-ed to {to}")
    if original and (left := find(packets, src=original, dst=dst)):
        raise AssertionError(f"packets still from {original} (not SNAT-ed):\n{_seen(left)}")
    return pkt
