"""kube-proxy's userspace mode, the proxy process of one node (deprecated: see
labctl/proxy/userspace.py for why):

    python -m labctl.proxy.userspace_daemon STATE_DIR NODE

Run inside the node's network namespace (the pod host runs it there as the pod
kube-system/kube-proxy-<node>, as kube-proxy runs as a hostNetwork DaemonSet pod); it
refuses to start anywhere else, so every socket it opens is the node's. It reads the
lab's current ClusterState, renders the node's view with `userspace.render` (the same
pure function the rules come from, so both agree on every proxy port) and:

* listens on 0.0.0.0:<proxy port> for each TCP and UDP Service port, and holds the
  NodePorts open (upstream's port claims);
* TCP: accepts, picks an endpoint (LoadBalancerRR below), connects with a 250 ms
  timeout and, when that fails, tries the next endpoint (500 ms, 1 s, 2 s) — the retry
  iptables mode does not have; then copies bytes both ways (a half-close is passed on).
  No endpoint, or none answering: the accepted connection is reset (the client's
  connect() had succeeded: the proxy, not a pod, accepted it);
* UDP: one "connection" (a connected socket to the chosen endpoint) per client
  address, ended after 250 ms idle (--udp-timeout); replies go back from the
  listening socket, so the kernel un-NATs them;
* reloads the state when told (`{"op": "reload"}` on its control socket, which the
  agent sends after every resync; SIGHUP; or, as a fallback, when the state file
  changes): endpoints change in memory, listeners only when ports do, and established
  connections are never touched.

Control socket: <STATE_DIR>/kube-proxy-<NODE>.sock, one JSON line each way: status
(ports, endpoints, per-endpoint counts, failed connects, retries), reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import socket
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from labctl.proxy.userspace import DIAL_TIMEOUTS, UDP_BUFFER, UDP_IDLE_TIMEOUT

POLL = 1.0  # how often the state file is checked when no reload request came
BACKLOG = 1024
COPY_CHUNK = 65536
CONTROL_TIMEOUT = 5.0

log = logging.getLogger("labctl.kube-proxy")


def socket_path(state_dir: str, node: str) -> str:
    return os.path.join(state_dir, f"kube-proxy-{node}.sock")


# ----------------------------------------------------------------- LoadBalancerRR


class NoEndpoints(Exception):
    pass


@dataclass
class _Session:
    endpoint: str
    last_used: float


@dataclass
class _Balancer:
    endpoints: list[str] = field(default_factory=list)  # in the order they are served
    index: int = 0
    affinity: bool = False
    ttl: float = 10800.0
    sessions: dict[str, _Session] = field(default_factory=dict)  # client IP → endpoint


class RoundRobin:
    """Upstream's LoadBalancerRR, restated: per Service port a list of endpoints served
    in turn, shuffled and restarted whenever the set changes; with ClientIP affinity a
    client IP keeps its endpoint until it has been idle `ttl` seconds, the endpoint
    goes, or a connect to it failed (`reset`)."""

    def __init__(self, shuffle: Any = random.shuffle, clock: Any = time.monotonic) -> None:
        self.services: dict[str, _Balancer] = {}
        self.shuffle = shuffle
        self.clock = clock

    def update(self, key: str, endpoints: list[str] | tuple[str, ...], affinity: bool,
               ttl: float) -> None:
        state = self.services.setdefault(key, _Balancer())
        state.affinity, state.ttl = affinity, float(ttl or 10800)
        if not affinity:
            state.sessions.clear()
        if sorted(state.endpoints) == sorted(endpoints):
            return
        keep = set(endpoints)
        state.sessions = {ip: s for ip, s in state.sessions.items() if s.endpoint in keep}
        state.endpoints = list(endpoints)
        self.shuffle(state.endpoints)
        state.index = 0

    def remove(self, key: str) -> None:
        self.services.pop(key, None)

    def next_endpoint(self, key: str, client_ip: str, reset: bool = False) -> str:
        state = self.services.get(key)
        if state is None or not state.endpoints:
            raise NoEndpoints(key)
        now = self.clock()
        if state.affinity and not reset:
            s = state.sessions.get(client_ip)
            if s is not None and now - s.last_used < state.ttl:
                s.last_used = now
                return s.endpoint
        endpoint = state.endpoints[state.index]
        state.index = (state.index + 1) % len(state.endpoints)
        if state.affinity:
            state.sessions[client_ip] = _Session(endpoint, now)
        return endpoint

    def cleanup(self) -> None:
        """Forget sessions idle longer than their Service's timeout."""
        now = self.clock()
        for state in self.services.values():
            state.sessions = {ip: s for ip, s in state.sessions.items()
                              if now - s.last_used < state.ttl}


# ----------------------------------------------------------------- the proxy


@dataclass
class Stats:
    connections: int = 0  # TCP connections accepted / UDP client sessions started
    active: int = 0
    retried: int = 0  # connections that needed more than one connect
    failed_connects: Counter[str] = field(default_factory=Counter)  # endpoint → count
    served: Counter[str] = field(default_factory=Counter)  # endpoint → connections
    refused: int = 0  # reset: no endpoint, or none could be reached

    def json(self) -> dict[str, Any]:
        return {"connections": self.connections, "active": self.active,
                "retried": self.retried, "failedConnects": dict(self.failed_connects),
                "served": dict(self.served), "reset": self.refused}


@dataclass
class Listener:
    protocol: str
    port: int
    key: str  # the ServicePort it serves now ("ns/name[:port]/PROTO")
    server: asyncio.AbstractServer | None = None
    sock: socket.socket | None = None  # UDP
    sessions: dict[tuple[str, int], UdpSession] = field(default_factory=dict)


class UdpSession:
    """One UDP client of one Service port: a connected socket to its endpoint."""

    def __init__(self, proxier: Proxier, listener: Listener, client: tuple[str, int],
                 endpoint: str, sock: socket.socket) -> None:
        self.proxier, self.listener, self.client = proxier, listener, client
        self.endpoint, self.sock = endpoint, sock
        self.last = time.monotonic()
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(sock.fileno(), self.relay)
        self.timer = self.loop.call_later(UDP_IDLE_TIMEOUT, self.check_idle)

    def send(self, data: bytes) -> None:
        self.last = time.monotonic()
        try:
            self.sock.send(data)
        except BlockingIOError:
            pass  # a full queue drops the datagram, as the network would
        except OSError as e:  # e.g. ECONNREFUSED from an earlier ICMP port unreachable
            log.info("UDP %s -> %s: %s", self.client, self.endpoint, e)
            self.close()

    def relay(self) -> None:
        """Replies from the endpoint go back to the client from the listening socket."""
        for _ in range(64):
            try:
                data = self.sock.recv(UDP_BUFFER)
            except BlockingIOError:
                return
            except OSError as e:
                log.info("UDP %s <- %s: %s", self.client, self.endpoint, e)
                self.close()
                return
            self.last = time.monotonic()
            if self.listener.sock is None:
                return
            try:
                self.listener.sock.sendto(data, self.client)
            except BlockingIOError:
                pass  # dropped, as a full queue on the wire would
            except OSError as e:
                log.info("UDP reply to %s: %s", self.client, e)

    def check_idle(self) -> None:
        idle = time.monotonic() - self.last
        if idle >= UDP_IDLE_TIMEOUT:
            self.close()
        else:
            self.timer = self.loop.call_later(UDP_IDLE_TIMEOUT - idle, self.check_idle)

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return
        self.timer.cancel()
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        if self.listener.sessions.get(self.client) is self:
            del self.listener.sessions[self.client]
            self.proxier.stats_for(self.listener.key).active -= 1


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0): the client sees "connection reset"."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


async def _copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    while data := await src.read(COPY_CHUNK):
        dst.write(data)
        await dst.drain()
    if dst.can_write_eof() and not dst.is_closing():
        dst.write_eof()  # pass the half-close on; the other direction may go on


class Proxier:
    """The node's proxy: listeners, port claims and LoadBalancerRR, from a ruleset.

    `listen`: the address the proxy ports are bound to (kube-proxy's --bind-address;
    the rules assume 0.0.0.0 — tests use 127.0.0.1)."""

    def __init__(self, state_dir: str, node: str, listen: str = "0.0.0.0") -> None:
        self.state_dir = os.path.abspath(state_dir)
        self.node = node
        self.listen = listen
        self.lb = RoundRobin()
        self.listeners: dict[tuple[str, int], Listener] = {}
        self.claims: dict[tuple[str, int, str], socket.socket] = {}
        self.ports: dict[str, Any] = {}  # key → userspace.ProxiedPort
        self.stats: dict[str, Stats] = {}
        self.errors: list[str] = []
        self.generation = 0
        self.loaded_mtime = 0
        self.reload_lock = asyncio.Lock()
        self.started = time.monotonic()

    def stats_for(self, key: str) -> Stats:
        return self.stats.setdefault(key, Stats())

    # --------------------------------------------------------- state

    def _state_file(self) -> str:
        from labctl.lab.store import STATE

        return os.path.join(self.state_dir, STATE)

    def _render(self) -> Any:
        from labctl.lab import store
        from labctl.proxy import base, userspace

        mtime = os.stat(self._state_file()).st_mtime_ns
        state = store.current_state(self.state_dir)
        node = state.node(self.node)
        check_namespace(node.netns)
        return mtime, userspace.render(base.input_for_node(state, self.node))

    async def reload(self) -> dict[str, Any]:
        async with self.reload_lock:
            mtime, rs = self._render()
            changed = await self.apply(rs)
            self.loaded_mtime = mtime
            self.generation += 1
            return {"generation": self.generation, "changed": changed,
                    "ports": len(self.listeners), "errors": list(self.errors)}

    async def apply(self, rs: Any) -> bool:
        """Make the listeners, claims and balancers those of ruleset `rs`."""
        self.errors = []
        wanted = {(p.protocol, p.proxy_port): p for p in rs.proxies}
        changed = False
        for where, listener in list(self.listeners.items()):
            if where not in wanted:
                self._close_listener(listener)
                del self.listeners[where]
                changed = True
        for where, p in wanted.items():
            listener = self.listeners.get(where)
            if listener is None:
                try:
                    listener = await self._open_listener(p.protocol, p.proxy_port, p.key)
                except OSError as e:
                    self.errors.append(f"{p.spn}: cannot listen on {p.proxy_port}/"
                                       f"{p.protocol}: {e.strerror or e}")
                    log.error("%s", self.errors[-1])
                    continue
                self.listeners[where] = listener
                changed = True
                log.info("proxying %s on %s port %d", p.spn, p.protocol, p.proxy_port)
            listener.key = p.key
        for key in set(self.ports) - {p.key for p in rs.proxies}:
            self.lb.remove(key)
        self.ports = {p.key: p for p in rs.proxies}
        for p in rs.proxies:
            self.lb.update(p.key, p.endpoints, p.affinity, p.sticky_seconds)
        self.lb.cleanup()
        changed |= self._claim(rs.claims)
        return changed

    def _claim(self, claims: Any) -> bool:
        """Hold the NodePorts (and local portal addresses) open, as upstream did."""
        wanted = {(c.ip, c.port, c.protocol): c for c in claims}
        changed = False
        for where in list(self.claims):
            if where not in wanted:
                self.claims.pop(where).close()
                changed = True
        for where, c in wanted.items():
            if where in self.claims:
                continue
            kind = socket.SOCK_STREAM if c.protocol == "TCP" else socket.SOCK_DGRAM
            sock = socket.socket(socket.AF_INET, kind | socket.SOCK_CLOEXEC)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((c.ip, c.port))
                if kind == socket.SOCK_STREAM:
                    sock.listen(1)
            except OSError as e:
                sock.close()
                self.errors.append(f"{c.owner}: cannot hold {c.ip or '*'}:{c.port}/"
                                   f"{c.protocol}: {e.strerror or e}")
                continue
            self.claims[where] = sock
            changed = True
        return changed

    # --------------------------------------------------------- listeners

    async def _open_listener(self, protocol: str, port: int, key: str) -> Listener:
        kind = socket.SOCK_STREAM if protocol == "TCP" else socket.SOCK_DGRAM
        sock = socket.socket(socket.AF_INET, kind | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.listen, port))
            if kind == socket.SOCK_STREAM:
                sock.listen(BACKLOG)
        except OSError:
            sock.close()
            raise
        listener = Listener(protocol, port, key)
        if protocol == "TCP":
            listener.server = await asyncio.start_server(
                lambda r, w: self._serve_tcp(listener, r, w), sock=sock, backlog=BACKLOG)
        else:
            listener.sock = sock
            asyncio.get_running_loop().add_reader(sock.fileno(), self._udp_readable, listener)
        return listener

    def _close_listener(self, listener: Listener) -> None:
        """No new connections; TCP connections already proxied go on (upstream: the
        same), UDP sessions end with the socket they reply from."""
        log.info("stopped proxying %s on port %d", listener.key, listener.port)
        if listener.server is not None:
            listener.server.close()
        if listener.sock is not None:
            asyncio.get_running_loop().remove_reader(listener.sock.fileno())
            for session in list(listener.sessions.values()):
                session.close()
            listener.sock.close()
            listener.sock = None

    # --------------------------------------------------------- TCP

    async def _serve_tcp(self, listener: Listener, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        key = listener.key
        stats = self.stats_for(key)
        stats.connections += 1
        stats.active += 1
        client_ip = (writer.get_extra_info("peername") or ("?", 0))[0]
        try:
            backend = await self._connect(key, client_ip, stats)
            if backend is None:
                stats.refused += 1
                _reset(writer)
                return
            b_reader, b_writer = backend
            await self._pipe(reader, writer, b_reader, b_writer)
        finally:
            stats.active -= 1

    async def _connect(self, key: str, client_ip: str, stats: Stats,
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """tryConnect: up to four endpoints, each with a longer timeout; after a failed
        connect, affinity is ignored (the next endpoint in turn is taken)."""
        for attempt, timeout in enumerate(DIAL_TIMEOUTS):
            try:
                endpoint = self.lb.next_endpoint(key, client_ip, reset=attempt > 0)
            except NoEndpoints:
                log.info("%s: no endpoints: resetting a connection from %s", key, client_ip)
                return None
            host, _, port = endpoint.rpartition(":")
            try:
                conn = await asyncio.wait_for(asyncio.open_connection(host, int(port)),
                                              timeout)
            except (OSError, TimeoutError) as e:
                stats.failed_connects[endpoint] += 1
                log.info("%s: connect to %s failed (%s), %s", key, endpoint,
                         "timeout" if isinstance(e, TimeoutError) else e.strerror or e,
                         "trying the next endpoint" if attempt + 1 < len(DIAL_TIMEOUTS)
                         else "giving up")
                continue
            if attempt:
                stats.retried += 1
            stats.served[endpoint] += 1
            return conn
        return None

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    b_reader: asyncio.StreamReader, b_writer: asyncio.StreamWriter) -> None:
        tasks = {asyncio.ensure_future(_copy(reader, b_writer)),
                 asyncio.ensure_future(_copy(b_reader, writer))}
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            failed = any(t.exception() is not None for t in done)
        except asyncio.CancelledError:
            failed, pending = True, tasks
        for task in pending:
            task.cancel()
        for w in (writer, b_writer):
            if failed:  # one side reset or broke: so does the other
                w.transport.abort()
            else:
                w.close()

    # --------------------------------------------------------- UDP

    def _udp_readable(self, listener: Listener) -> None:
        sock = listener.sock
        for _ in range(64):
            if sock is None:
                return
            try:
                data, client = sock.recvfrom(UDP_BUFFER)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.info("UDP %d: %s", listener.port, e)
                return
            session = listener.sessions.get(client)
            if session is None:
                session = self._udp_session(listener, client)
                if session is None:
                    continue
            session.send(data)

    def _udp_session(self, listener: Listener, client: tuple[str, int]) -> UdpSession | None:
        key = listener.key
        stats = self.stats_for(key)
        for attempt, _timeout in enumerate(DIAL_TIMEOUTS):
            try:
                endpoint = self.lb.next_endpoint(key, client[0], reset=attempt > 0)
            except NoEndpoints:
                stats.refused += 1
                return None
            host, _, port = endpoint.rpartition(":")
            sock = socket.socket(socket.AF_INET,
                                 socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
            try:
                sock.connect((host, int(port)))  # no packet: fails only without a route
            except OSError:
                sock.close()
                stats.failed_connects[endpoint] += 1
                continue
            stats.connections += 1
            stats.active += 1
            stats.served[endpoint] += 1
            if attempt:
                stats.retried += 1
            session = UdpSession(self, listener, client, endpoint, sock)
            listener.sessions[client] = session
            return session
        stats.refused += 1
        return None

    # --------------------------------------------------------- control

    def status(self) -> dict[str, Any]:
        ports = []
        for (protocol, port), listener in sorted(self.listeners.items()):
            p = self.ports.get(listener.key)
            ports.append({"key": listener.key, "service": p.spn if p else "",
                          "protocol": protocol, "proxyPort": port,
                          "endpoints": list(p.endpoints) if p else [],
                          "sessionAffinity": bool(p and p.affinity),
                          **self.stats_for(listener.key).json()})
        return {"node": self.node, "pid": os.getpid(), "generation": self.generation,
                "uptime": round(time.monotonic() - self.started, 3), "ports": ports,
                "claims": [f"{ip or '*'}:{port}/{proto}" for ip, port, proto in
                           sorted(self.claims)],
                "errors": self.errors}

    async def serve_control(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), CONTROL_TIMEOUT)
            try:
                req = json.loads(line or b"null")
                op = req.get("op") if isinstance(req, dict) else None
                if op == "status":
                    reply = {"ok": True, **self.status()}
                elif op == "reload":
                    reply = {"ok": True, **(await self.reload())}
                else:
                    reply = {"ok": False, "error": f"unknown op {op!r} (known: status, "
                                                   "reload)"}
            except Exception as e:  # noqa: BLE001 - reported to the caller, we live on
                reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()

    async def reload_logged(self) -> None:
        try:
            await self.reload()
        except Exception:  # noqa: BLE001 - keep serving what we have
            log.exception("reload failed")

    async def watch(self) -> None:
        """The fallback: reload when the state file changed and nobody said so."""
        while True:
            await asyncio.sleep(POLL)
            with contextlib.suppress(OSError):
                if os.stat(self._state_file()).st_mtime_ns != self.loaded_mtime:
                    await self.reload_logged()

    def close(self) -> None:
        for listener in self.listeners.values():
            self._close_listener(listener)
        for sock in self.claims.values():
            sock.close()


def check_namespace(netns: str) -> None:
    """Refuse to run outside the node's namespace: its sockets must be the node's."""
    from labctl.errors import LabctlError

    try:
        want = os.stat(os.path.join("/run/netns", netns))
    except FileNotFoundError:
        raise LabctlError(f"network namespace {netns} does not exist") from None
    have = os.stat("/proc/self/ns/net")
    if (want.st_dev, want.st_ino) != (have.st_dev, have.st_ino):
        raise LabctlError(f"not inside {netns}: run `ip netns exec {netns} python -m "
                          "labctl.proxy.userspace_daemon ...`")


async def run(state_dir: str, node: str) -> int:
    from labctl.errors import LabctlError

    proxier = Proxier(state_dir, node)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(proxier.reload_logged()))
    try:
        await proxier.reload()
    except (LabctlError, OSError) as e:
        log.error("cannot start: %s", e)
        return 1
    path = socket_path(proxier.state_dir, node)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    control = await asyncio.start_unix_server(proxier.serve_control, path=path)
    os.chmod(path, 0o600)
    watcher = loop.create_task(proxier.watch())
    log.info("kube-proxy (userspace mode, deprecated) serving %d ports on %s",
             len(proxier.listeners), node)
    await stop.wait()
    watcher.cancel()
    control.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    proxier.close()
    log.info("stopped")
    return 0


# ----------------------------------------------------------------- the client side


def request(state_dir: str, node: str, payload: dict[str, Any], timeout: float = 5.0,
            ) -> dict[str, Any]:
    """One request to a node's proxy (blocking; for the CLI and tests)."""
    from labctl.errors import LabctlError

    path = socket_path(os.path.abspath(state_dir), node)
    data = b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
            s.sendall(json.dumps(payload).encode() + b"\n")
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError as e:
            raise LabctlError(f"the kube-proxy of {node} is not answering ({e})") from e
    try:
        return json.loads(data)
    except ValueError as e:
        raise LabctlError(f"the kube-proxy of {node} sent no valid reply") from e


async def request_async(state_dir: str, node: str, payload: dict[str, Any],
                        timeout: float = 5.0) -> dict[str, Any]:
    path = socket_path(os.path.abspath(state_dir), node)
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), timeout)
    try:
        writer.write(json.dumps(payload).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.close()
    return json.loads(line)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m labctl.proxy.userspace_daemon STATE_DIR NODE", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s kube-proxy[%(process)d] "
                        "%(levelname)s %(message)s")
    return asyncio.run(run(argv[0], argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
