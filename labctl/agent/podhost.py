"""The pod host: one process per lab that runs every container (`python -m
labctl.agent.podhost <state_dir>`), as containerd and its shims do on a node.

It is kept apart from the agent (the controller) so that the agent can die and come
back without a single connection to a pod being lost: built-in echo servers, workload
processes and the cluster DNS server all live here, in one asyncio loop in one thread.

Start-up: lock and write the pidfile, read workloads.json, check every pod namespace,
open the control socket, open the cluster DNS sockets, start every container (built-in
servers first, then processes), then tell the starter "ready" through the inherited
pipe. Any failure undoes all of it and reports the error through the same pipe.

Control operations (one JSON line each way on podhost.sock): status, pods, add (start
new pods), remove (stop a pod gracefully: its servers drain, its processes get SIGTERM
and, after the grace period, SIGKILL), restart (a failed liveness probe), crash (`labctl
break --crash`), dns (re-read the cluster state for the DNS zone).

Shutdown (SIGTERM/SIGINT): stop every container (5 s grace), remove the pidfile, pids
file and socket, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import shutil
import signal
import socket
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

from labctl import names
from labctl.agent import events, procfs, startup
from labctl.agent.containers import ContainerLog, EchoRunner, announce
from labctl.agent.paths import READY_FD_ENV, StatePaths
from labctl.agent.workloads import Container, Pod, Workloads, load, parse, resolve_program
from labctl.errors import LabctlError
from labctl.kubelet.process import ProcessSpec, Runner, Supervisor, base_env
from labctl.net import netns

STOP_GRACE = 5.0

log = logging.getLogger("labctl.podhost")


def raise_nofile_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit: a lab holds several sockets per pod."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


@dataclass
class PodHost:
    state_dir: str
    ready_fd: int = -1
    paths: StatePaths = field(init=False)
    workloads: Workloads = field(init=False)
    runners: dict[tuple[str, str], Runner] = field(default_factory=dict)  # (pod, container)
    logs: dict[str, ContainerLog] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.paths = StatePaths(self.state_dir, "podhost")
        self.pids = procfs.PidRegistry(self.paths.pids)
        self.stop_requested = asyncio.Event()
        self.pidfile_fd: int | None = None
        self.control: asyncio.Server | None = None
        self.cluster_dns: Any = None  # agent.cluster_dns.ClusterDns, once a DNS pod exists
        self.dns_sockets: list[socket.socket] = []  # opened at start-up, served after
        self.dns_pods: dict[str, list[socket.socket]] = {}
        self.removing: set[str] = set()
        self.dns_lock = asyncio.Lock()  # one zone rebuild at a time, in order

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
        log.info("ready: %d pods, %d containers", len(self.workloads.pods), len(self.runners))
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
        startup.report(self.ready_fd, status, text)
        self.ready_fd = -1

    def event(self, kind: str, reason: str, pod: Pod, message: str) -> None:
        with contextlib.suppress(OSError):
            events.append(self.paths.events, kind, reason, f"pod/{pod.key}", message)

    # start-up

    async def start(self) -> None:
        os.makedirs(self.paths.logs_dir, mode=0o755, exist_ok=True)
        self.lock_pidfile()
        self.workloads = load(self.paths.workloads)
        log.info("starting: lab %s, %d pods", self.workloads.lab, len(self.workloads.pods))
        check_namespaces(self.workloads.pods)
        await self.open_control()
        await self.start_pods(self.workloads.pods)

    async def start_pods(self, pods: tuple[Pod, ...] | list[Pod]) -> None:
        """Start every container of these pods: DNS sockets, then built-in servers, then
        processes (so a process that talks to a built-in server at once finds it)."""
        plan = [(pod, c, resolve_program(c.program, os.environ.get("PATH") or None))
                for pod in pods for c in pod.containers]
        for pod, container, _program in plan:
            if container.builtin == "dns":
                self.open_cluster_dns(pod, container)
        for pod, container, program in plan:
            if program is None and not container.builtin:
                await self.start_runner(pod, container, self.echo_runner(pod, container))
        for pod, container, program in plan:
            if program is not None:
                await self.start_runner(pod, container,
                                        self.process_runner(pod, container, program))

    def lock_pidfile(self) -> None:
        self.pidfile_fd = startup.lock_pidfile(self.paths.pidfile, "pod host", self.state_dir)

    def container_log(self, pod: Pod, container: Container) -> ContainerLog:
        path = self.paths.log_path(pod.namespace, pod.name, container.name)
        if path not in self.logs:
            self.logs[path] = ContainerLog(path)
        return self.logs[path]

    def echo_runner(self, pod: Pod, container: Container) -> EchoRunner:
        return EchoRunner(pod, container, self.container_log(pod, container))

    def process_runner(self, pod: Pod, container: Container, program: str) -> Supervisor:
        env = base_env(pod.name, os.environ.get("PATH"))
        env.update(container.env)
        spec = ProcessSpec(
            name=f"{pod.key}/{container.name}", netns=pod.netns, argv=list(container.argv),
            env=env, log_path=self.paths.log_path(pod.namespace, pod.name, container.name),
            restart_policy=pod.restart_policy, ip_cmd=shutil.which("ip") or "/usr/sbin/ip")
        return Supervisor(spec, on_start=self.pids.add, on_exit=self.pids.discard)

    async def start_runner(self, pod: Pod, container: Container, runner: Runner) -> None:
        try:
            await runner.start()
        except OSError as e:
            what = (f"cannot start {' '.join(container.argv)}" if isinstance(runner, Supervisor)
                    else f"cannot serve its ports in {pod.netns}")
            raise LabctlError(f"pod {pod.key} container {container.name}: {what}: "
                              f"{e.strerror or e}") from e
        self.runners[pod.key, container.name] = runner

    def open_cluster_dns(self, pod: Pod, container: Container) -> None:
        from labctl.agent.cluster_dns import open_dns_sockets

        try:
            socks = open_dns_sockets(pod, container)
        except OSError as e:
            raise LabctlError(f"pod {pod.key}: cannot serve cluster DNS in {pod.netns}: "
                              f"{e.strerror or e}") from e
        self.dns_pods[pod.key] = socks
        if self.cluster_dns is not None:
            self.cluster_dns.serve(socks)
        else:
            self.dns_sockets += socks

    def start_cluster_dns(self) -> None:
        """Build the zone and start answering on the sockets opened during start-up."""
        if not self.dns_sockets:
            return
        from labctl.agent.cluster_dns import ClusterDns

        try:
            self.cluster_dns = ClusterDns(self.state_dir, self.dns_sockets)
        except Exception:  # noqa: BLE001 - reported after start-up, the pod host lives on
            log.exception("cluster DNS failed to start")
            for sock in self.dns_sockets:
                sock.close()
        self.dns_sockets = []

    # changes while running

    async def add_pods(self, docs: list[Any]) -> dict[str, Any]:
        new = parse({"lab": self.workloads.lab, "pods": docs}, "add request")
        known = {p.key for p in self.workloads.pods}
        pods = [p for p in new.pods if p.key not in known]
        check_namespaces(pods)
        added: list[Pod] = []
        try:
            for pod in pods:
                if pod.netns == names.pod_ns(self.workloads.lab, pod.namespace, pod.name):
                    try:  # its address may have been another pod's a moment ago
                        announce(pod)
                    except OSError as e:
                        log.warning("pod %s: no gratuitous ARP (%s)", pod.key, e)
                await self.start_pods([pod])
                added.append(pod)
                self.workloads = replace(self.workloads, pods=(*self.workloads.pods, pod))
                self.event("Normal", "Started", pod, "containers started by the pod host")
        except LabctlError:
            for pod in pods:
                if pod not in added:
                    await self.stop_pod(pod, 0.0, 0.0)
            raise
        if self.dns_sockets and self.cluster_dns is None:
            self.start_cluster_dns()
        return {"ok": True, "added": [p.key for p in added]}

    async def remove_pod(self, key: str, grace: float, drain: float) -> dict[str, Any]:
        pod = next((p for p in self.workloads.pods if p.key == key), None)
        if pod is None:
            return {"ok": True, "removed": False}
        if key in self.removing:
            return {"ok": False, "error": f"pod {key} is already being removed"}
        self.removing.add(key)
        try:
            t = time.monotonic()
            await self.stop_pod(pod, grace, drain)
        finally:
            self.removing.discard(key)
        self.workloads = replace(self.workloads,
                                 pods=tuple(p for p in self.workloads.pods if p.key != key))
        return {"ok": True, "removed": True, "seconds": round(time.monotonic() - t, 3)}

    async def stop_pod(self, pod: Pod, grace: float, drain: float) -> None:
        runners = [(c, self.runners.pop((pod.key, c.name), None)) for c in pod.containers]
        await asyncio.gather(*(r.stop(grace, drain) for _c, r in runners if r is not None),
                             return_exceptions=True)
        for c, _r in runners:
            clog = self.logs.pop(self.paths.log_path(pod.namespace, pod.name, c.name), None)
            if clog is not None:
                clog.close()
        for sock in self.dns_pods.pop(pod.key, []):
            if self.cluster_dns is not None:
                self.cluster_dns.server.unserve(sock)
            sock.close()

    def runner(self, req: dict[str, Any]) -> Runner | None:
        key, name = str(req.get("pod")), req.get("container")
        if name is None:
            pod = next((p for p in self.workloads.pods if p.key == key), None)
            name = pod.containers[0].name if pod and pod.containers else ""
        return self.runners.get((key, str(name)))

    # control socket

    async def open_control(self) -> None:
        from labctl.agent import jsonsock

        self.control = await jsonsock.serve(self.paths.socket, self.handle, log,
                                            self.paths.logfile)

    async def handle(self, req: Any) -> dict[str, Any]:
        op = req.get("op") if isinstance(req, dict) else None
        if op == "status":
            return self.status()
        if op == "pods":
            return {"ok": True, "pods": self.pod_states()}
        if op == "add":
            return await self.add_pods(list(req.get("pods") or []))
        if op == "remove":
            return await self.remove_pod(str(req.get("pod")), float(req.get("grace", 30)),
                                         float(req.get("drain", 0)))
        if op in ("restart", "crash"):
            runner = self.runner(req)
            if runner is None and op == "crash" and not req.get("on", True):
                return {"ok": True}  # nothing to heal: e.g. the cluster DNS container
            if runner is None:
                return {"ok": False, "error": f"no container {req.get('container')!r} in "
                                              f"pod {req.get('pod')!r}", "notfound": True}
            if op == "restart":
                asyncio.get_running_loop().create_task(
                    runner.restart(str(req.get("reason") or "restart requested"),
                                   float(req.get("grace", STOP_GRACE))))
            else:
                runner.crash(bool(req.get("on", True)))
            return {"ok": True}
        if op == "dns":  # the zone is built in a thread: the pods' servers keep serving
            if self.cluster_dns is not None:
                async with self.dns_lock:
                    await asyncio.to_thread(self.cluster_dns.reload)
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r} (known: status, pods, add, remove, "
                                      "restart, crash, dns)"}

    def pod_states(self) -> dict[str, list[dict[str, Any]]]:
        """Per pod key, each container's state (for the agent and `labctl get pods`)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for pod in self.workloads.pods:
            states = []
            for c in pod.containers:
                runner = self.runners.get((pod.key, c.name))
                if runner is not None:
                    states.append({"name": c.name, **runner.info()})
                else:  # DNS or no ports: running once the pod started
                    ok = c.builtin != "dns" or pod.key in self.dns_pods
                    states.append({"name": c.name, "state": "Running" if ok else "Waiting",
                                   "restarts": 0, "started": 0.0, "lastExit": None,
                                   "lastReason": "", "crashing": False})
            out[pod.key] = states
        return out

    def status(self) -> dict[str, Any]:
        return {
            "ok": True,
            "pid": os.getpid(),
            "lab": self.workloads.lab,
            "pods": len(self.workloads.pods),
            "listeners": sum(len(r.listeners) for r in self.runners.values()
                             if isinstance(r, EchoRunner)),
            "processes": sum(1 for r in self.runners.values()
                             if isinstance(r, Supervisor) and r.pid is not None),
            "uptime": round(time.monotonic() - self.started, 3),
        }

    # shutdown

    async def teardown(self) -> None:
        if self.control is not None:
            self.control.close()
        if self.cluster_dns is not None:
            self.cluster_dns.stop()
        for sock in self.dns_sockets:
            sock.close()
        for socks in self.dns_pods.values():
            for sock in socks:
                sock.close()
        if self.runners:
            await asyncio.gather(*(r.stop(STOP_GRACE) for r in self.runners.values()),
                                 return_exceptions=True)
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


def check_namespaces(pods: tuple[Pod, ...] | list[Pod]) -> None:
    missing = [f"{p.netns} (pod {p.key})" for p in pods if not netns.exists(p.netns)]
    if missing:
        raise LabctlError(
            f"network namespace{'s' if len(missing) > 1 else ''} not found under "
            f"{netns.RUN_NETNS}: {', '.join(missing)}; create the lab's namespaces "
            f"before starting its pods")


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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s podhost[%(process)d] "
                        "%(levelname)s %(message)s")
    ready_fd = int(os.environ.pop(READY_FD_ENV, "-1"))
    if ready_fd >= 0:
        os.set_inheritable(ready_fd, False)
    raise_nofile_limit()
    host = PodHost(os.path.abspath(state_dir), ready_fd)
    return asyncio.run(host.run())


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        print("usage: python -m labctl.agent.podhost <state_dir>", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
