"""Changes to a running lab's network (labctl.net.apply.apply_changes), on real namespaces.

The lab is built with `apply_plan` from a compiled state, then changed to the plan of
the next state (pods added and removed, as in a living cluster), and checked with `ip`
and real pings. A change the kernel refuses halfway must leave the lab exactly as it was.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from labctl.cluster.compile import compile_files
from labctl.cluster.state import ClusterState
from labctl.net import inventory, netns
from labctl.net.apply import ApplyError, apply_changes, apply_plan
from labctl.plan.model import Namespace, Plan, Route
from labctl.plan.render import render
from labctl.testing.runner import netns_exec
from tests.integration import manifests

LAB = "it-netchg"


def pinned_pod(name: str, node: str) -> str:
    return (f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\n"
            f"spec:\n  nodeName: {node}\n  containers: [{{name: c}}]\n")


def compiled(tmp: Path, pods: dict[str, str], previous: ClusterState | None = None
             ) -> ClusterState:
    """The lab's state with `pods` (name → node), compiled from the previous state as a
    running lab recompiles (pods keep their node and address)."""
    from labctl.cluster.compile import compile_state
    from labctl.model.load import load_topology

    path = tmp / f"{LAB}-{len(list(tmp.iterdir()))}.yaml"
    path.write_text(manifests.join(manifests.lab(LAB, nodes=2),
                                   *(pinned_pod(p, n) for p, n in pods.items())))
    if previous is None:
        return compile_files([str(path)])[0]
    topology, _ = load_topology([str(path)])
    return compile_state(topology, previous=previous)


@pytest.fixture
def cleanup() -> Iterator[None]:
    yield
    inventory.delete_namespaces(inventory.lab_namespaces().get(LAB, []))


def ip_json(ns: str, *args: str) -> list[dict]:
    proc = netns_exec(ns, ["ip", "-j", "-d", *args])
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout or "[]")


def snapshot(plan: Plan) -> dict[str, object]:
    """What matters of every namespace of a plan: links (name, master, up, hairpin,
    mark), addresses and routes; not ifindexes or MACs (a restored link gets new ones)."""
    out: dict[str, object] = {}
    for ns in plan.namespaces:
        links = sorted(
            (ln["ifname"], ln.get("master", ""), "UP" in ln["flags"], ln.get("ifalias", ""),
             ln.get("linkinfo", {}).get("info_slave_data", {}).get("hairpin", False))
            for ln in ip_json(ns.name, "link", "show"))
        addrs = sorted((a["ifname"], i["local"], i["prefixlen"])
                       for a in ip_json(ns.name, "addr", "show")
                       for i in a["addr_info"] if i["family"] == "inet")
        routes = sorted((r["dst"], r.get("gateway", ""), r.get("dev", ""))
                        for r in ip_json(ns.name, "route", "show"))
        out[ns.name] = (links, addrs, routes)
    return out


def pings(ns: str, ip: str) -> bool:
    # a link just made may take a moment to get its carrier
    return any(netns_exec(ns, ["ping", "-c1", "-W1", ip]).returncode == 0 for _ in range(5))


def test_pods_added_and_removed_in_a_running_lab(tmp_path: Path, cleanup: None) -> None:
    old = compiled(tmp_path, {"a": "node1", "b": "node2", "gone": "node1"})
    new = compiled(tmp_path, {"a": "node1", "b": "node2", "c": "node1", "d": "node2"}, old)
    old_plan, new_plan = render(old), render(new)
    gone, c, d = old.pod("default", "gone"), new.pod("default", "c"), new.pod("default", "d")
    assert c.ip == gone.ip and c.host_veth == gone.host_veth  # c reuses gone's address
    a, b = new.pod("default", "a"), new.pod("default", "b")
    node1, node2 = new.node("node1"), new.node("node2")
    apply_plan(old_plan)
    assert pings(gone.netns, b.ip)

    changed = apply_changes(old_plan, new_plan)

    assert {ns.name for ns in changed.create_namespaces} == {c.netns, d.netns}
    assert [ns.name for ns in changed.delete_namespaces] == [gone.netns]
    assert not netns.exists(gone.netns)
    for pod, node in ((c, node1), (d, node2)):
        assert netns.exists(pod.netns)
        [eth0] = ip_json(pod.netns, "addr", "show", "dev", "eth0")
        assert [(i["local"], i["prefixlen"]) for i in eth0["addr_info"]
                if i["family"] == "inet"] == [(pod.ip, 24)]
        assert eth0["ifalias"] == f"labctl:{LAB}" and "UP" in eth0["flags"]
        routes = ip_json(pod.netns, "route", "show", "default")
        assert [(r["dst"], r["gateway"]) for r in routes] == [("default", node.pod_gateway)]
        [port] = ip_json(node.netns, "link", "show", "dev", pod.host_veth)
        assert port["master"] == "cni0"
        assert port["linkinfo"]["info_slave_data"]["hairpin"] is True
    # the removed pod's veth went by its node end: nothing of it is left on node1 besides
    # c's new port under the same name
    node1_links = [ln["ifname"] for ln in ip_json(node1.netns, "link", "show")]
    assert node1_links.count(gone.host_veth) == 1
    # pods reach each other across nodes, new and old alike
    assert pings(c.netns, b.ip) and pings(d.netns, a.ip) and pings(a.netns, d.ip)
    assert pings(c.netns, d.ip) and pings(a.netns, b.ip)
    # the changed lab is the very lab `up` builds from the new plan
    changed_lab = snapshot(new_plan)
    inventory.delete_namespaces(inventory.lab_namespaces()[LAB])
    apply_plan(new_plan)
    assert snapshot(new_plan) == changed_lab


def test_a_change_the_kernel_refuses_halfway_leaves_the_lab_as_it_was(
        tmp_path: Path, cleanup: None) -> None:
    old = compiled(tmp_path, {"a": "node1", "b": "node2", "gone": "node1"})
    new = compiled(tmp_path, {"a": "node1", "b": "node2", "c": "node1", "d": "node2"}, old)
    old_plan = render(old)
    node1 = new.node("node1")
    # the last request of the change: a route via a gateway no link reaches
    bad = Route(node1.netns, "10.77.0.0/16", "192.0.2.1")
    new_plan = replace(render(new), routes=(*render(new).routes, bad))
    apply_plan(old_plan)
    before = snapshot(old_plan)

    with pytest.raises(ApplyError) as exc:
        apply_changes(old_plan, new_plan)

    assert "10.77.0.0/16 via 192.0.2.1" in str(exc.value)
    assert "the lab is as it was" in str(exc.value)
    assert not netns.exists(new.pod("default", "c").netns)
    assert not netns.exists(new.pod("default", "d").netns)
    # gone's veth was deleted to make room for c's (same name), and is back, with its
    # address and route in gone's namespace; d's port on node2 is gone again
    assert snapshot(old_plan) == before
    assert sorted(inventory.lab_namespaces()[LAB]) == sorted(ns.name for ns in
                                                             old_plan.namespaces)
    gone, a, b = (old.pod("default", p) for p in ("gone", "a", "b"))
    assert pings(gone.netns, b.ip) and pings(b.netns, gone.ip) and pings(a.netns, b.ip)
    # and the lab takes the good change afterwards
    apply_changes(old_plan, render(new))
    assert pings(new.pod("default", "c").netns, b.ip)


def test_a_change_to_a_namespace_that_is_not_the_labs_is_refused() -> None:
    foreign = f"lc.{LAB}.node.foreign"  # made by `ip netns add`: it carries no mark
    assert not netns.exists(foreign)
    subprocess.run(["ip", "netns", "add", foreign], check=True)
    try:
        old = Plan(LAB, f"labctl:{LAB}", (Namespace(foreign, "node"),), (), (), (), ())
        new = replace(old, routes=(Route(foreign, "10.1.0.0/24", dev="lo"),))
        with pytest.raises(ApplyError, match="not lab"):
            apply_changes(old, new)
        assert ip_json(foreign, "route", "show") == []
    finally:
        subprocess.run(["ip", "netns", "del", foreign], check=True)


def test_an_interrupt_midway_is_undone_too(tmp_path: Path, cleanup: None,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C after the new links exist and before their addresses: the links go again
    and the veth deleted to make room for one of them comes back, addresses and all."""
    from labctl.net import apply

    old = compiled(tmp_path, {"a": "node1", "b": "node2", "gone": "node1"})
    new = compiled(tmp_path, {"a": "node1", "b": "node2", "c": "node1"}, old)
    old_plan = render(old)
    apply_plan(old_plan)
    before = snapshot(old_plan)
    real = apply._Run.add_addresses_and_routes
    calls = []

    def interrupted(self, *args, **kw):  # the forward call is cut short, undo's is not
        calls.append(1)
        if len(calls) == 1:
            real(self, *args[:1], (), (), **kw)  # do part of the work (peer ends up), stop
            raise KeyboardInterrupt
        return real(self, *args, **kw)

    monkeypatch.setattr(apply._Run, "add_addresses_and_routes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        apply_changes(old_plan, render(new))
    monkeypatch.undo()
    assert snapshot(old_plan) == before
    assert not netns.exists(new.pod("default", "c").netns)
    gone, b = old.pod("default", "gone"), old.pod("default", "b")
    assert pings(gone.netns, b.ip)


def test_a_route_and_a_sysctl_change_in_place(tmp_path: Path, cleanup: None) -> None:
    """A LoadBalancer address announced by another node (the external client's /32
    route moves), and a node sysctl that changes: no namespace or link is touched."""
    state = compiled(tmp_path, {"a": "node1"})
    plan = render(state)
    node1, node2 = state.node("node1"), state.node("node2")
    lb = Route(state.external_netns, "192.168.200.7/32", node1.ip)
    old = replace(plan, routes=(*plan.routes, lb))
    localnet = ("net.ipv4.conf.all.route_localnet", "1")
    namespaces = tuple(replace(ns, sysctls=(*ns.sysctls, localnet)) if ns.role == "node"
                       else ns for ns in old.namespaces)
    new = replace(old, namespaces=namespaces,
                  routes=(*plan.routes, replace(lb, via=node2.ip)))
    apply_plan(old)
    links_before = {ns.name: snapshot(old)[ns.name][0] for ns in old.namespaces}

    changed = apply_changes(old, new)

    assert changed.delete_routes == (lb,) and changed.make_room == frozenset({lb})
    routes = ip_json(state.external_netns, "route", "show", "192.168.200.7/32")
    assert [r["gateway"] for r in routes] == [node2.ip]
    for node in (node1, node2):
        got = netns_exec(node.netns, ["sysctl", "-n", "net.ipv4.conf.all.route_localnet"])
        assert got.stdout.strip() == "1"
    assert {ns.name: snapshot(new)[ns.name][0] for ns in new.namespaces} == links_before
