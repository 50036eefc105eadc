"""Resolve what a user names on the command line to a pod or a namespace."""

from __future__ import annotations

import difflib
import json
import os

from labctl.cluster.state import ClusterState, PodState
from labctl.errors import LabctlError, NotFoundError
from labctl.model.objects import Container


def find_pod(state: ClusterState, name: str, namespace: str = "default") -> PodState:
    if "/" in name:
        namespace, name = name.split("/", 1)
    for pod in state.pods:
        if pod.namespace == namespace and pod.name == name:
            return pod
    others = [p.name for p in state.pods if p.namespace == namespace]
    close = difflib.get_close_matches(name, others, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    elsewhere = [p.namespace for p in state.pods if p.name == name]
    if elsewhere:
        hint += f"; it exists in namespace {elsewhere[0]} (use -n {elsewhere[0]})"
    raise NotFoundError(f'pods "{name}" not found in namespace {namespace}{hint}')


KEEP_FROM_CALLER = ("PATH", "TERM", "HOME", "LANG", "LC_ALL", "USER")


def resolve(state: ClusterState, target: str, namespace: str, container: str | None,
            state_dir: str = "") -> tuple[str, dict[str, str] | None]:
    """The network namespace for a pod, a node, or `external`, and for a pod the
    environment its container has (None: keep the caller's, as for a node)."""
    if target == "external":
        return state.external_netns, None
    if "/" not in target:
        for node in state.nodes:
            if node.name == target:
                return node.netns, None
    pod = find_pod(state, target, namespace)
    names = [c.name for c in pod.spec.containers]
    if container and container not in names:
        raise LabctlError(f"container {container!r} is not in pod {pod.key}; "
                          f"containers: {', '.join(names)}")
    chosen = next(c for c in pod.spec.containers if c.name == (container or names[0]))
    return pod.netns, container_environment(state, pod, chosen, state_dir)


def container_environment(state: ClusterState, pod: PodState, container: Container,
                          state_dir: str = "") -> dict[str, str]:
    """What `kubectl exec` gives a command: the container's environment as it started
    (the kubelet's service variables of that moment included) plus HOSTNAME, and the
    caller's PATH and terminal."""
    from labctl.kubelet.envvars import PodContext, container_env
    from labctl.kubelet.podfiles import hostname_and_domain

    env = {k: os.environ[k] for k in KEEP_FROM_CALLER if k in os.environ}
    env["HOSTNAME"] = hostname_and_domain(pod, state.lab.cluster_domain)[0]
    started = _started_env(state_dir, pod, container.name)
    if started is None:
        started = container_env(PodContext.of(pod, state), container, state.services)
    env.update(started)
    return env


def _started_env(state_dir: str, pod: PodState, container: str
                 ) -> list[tuple[str, str]] | None:
    """The environment the agent started the container with (workloads.json)."""
    try:
        with open(os.path.join(state_dir, "workloads.json")) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    for p in doc.get("pods", []):
        if (p.get("namespace"), p.get("name")) == (pod.namespace, pod.name):
            for c in p.get("containers", []):
                if c.get("name") == container:
                    return [(e["name"], e.get("value") or "") for e in c.get("env", [])]
    return None
