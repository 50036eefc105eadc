"""ClusterState → Plan → commands (pure)."""

from __future__ import annotations

import os
from pathlib import Path

from labctl.cluster.compile import compile_state
from labctl.plan.commands import commands
from labctl.plan.render import render
from tests.unit.builders import deployment, lab, pod, topology

GOLDEN = Path(__file__).parent / "golden" / "plan"


def small_plan():
    topo = topology(lab("node1", "node2", name="demo"), pods=(pod("a", node="node1"),
                                                              pod("b", node="node2")))
    return render(compile_state(topo))


def test_plan_commands_golden() -> None:
    got = "\n".join(commands(small_plan())) + "\n"
    golden = GOLDEN / "two-nodes.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(got)
    assert got == golden.read_text()


def test_every_object_is_in_a_lab_namespace_and_marked() -> None:
    plan = small_plan()
    ns_names = {ns.name for ns in plan.namespaces}
    assert all(n.startswith("lc.demo.") for n in ns_names)
    for v in plan.veths:
        assert v.netns in ns_names and v.peer_netns in ns_names
    for obj in (*plan.bridges, *plan.addresses, *plan.routes):
        assert obj.netns in ns_names
    assert plan.mark == "labctl:demo"


def test_interface_names_fit_the_kernel_limit_at_scale() -> None:
    topo = topology(lab("n1", "n2", "n3"),
                    deployments=(deployment("a-rather-long-deployment-name", 600, {"a": "b"}),))
    plan = render(compile_state(topo))
    names = [v.ifname for v in plan.veths] + [v.peer_ifname for v in plan.veths]
    assert max(len(n) for n in names) <= 15
    for ns in {v.netns for v in plan.veths}:
        in_ns = plan.links_in(ns)
        assert len(in_ns) == len(set(in_ns)), f"duplicate link names in {ns}"


def test_nodes_route_each_others_pod_subnets_and_forward() -> None:
    plan = small_plan()
    routes = {(r.netns, r.dst, r.via) for r in plan.routes}
    assert ("lc.demo.node.node1", "10.244.1.0/24", "172.18.0.3") in routes
    assert ("lc.demo.node.node2", "10.244.0.0/24", "172.18.0.2") in routes
    node = next(ns for ns in plan.namespaces if ns.role == "node")
    assert ("net.ipv4.ip_forward", "1") in node.sysctls
    assert ("net.bridge.bridge-nf-call-iptables", "1") in node.sysctls


def test_the_external_client_routes_load_balancer_ips_to_an_announcing_node() -> None:
    from labctl.model.objects import ServicePort
    from tests.unit.builders import service

    pods = (pod("a", {"app": "a"}, node="node2"),)
    svcs = (service("lb", {"app": "a"}, ServicePort(80, target_port=8080), type="LoadBalancer",
                    external_traffic_policy="Local"),
            service("ext", {"app": "a"}, external_ips=("203.0.113.9",)))
    state = compile_state(topology(lab("node1", "node2", name="demo"), pods=pods, services=svcs))
    plan = render(state)
    ext = {(r.dst, r.via) for r in plan.routes if r.netns == "lc.demo.external"}
    lb_ip = next(s.load_balancer_ip for s in state.services if s.name == "lb")
    # eTP Local: the node that has the endpoint answers for the address
    assert (f"{lb_ip}/32", "172.18.0.3") in ext
    assert any(dst == "203.0.113.9/32" for dst, _ in ext)


def test_pod_ports_are_hairpinned_and_nodes_allow_localhost_nodeports() -> None:
    plan = small_plan()
    assert all(v.hairpin for v in plan.veths if v.master == "cni0")
    assert not any(v.hairpin for v in plan.veths if v.master == "br0")
    node = next(ns for ns in plan.namespaces if ns.role == "node")
    assert ("net.ipv4.conf.all.route_localnet", "1") in node.sysctls
