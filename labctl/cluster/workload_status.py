"""Deployments, their ReplicaSets and StatefulSets as `kubectl get` shows them (pure):
their status counted from the running pods, and Kubernetes-shaped objects for
`-o json|yaml`.

A Deployment's ReplicaSets are its pods grouped by pod-template-hash: the current
template's (its size the rollout's new-ReplicaSet size while it rolls out, else the
replicas) and each older template whose pods a rollout still keeps. `infos` is the
agent's view of each pod (ready, and since when: a pod is available once it has been
ready for minReadySeconds).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from labctl.cluster.runtime import Runtime
from labctl.cluster.state import ClusterState, PodState
from labctl.cluster.workloads import HASH_LABEL, deployment_hash
from labctl.model.objects import Deployment, StatefulSet

Infos = Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class ReplicaSetStatus:
    name: str
    hash: str
    desired: int
    current: int
    ready: int
    current_template: bool


@dataclass(frozen=True)
class DeploymentStatus:
    deployment: Deployment
    desired: int
    current: int  # pods that are not terminating
    updated: int  # ... of the current template
    ready: int
    available: int
    replica_sets: tuple[ReplicaSetStatus, ...]


@dataclass(frozen=True)
class StatefulSetStatus:
    statefulset: StatefulSet
    desired: int
    current: int
    updated: int  # not waiting for their update (a rollout's held pods are not)
    ready: int


def _owned(state: ClusterState, kind: str, namespace: str, name: str) -> list[PodState]:
    return [p for p in state.pods_of(kind, namespace, name) if not p.terminating]


def _ready(infos: Infos | None, key: str) -> bool:
    return bool(infos is not None and infos.get(key, {}).get("ready"))


def _available(infos: Infos | None, key: str, min_ready: int, now: float) -> bool:
    if not _ready(infos, key):
        return False
    since = (infos or {}).get(key, {}).get("readySince")
    return min_ready == 0 or (since is not None and now - float(since) >= min_ready)


def deployment_status(state: ClusterState, dep: Deployment, runtime: Runtime,
                      infos: Infos | None, now: float) -> DeploymentStatus:
    ns, name = dep.meta.namespace, dep.meta.name
    desired = runtime.replicas_of("Deployment", ns, name, dep.replicas)
    current_hash = deployment_hash(dep)
    pods = _owned(state, "Deployment", ns, name)
    hashes = sorted({p.labels.get(HASH_LABEL, "") for p in pods} - {current_hash})
    rolling = runtime.rollout_of(ns, name)
    sets = []
    for h in [current_hash, *hashes]:
        mine = [p for p in pods if p.labels.get(HASH_LABEL, "") == h]
        size = (desired if rolling is None else min(rolling, desired)) \
            if h == current_hash else len(mine)
        sets.append(ReplicaSetStatus(f"{name}-{h}", h, size, len(mine),
                                     sum(_ready(infos, p.key) for p in mine),
                                     h == current_hash))
    return DeploymentStatus(
        dep, desired, len(pods),
        sum(p.labels.get(HASH_LABEL) == current_hash for p in pods),
        sum(_ready(infos, p.key) for p in pods),
        sum(_available(infos, p.key, dep.min_ready_seconds, now) for p in pods),
        tuple(sets))


def statefulset_status(state: ClusterState, sts: StatefulSet, runtime: Runtime,
                       infos: Infos | None) -> StatefulSetStatus:
    ns, name = sts.meta.namespace, sts.meta.name
    pods = _owned(state, "StatefulSet", ns, name)
    return StatefulSetStatus(
        sts, runtime.replicas_of("StatefulSet", ns, name, sts.replicas), len(pods),
        sum(p.key not in runtime.held for p in pods), sum(_ready(infos, p.key) for p in pods))


# ------------------------------------------------------------------ -o json|yaml


def _labels_selector(dep: Deployment | StatefulSet) -> dict[str, Any]:
    sel: dict[str, Any] = {"matchLabels": dict(dep.selector.match_labels)}
    if dep.selector.match_expressions:
        sel["matchExpressions"] = [{"key": k, "operator": op, "values": list(v)}
                                   for k, op, v in dep.selector.match_expressions]
    return sel


def deployment_object(st: DeploymentStatus) -> dict[str, Any]:
    dep = st.deployment
    strategy: dict[str, Any] = {"type": dep.strategy.type}
    if dep.strategy.type == "RollingUpdate":
        strategy["rollingUpdate"] = {"maxSurge": dep.strategy.max_surge,
                                     "maxUnavailable": dep.strategy.max_unavailable}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": dep.meta.name, "namespace": dep.meta.namespace,
                     **({"labels": dict(dep.meta.labels)} if dep.meta.labels else {})},
        "spec": {"replicas": st.desired, "selector": _labels_selector(dep),
                 "strategy": strategy, "minReadySeconds": dep.min_ready_seconds},
        "status": {"replicas": st.current, "updatedReplicas": st.updated,
                   "readyReplicas": st.ready, "availableReplicas": st.available,
                   "unavailableReplicas": max(st.desired - st.available, 0)},
    }


def replicaset_object(st: DeploymentStatus, rs: ReplicaSetStatus) -> dict[str, Any]:
    dep = st.deployment
    return {
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": rs.name, "namespace": dep.meta.namespace,
                     "labels": {**dict(dep.template.labels), HASH_LABEL: rs.hash},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                          "name": dep.meta.name, "controller": True}]},
        "spec": {"replicas": rs.desired},
        "status": {"replicas": rs.current, "readyReplicas": rs.ready},
    }


def statefulset_object(st: StatefulSetStatus) -> dict[str, Any]:
    sts = st.statefulset
    strategy: dict[str, Any] = {"type": sts.update_strategy}
    if sts.update_strategy == "RollingUpdate":
        strategy["rollingUpdate"] = {"partition": sts.partition}
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": sts.meta.name, "namespace": sts.meta.namespace},
        "spec": {"replicas": st.desired, "serviceName": sts.service_name,
                 "selector": _labels_selector(sts), "updateStrategy": strategy},
        "status": {"replicas": st.current, "readyReplicas": st.ready,
                   "currentReplicas": st.current, "updatedReplicas": st.updated},
    }
