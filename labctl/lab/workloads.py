"""ClusterState → the agent's workloads.json document (pure)."""

from __future__ import annotations

from typing import Any

from labctl.cluster.state import ClusterState


def workloads_document(state: ClusterState) -> dict[str, Any]:
    pods = []
    for pod in state.pods:
        containers = [{
            "name": c.name,
            "command": list(c.command),
            "args": list(c.args),
            "env": [{"name": e.name, "value": e.value} for e in c.env if e.value is not None],
            "ports": [{"name": p.name, "port": p.container_port, "protocol": p.protocol}
                      for p in c.ports],
        } for c in pod.spec.containers]
        pods.append({
            "namespace": pod.namespace, "name": pod.name, "node": pod.node, "ip": pod.ip,
            "netns": pod.netns, "restartPolicy": pod.spec.restart_policy,
            "containers": containers,
        })
    return {"lab": state.lab.name, "pods": pods}
