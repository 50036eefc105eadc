"""Runtime: what happened to a running lab beyond its manifests (pure, immutable).

The manifests say what should exist; a running lab also remembers what `labctl scale`,
`labctl delete` and pod deletions did to it. `compile_state(topology, previous, runtime)`
applies it:

* `replicas` — "Deployment/<ns>/<name>" or "StatefulSet/<ns>/<name>" → the count set by
  `labctl scale`, which overrides spec.replicas. Scaling down removes the highest slots;
  scaling up adds slots.
* `generations` — "<ns>/<deployment>/<slot>" → how many times the Deployment's pod in
  that replica slot was replaced. 0 (absent) keeps the name a fresh lab gives; any other
  value gives the slot a new 5-character suffix, hence a new pod name and a new address,
  as a ReplicaSet's replacement pod gets a new random name.
* `deleted` — "Kind/<ns>/<name>" (Pod, Deployment, StatefulSet, Service, EndpointSlice)
  of objects removed with `labctl delete`: they stay gone until `apply` names them again
  (`forget_deleted`).
* `terminating` — pod keys "<ns>/<name>" being deleted gracefully. Such a pod keeps its
  node, address and namespace until it is gone (`without_terminating`).
* `rollouts` — "<ns>/<deployment>" → the size of the new ReplicaSet while a template
  change rolls out (cluster/rollout.py): only that many pods of the new template exist.
* `held` — pod keys of the old template's pods a rollout keeps running for now (the old
  ReplicaSet's, or a StatefulSet's pods not yet updated); the rollout deletes them a few
  at a time (a StatefulSet's one by one; each comes back with the new template).

Deleting a pod follows its controller: a ReplicaSet counts only pods that are not
terminating, so it creates a replacement (new name) at once; a StatefulSet recreates
the same name only once the old pod is gone; a bare Pod just goes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from labctl.cluster.state import ClusterState, PodState
from labctl.model.objects import Topology

WORKLOAD_KINDS = ("Deployment", "StatefulSet")
DELETABLE_KINDS = ("Pod", "Deployment", "StatefulSet", "Service", "EndpointSlice")


def object_key(kind: str, namespace: str, name: str) -> str:
    """"Kind/<ns>/<name>": the key of `replicas` (workloads) and `deleted`."""
    return f"{kind}/{namespace}/{name}"


def generation_key(namespace: str, deployment: str, slot: int) -> str:
    """"<ns>/<deployment>/<slot>": the key of `generations`."""
    return f"{namespace}/{deployment}/{slot}"


def _frozen(items: Mapping[str, int], drop_zero: bool = False) -> Mapping[str, int]:
    return MappingProxyType({k: items[k] for k in sorted(items)
                             if not (drop_zero and items[k] == 0)})


def _empty() -> Mapping[str, int]:
    return MappingProxyType({})


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what}: expected a whole number ≥ 0, got {value!r}")
    return value


def _check_object_key(key: str, kinds: tuple[str, ...], what: str) -> None:
    parts = key.split("/")
    if len(parts) != 3 or parts[0] not in kinds or not parts[1] or not parts[2]:
        raise ValueError(f"{what}: {key!r} is not <{'|'.join(kinds)}>/<namespace>/<name>")


@dataclass(frozen=True)
class Runtime:
    replicas: Mapping[str, int] = field(default_factory=_empty)
    generations: Mapping[str, int] = field(default_factory=_empty)
    deleted: frozenset[str] = frozenset()
    terminating: frozenset[str] = frozenset()
    rollouts: Mapping[str, int] = field(default_factory=_empty)
    held: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        # Normalised so that equal runtimes compare equal and serialise the same.
        object.__setattr__(self, "replicas", _frozen(self.replicas))
        object.__setattr__(self, "generations", _frozen(self.generations, drop_zero=True))
        object.__setattr__(self, "deleted", frozenset(self.deleted))
        object.__setattr__(self, "terminating", frozenset(self.terminating))
        object.__setattr__(self, "rollouts", _frozen(self.rollouts))
        object.__setattr__(self, "held", frozenset(self.held) - self.terminating)

    # ------------------------------------------------------------ reading

    def replicas_of(self, kind: str, namespace: str, name: str, spec_replicas: int) -> int:
        """The workload's replica count: `labctl scale`'s if any, else spec.replicas."""
        return self.replicas.get(object_key(kind, namespace, name), spec_replicas)

    def generation(self, namespace: str, deployment: str, slot: int) -> int:
        return self.generations.get(generation_key(namespace, deployment, slot), 0)

    def rollout_of(self, namespace: str, deployment: str) -> int | None:
        """The new ReplicaSet's size while the Deployment rolls out, else None."""
        return self.rollouts.get(f"{namespace}/{deployment}")

    def is_deleted(self, kind: str, namespace: str, name: str) -> bool:
        return object_key(kind, namespace, name) in self.deleted

    def visible(self, topology: Topology) -> Topology:
        """The topology without the objects `labctl delete` removed."""
        if not self.deleted:
            return topology

        def keep(kind: str, namespace: str, name: str) -> bool:
            return not self.is_deleted(kind, namespace, name)

        return replace(
            topology,
            pods=tuple(p for p in topology.pods
                       if keep("Pod", p.meta.namespace, p.meta.name)),
            deployments=tuple(d for d in topology.deployments
                              if keep("Deployment", d.meta.namespace, d.meta.name)),
            statefulsets=tuple(s for s in topology.statefulsets
                               if keep("StatefulSet", s.meta.namespace, s.meta.name)),
            services=tuple(s for s in topology.services
                           if keep("Service", s.meta.namespace, s.meta.name)),
            endpoint_slices=tuple(s for s in topology.endpoint_slices
                                  if keep("EndpointSlice", s.meta.namespace, s.meta.name)))

    # ------------------------------------------------------------ changing

    def with_scaled(self, kind: str, namespace: str, name: str, replicas: int,
                    state: ClusterState | None = None) -> Runtime:
        """`labctl scale`: the workload runs `replicas` pods from now on.

        Given the current `state`, the pods of the slots a scale-down removes are
        deleted gracefully (`with_pod_deleted`: they terminate; a Deployment's slot
        gets a new generation, so a later scale-up makes new names). Without it they
        just vanish from the next compile."""
        if kind not in WORKLOAD_KINDS:
            raise ValueError(f"cannot scale a {kind}: only {' and '.join(WORKLOAD_KINDS)}")
        _count(replicas, f"{kind} {namespace}/{name}: replicas")
        out = replace(self, replicas={**self.replicas,
                                      object_key(kind, namespace, name): replicas})
        for pod in _owned(state, kind, namespace, name):
            if pod.slot >= replicas:
                out = out.with_pod_deleted(pod)
        return out

    def with_pod_deleted(self, pod: PodState) -> Runtime:
        """`labctl delete pod`: the pod terminates gracefully, and its controller acts.

        A Deployment's pod: its slot's generation goes up (the replacement gets a new
        name and address at once). A StatefulSet's pod: the same name comes back once
        the old pod is gone. A bare Pod: it is also recorded as deleted. Deleting a pod
        that is already terminating changes nothing."""
        if pod.terminating or pod.key in self.terminating:
            return self
        terminating = self.terminating | {pod.key}
        if pod.key in self.held:  # an old pod of a rollout: it goes, nothing replaces it
            return replace(self, terminating=terminating)
        if pod.owner is None:
            return replace(self, terminating=terminating,
                           deleted=self.deleted | {object_key("Pod", pod.namespace, pod.name)})
        if pod.owner.kind == "Deployment":
            if pod.slot < 0:
                raise ValueError(f"pod {pod.key} of Deployment {pod.owner.name} has no slot")
            gen = generation_key(pod.namespace, pod.owner.name, pod.slot)
            return replace(self, terminating=terminating,
                           generations={**self.generations,
                                        gen: self.generations.get(gen, 0) + 1})
        return replace(self, terminating=terminating)

    def with_deleted(self, kind: str, namespace: str, name: str,
                     state: ClusterState | None = None) -> Runtime:
        """`labctl delete <kind> <name>` / `delete -f`: the object stays gone.

        A deleted workload loses its `labctl scale` count (it comes back from its
        manifest). Given the current `state`, pods go gracefully: a workload's pods (the
        cascade) and a bare Pod terminate as `with_pod_deleted` says, and a Pod that a
        workload owns is only deleted (its controller replaces it), not recorded."""
        if kind not in DELETABLE_KINDS:
            raise ValueError(f"cannot delete a {kind}: only {', '.join(DELETABLE_KINDS)}")
        pod = None
        if kind == "Pod" and state is not None:
            pod = next((p for p in state.pods
                        if p.namespace == namespace and p.name == name), None)
            if pod is not None and pod.owner is not None:
                return self.with_pod_deleted(pod)  # its controller replaces it
        key = object_key(kind, namespace, name)
        out = replace(self, deleted=self.deleted | {key},
                      replicas={k: v for k, v in self.replicas.items() if k != key},
                      rollouts={k: v for k, v in self.rollouts.items()
                                if not (kind == "Deployment" and k == f"{namespace}/{name}")})
        if pod is not None:
            out = out.with_pod_deleted(pod)
        for pod in _owned(state, kind, namespace, name):
            out = out.with_pod_deleted(pod)
        return out

    def with_terminating(self, keys: Iterable[str]) -> Runtime:
        """Pods (keys "<ns>/<name>") that go gracefully for another reason: e.g. `apply`
        changed a Deployment's template, so its pods are replaced by new ones."""
        return replace(self, terminating=self.terminating | set(keys))

    def without_terminating(self, key: str) -> Runtime:
        """The pod `key` finished terminating: it is gone (a StatefulSet's comes back)."""
        return replace(self, terminating=self.terminating - {key})

    def with_rollout(self, namespace: str, deployment: str, new: int,
                     hold: Iterable[str] = (), remove: Iterable[str] = ()) -> Runtime:
        """A Deployment rolls out a new template: its new ReplicaSet has `new` pods;
        the old pods in `hold` keep running for now, those in `remove` terminate."""
        _count(new, f"Deployment {namespace}/{deployment}: new ReplicaSet size")
        gone = set(remove)
        return replace(self, rollouts={**self.rollouts, f"{namespace}/{deployment}": new},
                       held=(self.held | set(hold)) - gone,
                       terminating=self.terminating | gone)

    def with_held(self, keys: Iterable[str]) -> Runtime:
        """Pods that keep running as they are for now: a StatefulSet's whose template
        changed, until its rolling update (or, OnDelete, their deletion) replaces them."""
        return replace(self, held=self.held | set(keys))

    def without_rollout(self, namespace: str, deployment: str) -> Runtime:
        """The rollout is complete: the Deployment runs its replicas of the template."""
        key = f"{namespace}/{deployment}"
        return replace(self, rollouts={k: v for k, v in self.rollouts.items() if k != key})

    def forget_deleted(self, kinds_names: Iterable[str]) -> Runtime:
        """`apply` names these "Kind/<ns>/<name>" objects again: they exist again."""
        return replace(self, deleted=self.deleted - set(kinds_names))

    # ------------------------------------------------------------ JSON

    def to_json(self) -> dict[str, Any]:
        return {
            "replicas": dict(self.replicas),
            "generations": dict(self.generations),
            "deleted": sorted(self.deleted),
            "terminating": sorted(self.terminating),
            "rollouts": dict(self.rollouts),
            "held": sorted(self.held),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Runtime:
        """The inverse of `to_json`; missing keys are empty. Raises ValueError."""
        replicas = dict(data.get("replicas") or {})
        for key, value in replicas.items():
            _check_object_key(key, WORKLOAD_KINDS, "runtime replicas")
            _count(value, f"runtime replicas[{key!r}]")
        generations = dict(data.get("generations") or {})
        for key, value in generations.items():
            parts = key.split("/")
            if len(parts) != 3 or not all(parts) or not parts[2].isdigit():
                raise ValueError(f"runtime generations: {key!r} is not "
                                 "<namespace>/<deployment>/<slot>")
            _count(value, f"runtime generations[{key!r}]")
        deleted = list(data.get("deleted") or ())
        for key in deleted:
            _check_object_key(key, DELETABLE_KINDS, "runtime deleted")
        pod_lists = {}
        for field_name in ("terminating", "held"):
            keys = list(data.get(field_name) or ())
            for key in keys:
                if not isinstance(key, str) or len(key.split("/")) != 2 or \
                        not all(key.split("/")):
                    raise ValueError(f"runtime {field_name}: {key!r} is not "
                                     "<namespace>/<name>")
            pod_lists[field_name] = frozenset(keys)
        rollouts = dict(data.get("rollouts") or {})
        for key, value in rollouts.items():
            if not isinstance(key, str) or len(key.split("/")) != 2 or not all(key.split("/")):
                raise ValueError(f"runtime rollouts: {key!r} is not <namespace>/<deployment>")
            _count(value, f"runtime rollouts[{key!r}]")
        return cls(replicas=replicas, generations=generations, deleted=frozenset(deleted),
                   terminating=pod_lists["terminating"], rollouts=rollouts,
                   held=pod_lists["held"])


def _owned(state: ClusterState | None, kind: str, namespace: str, name: str
           ) -> tuple[PodState, ...]:
    if state is None or kind not in WORKLOAD_KINDS:
        return ()
    return state.pods_of(kind, namespace, name)
