"""What changed between two versions of a lab (pure): objects, as `kubectl apply` names
them, and pods, as the agent acts on them.

`object_changes` names objects the way kubectl prints them: `<resource>/<name>` with the
API group for grouped kinds (`deployment.apps/web`, `endpointslice.discovery.k8s.io/x`)
and no namespace. When objects of one kind share a name across namespaces, each of them
gets ` -n <namespace>` after its name so the lines stay unambiguous
(`service/web -n prod`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from labctl.cluster.state import ClusterState, PodState
from labctl.model.objects import Topology

# (Topology field, kubectl resource name, namespaced), in the order used for objects
# without a position (e.g. added by code) and for deleted ones.
KINDS = (
    ("namespaces", "namespace", False),
    ("services", "service", True),
    ("endpoint_slices", "endpointslice.discovery.k8s.io", True),
    ("pods", "pod", True),
    ("deployments", "deployment.apps", True),
    ("statefulsets", "statefulset.apps", True),
)


def _objects(topology: Topology, attr: str, namespaced: bool) -> dict[tuple[str, str], Any]:
    out: dict[tuple[str, str], Any] = {}
    for obj in getattr(topology, attr):
        if namespaced:
            out[(obj.meta.namespace, obj.meta.name)] = obj
        else:
            out[("", obj.name)] = obj
    return out


def object_changes(old: Topology, new: Topology, unchanged: bool = False
                   ) -> list[tuple[str, str]]:
    """(name, verb) per object that `new` creates, configures or deletes relative to
    `old` ("unchanged" too when asked), in the order the objects appear in `new`'s files,
    deleted ones last. Where an object was written (its Source) is not a change."""
    files = {f: i for i, f in enumerate(new.files)}
    rows: list[tuple[tuple[Any, ...], str, str]] = []
    for rank, (attr, resource, namespaced) in enumerate(KINDS):
        before = _objects(old, attr, namespaced)
        after = _objects(new, attr, namespaced)
        clash = _shared_names([*before, *after]) if namespaced else set()

        def label(ns: str, name: str, resource: str = resource, clash: set[str] = clash
                  ) -> str:
            return f"{resource}/{name}" + (f" -n {ns}" if name in clash else "")

        for key, obj in after.items():
            if key not in before:
                verb = "created"
            elif before[key] != obj:
                verb = "configured"
            elif unchanged:
                verb = "unchanged"
            else:
                continue
            rows.append((_order(obj, files, rank, key), label(*key), verb))
        for key in before.keys() - after.keys():
            rows.append(((2, rank, *key), label(*key), "deleted"))
    return [(name, verb) for _order_key, name, verb in sorted(rows)]


def _shared_names(keys: Iterable[tuple[str, str]]) -> set[str]:
    namespaces: dict[str, set[str]] = {}
    for ns, name in keys:
        namespaces.setdefault(name, set()).add(ns)
    return {name for name, nss in namespaces.items() if len(nss) > 1}


def _order(obj: Any, files: Mapping[str, int], rank: int, key: tuple[str, str]
           ) -> tuple[Any, ...]:
    pos = obj.source.pos
    if pos is None:
        return (1, rank, *key)
    return (0, files.get(pos.file, len(files)), pos.file, pos.line, pos.col, rank, *key)


def pod_changes(old: ClusterState, new: ClusterState
                ) -> tuple[list[str], list[str], list[str]]:
    """(created, deleted, changed) pod keys, each sorted.

    changed: the same pod in both with a different node, IP, spec or labels. A pod that
    was terminating in `old` and runs again, not terminating, in `new` (a StatefulSet's
    pod recreated under its name) is a new pod: its key is both deleted and created
    (handle deletions first). A pod that only started terminating is in none of them
    (see `PodState.terminating`)."""
    before = {p.key: p for p in old.pods}
    after = {p.key: p for p in new.pods}
    reborn = {k for k in before.keys() & after.keys()
              if before[k].terminating and not after[k].terminating}
    created = sorted((after.keys() - before.keys()) | reborn)
    deleted = sorted((before.keys() - after.keys()) | reborn)
    changed = sorted(
        k for k in (before.keys() & after.keys()) - reborn
        if (before[k].node, before[k].ip, before[k].spec, dict(before[k].labels))
        != (after[k].node, after[k].ip, after[k].spec, dict(after[k].labels)))
    return created, deleted, changed


def respecified(old: ClusterState, new: ClusterState) -> list[PodState]:
    """Running pods (in both, terminating in neither) whose spec `new` changes. A change
    of container images or of terminationGracePeriodSeconds does not count: the API
    server allows those on a running pod, and labctl runs no images."""
    def essence(pod: PodState) -> Any:
        spec = pod.spec
        return replace(spec, termination_grace_period_seconds=0, containers=tuple(
            replace(c, image="") for c in spec.containers))

    before = {p.key: p for p in old.pods if not p.terminating}
    return [p for p in new.pods if not p.terminating and p.key in before
            and essence(before[p.key]) != essence(p)]
