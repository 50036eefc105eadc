"""object_changes (kubectl apply's lines) and pod_changes (pure)."""

from __future__ import annotations

from dataclasses import replace

from labctl.cluster.compile import compile_state
from labctl.cluster.diff import object_changes, pod_changes
from labctl.cluster.runtime import Runtime
from labctl.errors import Pos
from labctl.model.objects import (
    Endpoint,
    EndpointSlice,
    Namespace,
    ObjectMeta,
    ServicePort,
    Source,
)
from tests.unit.builders import deployment, lab, pod, service, statefulset, topology


def at(line: int, file: str = "lab.yaml") -> Source:
    return Source(pos=Pos(file, line, 1))


def test_created_configured_deleted_with_kubectl_names() -> None:
    old = topology(
        namespaces=(Namespace("gone"),),
        deployments=(deployment("web", 2, {"app": "web"}),),
        services=(service("web", {"app": "web"}), service("old", {"app": "x"})),
        pods=(pod("p"),))
    new = topology(
        namespaces=(Namespace("prod"),),
        deployments=(deployment("web", 3, {"app": "web"}),),
        statefulsets=(statefulset("db", 1, {"app": "db"}, "db"),),
        services=(service("web", {"app": "web"}),),
        endpoint_slices=(EndpointSlice(ObjectMeta("manual-1", labels={
            "kubernetes.io/service-name": "manual"}), endpoints=(Endpoint(("10.0.0.1",)),)),),
        pods=(pod("p"),))
    assert object_changes(old, new) == [
        ("namespace/prod", "created"),
        ("endpointslice.discovery.k8s.io/manual-1", "created"),
        ("deployment.apps/web", "configured"),
        ("statefulset.apps/db", "created"),
        ("namespace/gone", "deleted"),
        ("service/old", "deleted"),
    ]
    assert ("service/web", "unchanged") in object_changes(old, new, unchanged=True)
    assert object_changes(new, new) == []


def test_source_positions_are_not_changes_and_give_the_order() -> None:
    svc_a = replace(service("a", {"app": "a"}), source=at(10))
    svc_b = replace(service("b", {"app": "b"}), source=at(1))
    dep = replace(deployment("web", 1, {"app": "web"}), source=at(5))
    old = topology(services=(svc_a, svc_b), deployments=(dep,))
    moved = topology(services=(replace(svc_a, source=at(1, "other.yaml")),
                               replace(svc_b, source=at(30))),
                     deployments=(replace(dep, source=at(2)),))
    assert object_changes(old, moved) == []
    new = topology(services=(replace(svc_a, ports=(ServicePort(81),)),
                             replace(svc_b, ports=(ServicePort(82),))),
                   deployments=(replace(dep, replicas=2),), files=("lab.yaml",))
    # Document order, as kubectl apply prints.
    assert [n for n, _ in object_changes(old, new)] == [
        "service/b", "deployment.apps/web", "service/a"]


def test_same_name_in_two_namespaces_is_disambiguated() -> None:
    old = topology(services=(service("web", {"a": "b"}), service("web", {"a": "b"}, ns="prod"),
                             service("api", {"a": "b"}, ns="prod")))
    new = topology(services=(service("web", {"a": "c"}), service("web", {"a": "c"}, ns="prod"),
                             service("api", {"a": "c"}, ns="prod")))
    assert object_changes(old, new) == [
        ("service/web -n default", "configured"),
        ("service/api", "configured"),
        ("service/web -n prod", "configured"),
    ]


def test_pod_changes() -> None:
    topo = topology(lab("a", "b"), pods=(pod("x"), pod("y")),
                    deployments=(deployment("web", 2, {"app": "web"}),))
    old = compile_state(topo)
    assert pod_changes(old, old) == ([], [], [])
    new_topo = topology(lab("a", "b"), pods=(pod("x", {"v": "2"}), pod("z")),
                        deployments=(deployment("web", 2, {"app": "web"}),))
    new = compile_state(new_topo, old)
    assert pod_changes(old, new) == (["default/z"], ["default/y"], ["default/x"])


def test_pod_changes_through_a_replacement_and_a_statefulset_recreation() -> None:
    topo = topology(deployments=(deployment("web", 2, {"app": "web"}),),
                    statefulsets=(statefulset("db", 1, {"app": "db"}, "db"),))
    old = compile_state(topo)
    victim = next(p for p in old.pods if p.name.startswith("web-"))
    runtime = Runtime().with_pod_deleted(victim).with_pod_deleted(old.pod("default", "db-0"))
    during = compile_state(topo, old, runtime)
    created, deleted, changed = pod_changes(old, during)
    assert deleted == [] and changed == [] and len(created) == 1  # the replacement
    runtime = runtime.without_terminating(victim.key).without_terminating("default/db-0")
    after = compile_state(topo, during, runtime)
    assert pod_changes(during, after) == (["default/db-0"], ["default/db-0", victim.key], [])


def test_respecified_pods_are_running_ones_whose_spec_really_changes() -> None:
    """What `apply` replaces (a StatefulSet's) or refuses (a bare pod's): a running pod
    whose spec changes; a new image or grace period is allowed on a running pod, a
    label is metadata, and a terminating pod is going anyway."""
    from labctl.cluster.diff import respecified

    solo = pod("solo", {"app": "a"}, node="a")
    old = compile_state(topology(lab("a"), pods=(solo,)))

    def changed(new_pod) -> list[str]:  # noqa: ANN001
        new = compile_state(topology(lab("a"), pods=(new_pod,)), old)
        return [p.key for p in respecified(old, new)]

    c = solo.spec.containers[0]
    assert changed(replace(solo, spec=replace(solo.spec, containers=(
        replace(c, ports=(replace(c.ports[0], container_port=8081),)),)))) == ["default/solo"]
    assert changed(replace(solo, spec=replace(solo.spec, containers=(
        replace(c, image="nginx:2"),), termination_grace_period_seconds=5))) == []
    assert changed(replace(solo, meta=replace(solo.meta, labels={"app": "b"}))) == []
    gone = compile_state(topology(lab("a"), pods=(solo,)), old,
                         Runtime(terminating=frozenset({"default/solo"})))
    assert respecified(gone, old) == []
