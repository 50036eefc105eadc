"""Resolve what a user names on the command line to a pod or a namespace."""

from __future__ import annotations

import difflib

from labctl.cluster.state import ClusterState, PodState
from labctl.errors import LabctlError, NotFoundError


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


def resolve(state: ClusterState, target: str, namespace: str, container: str | None) -> str:
    """The network namespace name for a pod, a node, or `external`."""
    if target == "external":
        return state.external_netns
    if "/" not in target:
        for node in state.nodes:
            if node.name == target:
                return node.netns
    pod = find_pod(state, target, namespace)
    if container and container not in [c.name for c in pod.spec.containers]:
        raise LabctlError(f"container {container!r} is not in pod {pod.key}")
    return pod.netns
