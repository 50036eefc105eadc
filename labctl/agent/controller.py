"""The agent: a lab's controller (`python -m labctl.agent <state_dir>`), one asyncio loop.

What a cluster's control plane, kubelet (minus the containers) and kube-proxy do for a
running lab, it does: it probes every container (readiness, liveness, startup), keeps
each pod's Ready condition, runs the EndpointSlice controller and every node's
kube-proxy sync on each change, applies `labctl apply`/`scale`/`delete` (compile →
converge: kernel diff, files, rules), deletes pods gracefully (their endpoints turn
terminating, then the pod host stops them with their grace period), and writes the
events `labctl events` shows.

The containers themselves run in the pod host (labctl.agent.podhost), which this agent
starts when none runs and talks to over its socket. Killing the agent therefore loses
no traffic: the pod host and the kernel's rules carry on, and a new agent adopts the
lab — it re-reads the state, resyncs every node's rules in full, and gives the pod host
any pod it lacks. The agent polls the pod host twice a second for container states (the
kubelet's PLEG relist).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field, replace
from typing import Any

from labctl.agent import control, events, kube_proxies, startup
from labctl.agent.health_servers import HealthServers
from labctl.agent.paths import PODHOST_STARTING_ENV, READY_FD_ENV, StatePaths
from labctl.agent.probing import PodProbes
from labctl.cluster.compile import with_readiness
from labctl.cluster.runtime import Runtime
from labctl.cluster.state import ClusterState, PodState
from labctl.errors import LabctlError, UserError
from labctl.lab import store
from labctl.lab.converge import converge
from labctl.lab.workloads import workloads_document
from labctl.proxy import sync

RELIST_PERIOD = 0.5  # how often the pod host is asked for container states
DRAIN = 0.2  # a deleted pod's built-in servers keep serving this long after its
# endpoints were removed from every node's rules

log = logging.getLogger("labctl.agent")


class RequestError(Exception):
    """A request the agent refuses: reported to the CLI as {"ok": false}."""

    def __init__(self, message: str, notfound: bool = False) -> None:
        super().__init__(message)
        self.notfound = notfound


@dataclass
class Agent:
    state_dir: str
    ready_fd: int = -1
    paths: StatePaths = field(init=False)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.paths = StatePaths(self.state_dir, "agent")
        self.stop_requested = asyncio.Event()
        self.lock = asyncio.Lock()  # one change to the cluster at a time
        self.pidfile_fd: int | None = None
        self.control: asyncio.Server | None = None
        self.base: ClusterState  # pods and Services now; EndpointSlices all-ready
        self.state: ClusterState  # the same with readiness: what the lab runs
        self.runtime = Runtime()
        self.syncs: dict[str, sync.NodeSync] | None = None  # None: derive on first use
        self.last_timings: dict[str, float] = {}  # the last converge's phases (seconds)
        self.frozen_ready: dict[str, bool] = {}  # terminating pods: readiness at the end
        self.containers: dict[str, list[dict[str, Any]]] = {}  # pod host's last answer
        self.starting: set[str] = set()  # pods whose containers the pod host is starting
        self.probes: dict[str, PodProbes] = {}
        self.created: dict[str, float] = {}
        self.tasks: set[asyncio.Task] = set()
        self.terminations: dict[str, asyncio.Task] = {}  # pod key → its finish task
        self.last_ready: dict[str, bool] = {}  # the readiness self.state was made with
        self.ready_since: dict[str, float] = {}  # pod → since when it is ready (resync)
        self._resync_pending = False
        self._raw_topology: Any = None
        self.adopted = False
        self.health = HealthServers(lambda node, msg: self.event(
            "Warning", "HealthCheckPort", f"node/{node}", msg))  # kube-proxy's, per node

    # entry

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_requested.set)
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            await self.start()
        except (LabctlError, OSError) as e:
            text = str(e) if isinstance(e, LabctlError) else f"{type(e).__name__}: {e}"
            log.error("start-up failed: %s", text)
            self.teardown()
            self.report("error", text)
            return 1
        except BaseException as e:
            log.exception("start-up failed")
            self.teardown()
            self.report("error", f"internal error: {type(e).__name__}: {e}")
            raise
        log.info("ready: lab %s, %d pods%s", self.lab, len(self.base.pods),
                 " (adopted a running lab)" if self.adopted else "")
        self.report("ready", str(os.getpid()))
        self.spawn(self.relist_loop())
        await self.stop_requested.wait()
        log.info("stopping")
        for task in list(self.tasks):
            task.cancel()
        for probes in self.probes.values():
            probes.stop()
        self.teardown()
        return 0

    def report(self, status: str, text: str) -> None:
        """Tell the starter "ready <pid>" or "error <text>" and close the pipe."""
        startup.report(self.ready_fd, status, text)
        self.ready_fd = -1

    def spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    def event(self, kind: str, reason: str, obj: str, message: str) -> None:
        with contextlib.suppress(OSError):
            events.append(self.paths.events, kind, reason, obj, message)

    # start-up

    async def start(self) -> None:
        self.lock_pidfile()
        self.state = store.current_state(self.state_dir)
        self.lab = self.state.lab.name
        live = store.load_live(self.state_dir)
        try:
            self.runtime = Runtime.from_json(live.runtime)
        except ValueError as e:
            raise LabctlError(f"{store.LIVE}: {e}") from e
        self.created = {k: float(v) for k, v in live.created.items()}
        # the readiness the saved state (and so the kernel's rules) was made with: `up`
        # saves the pods that start not ready; an adopting agent resyncs in full anyway
        self.last_ready = {k: False for k, v in live.ready.items() if not v}
        self.base = with_readiness(self.state, {})
        if os.environ.pop(PODHOST_STARTING_ENV, ""):  # `up` starts it alongside us
            self.adopted = False
            await self.wait_for_podhost(60.0)
        else:
            self.adopted = control.podhost_pid(self.state_dir) is not None
            if not self.adopted:
                await asyncio.to_thread(control.start_podhost, self.state_dir)
        await self.open_control()
        self.containers = await self.relist()
        now = time.time()
        for pod in self.base.pods:
            self.created.setdefault(pod.key, now)
            self.start_probes(pod, was_ready=self.adopted and pod.key not in live.ready)
        if self.adopted:
            await self.adopt()
        await kube_proxies.ensure(self, self.state, wait=True)  # userspace mode's proxies
        await self.health.sync(self.state)
        self.save_live()

    async def wait_for_podhost(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self.podhost_call({"op": "status"}, 5.0)
                return
            except LabctlError as e:
                if time.monotonic() > deadline:
                    raise LabctlError(f"the pod host did not come up within {timeout:g}s "
                                      f"({e})") from e
                await asyncio.sleep(0.02)

    async def adopt(self) -> None:
        """A new agent for a running lab: load every node's rules in full (whatever the
        last agent managed to do), give the pod host the pods it lacks, and finish what
        was terminating."""
        have = set(self.containers)
        want = {p.key for p in self.state.pods if not p.terminating}
        missing = sorted(want - have)
        if missing:
            await self.podhost_add(missing, self.base)
        async with self.lock:
            await self.resync(full=True)
        for pod in self.base.pods:
            if pod.terminating:
                self.terminate_later(pod.key, 0.0)
        self.event("Normal", "Adopted", f"lab/{self.lab}",
                   f"agent {os.getpid()} adopted the running lab "
                   f"({len(missing)} pod(s) restarted)")

    def lock_pidfile(self) -> None:
        self.pidfile_fd = startup.lock_pidfile(self.paths.pidfile, "agent", self.state_dir)

    def save_live(self) -> None:
        keys = {p.key for p in self.base.pods}
        store.save_live(self.state_dir, store.Live(
            runtime=self.runtime.to_json(),
            ready={k: False for k in keys if not self.pod_ready(k)},
            created={k: v for k, v in self.created.items() if k in keys}))

    # readiness

    def pod_ready(self, key: str) -> bool:
        """The pod's Ready condition: every container running, every readiness probe
        passing (a pod being started is not ready yet)."""
        if key in self.starting:
            return False
        if key in self.frozen_ready and not self.frozen_ready[key]:
            return False  # its probes stopped while it was not ready
        states = self.containers.get(key)
        if states is None or any(c.get("state") != "Running" for c in states):
            return False
        probes = self.probes.get(key)
        return probes is None or probes.ready()

    def readiness(self, base: ClusterState) -> dict[str, bool]:
        return {p.key: False for p in base.pods if not self.pod_ready(p.key)}

    async def resync(self, full: bool = False, kernel_from: ClusterState | None = None,
                     wait_dns: bool = True) -> dict[str, float]:
        """Derive the EndpointSlices from readiness, converge the lab to them (and to
        `self.base`, when `kernel_from` says what the kernel holds now), reload DNS —
        waiting for it, unless `wait_dns` is off (apply, scale and delete return once
        every node's rules are in; DNS follows within a moment, as CoreDNS follows the
        API server). Call with the lock held."""
        ready = self.readiness(self.base)
        new = with_readiness(self.base, ready)
        now = time.time()  # since when each pod is ready (a rollout's minReadySeconds)
        self.ready_since = {p.key: self.ready_since.get(p.key, now) for p in self.base.pods
                            if p.key not in ready}
        if full or self.syncs is None:
            previous = {n.name: sync.RELOAD for n in self.state.nodes} if full else {
                n.name: sync.NodeSync(n.name, self.state.lab.proxy_mode, rs, 0.0, 0.0, True,
                                      inp, payload)
                for n in self.state.nodes
                for inp, rs, payload in [sync.render_sync(self.state, n.name,
                                                          self.state.lab.proxy_mode)]}
        else:
            previous = self.syncs
        t = time.perf_counter()
        # In a worker thread: the loop keeps probing, relisting and answering meanwhile
        # (a probe in flight while the loop was blocked on the rules' tools would time
        # out and take a healthy pod out of its Services). The lock keeps it the only one.
        if kernel_from is not None:
            done = await asyncio.to_thread(converge, kernel_from, new, previous, kernel=True)
        else:
            done = await asyncio.to_thread(converge, self.state, new, previous, kernel=False)
        self.syncs = done.syncs
        self.last_timings = done.timings
        changed_eps = self._endpoint_changes(self.state, new)
        self.state = new
        synced = {}
        for name, s in done.syncs.items():
            synced[name] = round((s.render_seconds + s.load_seconds) * 1000, 1)
            self.event("Normal", "RulesSynced", f"node/{name}",
                       f"{new.lab.proxy_mode} rules synced in {synced[name]} ms "
                       f"({s.payload.count(chr(10))} lines{', full' if s.full else ''})")
        for msg in changed_eps:
            self.event(*msg)
        log.info("resync in %.1f ms", (time.perf_counter() - t) * 1000)
        self.save_live()
        # DNS answers from the state file converge just saved; once it has reloaded,
        # the rules and DNS both show this readiness (what `--wait` waits for).
        if wait_dns:
            await self.reload_dns()
        else:
            self.spawn(self.reload_dns())
        await kube_proxies.ensure(self, new)  # userspace mode: the proxies reload too
        # health check answers follow the local endpoints
        await self.health.sync(new, {n: s.inp for n, s in done.syncs.items()})
        self.last_ready = ready
        return synced

    async def reload_dns(self) -> None:
        try:
            await self.podhost_call({"op": "dns"}, 10.0)
        except LabctlError as e:
            log.error("DNS reload: %s", e)

    @staticmethod
    def _endpoint_changes(old: ClusterState, new: ClusterState) -> list[tuple[str, ...]]:
        def conds(state: ClusterState) -> dict[tuple[str, str], tuple[bool, bool, bool]]:
            out = {}
            for sl in state.endpoint_slices:
                svc = f"{sl.meta.namespace}/{sl.meta.labels.get('kubernetes.io/service-name')}"
                for ep in sl.endpoints:
                    ref = ep.target_ref.name if ep.target_ref else ep.addresses[0]
                    c = ep.conditions
                    out[svc, ref] = (bool(c.ready), bool(c.serving), bool(c.terminating))
            return out

        before, after = conds(old), conds(new)
        msgs = []
        for (svc, ref), c in sorted(after.items()):
            if before.get((svc, ref)) == c:
                continue
            ready, serving, terminating = c
            word = ("ready" if ready else "terminating" if terminating else "not ready")
            msgs.append(("Normal" if ready else "Warning", "EndpointChanged",
                         f"service/{svc}", f"endpoint {ref} is {word} "
                         f"(ready={ready}, serving={serving}, terminating={terminating})"))
        for (svc, ref) in sorted(set(before) - set(after)):
            msgs.append(("Normal", "EndpointRemoved", f"service/{svc}",
                         f"endpoint {ref} removed"))
        return msgs

    def readiness_changed(self) -> None:
        """A probe or a container changed a pod's readiness: resync soon (coalesced)."""
        if not self._resync_pending:
            self._resync_pending = True
            self.spawn(self._resync_soon())

    async def _resync_soon(self) -> None:
        async with self.lock:
            self._resync_pending = False
            if self.readiness(self.base) != self.last_ready:
                await self.resync()
            await self.advance_rollouts()

    # probes

    def start_probes(self, pod: PodState, was_ready: bool = False, always: bool = False
                     ) -> PodProbes | None:
        if pod.terminating:
            return None
        if pod.key in self.probes:
            return self.probes[pod.key]
        probes = PodProbes.for_pod(pod, self.base, on_change=self.probe_changed,
                                   on_restart=self.probe_restart, always=always)
        if probes is not None:
            self.probes[pod.key] = probes
            probes.start(was_ready)
        return probes

    def ensure_probes(self, pod: PodState) -> PodProbes:
        """The pod's probes, made (stand-ins only) if it has none: for `labctl break`."""
        probes = self.start_probes(pod, was_ready=self.pod_ready(pod.key), always=True)
        assert probes is not None
        return probes

    def stop_probes(self, key: str) -> None:
        """Stop a pod's probes (it is terminating or gone); its Ready condition stays
        what they last said — a pod that never became ready does not turn serving."""
        if key in self.probes:
            self.frozen_ready[key] = self.pod_ready(key)
        probes = self.probes.pop(key, None)
        if probes is not None:
            probes.stop()

    def probe_changed(self, key: str, container: str, kind: str, ok: bool, message: str) -> None:
        if kind == "readiness":
            self.event("Normal" if ok else "Warning", "Ready" if ok else "Unhealthy",
                       f"pod/{key}", f"container {container}: {message}")
        self.readiness_changed()

    def probe_restart(self, key: str, container: str, reason: str) -> None:
        # as the kubelet: the failed probe was reported (Unhealthy), now the kill
        self.event("Normal", "Killing", f"pod/{key}", f"container {container}: {reason}")
        pod = next((p for p in self.base.pods if p.key == key), None)
        grace = float(pod.spec.termination_grace_period_seconds) if pod else 30.0
        self.spawn(self.podhost_call({"op": "restart", "pod": key, "container": container,
                                      "reason": reason, "grace": grace}, 10.0))

    # the pod host

    async def podhost_call(self, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
        path = StatePaths(self.state_dir, "podhost").socket
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), 2.0)
        except (OSError, TimeoutError) as e:
            raise LabctlError(f"the pod host is not answering ({e})") from e
        try:
            writer.write(json.dumps(payload).encode() + b"\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), timeout)
        except (OSError, TimeoutError) as e:
            raise LabctlError(f"the pod host did not answer {payload.get('op')} ({e})") from e
        finally:
            writer.close()
        try:
            reply = json.loads(line)
        except ValueError as e:
            raise LabctlError(f"the pod host sent no valid reply: {line[:80]!r}") from e
        if not reply.get("ok"):
            raise LabctlError(f"the pod host refused {payload.get('op')}: {reply.get('error')}")
        return reply

    async def relist(self) -> dict[str, list[dict[str, Any]]]:
        return (await self.podhost_call({"op": "pods"}, 5.0))["pods"]

    async def relist_loop(self) -> None:
        while True:
            await asyncio.sleep(RELIST_PERIOD)
            try:
                now = await self.relist()
            except LabctlError as e:
                if control.podhost_pid(self.state_dir) is None:
                    await self.restart_podhost(str(e))
                continue
            self.container_events(self.containers, now)
            self.containers = now
            self.readiness_changed()

    async def restart_podhost(self, why: str) -> None:
        self.event("Warning", "PodHostDied", f"lab/{self.lab}",
                   f"the pod host is gone ({why}); starting a new one")
        self.write_workloads(self.base)
        try:
            await asyncio.to_thread(control.start_podhost, self.state_dir)
        except LabctlError as e:
            log.error("cannot restart the pod host: %s", e)
            return
        for probes in self.probes.values():
            probes.container_restarted(None)

    def container_events(self, old: dict[str, list[dict[str, Any]]],
                         new: dict[str, list[dict[str, Any]]]) -> None:
        for key, states in new.items():
            before = {c["name"]: c for c in old.get(key, [])}
            born = self.created.get(key, 0.0)
            for c in states:
                b = before.get(c["name"])
                if b is None or float(b.get("started") or 0.0) < born:
                    continue  # new, or a previous pod's under this name (a StatefulSet's)
                if c.get("restarts", 0) > b.get("restarts", 0) or (
                        c.get("started") and c.get("started") != b.get("started")
                        and b.get("started")):
                    self.event("Normal", "Started", f"pod/{key}",
                               f"container {c['name']} started again (restart "
                               f"{c.get('restarts', 0)})")
                    probes = self.probes.get(key)
                    if probes is not None:
                        probes.container_restarted(c["name"])
                if c.get("state") != b.get("state"):
                    probes = self.probes.get(key)
                    if b.get("state") == "Running" and probes is not None:
                        probes.container_exited(c["name"])
                    if c.get("state") == "CrashLoopBackOff":
                        self.event("Warning", "BackOff", f"pod/{key}",
                                   f"back-off restarting failed container {c['name']} "
                                   f"(last exit code {c.get('lastExit')}"
                                   f"{', ' + c['lastReason'] if c.get('lastReason') else ''})")
                    elif c.get("state") in ("Error", "Completed"):
                        self.event("Warning" if c["state"] == "Error" else "Normal",
                                   c["state"], f"pod/{key}",
                                   f"container {c['name']} exited with code "
                                   f"{c.get('lastExit')}; restartPolicy says no restart")

    def write_workloads(self, base: ClusterState) -> None:
        """workloads.json for a pod host that starts afresh: the pods that run, each
        with the environment it started with (kept from the file; only pods new to it
        get theirs computed — the env of a pod costs every Service's variables)."""
        path = os.path.join(self.state_dir, "workloads.json")
        old: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError), open(path) as f:
            old = json.load(f)
        have = {f"{e['namespace']}/{e['name']}": e for e in old.get("pods", [])}
        running = [p for p in base.pods if not p.terminating]
        fresh = workloads_document(replace(base, pods=tuple(p for p in running
                                                            if p.key not in have)))
        keys = {p.key for p in running}
        pods = [e for k, e in have.items() if k in keys] + fresh["pods"]
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps({**fresh, "pods": pods}))
        os.replace(tmp, path)

    async def podhost_add(self, keys: list[str], base: ClusterState) -> None:
        wanted = set(keys)
        doc = workloads_document(replace(base, pods=tuple(p for p in base.pods
                                                          if p.key in wanted)))
        docs = [p for p in doc["pods"] if f"{p['namespace']}/{p['name']}" in wanted]
        if docs:
            await self.podhost_call({"op": "add", "pods": docs}, 60.0)

    # changes

    def raw_topology(self) -> Any:
        """The lab's manifests as loaded (cached until `apply` replaces them)."""
        if self._raw_topology is None:
            from labctl.model.load import load_topology

            self._raw_topology, _ = load_topology(store.manifest_copies(self.lab),
                                                  lab_name=self.lab)
        return self._raw_topology

    async def change(self, runtime: Runtime | None = None,
                     grace: dict[str, float] | None = None) -> dict[str, Any]:
        """Recompile (the manifests, as `runtime` changes them) and converge the lab to
        it; start the new pods' containers; terminate, in the background, the pods that
        are now terminating (`grace` overrides their grace periods). A running pod the
        new manifests no longer have (a Deployment deleted, its template changed) is not
        dropped: it terminates gracefully like any deleted pod. Call with the lock held."""
        from labctl.agent import rollouts

        runtime = rollouts.step_all(self, runtime or self.runtime, self.raw_topology())
        new_base, new_runtime = self.compile(runtime)
        done = await self.converge_to(new_base, new_runtime, grace or {})
        if self.runtime.rollouts or self.runtime.held:
            self.readiness_changed()  # the new pods may be ready at once: look again soon
        return done

    async def advance_rollouts(self) -> None:
        """Move the Deployments' rollouts on as far as availability allows now (a new
        pod became ready, an old one finished). Call with the lock held."""
        from labctl.agent import rollouts

        if not (self.runtime.rollouts or self.runtime.held):
            return
        stepped = rollouts.step_all(self, self.runtime, self.raw_topology())
        if stepped != self.runtime:
            await self.change(stepped)

    def compile(self, runtime: Runtime, topology: Any = None) -> tuple[ClusterState, Runtime]:
        """The lab `topology` (default: its manifests) describes, as `runtime` changes
        it, continuing the running one; running pods it no longer has terminate."""
        from labctl.cluster.addons import with_addons
        from labctl.cluster.workloads import free_deployment_names

        topology = topology if topology is not None else self.raw_topology()
        try:
            runtime = free_deployment_names(with_addons(topology), runtime)
            new_base = store.compile_lab(self.lab, previous=self.base, runtime=runtime,
                                         topology=topology)
            keys = {p.key for p in new_base.pods}
            vanished = [p.key for p in self.base.pods
                        if not p.terminating and p.key not in keys]
            if vanished:
                runtime = free_deployment_names(with_addons(topology),
                                                runtime.with_terminating(vanished))
                new_base = store.compile_lab(self.lab, previous=self.base, runtime=runtime,
                                             topology=topology)
        except UserError:
            raise
        except LabctlError as e:
            raise RequestError(str(e)) from e
        return new_base, runtime

    def topology(self) -> Any:
        from labctl.cluster.addons import with_addons

        return self.runtime.visible(with_addons(self.raw_topology()))

    def workload_exists(self, kind: str, namespace: str, name: str) -> bool:
        topo = self.topology()
        items = topo.deployments if kind == "Deployment" else \
            topo.statefulsets if kind == "StatefulSet" else ()
        return any(o.meta.namespace == namespace and o.meta.name == name for o in items)

    def object_exists(self, kind: str, namespace: str, name: str) -> bool:
        if kind == "Pod":
            return any(p.namespace == namespace and p.name == name and not p.terminating
                       for p in self.base.pods)
        topo = self.topology()
        items = {"Deployment": topo.deployments, "StatefulSet": topo.statefulsets,
                 "Service": topo.services, "EndpointSlice": topo.endpoint_slices}.get(kind, ())
        return any(o.meta.namespace == namespace and o.meta.name == name for o in items)

    async def converge_to(self, new_base: ClusterState, new_runtime: Runtime,
                          grace: dict[str, float]) -> dict[str, Any]:
        old_base = self.base
        before = {p.key: p for p in old_base.pods}
        after = {p.key: p for p in new_base.pods}
        added = [k for k in after if k not in before]
        removed = [k for k in before if k not in after]
        newly_terminating = [k for k, p in after.items()
                             if p.terminating and not before.get(k, p).terminating]
        # A pod that finished terminating and comes back under its name (a
        # StatefulSet's) is a new pod in the namespace the old one left: the pod host
        # has removed the old one's containers, so it starts them again.
        revived = [k for k, p in after.items()
                   if k in before and before[k].terminating and not p.terminating]
        self.runtime = new_runtime
        self.starting.update(added + revived)
        now = time.time()
        for k in added + revived:
            self.created[k] = now
            self.frozen_ready.pop(k, None)  # a new pod under an old name: probed afresh
        self.base = new_base
        for k in removed + newly_terminating:
            self.stop_probes(k)
        t = time.perf_counter()
        # 1. kernel objects for new pods (not ready yet), rules without what is gone
        synced = await self.resync(kernel_from=old_base, wait_dns=False)
        if added or removed or newly_terminating or revived:
            self.write_workloads(new_base)
        # 2. their containers, then their readiness
        started = added + revived
        if started:
            for k in started:
                self.event("Normal", "Scheduled", f"pod/{k}",
                           f"assigned to {after[k].node}, IP {after[k].ip}")
            try:
                await self.podhost_add(started, new_base)
            finally:
                self.starting.difference_update(started)
            self.containers = await self.relist()
            for k in started:
                self.start_probes(after[k])
            synced = await self.resync(wait_dns=False)
        for k in removed:
            self.created.pop(k, None)
            self.frozen_ready.pop(k, None)
            self.event("Normal", "Deleted", f"pod/{k}", "pod removed")
        self.save_live()
        for k in newly_terminating:
            self.terminate_later(k, grace.get(
                k, float(after[k].spec.termination_grace_period_seconds)))
        return {"synced": synced, "added": sorted(added), "removed": sorted(removed),
                "recreated": sorted(revived),
                "terminating": sorted(newly_terminating),
                "ms": round((time.perf_counter() - t) * 1000, 1)}

    def terminate_later(self, key: str, grace: float) -> asyncio.Task:
        if key not in self.terminations:
            self.terminations[key] = self.spawn(self.finish_termination(key, grace))
        return self.terminations[key]

    async def finish_termination(self, key: str, grace: float) -> None:
        """Stop a terminating pod's containers (SIGTERM, `grace` seconds, SIGKILL), then
        remove it (a StatefulSet's pod then comes back under its name)."""
        try:
            self.event("Normal", "Killing", f"pod/{key}",
                       f"stopping containers (grace period {grace:g}s)")
            try:
                await self.podhost_call({"op": "remove", "pod": key, "grace": grace,
                                         "drain": min(DRAIN, grace)}, grace + 30.0)
            except LabctlError as e:
                log.error("stopping pod %s: %s", key, e)
            async with self.lock:
                await self.change(self.runtime.without_terminating(key))
        finally:
            self.terminations.pop(key, None)

    # control socket

    async def open_control(self) -> None:
        from labctl.agent import jsonsock

        self.control = await jsonsock.serve(self.paths.socket, self.handle, log,
                                            self.paths.logfile)

    async def handle(self, req: Any) -> dict[str, Any]:
        from labctl.agent import ops

        op = req.get("op") if isinstance(req, dict) else None
        handler = ops.HANDLERS.get(str(op))
        if handler is None:
            return {"ok": False, "error": f"unknown op {op!r} (known: "
                                          f"{', '.join(sorted(ops.HANDLERS))})"}
        return {"ok": True, **(await handler(self, req))}

    def find_pod(self, key: str) -> PodState:
        pod = next((p for p in self.base.pods if p.key == key), None)
        if pod is None:
            raise RequestError(f'pods "{key.partition("/")[2]}" not found in namespace '
                               f'"{key.partition("/")[0]}"', notfound=True)
        return pod

    # shutdown

    def teardown(self) -> None:
        if self.control is not None:
            self.control.close()
        if self.pidfile_fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.paths.socket)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.paths.pidfile)
            os.close(self.pidfile_fd)
            self.pidfile_fd = None


def main(state_dir: str) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s agent[%(process)d] "
                        "%(levelname)s %(message)s")
    ready_fd = int(os.environ.pop(READY_FD_ENV, "-1"))
    if ready_fd >= 0:
        os.set_inheritable(ready_fd, False)
    agent = Agent(os.path.abspath(state_dir), ready_fd)
    return asyncio.run(agent.run())

