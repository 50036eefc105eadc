"""scapy helpers for packet-level checks inside lab namespaces.

`capture(ns, iface)` sniffs on an interface of a lab namespace: the capture socket is
opened while the calling thread is inside that namespace, so it sees that namespace's
`eth0`, not the host's. Captures are bounded by time and count and stop by themselves.
"""

from __future__ import annotations

import contextlib
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
