"""The agent's side of kube-proxy's userspace mode (deprecated: labctl/proxy/userspace.py).

Each node's proxy process (labctl/proxy/userspace_daemon.py) runs as the pod host's pod
kube-system/kube-proxy-<node>, inside the node's namespace, as kube-proxy runs as a
hostNetwork DaemonSet pod: so it outlives the agent, is restarted with back-off when it
dies, and is stopped by PID with the rest of the lab. `ensure` makes the pod host run
exactly the proxies the lab's mode wants and tells each to reload the state just saved;
the agent calls it at start-up, after every resync (before `--wait` counts a change as
done) and, with `wait`, before a switch to userspace mode loads the rules that send
traffic to the proxies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from labctl.cluster.state import ClusterState
from labctl.errors import LabctlError
from labctl.lab.workloads import kube_proxy_pods
from labctl.proxy.userspace_daemon import request_async

if TYPE_CHECKING:
    from labctl.agent.controller import Agent

PREFIX = "kube-system/kube-proxy-"
START_TIMEOUT = 20.0  # a proxy just started: python start-up, state, listeners
RELOAD_TIMEOUT = 5.0
STOP_GRACE = 2.0

log = logging.getLogger("labctl.agent")


async def ensure(agent: Agent, state: ClusterState, wait: bool = False,
                 strict: bool = False) -> list[str]:
    """Run the proxies `state`'s mode wants (none unless userspace), stop the others,
    and have each reload. `wait`: give each up to START_TIMEOUT to answer (else one
    try). Returns the problems; with `strict` they are raised instead."""
    docs = {f"{d['namespace']}/{d['name']}": d for d in kube_proxy_pods(state)}
    running = {k for k in agent.containers if k.startswith(PREFIX)}
    started = [k for k in docs if k not in running]
    stopped = sorted(running - set(docs))
    if started or stopped:
        agent.write_workloads(replace(agent.base, lab=state.lab))
    problems: list[str] = []
    if started:
        try:
            await agent.podhost_call({"op": "add", "pods": [docs[k] for k in started]}, 60.0)
        except LabctlError as e:
            problems.append(f"cannot start kube-proxy: {e}")
            started = []
        for k in started:
            agent.containers.setdefault(k, [])  # until the next relist shows them
            agent.event("Normal", "Started", f"pod/{k}",
                        "kube-proxy (userspace mode, deprecated) started on "
                        f"{docs[k]['node']}")
    for k in stopped:
        try:
            await agent.podhost_call({"op": "remove", "pod": k, "grace": STOP_GRACE,
                                      "drain": 0.0}, STOP_GRACE + 30.0)
        except LabctlError as e:
            log.error("stopping %s: %s", k, e)
        agent.containers.pop(k, None)
        agent.event("Normal", "Killing", f"pod/{k}", "kube-proxy (userspace mode) stopped")
    if not problems:
        problems = await reload_all(agent.state_dir, [d["node"] for d in docs.values()],
                                    START_TIMEOUT if (wait or started) else 0.0)
    for text in problems:
        log.error("%s", text)
    if problems and strict:
        raise LabctlError("; ".join(problems))
    return problems


async def reload_all(state_dir: str, nodes: list[str], patience: float) -> list[str]:
    """Tell each node's proxy to reload; retry for `patience` seconds while it does not
    answer yet. Returns what went wrong, per node."""
    results = await asyncio.gather(*(_reload(state_dir, n, patience) for n in nodes))
    return [r for r in results if r]


async def _reload(state_dir: str, node: str, patience: float) -> str:
    deadline = time.monotonic() + patience
    while True:
        try:
            reply: dict[str, Any] = await request_async(state_dir, node, {"op": "reload"},
                                                        RELOAD_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as e:
            if time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                continue
            return f"kube-proxy on {node} is not answering ({type(e).__name__}: {e})"
        if not reply.get("ok"):
            return f"kube-proxy on {node} could not reload: {reply.get('error')}"
        if reply.get("errors"):
            return f"kube-proxy on {node}: {'; '.join(reply['errors'])}"
        return ""
