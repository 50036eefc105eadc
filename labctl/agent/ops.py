"""The agent's control operations: one async function per request `op`.

Each takes the Agent and the request (a JSON object) and returns the reply's fields
(the socket adds "ok": true). A refusal raises RequestError (reported as ok: false, with
`notfound` for a missing object, so the CLI exits 1 as kubectl does). Changes to the
cluster hold the agent's lock; the CLI holds the lab's file lock around its request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from labctl.agent.phases import Phases
from labctl.cluster.runtime import object_key

if TYPE_CHECKING:
    from labctl.agent.controller import Agent
    from labctl.cluster.state import PodState

Handler = Callable[["Agent", dict[str, Any]], Awaitable[dict[str, Any]]]
HANDLERS: dict[str, Handler] = {}


log = logging.getLogger("labctl.agent")


def op(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[name] = fn
        return fn
    return register


def _error(text: str, notfound: bool = False) -> Exception:
    from labctl.agent.controller import RequestError

    return RequestError(text, notfound)


@op("status")
async def status(agent: Agent, req: dict[str, Any]) -> dict[str, Any]:
    from labctl.agent import control

    return {"pid": os.getpid(), "lab": agent.lab, "pods": len(agent.base.pods),
            "podhost": control.podhost_pid(agent.state_dir),
            "notReady": sorted(k for k, v in agent.last_ready.items() if not v),
            "terminating": sorted(agent.terminations),
            "uptime": round(time.monotonic() - agent.started, 3)}


@op("pods")
async def pods(agent: Agent, req: dict[str, Any]) -> dict[str, Any]:
    """Every pod as `kubectl get pods` shows it."""
    out = {}
    for pod in agent.base.pods:
        states = agent.containers.get(pod.key, [])
        ready_names = agent.probes[pod.key].ready_containers() \
            if pod.key in agent.probes else None
        conts = []
        for c in states:
            running = c.get("state") == "Running"
            ready = running and (ready_names is None or c["name"] in ready_names) \
                and not pod.terminating
            conts.append({**c, "ready": ready})
        if pod.terminating:
            status_word = "Terminating"
        elif pod.key in agent.starting or not states:
            status_word = "ContainerCreating"
        else:
            bad = [c["state"] for c in states if c.get("state") != "Running"]
            status_word = bad[0] if bad else "Running"
        out[pod.key] = {"containers": conts, "status": status_word,
                        "ready": agent.pod_ready(pod.key) and not pod.terminating,
                        # the readiness every node's rules and DNS were last synced with
                        "endpointsReady": pod.key not in agent.last_ready
                        and not pod.terminating,
                        "created": agent.created.get(pod.key, 0.0),
                        "readySince": agent.ready_since.get(pod.key),
                        "node": pod.node, "ip": pod.ip}
    return {"pods": out}


@op("break")
async def break_pod(agent: Agent, req: dict[str, Any]) -> dict[str, Any]:
    """`labctl break pod NAME --readiness|--liveness|--crash`."""
    pod = agent.find_pod(str(req.get("pod")))
    what = str(req.get("what"))
    if pod.terminating:
        raise _error(f"pod {pod.key} is terminating")
    if what in ("readiness", "liveness"):
        probes = agent.ensure_probes(pod)
        probes.force(what, "broken with labctl break")
        agent.event("Warning", "Broken", f"pod/{pod.key}",
                    f"{what} probes of every container now fail (labctl break)")
        return {}
    if what == "crash":
        for c in pod.spec.containers:
            await agent.podhost_call({"op": "crash", "pod": pod.key, "container": c.name,
                                      "on": True}, 10.0)
        agent.event("Warning", "Broken", f"pod/{pod.key}",
                    "containers now crash at every start (labctl break --crash)")
        return {}
    raise _error(f"unknown fault {what!r}: readiness, liveness or crash")


@op("heal")
async def heal_pod(agent: Agent, req: dict[str, Any]) -> dict[str, Any]:
    pod = agent.find_pod(str(req.get("pod")))
    probes = agent.probes.get(pod.key)
    if probes is not None:
        probes.clear()
    for c in pod.spec.containers:
        await agent.podhost_call({"op": "crash", "pod": pod.key, "container": c.name,
                                  "on": False}, 10.0)
    agent.event("Normal", "Healed", f"pod/{pod.key}", "faults cleared (labctl heal)")
    async with agent.lock:
        synced = await agent.resync() if agent.readiness(agent.base) != agent.last_ready \
            else {}
    return {"synced": synced}


@op("apply")
async def apply(agent: Agent, req: dict[str, Any]) -> dict[str, Any]:
    """`labctl apply -f FILES [--dry-run]`: load and check the files (every error, with
    its place: a "userError" reply, exit 2), compile them with what scale and delete did
    (deletions of objects the files name again are forgotten; a spec.replicas the files
    change wins over `labctl scale`), then converge — or, dry, say what would change."""
    from dataclasses import replace

    from labctl.agent import rollouts
    from labctl.cluster.diff import object_changes, pod_changes, respecified
    from labctl.cluster.runtime import object_key
    from labctl.errors import UserError
    from labctl.lab import store
    from labctl.model.load import load_topology

    files = [str(f) for f in req.get("files") or []]
    clock = Phases()
    try:
        topology, warnings = load_topology(files, lab_name=agent.lab)
        clock.mark("load")
    except UserError as e:
        return {"userError": e.format(), "exitCode": e.exit_code}
    if topology.lab.name != agent.lab:
        raise _error(f"the files describe lab {topology.lab.name!r}, not {agent.lab!r}")
    async with agent.lock:
        old = agent.raw_topology()
        if replace(old.lab, proxy_mode="", source=None) != \
                replace(topology.lab, proxy_mode="", source=None):
            raise _error("the Lab document changed (nodes or address ranges): that needs "
                         f"`labctl down {agent.lab}` and `labctl up` again")
        named = [object_key(kind, o.meta.namespace, o.meta.name)
                 for kind, items in (("Pod", topology.pods),
                                     ("Deployment", topology.deployments),
                                     ("StatefulSet", topology.statefulsets),
                                     ("Service", topology.services),
                                     ("EndpointSlice", topology.endpoint_slices))
                 for o in items]
        reset = _replicas_changed(old, topology)
        runtime = agent.runtime.forget_deleted(named)
        # (everything else it keeps: deletions, terminating pods, rollouts under way)
        runtime = replace(runtime, replicas={k: v for k, v in runtime.replicas.items()
                                             if k not in reset})
        # a new pod template rolls out (agent/rollouts.py); a dry run shows the first step
        runtime = rollouts.start(agent, runtime, topology, dry=bool(req.get("dryRun")))
        try:
            new_base, runtime = agent.compile(runtime, topology)
        except UserError as e:
            return {"userError": e.format(), "exitCode": e.exit_code}
        clock.mark("compile")
        mode_now, mode_files = agent.state.lab.proxy_mode, topology.lab.proxy_mode
        switch = mode_files if mode_files not in (old.lab.proxy_mode, mode_now) else ""
        if switch:
            from labctl.proxy import sync

            sync.check(replace(new_base, lab=replace(new_base.lab, proxy_mode=switch)))
        new_base = replace(new_base, lab=replace(new_base.lab, proxy_mode=mode_now))
        respec = respecified(agent.base, new_base)
        refused = [p for p in respec if p.owner is None]
        if refused:  # as the API server: a running pod's spec is immutable
            return _immutable(refused)
        rolled = [p for p in respec if p.owner is not None]
        if rolled:
            # A StatefulSet's template changed: its pods keep running as they are and
            # its update strategy replaces them under their own names, one at a time
            # (agent/rollouts.py), each coming back with the new spec.
            runtime = rollouts.update_statefulsets(agent, runtime, rolled, topology,
                                                   dry=bool(req.get("dryRun")))
            try:
                new_base, runtime = agent.compile(runtime, topology)
            except UserError as e:
                return {"userError": e.format(), "exitCode": e.exit_code}
            new_base = replace(new_base, lab=replace(new_base.lab, proxy_mode=mode_now))
        changes = object_changes(old, topology)
        created, deleted, _relabelled = pod_changes(agent.base, new_base)
        result: dict[str, Any] = {
            "changes": changes, "created": created,
            "terminating": sorted(set(deleted) | (set(runtime.terminating)
                                                  & {p.key for p in rolled})),
            "proxyMode": [mode_now, switch] if switch else None,
            "warnings": [d.format() for d in warnings if d.severity == "warning"],
            "rollouts": rollouts.describe(agent, runtime, topology),
            "timings": clock.ms}
        if req.get("dryRun"):
            from labctl.plan.commands import diff_commands
            from labctl.plan.diff import diff
            from labctl.plan.render import render

            result["commands"] = diff_commands(diff(render(agent.base), render(new_base)))
            return result
        if not changes and not switch:
            return result
        store.replace_manifests(agent.lab, files)
        agent._raw_topology = topology  # noqa: SLF001 - the cache of what was just copied
        for obj, verb in changes:
            agent.event("Normal", verb.capitalize(), obj, f"{obj} {verb} by labctl apply")
        clock.mark("record")
        if changes:
            done = await agent.converge_to(new_base, runtime, {})
            if agent.runtime.rollouts or agent.runtime.held:
                agent.readiness_changed()  # the rollouts move on as pods become ready
            clock.add("converge", agent.last_timings)
            clock.mark("converge")
            result["synced"] = done["synced"]
            result["terminating"] = sorted(set(result["terminating"]) | set(done["terminating"]))
        if switch:
            await switch_mode(agent, switch)
            rec = store.load(agent.lab)
            if rec is not None:
                rec.proxy_mode = switch
                store.save(rec)
            clock.mark("proxy-mode")
    log.info("apply: %s", clock.summary())
    return result


def _immutable(pods: list[PodState]) -> dict[str, Any]:
    """The apply refused: bare pods whose spec the files change."""
    from labctl.errors import Diagnostic, UserError

    error = UserError([Diagnostic(
        "error", p.source.at("spec") if p.source else None, f"Pod {p.key}: spec",
        "a running pod's spec cannot change (the API server forbids it; only container "
        "images and a few other fields may)",
        f"delete it first (`labctl delete pod {p.name}`), then apply; or let a "
        "Deployment or StatefulSet own it, whose pods are replaced when their template "
        "changes") for p in pods])
    return {"userError": error.format(), "exitCode": error.exit_code}


def _replicas_changed(old: Any, new: Any) -> set[str]:
    """Workloads whose spec.replicas the new files change: `kubectl apply` sets them,
    so what `labctl scale` set for them is forgotten."""
    from labctl.cluster.runtime import object_key

    def counts(t: Any) -> dict[str, int]:
        return {object_key(kind, o.meta.namespace, o.meta.name): o.replicas
                for kind, items in (("Deployment", t.deployments),
                                    ("StatefulSet", t.statefulsets))
                for o in items}

    before, after = counts(old), counts(new)
    return {k for k, v in after.items() if before.get(k) != v}


@op("scale")
async def scale(agent: Agent, req: dict[str, Any]) -> dict[str, Any]:
    kind, ns, name = str(req.get("kind")), str(req.get("namespace")), str(req.get("name"))
    replicas = req.get("replicas")
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise _error(f"--replicas must be a whole number ≥ 0, not {replicas!r}")
    async with agent.lock:
        exists = any(p.owner is not None and p.owner.kind == kind and p.owner.name == name
                     and p.namespace == ns for p in agent.base.pods) or \
            agent.workload_exists(kind, ns, name)
        if not exists:
            plural = {"Deployment": "deployments.apps",
                      "StatefulSet": "statefulsets.apps"}.get(kind, kind)
            raise _error(f'{plural} "{name}" not found in namespace "{ns}"', notfound=True)
        runtime = agent.runtime.with_scaled(kind, ns, name, replicas, agent.base)
        return await agent.change(runtime)


@op("delete-pod")
async def delete_pod(agent: Agent, req: dict[str, Any]) -> dict[str, Any]:
    """`labctl delete pod NAME`: graceful; waits for the pod to be gone unless told not
    to."""
    pod = agent.find_pod(str(req.get("pod")))
    grace = req.get("grace")
    async with agent.lock:
        if pod.terminating:
            result: dict[str, Any] = {"already": True}
        else:
            result = await agent.change(agent.runtime.with_pod_deleted(pod),
                                        grace={pod.key: float(grace)}
                                        if grace is not None else None)
    task = agent.terminations.get(pod.key)
    if req.get("wait", True) and task is not None:
        await task
    return result


@op("delete")
async def delete_objects(agent: Agent, req: dict[str, Any]) -> dict[str, Any]:
    """`labctl delete -f FILE` / `labctl delete KIND NAME`: the objects stay gone."""
    objects = [(str(o[0]), str(o[1]), str(o[2])) for o in req.get("objects") or []]
    async with agent.lock:
        missing = [o for o in objects if not agent.object_exists(*o)]
        if missing:
            kind, ns, name = missing[0]
            raise _error(f'{kind.lower()}s "{name}" not found in namespace "{ns}"',
                         notfound=True)
        runtime = agent.runtime
        for kind, ns, name in objects:
            runtime = runtime.with_deleted(kind, ns, name, agent.base)
        result = await agent.change(runtime)
        result["deleted"] = [object_key(*o) for o in objects]
    if req.get("wait", True):
        for key in result.get("terminating", []):
            task = agent.terminations.get(key)
            if task is not None:
                await task
    return result


@op("proxy-mode")
async def proxy_mode(agent: Agent, req: dict[str, Any]) -> dict[str, Any]:
    """`labctl proxy-mode MODE`: every node's rules switched, under the agent's lock so
    no resync of the old mode can slip in between."""
    async with agent.lock:
        return {"seconds": await switch_mode(agent, str(req.get("mode")))}


async def switch_mode(agent: Agent, mode: str) -> dict[str, float]:
    """Switch every node to `mode` (call with the lock held). Userspace mode's proxy
    processes start (and answer) before its rules send traffic to them; leaving it, the
    resync stops them once the new rules are in."""
    from dataclasses import replace

    from labctl.errors import LabctlError
    from labctl.lab.lifecycle import switch_rules

    if mode == "userspace" and agent.state.lab.proxy_mode != mode:
        from labctl.agent import kube_proxies

        new_lab = replace(agent.state.lab, proxy_mode=mode)
        await kube_proxies.ensure(agent, replace(agent.state, lab=new_lab), wait=True,
                                  strict=True)
    try:  # in a worker thread: probes and the loop go on meanwhile
        seconds = await asyncio.to_thread(switch_rules, agent.state, mode)
    except LabctlError:
        agent.syncs = None  # the old mode's rules were loaded again, whole
        raise
    agent.base = replace(agent.base, lab=replace(agent.base.lab, proxy_mode=mode))
    agent.state = replace(agent.state, lab=replace(agent.state.lab, proxy_mode=mode))
    agent.syncs = None
    agent.event("Normal", "ProxyModeChanged", f"lab/{agent.lab}",
                f"kube-proxy mode is now {mode} on every node")
    await agent.resync()  # from what switch_rules loaded: nothing to send
    return seconds
