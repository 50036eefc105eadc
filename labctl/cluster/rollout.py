"""Deployment rollouts (pure): how the deployment controller replaces a Deployment's
pods when `apply` changes its pod template (pkg/controller/deployment: rolling.go,
recreate.go).

The pods of the old template are the old ReplicaSet's, the new template's pods the new
ReplicaSet's. Each step looks at what is running and available and does what one sync
of the controller does:

* RollingUpdate (the default): the new ReplicaSet grows while all pods stay within
  replicas + maxSurge; old pods go — unavailable ones first — while at least
  replicas - maxUnavailable pods stay available. maxSurge rounds up, maxUnavailable
  down (25% each by default); both 0 would never move, so maxUnavailable becomes 1.
* Recreate: every old pod goes first; the new pods are created once none is left.

A pod is available once it has been ready for minReadySeconds. The agent runs `step`
after an apply and whenever readiness changes or a pod finishes terminating, until
the rollout is complete: no old pod left and the new ReplicaSet at full size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from labctl.model.objects import DeploymentStrategy


@dataclass(frozen=True)
class OldPod:
    key: str
    available: bool
    slot: int


@dataclass(frozen=True)
class Step:
    new: int  # the new ReplicaSet's size from now on
    remove: tuple[str, ...] = ()  # old pods to delete (gracefully)
    done: bool = False  # nothing old left and the new ReplicaSet at full size


def scaled(value: int | str, total: int, round_up: bool) -> int:
    """An int-or-percent of `total` (GetScaledValueFromIntOrPercent)."""
    if isinstance(value, int):
        return value
    percent = int(value.rstrip("%"))
    whole, rest = divmod(percent * total, 100)
    return whole + (1 if round_up and rest else 0)


def fenceposts(strategy: DeploymentStrategy, replicas: int) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) as pod counts (resolveFenceposts)."""
    surge = scaled(strategy.max_surge, replicas, round_up=True)
    unavailable = scaled(strategy.max_unavailable, replicas, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def step(strategy: DeploymentStrategy, replicas: int, new: int, new_available: int,
         old: Sequence[OldPod], old_terminating: int = 0) -> Step:
    """One sync: the new ReplicaSet's size and the old pods to delete, given the new
    ReplicaSet's size and available pods now, and the old pods still running
    (`old_terminating`: old pods still shutting down, which Recreate waits for)."""
    if strategy.type == "Recreate":
        if old:
            return Step(0, tuple(p.key for p in old))
        if old_terminating:
            return Step(0)
        return Step(replicas, done=True)
    surge, unavailable = fenceposts(strategy, replicas)
    # reconcileNewReplicaSet: grow (or shrink to replicas) within replicas + maxSurge
    if new > replicas:
        new = replicas
    elif new < replicas:
        room = replicas + surge - (new + len(old))
        if room > 0:
            new += min(room, replicas - new)
    # reconcileOldReplicaSets: keep replicas - maxUnavailable available
    min_available = replicas - unavailable
    new_unavailable = new - min(new_available, new)
    budget = new + len(old) - min_available - new_unavailable
    remove: list[str] = []
    if budget > 0:
        # cleanupUnhealthyReplicas: old pods that are not available go first
        for pod in old:
            if not pod.available and len(remove) < budget:
                remove.append(pod.key)
        # scaleDownOldReplicaSetsForRollingUpdate: then available ones, while enough
        # pods stay available; the highest slots first
        available = min(new_available, new) + sum(p.available for p in old)
        spare = available - min_available
        for pod in sorted((p for p in old if p.available), key=lambda p: -p.slot):
            if spare <= 0:
                break
            remove.append(pod.key)
            spare -= 1
    left = len(old) - len(remove)
    return Step(new, tuple(remove), done=left == 0 and new == replicas)
