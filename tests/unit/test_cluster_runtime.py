"""Runtime (scale, delete, terminating pods) and how compile_state applies it (pure)."""

from __future__ import annotations

import json

import pytest

from labctl.cluster.compile import compile_state, initial_readiness, with_readiness
from labctl.cluster.runtime import Runtime
from labctl.cluster.workloads import SAFE_ALPHABET, all_pods, expand
from labctl.model.objects import Container, Probe
from tests.unit.builders import (
    container,
    deployment,
    lab,
    pod,
    service,
    statefulset,
    topology,
)


def web_topology(replicas: int = 3, **kw: object):  # noqa: ANN201 - a Topology
    return topology(lab("a", "b"), deployments=(deployment("web", replicas, {"app": "web"}),),
                    services=(service("web", {"app": "web"}),), **kw)


def web_pods(state):  # noqa: ANN001, ANN201
    return [p for p in state.pods if p.owner and p.owner.name == "web"]


def conditions(state, name: str):  # noqa: ANN001, ANN201
    for s in state.endpoint_slices:
        for ep in s.endpoints:
            if ep.target_ref.name == name:
                c = ep.conditions
                return c.ready, c.serving, c.terminating
    return None


# ---------------------------------------------------------------- names and slots


def test_no_runtime_and_an_empty_runtime_give_the_same_state() -> None:
    topo = web_topology(statefulsets=(statefulset("db", 2, {"app": "db"}, "db"),),
                        pods=(pod("bare"),))
    assert compile_state(topo) == compile_state(topo, runtime=Runtime())
    before = compile_state(topo)
    assert compile_state(topo, before, Runtime()) == before


def test_pods_carry_their_slot() -> None:
    state = compile_state(web_topology(statefulsets=(statefulset("db", 2, {"app": "db"}, "db"),),
                                       pods=(pod("bare"),)))
    slots = {p.name: p.slot for p in state.pods if not p.name.startswith("web-")}
    assert slots == {"bare": -1, "db-0": 0, "db-1": 1}
    assert sorted(p.slot for p in web_pods(state)) == [0, 1, 2]
    assert [p for p, _ in expand(web_topology())] == all_pods(web_topology())


def test_a_generation_renames_only_its_slot_and_gives_a_new_address() -> None:
    topo = web_topology()
    before = compile_state(topo)
    by_slot = {p.slot: p for p in web_pods(before)}
    # The old pod terminates (holding its address) while the new one starts.
    after = compile_state(topo, before, Runtime(generations={"default/web/1": 1},
                                                terminating=frozenset({by_slot[1].key})))
    now = {p.slot: p for p in web_pods(after) if not p.terminating}
    assert now[0] == by_slot[0] and now[2] == by_slot[2]
    assert now[1].name != by_slot[1].name and now[1].ip != by_slot[1].ip
    prefix, hash_, suffix = now[1].name.rsplit("-", 2)
    assert prefix == "web" and hash_ == by_slot[1].name.rsplit("-", 2)[1]
    assert len(suffix) == 5 and set(suffix) <= set(SAFE_ALPHABET)
    again = compile_state(topo, before, Runtime(generations={"default/web/1": 2}))
    assert {p.slot: p for p in web_pods(again)}[1].name not in (now[1].name, by_slot[1].name)


def test_generation_zero_is_the_same_as_none() -> None:
    assert Runtime(generations={"default/web/0": 0}) == Runtime()
    topo = web_topology()
    assert compile_state(topo, runtime=Runtime(generations={"default/web/0": 0})) == \
        compile_state(topo)


# ---------------------------------------------------------------- scale


def test_scale_up_adds_slots_and_keeps_the_running_pods() -> None:
    topo = web_topology(2)
    before = compile_state(topo)
    after = compile_state(topo, before, Runtime().with_scaled("Deployment", "default", "web", 4))
    assert sorted(p.slot for p in web_pods(after)) == [0, 1, 2, 3]
    for p in web_pods(before):
        assert after.pod(p.namespace, p.name) == p
    # The same names a file with 4 replicas gives.
    assert {p.name for p in web_pods(after)} == {p.name for p in web_pods(
        compile_state(web_topology(4)))}


def test_scale_down_removes_the_highest_slots() -> None:
    topo = web_topology(4)
    before = compile_state(topo)
    runtime = Runtime().with_scaled("Deployment", "default", "web", 2)
    assert runtime.generations == {} and runtime.terminating == frozenset()
    after = compile_state(topo, before, runtime)
    assert sorted(p.slot for p in web_pods(after)) == [0, 1]
    kept = {p.key for p in web_pods(before) if p.slot < 2}
    assert {p.key for p in web_pods(after)} == kept


def test_graceful_scale_down_terminates_the_removed_pods() -> None:
    topo = web_topology(3)
    before = compile_state(topo)
    runtime = Runtime().with_scaled("Deployment", "default", "web", 1, state=before)
    gone = {p.key for p in web_pods(before) if p.slot >= 1}
    assert runtime.terminating == gone
    after = compile_state(topo, before, runtime)
    assert {p.key for p in web_pods(after) if p.terminating} == gone
    # Scaling up again while they terminate starts new pods with new names at once.
    up = compile_state(topo, after, runtime.with_scaled("Deployment", "default", "web", 3))
    live = [p for p in web_pods(up) if not p.terminating]
    assert len(live) == 3 and not {p.key for p in live} & gone
    assert len({p.ip for p in up.pods}) == len(up.pods)


def test_statefulset_scale() -> None:
    topo = topology(statefulsets=(statefulset("db", 2, {"app": "db"}, "db"),))
    state = compile_state(topo, runtime=Runtime().with_scaled("StatefulSet", "default", "db", 3))
    assert [p.name for p in state.pods] == ["db-0", "db-1", "db-2"]
    state = compile_state(topo, state, Runtime().with_scaled("StatefulSet", "default", "db", 1))
    assert [p.name for p in state.pods] == ["db-0"]


def test_scale_rejects_other_kinds_and_negative_counts() -> None:
    with pytest.raises(ValueError, match="cannot scale a Pod"):
        Runtime().with_scaled("Pod", "default", "p", 1)
    with pytest.raises(ValueError, match="≥ 0"):
        Runtime().with_scaled("Deployment", "default", "web", -1)


# ---------------------------------------------------------------- pod deletion


def test_deleting_a_deployment_pod_replaces_it_and_the_old_one_terminates() -> None:
    topo = web_topology()
    before = compile_state(topo)
    victim = next(p for p in web_pods(before) if p.slot == 1)
    runtime = Runtime().with_pod_deleted(victim)
    assert runtime.generations == {"default/web/1": 1}
    assert runtime.terminating == {victim.key}
    assert runtime.deleted == frozenset()
    after = compile_state(topo, before, runtime)
    old = after.pod(victim.namespace, victim.name)
    assert old.terminating and (old.node, old.ip, old.netns) == (victim.node, victim.ip,
                                                                 victim.netns)
    live = [p for p in web_pods(after) if not p.terminating]
    assert len(live) == 3
    replacement = next(p for p in live if p.slot == 1)
    assert replacement.ip != victim.ip  # the terminating pod's address stays taken
    assert len({p.ip for p in after.pods}) == len(after.pods)
    # It stays in the Service's slice: not ready, serving, terminating.
    assert conditions(after, victim.name) == (False, True, True)
    assert conditions(after, replacement.name) == (True, True, False)
    # Deleting it again while it terminates changes nothing.
    assert runtime.with_pod_deleted(old) == runtime
    assert runtime.with_pod_deleted(victim) == runtime
    # Once gone, it is gone, and nothing else moves.
    done = compile_state(topo, after, runtime.without_terminating(victim.key))
    assert victim.key not in {p.key for p in done.pods}
    assert [p for p in done.pods] == [p for p in after.pods if p.key != victim.key]


def test_a_terminating_pod_is_not_moved_and_its_address_is_not_reused() -> None:
    topo = web_topology(2, pods=(pod("x", node="a"),))
    before = compile_state(topo)
    victim = before.pod("default", "x")
    runtime = Runtime().with_pod_deleted(victim)
    # More pods on the same node while x terminates: none gets x's address.
    bigger = web_topology(2, pods=(pod("x", node="a"), *(pod(f"n{i}", node="a")
                                                         for i in range(5))))
    after = compile_state(bigger, before, runtime)
    x = after.pod("default", "x")
    assert x.terminating and x.node == "a" and x.ip == victim.ip
    assert [p.name for p in after.pods if p.ip == victim.ip] == ["x"]


def test_deleting_a_statefulset_pod_waits_for_it_to_go_then_recreates_the_name() -> None:
    topo = topology(statefulsets=(statefulset("db", 2, {"app": "db"}, "db"),),
                    services=(service("db", {"app": "db"}, cluster_ip="None"),))
    before = compile_state(topo)
    victim = before.pod("default", "db-1")
    runtime = Runtime().with_pod_deleted(victim)
    assert runtime.terminating == {"default/db-1"} and runtime.generations == {}
    during = compile_state(topo, before, runtime)
    assert [(p.name, p.terminating) for p in during.pods] == [("db-0", False), ("db-1", True)]
    assert during.pod("default", "db-1").ip == victim.ip
    # Recompiling while it terminates keeps it as it is.
    assert compile_state(topo, during, runtime) == during
    back = compile_state(topo, during, runtime.without_terminating("default/db-1"))
    db1 = back.pod("default", "db-1")
    assert not db1.terminating and db1.slot == 1
    assert conditions(back, "db-1") == (True, True, False)


def test_deleting_a_bare_pod_keeps_it_gone() -> None:
    topo = topology(pods=(pod("a"), pod("b")))
    before = compile_state(topo)
    runtime = Runtime().with_pod_deleted(before.pod("default", "a"))
    assert runtime.deleted == {"Pod/default/a"} and runtime.terminating == {"default/a"}
    during = compile_state(topo, before, runtime)
    assert [(p.name, p.terminating) for p in during.pods] == [("a", True), ("b", False)]
    gone = compile_state(topo, during, runtime.without_terminating("default/a"))
    assert [p.name for p in gone.pods] == ["b"]
    # `apply` naming it again brings it back.
    back = compile_state(topo, gone, runtime.without_terminating("default/a")
                         .forget_deleted(["Pod/default/a"]))
    assert [p.name for p in back.pods] == ["a", "b"]


def test_terminating_without_a_previous_state_marks_the_fresh_pod() -> None:
    topo = topology(statefulsets=(statefulset("db", 2, {"app": "db"}, "db"),))
    state = compile_state(topo, runtime=Runtime(terminating=frozenset({"default/db-0"})))
    assert [(p.name, p.terminating) for p in state.pods] == [("db-0", True), ("db-1", False)]


# ---------------------------------------------------------------- delete objects


def test_deleted_objects_are_filtered() -> None:
    topo = web_topology(pods=(pod("bare", {"app": "web"}),),
                        statefulsets=(statefulset("db", 1, {"app": "db"}, "db"),))
    runtime = Runtime(deleted=frozenset({"Deployment/default/web", "Service/default/web",
                                         "StatefulSet/default/db"}))
    state = compile_state(topo, runtime=runtime)
    assert [p.name for p in state.pods] == ["bare"]
    assert state.services == () and state.endpoint_slices == ()
    visible = runtime.visible(topo)
    assert visible.deployments == () and visible.statefulsets == () and visible.services == ()
    assert visible.pods == topo.pods
    assert Runtime().visible(topo) is topo


def test_deleting_a_workload_cascades_gracefully() -> None:
    topo = web_topology(2)
    before = compile_state(topo)
    runtime = (Runtime().with_scaled("Deployment", "default", "web", 3)
               .with_deleted("Deployment", "default", "web", state=before))
    assert runtime.deleted == {"Deployment/default/web"}
    assert runtime.replicas == {}  # the scale goes with the object
    assert runtime.terminating == {p.key for p in web_pods(before)}
    during = compile_state(topo, before, runtime)
    assert all(p.terminating for p in web_pods(during)) and len(web_pods(during)) == 2
    # Applied again while they terminate: new pods, new names.
    again = compile_state(topo, during, runtime.forget_deleted(["Deployment/default/web"]))
    live = [p for p in web_pods(again) if not p.terminating]
    assert len(live) == 2 and not {p.key for p in live} & runtime.terminating


def test_deleting_a_workloads_pod_by_kind_and_name_only_replaces_it() -> None:
    before = compile_state(web_topology())
    victim = web_pods(before)[0]
    runtime = Runtime().with_deleted("Pod", "default", victim.name, state=before)
    assert runtime == Runtime().with_pod_deleted(victim)
    assert Runtime().with_deleted("Pod", "default", "bare").deleted == {"Pod/default/bare"}
    with pytest.raises(ValueError, match="cannot delete a Node"):
        Runtime().with_deleted("Node", "", "n")


def test_with_terminating_marks_pods() -> None:
    runtime = Runtime().with_terminating(["default/a", "default/b"])
    assert runtime.terminating == {"default/a", "default/b"}
    assert runtime.without_terminating("default/a").terminating == {"default/b"}


# ---------------------------------------------------------------- JSON


def test_json_round_trip_is_stable_and_sorted() -> None:
    before = compile_state(web_topology(statefulsets=(statefulset("db", 2, {"app": "db"},
                                                                  "db"),)))
    runtime = (Runtime()
               .with_scaled("StatefulSet", "default", "db", 3)
               .with_scaled("Deployment", "default", "web", 5)
               .with_pod_deleted(web_pods(before)[0])
               .with_pod_deleted(before.pod("default", "db-0"))
               .with_deleted("Service", "default", "web")
               .with_rollout("default", "web", 2, hold=["default/web-old-1"],
                             remove=["default/web-old-2"]))
    data = runtime.to_json()
    assert list(data) == ["replicas", "generations", "deleted", "terminating", "rollouts",
                          "held"]
    assert data["rollouts"] == {"default/web": 2} and data["held"] == ["default/web-old-1"]
    assert "default/web-old-2" in data["terminating"]
    assert list(data["replicas"]) == ["Deployment/default/web", "StatefulSet/default/db"]
    assert data["deleted"] == ["Service/default/web"]
    assert data["terminating"] == sorted(data["terminating"])
    text = json.dumps(data)
    again = Runtime.from_json(json.loads(text))
    assert again == runtime and json.dumps(again.to_json()) == text
    assert Runtime.from_json({}) == Runtime()
    assert Runtime().to_json() == {"replicas": {}, "generations": {}, "deleted": [],
                                   "terminating": [], "rollouts": {}, "held": []}


@pytest.mark.parametrize("data, message", [
    ({"replicas": {"Pod/default/x": 1}}, "runtime replicas"),
    ({"replicas": {"Deployment/default/web": -1}}, "≥ 0"),
    ({"replicas": {"Deployment/default/web": True}}, "≥ 0"),
    ({"generations": {"default/web": 1}}, "runtime generations"),
    ({"generations": {"default/web/x": 1}}, "runtime generations"),
    ({"deleted": ["Node/default/x"]}, "runtime deleted"),
    ({"terminating": ["x"]}, "runtime terminating"),
])
def test_malformed_json_is_refused(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Runtime.from_json(data)


# ---------------------------------------------------------------- readiness


def probe_pod(name: str, **probes: Probe) -> object:
    c = Container(name="app", ports=container("app", 8080).ports, **probes)
    return pod(name, {"app": "web"}, containers=(c,))


def test_initial_readiness_follows_readiness_and_startup_probes() -> None:
    http = Probe("httpGet", port=8080)
    two = (container("a", 8080), Container(name="b", readiness_probe=http))
    topo = topology(pods=(probe_pod("plain"), probe_pod("ready", readiness_probe=http),
                          probe_pod("startup", startup_probe=http),
                          probe_pod("live", liveness_probe=http),
                          pod("two", containers=two)))
    ready = initial_readiness(compile_state(topo))
    assert ready == {"default/plain": True, "default/ready": False, "default/startup": False,
                     "default/live": True, "default/two": False}


def test_with_readiness_keeps_terminating_conditions() -> None:
    topo = web_topology()
    before = compile_state(topo)
    victim = web_pods(before)[0]
    after = compile_state(topo, before, Runtime().with_pod_deleted(victim))
    other = next(p for p in web_pods(after) if not p.terminating)
    got = with_readiness(after, {victim.key: False, other.key: False})
    assert conditions(got, victim.name) == (False, False, True)
    assert conditions(got, other.name) == (False, False, False)
    assert with_readiness(after, {}) == after


def test_a_name_still_held_by_a_terminating_pod_is_not_given_to_a_deployments_new_pod(
        ) -> None:
    """A template changed and changed back: the pods the old template names come back
    while the ones of that name still terminate. A ReplicaSet names new pods afresh, so
    those slots take their next generation; the others keep their names."""
    from labctl.cluster.workloads import free_deployment_names

    topo = web_topology()
    first = compile_state(topo)
    names = {p.slot: p.name for p in web_pods(first)}
    holding = Runtime(terminating=frozenset({f"default/{names[0]}", f"default/{names[2]}"}))
    freed = free_deployment_names(topo, holding)
    assert freed.generation("default", "web", 0) == 1
    assert freed.generation("default", "web", 2) == 1
    assert freed.generation("default", "web", 1) == 0
    now = {slot: p.meta.name for p, slot in expand(freed.visible(topo), freed) if p.owner}
    assert now[1] == names[1] and now[0] != names[0] and now[2] != names[2]
    assert free_deployment_names(topo, Runtime()) == Runtime()  # nothing held: unchanged
