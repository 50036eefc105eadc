"""Plan → Plan diffs and their printing (pure)."""

from __future__ import annotations

from dataclasses import replace

from labctl.cluster.compile import compile_state
from labctl.plan.commands import commands, diff_commands
from labctl.plan.diff import PlanDiff, diff
from labctl.plan.model import Address, Bridge, Namespace, Plan, Route, VethPair
from labctl.plan.render import render
from tests.unit.builders import lab, pod, topology

NODE1, NODE2 = "lc.demo.node.node1", "lc.demo.node.node2"
EXTERNAL = "lc.demo.external"


def states(before: tuple[str, ...], after: tuple[str, ...]):
    """Two compiled states of lab `demo`: pods named `<pod>@<node>`, the second compiled
    from the first as a running lab is (pods keep their node and address)."""
    def topo(specs: tuple[str, ...]):
        pods = tuple(pod(s.split("@")[0], node=s.split("@")[1]) for s in specs)
        return topology(lab("node1", "node2", name="demo"), pods=pods)

    old = compile_state(topo(before))
    return old, compile_state(topo(after), previous=old)


def pod_ns(name: str) -> str:
    return f"lc.demo.pod.default.{name}"


def test_a_diff_against_nothing_creates_everything_in_plan_order() -> None:
    old, _ = states(("a@node1", "b@node2"), ())
    plan = render(old)
    d = diff(None, plan)
    assert d.create_namespaces == plan.namespaces and d.add_bridges == plan.bridges
    assert d.add_veths == plan.veths and d.add_addresses == plan.addresses
    assert d.add_routes == plan.routes
    assert not d.deletions(first=True) and not d.deletions(first=False)
    assert not d.delete_namespaces and not d.set_sysctls and not d.empty
    assert diff_commands(d) == commands(plan)


def test_the_same_plan_twice_changes_nothing() -> None:
    old, new = states(("a@node1", "b@node2"), ("a@node1", "b@node2"))
    d = diff(render(old), render(new))
    assert d.empty and d.counts() == {} and diff_commands(d) == []


def test_a_pod_added_and_another_removed() -> None:
    old, new = states(("a@node1", "b@node2"), ("a@node1", "c@node1"))
    d = diff(render(old), render(new))
    c, b = new.pod("default", "c"), old.pod("default", "b")
    assert [ns.name for ns in d.create_namespaces] == [pod_ns("c")]
    assert d.add_veths == (VethPair(NODE1, c.host_veth, pod_ns("c"), "eth0", "cni0",
                                    hairpin=True),)
    assert d.add_addresses == (Address(pod_ns("c"), "eth0", "10.244.0.3/24"),)
    assert d.add_routes == (Route(pod_ns("c"), "default", "10.244.0.1"),)
    assert not d.add_bridges and not d.set_sysctls
    # b's namespace goes, with everything in it; its veth by the node's end, explicitly
    assert [ns.name for ns in d.delete_namespaces] == [pod_ns("b")]
    assert d.delete_veths == (VethPair(NODE2, b.host_veth, pod_ns("b"), "eth0", "cni0",
                                       hairpin=True),)
    assert d.surviving_end(d.delete_veths[0]) == (NODE2, b.host_veth)
    assert not d.delete_addresses and not d.delete_routes and not d.delete_bridges
    assert not d.make_room
    assert d.counts() == {"create_namespaces": 1, "add_veths": 1, "add_addresses": 1,
                          "add_routes": 1, "delete_veths": 1, "delete_namespaces": 1}


def test_a_new_pod_that_takes_a_removed_pods_address_makes_room_first() -> None:
    """IPAM hands a freed address out again, so the new veth has the old one's name."""
    old, new = states(("a@node1", "b@node1"), ("a@node1", "c@node1"))
    b, c = old.pod("default", "b"), new.pod("default", "c")
    assert b.ip == c.ip and b.host_veth == c.host_veth  # the premise
    d = diff(render(old), render(new))
    first = d.deletions(first=True)
    assert first.veths == d.delete_veths and len(first.veths) == 1
    # b's address and route leave with b's namespace; but the veth goes early, before
    # the change can no longer be undone, so they are listed to be put back on failure
    assert first.addresses == (Address(pod_ns("b"), "eth0", f"{b.ip}/24"),)
    assert first.routes == (Route(pod_ns("b"), "default", "10.244.0.1"),)
    assert not d.deletions(first=False)
    lines = diff_commands(d)
    delete = f"ip -n {NODE1} link del {b.host_veth}"
    add = (f"ip -n {NODE1} link add {c.host_veth} type veth peer name eth0 "
           f"netns {pod_ns('c')}")
    assert lines.index(delete) < lines.index(add)
    assert lines[-1] == f"ip netns del {pod_ns('b')}"


def test_a_pod_moved_to_another_node_keeps_its_namespace_but_not_its_wiring() -> None:
    old, _ = states(("a@node1",), ())
    moved, _ = states(("a@node2",), ())
    d = diff(render(old), render(moved))
    assert not d.create_namespaces and not d.delete_namespaces
    # the old veth's pod end is eth0 too: it must go before the new one is made, and its
    # address and default route with it (they are deleted, then added on the new link)
    assert set(d.make_room) == {*d.delete_veths, *d.delete_addresses, *d.delete_routes}
    assert [a.cidr for a in d.delete_addresses] == ["10.244.0.2/24"]
    assert [a.cidr for a in d.add_addresses] == ["10.244.1.2/24"]
    assert [r.via for r in d.delete_routes] == ["10.244.0.1"]
    assert [r.via for r in d.add_routes] == ["10.244.1.1"]
    lines = diff_commands(d)
    assert lines[:3] == [f"ip -n {pod_ns('a')} route del default via 10.244.0.1",
                         f"ip -n {pod_ns('a')} addr del 10.244.0.2/24 dev eth0",
                         f"ip -n {NODE1} link del veth0af40002"]


# ------------------------------------------------------------ hand-made plans

def plan(*, namespaces: tuple[Namespace, ...] | None = None, veths=None, addresses=None,
         routes=None, bridges=None) -> Plan:
    """Two nodes on a fabric, an external client, one pod on node1."""
    pod1 = pod_ns("p")
    return Plan(
        lab="demo", mark="labctl:demo",
        namespaces=namespaces if namespaces is not None else (
            Namespace("lc.demo.fabric", "fabric"),
            Namespace(NODE1, "node", (("net.ipv4.ip_forward", "1"),)),
            Namespace(NODE2, "node", (("net.ipv4.ip_forward", "1"),)),
            Namespace(EXTERNAL, "external"), Namespace(pod1, "pod")),
        bridges=bridges if bridges is not None else (
            Bridge("lc.demo.fabric", "br0"), Bridge(NODE1, "cni0"), Bridge(NODE2, "cni0")),
        veths=veths if veths is not None else (
            VethPair("lc.demo.fabric", "vethn1", NODE1, "eth0", "br0"),
            VethPair("lc.demo.fabric", "vethn2", NODE2, "eth0", "br0"),
            VethPair("lc.demo.fabric", "vethex", EXTERNAL, "eth0", "br0"),
            VethPair(NODE1, "vethp", pod1, "eth0", "cni0", hairpin=True)),
        addresses=addresses if addresses is not None else (
            Address(NODE1, "eth0", "172.18.0.2/24"), Address(NODE1, "cni0", "10.244.0.1/24"),
            Address(NODE2, "eth0", "172.18.0.3/24"), Address(NODE2, "cni0", "10.244.1.1/24"),
            Address(EXTERNAL, "eth0", "172.18.0.254/24"),
            Address(pod1, "eth0", "10.244.0.2/24")),
        routes=routes if routes is not None else (
            Route(NODE1, "10.244.1.0/24", "172.18.0.3"),
            Route(NODE2, "10.244.0.0/24", "172.18.0.2"),
            Route(NODE1, "10.96.0.0/12", dev="eth0"),
            Route(EXTERNAL, "192.168.200.1/32", "172.18.0.2"),
            Route(pod1, "default", "10.244.0.1")))


def test_a_route_that_changes_is_replaced_before_anything_is_added() -> None:
    old = plan()
    routes = tuple(replace(r, via="172.18.0.3") if r.netns == EXTERNAL else r
                   for r in old.routes)
    d = diff(old, replace(old, routes=routes))
    assert d.delete_routes == (Route(EXTERNAL, "192.168.200.1/32", "172.18.0.2"),)
    assert d.add_routes == (Route(EXTERNAL, "192.168.200.1/32", "172.18.0.3"),)
    assert d.make_room == frozenset(d.delete_routes)
    assert diff_commands(d) == [
        f"ip -n {EXTERNAL} route del 192.168.200.1/32 via 172.18.0.2",
        f"ip -n {EXTERNAL} route add 192.168.200.1/32 via 172.18.0.3"]


def test_a_new_route_and_a_removed_one_need_no_room() -> None:
    old = plan()
    new_routes = (*old.routes[:-2], Route(EXTERNAL, "192.168.200.2/32", "172.18.0.3"),
                  old.routes[-1])
    d = diff(old, replace(old, routes=new_routes))
    assert d.add_routes == (Route(EXTERNAL, "192.168.200.2/32", "172.18.0.3"),)
    assert d.delete_routes == (Route(EXTERNAL, "192.168.200.1/32", "172.18.0.2"),)
    assert not d.make_room
    lines = diff_commands(d)
    assert lines == [f"ip -n {EXTERNAL} route add 192.168.200.2/32 via 172.18.0.3",
                     f"ip -n {EXTERNAL} route del 192.168.200.1/32 via 172.18.0.2"]


def test_a_replaced_link_takes_its_addresses_and_routes_along() -> None:
    """node1's fabric veth changes (a different bridge port setting): the kernel loses
    node1's eth0 address and every route out of it, so they are deleted and re-added,
    while node2 and the pod are untouched."""
    old = plan()
    veths = tuple(replace(v, hairpin=True) if v.ifname == "vethn1" else v for v in old.veths)
    d = diff(old, replace(old, veths=veths))
    assert [v.ifname for v in d.delete_veths] == ["vethn1"]
    assert [v.ifname for v in d.add_veths] == ["vethn1"]
    lost_addr = Address(NODE1, "eth0", "172.18.0.2/24")
    lost_routes = (Route(NODE1, "10.244.1.0/24", "172.18.0.3"),
                   Route(NODE1, "10.96.0.0/12", dev="eth0"))
    assert d.delete_addresses == (lost_addr,) and d.add_addresses == (lost_addr,)
    assert d.delete_routes == lost_routes and d.add_routes == lost_routes
    assert d.make_room == frozenset({*d.delete_veths, lost_addr, *lost_routes})
    assert not d.create_namespaces and not d.delete_namespaces


def test_an_address_removed_alone() -> None:
    old = plan()
    addrs = tuple(a for a in old.addresses if a.cidr != "10.244.0.1/24")
    d = diff(old, replace(old, addresses=addrs))
    assert d.delete_addresses == (Address(NODE1, "cni0", "10.244.0.1/24"),)
    # the pod's default route via 10.244.0.1 goes out of the pod's own eth0: it stays
    assert not d.delete_routes and not d.make_room and not d.add_routes
    assert diff_commands(d) == [f"ip -n {NODE1} addr del 10.244.0.1/24 dev cni0"]


def test_a_gateway_address_that_changes_takes_the_route_along() -> None:
    old = plan()
    pod1 = pod_ns("p")
    addrs = tuple(Address(pod1, "eth0", "10.244.0.2/16") if a.netns == pod1 else a
                  for a in old.addresses)
    d = diff(old, replace(old, addresses=addrs))
    route = Route(pod1, "default", "10.244.0.1")
    assert d.delete_addresses == (Address(pod1, "eth0", "10.244.0.2/24"),)
    assert d.delete_routes == (route,) and d.add_routes == (route,)
    assert d.make_room == frozenset({*d.delete_addresses, route})  # same IP, same route


def test_a_removed_namespace_takes_everything_inside_and_veths_to_it() -> None:
    """node1 goes; the pod that was on it stays (unwired)."""
    old = plan()
    pod1 = pod_ns("p")
    new = replace(old,
                  namespaces=tuple(ns for ns in old.namespaces if ns.name != NODE1),
                  bridges=tuple(b for b in old.bridges if b.netns != NODE1),
                  veths=tuple(v for v in old.veths if NODE1 not in (v.netns, v.peer_netns)),
                  addresses=tuple(a for a in old.addresses if a.netns not in (NODE1, pod1)),
                  routes=tuple(r for r in old.routes if r.netns not in (NODE1, pod1)))
    d = diff(old, new)
    assert [ns.name for ns in d.delete_namespaces] == [NODE1]
    # the fabric's port to node1 and the pod's link go by their surviving ends
    assert [d.surviving_end(v) for v in d.delete_veths] == [
        ("lc.demo.fabric", "vethn1"), (pod_ns("p"), "eth0")]
    # the pod's address and route go with its link (its namespace stays)
    assert d.delete_addresses == (Address(pod_ns("p"), "eth0", "10.244.0.2/24"),)
    assert d.delete_routes == (Route(pod_ns("p"), "default", "10.244.0.1"),)
    assert not d.delete_bridges and not d.make_room and not d.add_routes
    # the external client's route via node1's address goes out of its own eth0: unchanged
    assert all(r.netns != EXTERNAL for r in d.delete_routes)


def test_both_ends_in_deleted_namespaces_need_no_deletion() -> None:
    old = plan()
    pod1 = pod_ns("p")
    new = replace(old,
                  namespaces=tuple(ns for ns in old.namespaces if ns.name not in (NODE1, pod1)),
                  bridges=tuple(b for b in old.bridges if b.netns != NODE1),
                  veths=tuple(v for v in old.veths if NODE1 not in (v.netns, v.peer_netns)),
                  addresses=tuple(a for a in old.addresses if a.netns not in (NODE1, pod1)),
                  routes=tuple(r for r in old.routes if r.netns not in (NODE1, pod1)))
    d = diff(old, new)
    assert [v.ifname for v in d.delete_veths] == ["vethn1"]
    assert not d.delete_addresses and not d.delete_routes
    assert diff_commands(d) == ["ip -n lc.demo.fabric link del vethn1",
                                f"ip netns del {NODE1}", f"ip netns del {pod1}"]


def test_a_bridge_removed_from_a_namespace_that_stays() -> None:
    old = plan()
    new = replace(old, bridges=(*old.bridges, Bridge(NODE2, "extra")))
    d = diff(new, old)
    assert d.delete_bridges == (Bridge(NODE2, "extra"),)
    assert diff_commands(d) == [f"ip -n {NODE2} link del extra"]
    assert diff(old, new).add_bridges == (Bridge(NODE2, "extra"),)


def test_changed_sysctls_of_a_namespace_that_stays_are_written() -> None:
    old = plan()
    localnet = ("net.ipv4.conf.all.route_localnet", "1")
    namespaces = tuple(replace(ns, sysctls=(*ns.sysctls, localnet)) if ns.role == "node"
                       else ns for ns in old.namespaces)
    d = diff(old, replace(old, namespaces=namespaces))
    assert d.set_sysctls == (Namespace(NODE1, "node", (localnet,)),
                             Namespace(NODE2, "node", (localnet,)))
    assert not d.create_namespaces and not d.delete_namespaces
    assert diff_commands(d) == [
        f"ip netns exec {NODE1} sysctl -qw net.ipv4.conf.all.route_localnet=1",
        f"ip netns exec {NODE2} sysctl -qw net.ipv4.conf.all.route_localnet=1"]
    # a sysctl the plan drops keeps its value: nothing to write
    assert diff(replace(old, namespaces=namespaces), old).empty


def test_plan_diff_is_data() -> None:
    d = diff(plan(), plan())
    assert d == PlanDiff("demo", "labctl:demo") and hash(d) == hash(PlanDiff("demo",
                                                                            "labctl:demo"))
