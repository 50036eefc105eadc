"""The deployment controller's rollout steps (cluster/rollout.py), checked against what
kube's controller does (pkg/controller/deployment/rolling.go, recreate.go), and the
Runtime and compile support for a rollout's old pods."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from labctl.cluster import rollout
from labctl.cluster.compile import compile_state
from labctl.cluster.runtime import Runtime
from labctl.cluster.workloads import expand
from labctl.errors import UserError
from labctl.model.load import load_topology
from labctl.model.objects import DeploymentStrategy
from tests.unit.test_cluster_runtime import web_pods, web_topology

DEFAULT = DeploymentStrategy()


def old(n: int, available: bool = True, first: int = 0) -> list[rollout.OldPod]:
    return [rollout.OldPod(f"ns/old-{i}", available, i) for i in range(first, first + n)]


@pytest.mark.parametrize(("surge", "unavailable", "replicas", "want"), [
    ("25%", "25%", 3, (1, 0)),  # kube's defaults: surge rounds up, unavailable down
    ("25%", "25%", 4, (1, 1)),
    ("25%", "25%", 10, (3, 2)),
    (0, 0, 3, (0, 1)),  # both zero would never move: maxUnavailable becomes 1
    ("0%", "50%", 5, (0, 2)),
    (2, 1, 3, (2, 1)),
])
def test_fenceposts(surge: int | str, unavailable: int | str, replicas: int,
                    want: tuple[int, int]) -> None:
    strategy = DeploymentStrategy("RollingUpdate", surge, unavailable)
    assert rollout.fenceposts(strategy, replicas) == want


def run_rollout(strategy: DeploymentStrategy, replicas: int) -> list[tuple[int, int]]:
    """Drive a rollout to the end as the agent does: steps while they change something
    (each one sync of kube's controller), then every new pod becomes available. The
    (new, old) pod counts each time it stands still, waiting for availability."""
    surge, unavailable = rollout.fenceposts(strategy, replicas)
    olds = old(replicas)
    new = available = 0
    seen = []
    for _ in range(4 * replicas + 4):
        for _ in range(10):
            s = rollout.step(strategy, replicas, new, available, olds)
            olds = [p for p in olds if p.key not in s.remove]
            changed = s.new != new or s.remove
            new = s.new
            assert new + len(olds) <= replicas + surge
            assert min(available, new) + len(olds) >= replicas - unavailable
            if s.done or not changed:
                break
        seen.append((new, len(olds)))
        if s.done:
            return seen
        available = new  # the new pods become ready
    raise AssertionError(f"no end: {seen}")


def test_default_rolling_update_of_three_replaces_one_at_a_time() -> None:
    assert run_rollout(DEFAULT, 3) == [(1, 3), (2, 2), (3, 1), (3, 0)]


def test_max_unavailable_without_surge_deletes_before_it_creates() -> None:
    strategy = DeploymentStrategy("RollingUpdate", 0, 1)
    assert run_rollout(strategy, 3) == [(1, 2), (2, 1), (3, 0)]


def test_a_new_pod_not_yet_available_holds_the_old_ones() -> None:
    s = rollout.step(DEFAULT, 3, 1, 0, old(3))
    assert s == rollout.Step(1, ())  # the surge pod exists but is not ready
    s = rollout.step(DEFAULT, 3, 1, 1, old(3))
    assert s.new == 1 and s.remove == ("ns/old-2",)  # the highest slot goes first


def test_unavailable_old_pods_go_first() -> None:
    pods = [*old(2), rollout.OldPod("ns/broken", False, 0)]
    assert rollout.step(DEFAULT, 3, 1, 0, pods).remove == ()  # no room yet: 3 must stay
    s = rollout.step(DEFAULT, 3, 1, 1, pods)  # the new pod is ready: one old pod can go
    assert s.remove == ("ns/broken",)  # the one that serves nothing, not the highest slot


def test_recreate_waits_for_every_old_pod_to_be_gone() -> None:
    recreate = DeploymentStrategy("Recreate")
    assert rollout.step(recreate, 3, 0, 0, old(3)).remove == ("ns/old-0", "ns/old-1",
                                                              "ns/old-2")
    assert rollout.step(recreate, 3, 0, 0, [], old_terminating=2) == rollout.Step(0)
    assert rollout.step(recreate, 3, 0, 0, []) == rollout.Step(3, done=True)


def test_scaled_down_during_a_rollout_the_new_set_shrinks_too() -> None:
    s = rollout.step(DEFAULT, 2, 3, 3, old(1))
    assert s.new == 2 and s.remove == ("ns/old-0",) and s.done


def test_runtime_keeps_a_rollouts_old_pods_and_compile_carries_them() -> None:
    topo = web_topology()
    before = compile_state(topo)
    olds = [p.key for p in web_pods(before)]
    runtime = Runtime().with_rollout("default", "web", 1, hold=olds)
    # the manifests now ask for a new template: one new pod beside the old ones
    dep = topo.deployments[0]
    template = replace(dep.template, labels={**dep.template.labels, "v": "2"})
    changed = replace(topo, deployments=(replace(dep, template=template),))
    after = compile_state(changed, before, runtime)
    kept = {p.key: p for p in after.pods if p.key in olds}
    assert set(kept) == set(olds)
    assert all(not p.terminating and p.ip == before.pod(*k.split("/")).ip
               for k, p in kept.items())
    assert len([p for p in after.pods if p.key not in olds]) == 1
    assert [slot for _p, slot in expand(changed, runtime) if slot >= 0] == [0]
    # deleting one of them: it terminates, nothing replaces it, the new pods keep names
    pod = kept[olds[0]]
    deleted = runtime.with_pod_deleted(pod)
    assert olds[0] in deleted.terminating and olds[0] not in deleted.held
    assert deleted.generations == runtime.generations
    # the Deployment deleted: the rollout ends with it
    assert Runtime().with_rollout("default", "web", 1).with_deleted(
        "Deployment", "default", "web").rollouts == {}
    with pytest.raises(ValueError, match="runtime rollouts"):
        Runtime.from_json({"rollouts": {"web": 1}})


LAB = "apiVersion: labctl/v1\nkind: Lab\nmetadata: {name: r}\nspec: {nodes: [{name: n1}]}\n"


def workload(kind: str, spec: str) -> str:
    return (f"---\napiVersion: apps/v1\nkind: {kind}\nmetadata: {{name: w}}\nspec:\n{spec}"
            "  selector: {matchLabels: {app: w}}\n"
            "  template:\n    metadata: {labels: {app: w}}\n"
            "    spec: {containers: [{name: c}]}\n")


@pytest.mark.parametrize(("kind", "spec", "field", "message"), [
    ("Deployment", "  strategy: {type: Recreate, rollingUpdate: {maxSurge: 1}}\n",
     "spec.strategy.rollingUpdate", "may not be given when type is Recreate"),
    ("Deployment", "  strategy: {rollingUpdate: {maxSurge: 0, maxUnavailable: '0%'}}\n",
     "spec.strategy.rollingUpdate.maxUnavailable", "may not be 0 when maxSurge is 0"),
    ("Deployment", "  strategy: {rollingUpdate: {maxSurge: 'lots'}}\n",
     "spec.strategy.rollingUpdate.maxSurge", "expected a number of pods or a percent"),
    ("Deployment", "  strategy: {type: Rolling}\n",
     "spec.strategy.type", "expected one of RollingUpdate, Recreate"),
    ("StatefulSet", "  updateStrategy: {type: OnDelete, rollingUpdate: {partition: 1}}\n",
     "spec.updateStrategy.rollingUpdate", "may not be given when type is OnDelete"),
    ("StatefulSet", "  updateStrategy: {rollingUpdate: {partition: -1}}\n",
     "spec.updateStrategy.rollingUpdate.partition", "expected 0 or more"),
])
def test_bad_strategies_are_user_errors(tmp_path: Path, kind: str, spec: str, field: str,
                                        message: str) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(LAB + workload(kind, spec))
    with pytest.raises(UserError) as err:
        load_topology([str(path)])
    found = [d for d in err.value.diagnostics if d.field.endswith(field)]
    assert found and message in found[0].message, err.value.format()
    assert found[0].pos is not None and found[0].pos.file.endswith("lab.yaml")


def test_strategies_are_read(tmp_path: Path) -> None:
    text = LAB + workload("Deployment", "  minReadySeconds: 5\n  strategy: {rollingUpdate: "
                                        "{maxSurge: 2, maxUnavailable: '50%'}}\n")
    text += workload("StatefulSet", "  updateStrategy: {rollingUpdate: {partition: 2}}\n"
                     ).replace("name: w}", "name: s}")
    path = tmp_path / "lab.yaml"
    path.write_text(text)
    topo, _ = load_topology([str(path)])
    dep, sts = topo.deployments[0], topo.statefulsets[0]
    assert dep.strategy == DeploymentStrategy("RollingUpdate", 2, "50%")
    assert dep.min_ready_seconds == 5
    assert (sts.update_strategy, sts.partition) == ("RollingUpdate", 2)


def test_get_counts_a_rollouts_replica_sets_from_the_pods() -> None:
    """`labctl get deploy` / `get rs` mid-rollout: the old ReplicaSet's pods, the new
    one's, ready and available (minReadySeconds) counted from the agent's pod view."""
    from labctl.cluster import workload_status as ws

    topo = web_topology()
    before = compile_state(topo)
    olds = [p.key for p in web_pods(before)]
    dep = replace(topo.deployments[0], min_ready_seconds=10)
    template = replace(dep.template, labels={**dep.template.labels, "v": "2"})
    changed = replace(topo, deployments=(replace(dep, template=template),))
    runtime = Runtime().with_rollout("default", "web", 1, hold=olds)
    during = compile_state(changed, before, runtime)
    new_key = next(p.key for p in during.pods if p.key not in olds)
    infos = {k: {"ready": True, "readySince": 100.0} for k in olds}
    infos[new_key] = {"ready": True, "readySince": 105.0}  # ready, not yet for 10 s
    st = ws.deployment_status(during, changed.deployments[0], runtime, infos, now=110.0)
    assert (st.desired, st.current, st.updated, st.ready, st.available) == (3, 4, 1, 4, 3)
    new_rs, old_rs = st.replica_sets
    assert new_rs.current_template and (new_rs.desired, new_rs.current) == (1, 1)
    assert not old_rs.current_template and (old_rs.desired, old_rs.current, old_rs.ready) \
        == (3, 3, 3)
    obj = ws.deployment_object(st)
    assert obj["status"] == {"replicas": 4, "updatedReplicas": 1, "readyReplicas": 4,
                             "availableReplicas": 3, "unavailableReplicas": 0}
    rs = ws.replicaset_object(st, old_rs)
    assert rs["metadata"]["labels"]["pod-template-hash"] == old_rs.hash
    assert rs["metadata"]["ownerReferences"][0]["name"] == "web"
