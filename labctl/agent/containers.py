"""The pod host's containers that are not processes: the built-in echo server.

An `EchoRunner` is one container served by labctl itself: a listening socket per
containerPort, opened inside the pod's network namespace (the thread enters it, makes
the socket, returns; the socket stays bound to that namespace) and served by the pod
host's event loop. It has a process's life cycle (labctl.kubelet.process.Runner): it
can be stopped gracefully (stop accepting, let each connection finish the request in
progress), killed (liveness), crashed (`labctl break --crash`) and restarted per the
pod's restartPolicy.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from dataclasses import dataclass

from labctl.agent.workloads import Container, Pod
from labctl.kubelet import echo
from labctl.kubelet.process import CRASH_EXIT, Runner, timestamp
from labctl.net import netns

LISTEN_BACKLOG = 1024
POD_IFACE = "eth0"
ETH_P_ARP = 0x0806
KILLED = -9  # what `_wait` reports for an instance ended by force (as a process would)


class ContainerLog:
    """A container's log file, kept open for one line per echo request."""

    def __init__(self, path: str):
        self.path = path
        self.file = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def __call__(self, msg: str) -> None:
        self.file.write(f"{timestamp()} {msg}\n")

    def close(self) -> None:
        self.file.close()


def open_socket(ns: str, protocol: str, port: int) -> socket.socket:
    """A socket bound to 0.0.0.0:port inside namespace `ns` (the thread returns home)."""
    kind = socket.SOCK_STREAM if protocol == "TCP" else socket.SOCK_DGRAM
    with netns.entered(ns):  # a socket belongs for life to the namespace it was made in
        sock = socket.socket(socket.AF_INET, kind | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        if kind == socket.SOCK_STREAM:
            sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def announce(pod: Pod) -> None:
    """Send a gratuitous ARP from the pod's eth0, as the CNI bridge plugin does when it
    sets up a pod. A new pod may get the address of one deleted moments ago; the node
    (whose probes kept that address's neighbour entry REACHABLE) and the pods on its
    bridge would otherwise keep sending to the old pod's MAC for up to a minute."""
    import struct

    with netns.entered(pod.netns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             socket.htons(ETH_P_ARP))
    with sock:
        sock.bind((POD_IFACE, ETH_P_ARP))
        mac = sock.getsockname()[4]
        ip = socket.inet_aton(pod.ip)
        arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, ip, bytes(6), ip)
        sock.send(b"\xff" * 6 + mac + struct.pack("!H", ETH_P_ARP) + arp)


@dataclass
class Listener:
    protocol: str
    port: int
    sock: socket.socket
    server: asyncio.Server | None = None
    transport: asyncio.BaseTransport | None = None

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        elif self.transport is not None:
            self.transport.close()
        else:
            self.sock.close()


class EchoRunner(Runner):
    def __init__(self, pod: Pod, container: Container, clog: ContainerLog) -> None:
        super().__init__(f"{pod.key}/{container.name}", clog.path, pod.restart_policy)
        self.pod = pod
        self.container = container
        self.clog = clog
        self.ident = echo.Identity(pod=pod.name, namespace=pod.namespace, node=pod.node,
                                   ip=pod.ip, container=container.name)
        self.listeners: list[Listener] = []
        self.connections: set[echo.TcpEcho] = set()
        self._ended: asyncio.Future[int] | None = None

    @property
    def serving(self) -> bool:
        return bool(self.listeners)

    async def _launch(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            for port in self.container.ports:
                if port.protocol not in ("TCP", "UDP"):
                    self.clog(f"port {port}: {port.protocol} is not served by the built-in "
                              "server")
                    continue
                sock = open_socket(self.pod.netns, port.protocol, port.port)
                lst = Listener(port.protocol, port.port, sock)
                self.listeners.append(lst)
                if port.protocol == "TCP":
                    lst.server = await loop.create_server(
                        lambda: echo.TcpEcho(self.ident, self.clog, self.connections),
                        sock=sock, backlog=LISTEN_BACKLOG)
                else:
                    lst.transport, _ = await loop.create_datagram_endpoint(
                        lambda: echo.UdpEcho(self.ident, self.clog), sock=sock)
                self.clog(f"built-in echo server listening on 0.0.0.0:{port}")
        except BaseException:
            self._close_listeners()
            raise
        self._ended = loop.create_future()

    def _close_listeners(self) -> None:
        for lst in self.listeners:
            lst.close()
        self.listeners = []

    async def _wait(self) -> int:
        assert self._ended is not None
        return await self._ended

    def _end(self, code: int) -> None:
        self._close_listeners()
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(code)

    async def _terminate(self, grace: float, drain: float = 0.0) -> None:
        """Like a well-behaved server on SIGTERM: keep serving for `drain` seconds (the
        lab's endpoints have already stopped sending new connections), stop accepting,
        let each connection finish its request, and cut what is left after `grace`."""
        if drain > 0:
            await asyncio.sleep(min(drain, grace))
        self._close_listeners()
        for conn in list(self.connections):
            conn.shutdown()
        deadline = time.monotonic() + max(0.0, grace - drain)
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        code = 0
        if self.connections:
            code = KILLED
            self.log(f"connections still open after {grace:g}s: cut")
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.abort()
        await asyncio.sleep(0)  # let connection_lost callbacks run
        self._end(code)

    def _kill_now(self) -> None:
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        self._end(CRASH_EXIT if self.crashing else KILLED)

    async def stop(self, grace: float = 5.0, drain: float = 0.0) -> None:
        await super().stop(grace, drain)
        with contextlib.suppress(Exception):
            self._close_listeners()
