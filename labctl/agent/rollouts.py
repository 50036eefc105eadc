"""The agent's controllers for template changes: it starts a rollout when `apply`
gives a Deployment or a StatefulSet a new pod template, and moves it on whenever
readiness changes, a pod finishes terminating or the pod host is relisted (every 0.5 s:
minReadySeconds running out), until every pod runs the new template.

While a Deployment rolls out (cluster/rollout.py's `step`), Runtime.rollouts holds its
new ReplicaSet's size and Runtime.held the old pods that keep running; the events say
what a real cluster's say ("Scaled up replica set web-5d8c7f6b9a to 2"). A StatefulSet's
pods keep their names: those not yet updated are held, and its RollingUpdate deletes
the highest ordinal among them (at or above the partition) once every pod of the set
is Running and Ready and none is terminating; the pod comes back with the new spec.
OnDelete leaves them until someone deletes them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from labctl.cluster import rollout
from labctl.cluster.runtime import Runtime
from labctl.cluster.workloads import HASH_LABEL, deployment_hash

if TYPE_CHECKING:
    from labctl.agent.controller import Agent
    from labctl.cluster.state import PodState
    from labctl.model.objects import Deployment, Topology


def _owned(agent: Agent, dep: Deployment) -> tuple[PodState, ...]:
    return agent.base.pods_of("Deployment", dep.meta.namespace, dep.meta.name)


def _visible(topology: Any, runtime: Runtime) -> Topology:
    """The workloads as they run: the manifests with the add-ons, less what was deleted."""
    from labctl.cluster.addons import with_addons

    return runtime.visible(with_addons(topology))


def start(agent: Agent, runtime: Runtime, topology: Any, dry: bool = False) -> Runtime:
    """`apply` loaded `topology`: every Deployment whose running pods have another
    template starts rolling out (again, if it was rolling: the pods of the template it
    was rolling to are old now too). RollingUpdate keeps the old pods running for now,
    Recreate stops them at once. Then the rollouts take their first step. `dry`: say
    nothing (events), only compute (`apply --dry-run`)."""
    say = _quiet if dry else agent.event
    for dep in _visible(topology, runtime).deployments:
        ns, name = dep.meta.namespace, dep.meta.name
        new_hash = deployment_hash(dep)
        old = [p.key for p in _owned(agent, dep)
               if not p.terminating and p.key not in runtime.terminating
               and p.labels.get(HASH_LABEL) != new_hash]
        if not old:
            continue
        say("Normal", "RolloutStarted", f"deployment/{ns}/{name}",
            f"new pod template {name}-{new_hash} ({dep.strategy.type}): "
            f"{len(old)} pods to replace")
        if dep.strategy.type == "Recreate":
            runtime = runtime.with_rollout(ns, name, 0, remove=old)
        else:
            runtime = runtime.with_rollout(ns, name, 0, hold=old)
    return step_all(agent, runtime, topology, dry)


def describe(agent: Agent, runtime: Runtime, topology: Any) -> list[str]:
    """One line per rolling Deployment, for apply's output: what rolls out, and how."""
    out = []
    for dep in _visible(topology, runtime).deployments:
        ns, name = dep.meta.namespace, dep.meta.name
        if runtime.rollout_of(ns, name) is None:
            continue
        replicas = runtime.replicas_of("Deployment", ns, name, dep.replicas)
        if dep.strategy.type == "Recreate":
            how = "Recreate: every old pod stops first"
        else:
            surge, unavailable = rollout.fenceposts(dep.strategy, replicas)
            how = (f"RollingUpdate: at most {replicas + surge} pods, at least "
                   f"{replicas - unavailable} available")
        if dep.min_ready_seconds:
            how += f", minReadySeconds {dep.min_ready_seconds}"
        out.append(f"deployment.apps/{name} rolling out to {name}-{deployment_hash(dep)} ({how}); "
                   "`labctl events -w` follows it")
    return out


def _quiet(*_args: str) -> None:
    pass


def update_statefulsets(agent: Agent, runtime: Runtime, pods: list[PodState],
                        topology: Any, dry: bool = False) -> Runtime:
    """`apply` changed the template of the StatefulSets of `pods` (running pods whose
    spec it changes): they keep running as they are, then are replaced one at a time."""
    say = _quiet if dry else agent.event
    for owner in sorted({p.owner.name for p in pods if p.owner is not None}):
        mine = [p for p in pods if p.owner is not None and p.owner.name == owner]
        say("Normal", "RolloutStarted", f"statefulset/{mine[0].namespace}/{owner}",
            f"new pod template: {len(mine)} pods to update")
    return step_all(agent, runtime.with_held(p.key for p in pods), topology, dry)


def step_all(agent: Agent, runtime: Runtime, topology: Any, dry: bool = False) -> Runtime:
    """Every rolling Deployment takes the steps its pods' availability allows now."""
    if not runtime.rollouts and not runtime.held:
        return runtime
    visible = _visible(topology, runtime)
    runtime = _orphans_go(agent, runtime, visible)
    runtime = _step_statefulsets(agent, runtime, visible, _quiet if dry else agent.event)
    deployments = {f"{d.meta.namespace}/{d.meta.name}": d for d in visible.deployments}
    for key in list(runtime.rollouts):
        ns, _, name = key.partition("/")
        dep = deployments.get(key)
        if dep is None:  # deleted meanwhile: its pods went with it
            runtime = runtime.without_rollout(ns, name)
            continue
        runtime = _step(agent, dep, runtime, _quiet if dry else agent.event)
    return runtime


def _orphans_go(agent: Agent, runtime: Runtime, visible: Topology) -> Runtime:
    """Held pods whose Deployment or StatefulSet the manifests no longer have (an apply
    removed it mid-rollout): they terminate, as the garbage collector deletes the pods of
    a deleted owner."""
    owners = {("Deployment", d.meta.namespace, d.meta.name) for d in visible.deployments} | \
        {("StatefulSet", s.meta.namespace, s.meta.name) for s in visible.statefulsets}
    orphans = [p.key for p in agent.base.pods if p.key in runtime.held
               and (p.owner is None or (p.owner.kind, p.namespace, p.owner.name) not in owners)]
    return runtime.with_terminating(orphans) if orphans else runtime


def _step_statefulsets(agent: Agent, runtime: Runtime, visible: Topology,
                       say: Callable[..., None]) -> Runtime:
    """Each StatefulSet with pods to update and RollingUpdate: the next one goes, if the
    set is all Running and Ready and none of its pods is terminating."""
    for sts in visible.statefulsets:
        ns, name = sts.meta.namespace, sts.meta.name
        pods = agent.base.pods_of("StatefulSet", ns, name)
        held = [p for p in pods if p.key in runtime.held]
        if not held or sts.update_strategy == "OnDelete":
            continue
        if any(p.terminating or p.key in runtime.terminating for p in pods) or \
                not all(agent.pod_ready(p.key) for p in pods):
            continue  # one at a time, each Ready before the next
        due = [p for p in held if p.slot >= sts.partition]
        if not due:
            continue  # the partition keeps the rest on the old template
        pod = max(due, key=lambda p: p.slot)
        left = len(due) - 1
        say("Normal", "SuccessfulDelete", f"statefulset/{ns}/{name}",
            f"delete Pod {pod.name} to update it to the new template (highest ordinal "
            f"first; {left} more{' after it' if left else ''})")
        runtime = runtime.with_terminating([pod.key])
    return runtime


def _step(agent: Agent, dep: Deployment, runtime: Runtime, say: Callable[..., None]
          ) -> Runtime:
    ns, name = dep.meta.namespace, dep.meta.name
    replicas = runtime.replicas_of("Deployment", ns, name, dep.replicas)
    new_hash = deployment_hash(dep)
    now = time.time()
    pods = _owned(agent, dep)
    for _ in range(2 * replicas + 4):  # each pass is one sync of the controller
        new_count = runtime.rollout_of(ns, name)
        if new_count is None:
            return runtime
        running = [p for p in pods if not p.terminating and p.key not in runtime.terminating]
        new_pods = [p for p in running if p.key not in runtime.held
                    and p.labels.get(HASH_LABEL) == new_hash]
        old = [rollout.OldPod(p.key, _available(agent, p.key, dep, now), p.slot)
               for p in running if p.key in runtime.held]
        old_terminating = sum(1 for p in pods if p.key in runtime.terminating
                              and p.labels.get(HASH_LABEL) != new_hash)
        s = rollout.step(dep.strategy, replicas, new_count,
                         sum(_available(agent, p.key, dep, now) for p in new_pods),
                         old, old_terminating)
        if s.new != new_count:
            verb = "up" if s.new > new_count else "down"
            say("Normal", "ScalingReplicaSet", f"deployment/{ns}/{name}",
                f"Scaled {verb} replica set {name}-{new_hash} to {s.new}")
        for old_hash, gone in _by_hash(pods, s.remove).items():
            left = sum(1 for p in running if p.key in runtime.held and p.key not in gone
                       and p.labels.get(HASH_LABEL) == old_hash)
            say("Normal", "ScalingReplicaSet", f"deployment/{ns}/{name}",
                f"Scaled down replica set {name}-{old_hash} to {left} "
                f"(pod {', '.join(k.partition('/')[2] for k in sorted(gone))} terminating)")
        if s.done:
            say("Normal", "RolloutComplete", f"deployment/{ns}/{name}",
                f"every pod runs template {name}-{new_hash}")
            return runtime.with_rollout(ns, name, s.new, remove=s.remove
                                        ).without_rollout(ns, name)
        if s.new == new_count and not s.remove:
            return runtime  # the next relist (every 0.5 s) or readiness change looks again
        runtime = runtime.with_rollout(ns, name, s.new, remove=s.remove)
    return runtime


def _by_hash(pods: tuple[PodState, ...], keys: tuple[str, ...]) -> dict[str, set[str]]:
    """The pods `keys` grouped by their template (the old ReplicaSets they belong to)."""
    out: dict[str, set[str]] = {}
    for p in pods:
        if p.key in keys:
            out.setdefault(p.labels.get(HASH_LABEL, ""), set()).add(p.key)
    return out


def _available(agent: Agent, key: str, dep: Deployment, now: float) -> bool:
    """Ready for at least minReadySeconds (ready at all, with the default 0); since when
    it is ready is what the agent's last resync saw."""
    if not agent.pod_ready(key):
        return False
    return now - agent.ready_since.get(key, now) >= dep.min_ready_seconds
