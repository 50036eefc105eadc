"""Place pods on nodes: nodeName and nodeSelector honoured, the rest spread evenly.

Deterministic: pinned pods first, then pods that already run somewhere stay there (a
scheduler never moves a running pod), then the others by namespace/name. Like
kube-scheduler's default topology spreading, a workload's replicas go first to the
eligible node with the fewest replicas of that same workload, then to the node with the
fewest pods overall (ties go to the earlier node).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from labctl.errors import Diagnostic, UserError
from labctl.model.objects import NodeSpec, Pod


def schedule(pods: Sequence[Pod], nodes: Sequence[NodeSpec],
             previous: Mapping[str, str] | None = None) -> dict[str, str]:
    """Map each pod key ("ns/name") to a node name; `previous` is the last placement."""
    previous = previous or {}
    load = {n.name: 0 for n in nodes}
    same_owner: dict[tuple[str, str, str], int] = {}  # (namespace, owner, node) -> pods
    placed: dict[str, str] = {}
    errors: list[Diagnostic] = []

    def order(p: Pod) -> tuple[int, str, str]:
        key = f"{p.meta.namespace}/{p.meta.name}"
        rank = 0 if p.spec.node_name else 1 if previous.get(key) in load else 2
        return rank, p.meta.namespace, p.meta.name

    for pod in sorted(pods, key=order):
        key = f"{pod.meta.namespace}/{pod.meta.name}"
        labels_of = {n.name: n.labels for n in nodes}
        if previous.get(key) in load and not pod.spec.node_name and all(
                labels_of[previous[key]].get(k) == v
                for k, v in pod.spec.node_selector.items()):
            node = previous[key]
        elif pod.spec.node_name:
            node = pod.spec.node_name
            if node not in load:
                errors.append(Diagnostic(
                    "error", pod.source.at("spec.nodeName"), f"Pod {key}: spec.nodeName",
                    f"no node named {node!r}", f"nodes are: {', '.join(load)}"))
                continue
        else:
            eligible = [n.name for n in nodes
                        if all(n.labels.get(k) == v for k, v in pod.spec.node_selector.items())]
            if not eligible:
                errors.append(Diagnostic(
                    "error", pod.source.at("spec.nodeSelector"), f"Pod {key}: spec.nodeSelector",
                    "no node has all of these labels",
                    "add the labels to a node under the Lab's spec.nodes[].labels"))
                continue
            owner = _owner(pod)
            node = min(eligible, key=lambda name: (same_owner.get((*owner, name), 0),
                                                   load[name]))
        load[node] += 1
        owner = _owner(pod)
        same_owner[(*owner, node)] = same_owner.get((*owner, node), 0) + 1
        placed[key] = node
    if errors:
        raise UserError(errors)
    return placed


def _owner(pod: Pod) -> tuple[str, str]:
    """The workload a pod belongs to (bare pods: each its own)."""
    if pod.owner is None:
        return pod.meta.namespace, f"pod/{pod.meta.name}"
    return pod.meta.namespace, f"{pod.owner.kind}/{pod.owner.name}"
