"""The agent's control operations: one async function per request `op`.

Each takes the Agent and the request (a JSON object) and returns the reply's fields
(the socket adds "ok": true). A refusal raises RequestError (reported as ok: false, with
`notfound` for a missing object, so the CLI exits 1 as kubectl does). Changes to the
cluster hold the agent's lock; the CLI holds the lab's file lock around its request.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from labctl.cluster.runtime import Runtime, object_key

if TYPE_CHECKING:
    from labctl.agent.controller import Agent

Handler = Callable[["Agent", dict[str, Any]], Awaitable[dict[str, Any]]]
HANDLERS: dict[str, Handler] = {}


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
    """The lab's manifests were replaced (`labctl apply`): compile them with what scale
    and delete did, forget deletions of objects the files name again, converge."""
    named = [str(k) for k in req.get("named") or []]
    async with agent.lock:
        runtime = agent.runtime.forget_deleted(named)
        if req.get("resetReplicas"):
            runtime = Runtime(replicas={k: v for k, v in runtime.replicas.items()
                                        if k not in set(req["resetReplicas"])},
                              generations=runtime.generations, deleted=runtime.deleted,
                              terminating=runtime.terminating)
        return await agent.change(runtime)


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
    no resync of the old mode can slip in between. Userspace mode's proxy processes
    start (and answer) before its rules send traffic to them; leaving it, the resync
    stops them once the new rules are in."""
    from dataclasses import replace

    from labctl.lab.lifecycle import switch_rules

    mode = str(req.get("mode"))
    async with agent.lock:
        if mode == "userspace" and agent.state.lab.proxy_mode != mode:
            from labctl.agent import kube_proxies

            new_lab = replace(agent.state.lab, proxy_mode=mode)
            await kube_proxies.ensure(agent, replace(agent.state, lab=new_lab), wait=True,
                                      strict=True)
        seconds = switch_rules(agent.state, mode)
        agent.base = replace(agent.base, lab=replace(agent.base.lab, proxy_mode=mode))
        agent.state = replace(agent.state, lab=replace(agent.state.lab, proxy_mode=mode))
        agent.syncs = None
        agent.event("Normal", "ProxyModeChanged", f"lab/{agent.lab}",
                    f"kube-proxy mode is now {mode} on every node")
        await agent.resync()  # from what switch_rules loaded: nothing to send
    return {"seconds": seconds}
