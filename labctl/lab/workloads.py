"""ClusterState → the agent's workloads.json document (pure).

Each container gets the environment the kubelet would give it (its own `env`, then the
Service variables of the Services that exist as it starts) and its command and args
expanded against it. Containers labctl serves itself are marked `builtin` ("dns" for
cluster DNS). The node that stands in for the API server gets a listener on 6443.
In userspace proxy mode each node also gets its kube-proxy: a process in the node's
namespace (kube-proxy runs as a hostNetwork DaemonSet pod).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from labctl.cluster.addons import APISERVER_PORT, BUILTIN_ANNOTATION
from labctl.cluster.state import ClusterState, PodState
from labctl.kubelet.envvars import PodContext, container_env, expand_command


def _containers(state: ClusterState, pod: PodState) -> list[dict[str, Any]]:
    ctx = PodContext.of(pod, state)
    builtin = pod.annotations.get(BUILTIN_ANNOTATION, "")
    out = []
    for c in pod.spec.containers:
        env = container_env(ctx, c, state.services)
        command, args = expand_command(c, env)
        out.append({
            "name": c.name,
            "command": list(command),
            "args": list(args),
            "env": [{"name": k, "value": v} for k, v in env],
            "ports": [{"name": p.name, "port": p.container_port, "protocol": p.protocol}
                      for p in c.ports],
            **({"builtin": builtin} if builtin else {}),
        })
    return out


def _apiserver(state: ClusterState) -> dict[str, Any] | None:
    """The listener behind default/kubernetes (labs have no control plane)."""
    node = state.nodes[0]
    if not any(s.key == "default/kubernetes" for s in state.services):
        return None
    return {"namespace": "kube-system", "name": f"kube-apiserver-{node.name}",
            "node": node.name, "ip": node.ip, "netns": node.netns, "restartPolicy": "Always",
            "containers": [{"name": "kube-apiserver", "command": [], "args": [], "env": [],
                            "ports": [{"name": "https", "port": APISERVER_PORT,
                                       "protocol": "TCP"}]}]}


KUBE_PROXY_MODULE = "labctl.proxy.userspace_daemon"


def kube_proxy_pods(state: ClusterState) -> list[dict[str, Any]]:
    """userspace mode: each node's proxy process, as a pod of the pod host running
    `python -m labctl.proxy.userspace_daemon STATE_DIR NODE` in the node's namespace
    (restarted with back-off if it dies). Other modes: none."""
    if state.lab.proxy_mode != "userspace":
        return []
    from labctl import names

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return [{"namespace": "kube-system", "name": f"kube-proxy-{node.name}", "node": node.name,
             "ip": node.ip, "netns": node.netns, "restartPolicy": "Always",
             "containers": [{"name": "kube-proxy", "command": [sys.executable, "-m",
                                                              KUBE_PROXY_MODULE],
                             "args": [names.state_dir(state.lab.name), node.name],
                             "env": [{"name": "PYTHONPATH", "value": root}], "ports": []}]}
            for node in state.nodes]


def workloads_document(state: ClusterState) -> dict[str, Any]:
    pods = [{
        "namespace": pod.namespace, "name": pod.name, "node": pod.node, "ip": pod.ip,
        "netns": pod.netns, "restartPolicy": pod.spec.restart_policy,
        "containers": _containers(state, pod),
    } for pod in state.pods]
    stand_in = _apiserver(state)
    if stand_in:
        pods.append(stand_in)
    pods += kube_proxy_pods(state)
    return {"lab": state.lab.name, "pods": pods}


def carry_over(doc: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """`doc` with the entries of pods that already ran in `previous` kept as they were:
    a running container keeps the environment it started with (the kubelet never
    updates it), whatever Services came or went since."""
    if not previous:
        return doc
    before = {(p.get("namespace"), p.get("name")): p for p in previous.get("pods", [])}
    pods = [before.get((p["namespace"], p["name"]), p) for p in doc["pods"]]
    return {**doc, "pods": pods}
