"""The agent process: one asyncio loop in one thread serves every pod of a lab.

Start-up: lock and write the pidfile, read workloads.json, check every pod namespace,
open the control socket, open every built-in server's sockets (the thread enters each
pod's namespace, makes the socket, returns; the socket stays bound to that namespace
and is handed to the loop), start every workload process, then tell the starter
"ready" through the inherited pipe. Any failure undoes all of it and reports the error
through the same pipe instead.

Shutdown (SIGTERM/SIGINT): stop accepting, let connections finish the request in
progress, stop workload processes (SIGTERM, 5 s, SIGKILL — only PIDs we started),
remove the pidfile, pids file and socket, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import resource
import shutil
import signal
import socket
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from labctl.agent import procfs
from labctl.agent.paths import READY_FD_ENV, StatePaths
from labctl.agent.workloads import Container, Pod, Workloads, load, resolve_program
from labctl.errors import LabctlError
from labctl.kubelet import echo
from labctl.kubelet.process import ProcessSpec, Supervisor, base_env, timestamp
from labctl.net import netns

LISTEN_BACKLOG = 1024
CONN_GRACE = 2.0  # seconds connections get to finish their request at shutdown
CONTROL_READ_TIMEOUT = 5.0

log = logging.getLogger("labctl.agent")


def raise_nofile_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit: a lab holds several sockets per pod."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class ContainerLog:
    """A container's log file, kept open for one line per echo request."""

    def __init__(self, path: str):
        self.path = path
        self.file = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def __call__(self, msg: str) -> None:
        self.file.write(f"{timestamp()} {msg}\n")

    def close(self) -> None:
        self.file.close()


@dataclass
class Listener:
    pod: Pod
    container: Container
    protocol: str
    port: int
    sock: socket.socket
    server: asyncio.Server | None = None
    transport: asyncio.BaseTransport | None = None

    def __str__(self) -> str:
        return f"pod {self.pod.key} container {self.container.name} {self.port}/{self.protocol}"

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        elif self.transport is not None:
            self.transport.close()
        else:
            self.sock.close()


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


@dataclass
class Agent:
    state_dir: str
    ready_fd: int = -1
    paths: StatePaths = field(init=False)
    workloads: Workloads = field(init=False)
    listeners: list[Listener] = field(default_factory=list)
    supervisors: list[Supervisor] = field(default_factory=list)
    connections: set[echo.TcpEcho] = field(default_factory=set)
    logs: dict[str, ContainerLog] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.paths = StatePaths(self.state_dir)
        self.pids = procfs.PidRegistry(self.paths.pids)
        self.stop_requested = asyncio.Event()
        self.pidfile_fd: int | None = None
        self.control: asyncio.Server | None = None
        self.cluster_dns: Any = None  # agent.cluster_dns.ClusterDns, once a DNS pod exists
        self._live: Any = None  # agent.live.LiveCluster, made on the first change
        self.dns_sockets: list[socket.socket] = []  # opened at start-up, served after
        self.dns_pods: set[str] = set()

    # entry

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        _use_pidfd_child_watcher(loop)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            await self.start()
            if self.stop_requested.is_set():
                raise LabctlError("stopped by a signal during start-up")
        except (LabctlError, OSError) as e:
            text = str(e) if isinstance(e, LabctlError) else f"{type(e).__name__}: {e}"
            log.error("start-up failed: %s", text)
            await self.teardown()
            self.report("error", text)
            return 1
        except BaseException as e:
            log.exception("start-up failed")
            await self.teardown()
            self.report("error", f"internal error: {type(e).__name__}: {e}")
            raise
        log.info("ready: %d pods, %d listeners, %d processes", len(self.workloads.pods),
                 len(self.listeners), len(self.supervisors))
        self.report("ready", str(os.getpid()))
        self.start_cluster_dns()  # queries wait in the sockets' queues until it answers
        await self.stop_requested.wait()
        log.info("stopping")
        await self.teardown()
        log.info("stopped")
        return 0

    def request_stop(self, sig: int | None = None) -> None:
        if sig is not None:
            log.info("received %s", signal.Signals(sig).name)
        self.stop_requested.set()

    def report(self, status: str, text: str) -> None:
        """Tell the starter "ready <pid>" or "error <text>" and close the pipe."""
        if self.ready_fd < 0:
            return
        with contextlib.suppress(OSError):
            data = f"{status} {text}\n".encode()
            while data:
                data = data[os.write(self.ready_fd, data):]
        with contextlib.suppress(OSError):
            os.close(self.ready_fd)
        self.ready_fd = -1

    # start-up

    async def start(self) -> None:
        os.makedirs(self.paths.logs_dir, mode=0o755, exist_ok=True)
        self.lock_pidfile()
        self.workloads = load(self.paths.workloads)
        log.info("starting: lab %s, %d pods", self.workloads.lab, len(self.workloads.pods))
        self.check_namespaces()
        await self.open_control()
        plan = self.plan()
        for pod, container, _program in plan:
            if container.builtin == "dns":
                self.open_cluster_dns(pod, container)
        for pod, container, program in plan:
            if program is None and not container.builtin:
                await self.serve_builtin(pod, container)
        for pod, container, program in plan:
            if program is not None:
                await self.start_process(pod, container, program)

    def lock_pidfile(self) -> None:
        fd = os.open(self.paths.pidfile, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise LabctlError(f"another agent (pid {other or '?'}) is already running for "
                              f"{self.state_dir}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.pidfile_fd = fd

    def check_namespaces(self) -> None:
        missing = [f"{p.netns} (pod {p.key})" for p in self.workloads.pods
                   if not netns.exists(p.netns)]
        if missing:
            raise LabctlError(
                f"network namespace{'s' if len(missing) > 1 else ''} not found under "
                f"{netns.RUN_NETNS}: {', '.join(missing)}; create the lab's namespaces "
                f"before starting its agent")

    def plan(self) -> list[tuple[Pod, Container, str | None]]:
        """Each container with the host path of its program (None: built-in server)."""
        path = os.environ.get("PATH") or None
        return [(pod, c, resolve_program(c.program, path))
                for pod in self.workloads.pods for c in pod.containers]

    def container_log(self, pod: Pod, container: Container) -> ContainerLog:
        path = self.paths.log_path(pod.namespace, pod.name, container.name)
        if path not in self.logs:
            self.logs[path] = ContainerLog(path)
        return self.logs[path]

    async def serve_builtin(self, pod: Pod, container: Container) -> None:
        loop = asyncio.get_running_loop()
        clog = self.container_log(pod, container)
        ident = echo.Identity(pod=pod.name, namespace=pod.namespace, node=pod.node,
                              ip=pod.ip, container=container.name)
        for port in container.ports:
            if port.protocol not in ("TCP", "UDP"):
                clog(f"port {port}: {port.protocol} is not served by the built-in server")
                continue
            try:
                sock = open_socket(pod.netns, port.protocol, port.port)
            except OSError as e:
                raise LabctlError(f"pod {pod.key} container {container.name}: cannot open "
                                  f"{port} in {pod.netns}: {e.strerror or e}") from e
            lst = Listener(pod, container, port.protocol, port.port, sock)
            self.listeners.append(lst)
            if port.protocol == "TCP":
                lst.server = await loop.create_server(
                    lambda i=ident, lg=clog: echo.TcpEcho(i, lg, self.connections), sock=sock,
                    backlog=LISTEN_BACKLOG)  # asyncio calls listen() again with this
            else:
                lst.transport, _ = await loop.create_datagram_endpoint(
                    lambda i=ident, lg=clog: echo.UdpEcho(i, lg), sock=sock)
            clog(f"built-in echo server listening on 0.0.0.0:{port}")

    @property
    def live(self) -> Any:
        """The lab's ClusterState and resync machinery (compiled on first use, so a
        lab's start-up does not pay for it)."""
        if self._live is None:
            from labctl.agent.live import LiveCluster

            self._live = LiveCluster(self.workloads.lab, self.state_dir,
                                     on_change=self._cluster_changed)
        return self._live

    def reload(self) -> dict[str, Any]:
        """The lab was changed behind the agent (e.g. `labctl proxy-mode`, which loaded
        every node's rules afresh): start again from the lab's files, keeping which pods
        are not ready, and put that readiness back into the rules and DNS."""
        ready = dict(self._live.ready) if self._live is not None else {}
        self._live = None
        synced: dict[str, float] = {}
        if any(not r for r in ready.values()):
            self.live.ready = ready
            synced = self.live.resync()
        return {"ok": True, "synced": synced}

    def _cluster_changed(self, state: Any) -> None:
        if self.cluster_dns is not None:
            self.cluster_dns.update(state)

    def open_cluster_dns(self, pod: Pod, container: Container) -> None:
        from labctl.agent.cluster_dns import open_dns_sockets

        try:
            self.dns_sockets += open_dns_sockets(pod, container)
        except OSError as e:
            raise LabctlError(f"pod {pod.key}: cannot serve cluster DNS in {pod.netns}: "
                              f"{e.strerror or e}") from e
        self.dns_pods.add(pod.key)

    def start_cluster_dns(self) -> None:
        """Build the zone and start answering on the sockets opened during start-up."""
        if not self.dns_sockets:
            return
        from labctl.agent.cluster_dns import ClusterDns

        try:
            self.cluster_dns = ClusterDns(self.workloads.lab, self.dns_sockets)
        except Exception:  # noqa: BLE001 - reported after start-up, the agent lives on
            log.exception("cluster DNS failed to start")
            for sock in self.dns_sockets:
                sock.close()
        self.dns_sockets = []

    async def start_process(self, pod: Pod, container: Container, program: str) -> None:
        ip_cmd = shutil.which("ip") or "/usr/sbin/ip"
        env = base_env(pod.name, os.environ.get("PATH"))
        env.update(container.env)
        spec = ProcessSpec(
            name=f"{pod.key}/{container.name}", netns=pod.netns, argv=list(container.argv),
            env=env, log_path=self.paths.log_path(pod.namespace, pod.name, container.name),
            restart_policy=pod.restart_policy, ip_cmd=ip_cmd)
        sup = Supervisor(spec, on_start=self.pids.add, on_exit=self.pids.discard)
        try:
            await sup.start()
        except OSError as e:
            raise LabctlError(f"pod {pod.key} container {container.name}: cannot start "
                              f"{' '.join(container.argv)}: {e}") from e
        self.supervisors.append(sup)

    # control socket

    async def open_control(self) -> None:
        path = self.paths.socket
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self.control = await asyncio.start_unix_server(self.serve_control, path=path)
        os.chmod(path, 0o600)

    async def serve_control(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), CONTROL_READ_TIMEOUT)
            try:
                reply = self.handle(json.loads(line or b"null"))
            except ValueError as e:
                reply = {"ok": False, "error": f"bad request: {e}"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def handle(self, req: Any) -> dict[str, Any]:
        op = req.get("op") if isinstance(req, dict) else None
        if op == "status":
            return self.status()
        if op == "pods":
            return {"ok": True, "pods": self.pod_states()}
        if op == "reload":
            return self.reload()
        if op == "prepare-apply":  # fix what is loaded now, before the manifests change
            return {"ok": True, "pods": len(self.live.state.pods)}
        if op == "apply":
            return self.live.rebase()
        if op == "set-ready":
            return self.live.set_ready(str(req.get("pod")), bool(req.get("ready")),
                                       str(req.get("reason") or "set by labctl"))
        return {"ok": False, "error": f"unknown op {op!r} (known: status, pods, set-ready)"}

    def pod_states(self) -> dict[str, list[dict[str, Any]]]:
        """Per pod key, each container's state and restart count (for `labctl get pods`)."""
        sups = {s.spec.name: s for s in self.supervisors}
        served = {(lst.pod.key, lst.container.name) for lst in self.listeners}
        not_ready = ({k for k, r in self._live.ready.items() if not r}
                     if self._live is not None else set())
        out: dict[str, list[dict[str, Any]]] = {}
        for pod in self.workloads.pods:
            states = []
            for c in pod.containers:
                sup = sups.get(f"{pod.key}/{c.name}")
                if sup is not None:
                    states.append({"name": c.name, "state": sup.state(),
                                   "restarts": sup.restarts})
                else:  # the built-in server: running once its sockets are open
                    ok = (not c.ports or (pod.key, c.name) in served
                          or (c.builtin == "dns" and pod.key in self.dns_pods))
                    states.append({"name": c.name, "state": "Running" if ok else "Waiting",
                                   "restarts": 0})
            for st in states:
                st["ready"] = st["state"] == "Running" and pod.key not in not_ready
            out[pod.key] = states
        return out

    def status(self) -> dict[str, Any]:
        return {
            "ok": True,
            "pid": os.getpid(),
            "lab": self.workloads.lab,
            "pods": len(self.workloads.pods),
            "listeners": len(self.listeners),
            "processes": sum(1 for s in self.supervisors if s.pid is not None),
            "uptime": round(time.monotonic() - self.started, 3),
        }

    # shutdown

    async def teardown(self) -> None:
        if self.control is not None:
            self.control.close()
        for lst in self.listeners:
            lst.close()
        if self.cluster_dns is not None:
            self.cluster_dns.stop()
        for sock in self.dns_sockets:
            sock.close()
        for conn in list(self.connections):
            conn.shutdown()
        if self.supervisors:
            await asyncio.gather(*(s.stop() for s in self.supervisors),
                                 return_exceptions=True)
        deadline = time.monotonic() + CONN_GRACE
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(0)  # let connection_lost callbacks run
        for clog in self.logs.values():
            clog.close()
        if self.pidfile_fd is not None:  # the files are ours only while we hold the lock
            self.pids.remove()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.paths.socket)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.paths.pidfile)
            os.close(self.pidfile_fd)
            self.pidfile_fd = None


def _use_pidfd_child_watcher(loop: asyncio.AbstractEventLoop) -> None:
    """Reap children through pidfds in the loop, not one waiter thread per process."""
    if not hasattr(os, "pidfd_open"):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            os.close(os.pidfd_open(os.getpid()))
        except OSError:
            return  # kernel older than 5.3
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(loop)
        asyncio.set_child_watcher(watcher)


def main(state_dir: str) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s agent[%(process)d] "
                        "%(levelname)s %(message)s")
    ready_fd = int(os.environ.pop(READY_FD_ENV, "-1"))
    if ready_fd >= 0:
        os.set_inheritable(ready_fd, False)
    raise_nofile_limit()
    agent = Agent(os.path.abspath(state_dir), ready_fd)
    return asyncio.run(agent.run())
