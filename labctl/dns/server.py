"""The cluster DNS server: UDP and TCP on sockets it is given, answering from a Zone.

    server = DnsServer(zone, upstreams=["192.0.2.53:53"])
    server.serve_udp(udp_sock)     # a bound SOCK_DGRAM socket; starts a thread
    server.serve_tcp(tcp_sock)     # a bound SOCK_STREAM socket (listen() is called)
    server.update(new_zone)        # atomic: the next packet sees the new zone
    server.stop()                  # shuts the sockets down, joins the threads, closes them

The sockets may come from anywhere (the lab opens them inside a pod's network namespace
and hands them over); the server owns them from then on. `open_sockets(host, port)`
opens a UDP and a TCP socket on the same address (port 0: one free port for both).

Each UDP socket gets one thread running a tight blocking recvfrom/sendto loop: the
reply to a common query is precomputed (see responder.py), so a packet costs a dict
lookup and an ID patch. Misses take the slow path in the same thread and are cached.
Queries needing the upstreams (names outside the zones, ExternalName targets outside
the cluster, reverse names without a record) go to a small thread pool and are always
answered within `forward_timeout` seconds (SERVFAIL when no upstream replied; at once
when there are none). TCP: a thread per connection, no truncation. Nothing a client
sends can stop the server: every packet is handled inside its own try; a malformed one
gets FORMERR when its header can be read and is dropped otherwise.

`respond(data, tcp=False)` answers one message synchronously (forwarding included), for
tests and tools.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from labctl.dns.records import SERVFAIL
from labctl.dns.responder import Pending, Responder
from labctl.dns.upstream import Address, exchange, lookup, parse_address
from labctl.dns.wire import error_reply, formerr
from labctl.dns.zone import Zone

log = logging.getLogger("labctl.dns")

RECV_SIZE = 4096  # larger UDP queries are not DNS a stub sends; they arrive cut, as FORMERR
FORWARD_TIMEOUT = 1.8  # < 2 s: the reply (or SERVFAIL) leaves before the client gives up
MAX_PENDING = 512  # queries waiting for upstreams; beyond, SERVFAIL at once
MAX_TCP = 256  # concurrent TCP connections
TCP_IDLE = 10.0  # seconds a TCP connection may sit idle


class DnsServer:
    def __init__(self, zone: Zone, upstreams: Sequence[str] = (), *,
                 forward_timeout: float = FORWARD_TIMEOUT, workers: int = 16) -> None:
        self.upstreams: list[Address] = [parse_address(u) for u in upstreams]
        self.forward_timeout = forward_timeout
        self._responder = Responder(zone, forwarding=bool(self.upstreams))
        self._fast_get = self._responder.fast.get  # the per-packet path's one lookup
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._conns: set[socket.socket] = set()
        self._retired: set[socket.socket] = set()  # sockets no longer served
        self._lock = threading.Lock()
        self._pending = 0
        self._pool = ThreadPoolExecutor(workers, "dns-upstream") if self.upstreams else None

    @property
    def zone(self) -> Zone:
        return self._responder.zone

    def update(self, zone: Zone) -> None:
        """Serve `zone` from now on (its replies are precomputed before the swap)."""
        responder = Responder(zone, forwarding=bool(self.upstreams))
        self._responder = responder
        self._fast_get = responder.fast.get

    # ------------------------------------------------------------------ lifecycle

    def serve_udp(self, sock: socket.socket) -> None:
        self._start(self._udp_loop, sock, "dns-udp")

    def serve_tcp(self, sock: socket.socket) -> None:
        sock.listen(128)
        self._start(self._accept_loop, sock, "dns-tcp")

    def _start(self, target: object, sock: socket.socket, name: str) -> None:
        sock.setblocking(True)
        self._sockets.append(sock)
        thread = threading.Thread(target=target, args=(sock,), name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def unserve(self, sock: socket.socket) -> None:
        """Stop serving one socket (its pod is gone); the caller closes it."""
        self._retired.add(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        if sock in self._sockets:
            self._sockets.remove(sock)

    def stop(self) -> None:
        self._stopping = True
        with self._lock:
            conns = list(self._conns)
        for sock in [*self._sockets, *conns]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv/accept
        for thread in self._threads:
            thread.join(timeout=3)
        for sock in self._sockets:
            sock.close()
        if self._pool:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ answering

    def respond(self, data: bytes, tcp: bool = False) -> bytes | None:
        """The reply to one message (None: nothing is sent back), upstreams included."""
        try:
            out = self._responder.respond(data, tcp)
            if isinstance(out, Pending):
                return self._ask_upstreams(out, tcp)
            return out
        except Exception:  # a bug must cost one reply, not the server
            log.exception("error answering a DNS message")
            return formerr(data)

    def _ask_upstreams(self, pending: Pending, tcp: bool) -> bytes:
        responder = self._responder
        deadline = pending.received + self.forward_timeout
        q = pending.query
        try:
            if pending.kind == "chase":
                assert pending.answer is not None and pending.answer.chase is not None
                name, qtype = pending.answer.chase
                return responder.finish(pending, None, lookup(name, qtype, self.upstreams,
                                                              deadline))
            reply = exchange(pending.data, q.question, self.upstreams, deadline, tcp)
            if reply is not None and not tcp and len(reply) > pending.limit:
                reply = None  # cannot happen with a sane upstream; never send oversize
            return responder.finish(pending, reply)
        except Exception:
            log.exception("error asking the upstream servers")
            return error_reply(q.id, q.flags, SERVFAIL, q.question, q.edns)

    # ------------------------------------------------------------------ UDP

    def _udp_loop(self, sock: socket.socket) -> None:
        recvfrom, sendto = sock.recvfrom, sock.sendto
        while True:
            try:
                data, addr = recvfrom(RECV_SIZE)
            except OSError:
                if self._stopping or sock in self._retired:
                    return
                time.sleep(0.001)  # e.g. ENOBUFS: do not spin
                continue
            reply = self._fast_get(data[2:])
            if reply is not None:  # the fast path: dict lookup + ID patch
                try:  # noqa: SIM105 - a plain try costs nothing here, suppress() does
                    sendto(data[:2] + reply, addr)
                except OSError:
                    pass
                continue
            if not data and (self._stopping or sock in self._retired):
                return
            self._udp_slow(sock, data, addr)

    def _udp_slow(self, sock: socket.socket, data: bytes, addr: object) -> None:
        try:
            out = self._responder.respond(data, tcp=False)
        except Exception:
            log.exception("error answering a DNS message")
            out = formerr(data)
        if isinstance(out, Pending):
            self._submit(sock, addr, out)
        elif out:
            self._send(sock, addr, out)

    def _submit(self, sock: socket.socket, addr: object, pending: Pending) -> None:
        with self._lock:
            busy = self._pending >= MAX_PENDING or self._pool is None
            if not busy:
                self._pending += 1
        if busy:
            q = pending.query
            self._send(sock, addr, error_reply(q.id, q.flags, SERVFAIL, q.question, q.edns))
            return

        def work() -> None:
            try:
                self._send(sock, addr, self._ask_upstreams(pending, tcp=False))
            finally:
                with self._lock:
                    self._pending -= 1

        try:
            self._pool.submit(work)  # type: ignore[union-attr]
        except RuntimeError:  # shutting down
            with self._lock:
                self._pending -= 1

    @staticmethod
    def _send(sock: socket.socket, addr: object, data: bytes) -> None:
        with contextlib.suppress(OSError):
            sock.sendto(data, addr)

    # ------------------------------------------------------------------ TCP

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping and listener not in self._retired:
            try:
                conn, _addr = listener.accept()
            except OSError:
                if self._stopping or listener in self._retired:
                    return
                time.sleep(0.05)  # e.g. EMFILE
                continue
            with self._lock:
                full = len(self._conns) >= MAX_TCP
                if not full:
                    self._conns.add(conn)
            if full:
                conn.close()
                continue
            threading.Thread(target=self._serve_conn, args=(conn,), name="dns-tcp-conn",
                             daemon=True).start()

    def _serve_conn(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(TCP_IDLE)
            while not self._stopping:
                head = _recv_exact(conn, 2)
                if head is None:
                    break
                data = _recv_exact(conn, int.from_bytes(head, "big"))
                if data is None:
                    break
                reply = self.respond(data, tcp=True)
                if reply:
                    conn.sendall(len(reply).to_bytes(2, "big") + reply)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()


def _recv_exact(conn: socket.socket, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def open_sockets(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket bound to host:port (port 0: the same free port for both)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _attempt in range(20):
        udp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            udp.bind((host, port))
            bound = udp.getsockname()[1]
            tcp = socket.socket(family, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((host, bound))
            except OSError:
                tcp.close()
                raise
        except OSError:
            udp.close()
            if port:
                raise
            continue
        return udp, tcp
    raise OSError(f"no port free for both UDP and TCP on {host}")
