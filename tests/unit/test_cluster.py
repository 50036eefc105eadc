"""Scheduling, IPAM, Service allocation and EndpointSlice derivation (pure)."""

from __future__ import annotations

import ipaddress

import pytest

from labctl.cluster.compile import compile_state
from labctl.cluster.workloads import SAFE_ALPHABET
from labctl.errors import UserError
from labctl.model.objects import ServicePort
from tests.unit.builders import (
    container,
    deployment,
    lab,
    pod,
    service,
    statefulset,
    topology,
)


def test_pods_spread_evenly_and_pins_are_honoured() -> None:
    topo = topology(lab("a", "b", "c"), deployments=(deployment("web", 7, {"app": "web"}),),
                    pods=(pod("pinned", node="c"),))
    state = compile_state(topo)
    per_node = {n.name: len(state.pods_on(n.name)) for n in state.nodes}
    assert sum(per_node.values()) == 8
    assert max(per_node.values()) - min(per_node.values()) <= 1
    assert state.pod("default", "pinned").node == "c"


def test_node_selector_restricts_placement() -> None:
    from labctl.model.objects import Lab, NodeSpec

    the_lab = Lab("t", nodes=(NodeSpec("a"), NodeSpec("b", {"disk": "ssd"})))
    state = compile_state(topology(the_lab, pods=(
        pod("p1", node_selector={"disk": "ssd"}), pod("p2", node_selector={"disk": "ssd"}))))
    assert {p.node for p in state.pods} == {"b"}


def test_unknown_node_is_a_user_error() -> None:
    with pytest.raises(UserError, match="no node named 'nope'"):
        compile_state(topology(pods=(pod("p", node="nope"),)))


def test_deployment_pod_names_are_kubernetes_shaped_and_deterministic() -> None:
    topo = topology(deployments=(deployment("web", 3, {"app": "web"}),))
    names1 = [p.name for p in compile_state(topo).pods]
    names2 = [p.name for p in compile_state(topo).pods]
    assert names1 == names2
    assert len(set(names1)) == 3
    for name in names1:
        prefix, hash_, suffix = name.rsplit("-", 2)
        assert prefix == "web" and len(hash_) == 10 and len(suffix) == 5
        assert set(hash_ + suffix) <= set(SAFE_ALPHABET)


def test_statefulset_pods_have_ordinals_hostname_and_subdomain() -> None:
    state = compile_state(topology(statefulsets=(statefulset("db", 3, {"app": "db"}, "db"),)))
    assert [p.name for p in state.pods] == ["db-0", "db-1", "db-2"]
    assert state.pods[1].spec.hostname == "db-1" and state.pods[1].spec.subdomain == "db"
    assert state.pods[2].labels["statefulset.kubernetes.io/pod-name"] == "db-2"


def test_each_node_gets_a_slash24_with_gateway_and_unique_pod_ips() -> None:
    state = compile_state(topology(lab("a", "b", "c"),
                                   deployments=(deployment("web", 30, {"app": "web"}),)))
    assert [n.pod_cidr for n in state.nodes] == ["10.244.0.0/24", "10.244.1.0/24",
                                                 "10.244.2.0/24"]
    assert [n.pod_gateway for n in state.nodes] == ["10.244.0.1", "10.244.1.1", "10.244.2.1"]
    assert [n.ip for n in state.nodes] == ["172.18.0.2", "172.18.0.3", "172.18.0.4"]
    assert state.external_ip == "172.18.0.254"
    ips = [p.ip for p in state.pods]
    assert len(set(ips)) == 30
    for p in state.pods:
        node = state.node(p.node)
        assert ipaddress.IPv4Address(p.ip) in ipaddress.IPv4Network(node.pod_cidr)
        assert p.ip != node.pod_gateway


def test_pod_ips_stay_when_another_pod_is_added() -> None:
    before = compile_state(topology(pods=(pod("b"), pod("d"))))
    after = compile_state(topology(pods=(pod("a"), pod("b"), pod("c"), pod("d"))), before)
    for p in before.pods:
        assert after.pod(p.namespace, p.name).ip == p.ip


def test_a_node_with_more_pods_than_its_subnet_is_a_clear_error() -> None:
    pods = tuple(pod(f"p{i}", node="node1") for i in range(254))
    with pytest.raises(UserError) as exc:
        compile_state(topology(pods=pods))
    assert "node node1 has 254 pods but its subnet 10.244.0.0/24 holds 253" in exc.value.format()


def test_pod_cidr_too_small_for_the_nodes() -> None:
    with pytest.raises(UserError, match="holds 2 node /24 subnet"):
        compile_state(topology(lab("a", "b", "c", pod_cidr="10.244.0.0/23")))


def test_cluster_ips_skip_the_reserved_addresses_and_stay_stable() -> None:
    svcs = tuple(service(f"s{i}", {"app": "x"}) for i in range(20))
    state = compile_state(topology(services=svcs))
    ips = {s.name: s.cluster_ip for s in state.services}
    assert len(set(ips.values())) == 20
    net = ipaddress.IPv4Network("10.96.0.0/12")
    for ip in ips.values():
        assert ipaddress.IPv4Address(ip) in net
        assert ip not in ("10.96.0.1", "10.96.0.10")
    more = compile_state(topology(services=svcs + (service("new", {"app": "y"}),)))
    assert {s.name: s.cluster_ip for s in more.services if s.name != "new"} == ips


def test_explicit_cluster_ip_headless_and_external_name() -> None:
    state = compile_state(topology(services=(
        service("fixed", {"a": "b"}, cluster_ip="10.96.0.50"),
        service("headless", {"a": "b"}, cluster_ip="None"),
        service("ext", None, type="ExternalName", external_name="example.com"))))
    got = {s.name: s.cluster_ip for s in state.services}
    assert got == {"fixed": "10.96.0.50", "headless": "None", "ext": ""}


def test_node_ports_and_load_balancer_ips_are_allocated() -> None:
    state = compile_state(topology(services=(
        service("np", {"a": "b"}, type="NodePort"),
        service("fixed", {"a": "b"}, ServicePort(80, node_port=30080), type="NodePort"),
        service("lb", {"a": "b"}, type="LoadBalancer"),
        service("cip", {"a": "b"}))))
    by = {s.name: s for s in state.services}
    assert 30000 <= by["np"].ports[0].node_port <= 32767
    assert by["fixed"].ports[0].node_port == 30080
    assert by["lb"].ports[0].node_port and by["lb"].load_balancer_ip == "192.168.200.1"
    assert by["cip"].ports[0].node_port == 0 and by["cip"].load_balancer_ip == ""


def test_endpoint_slices_resolve_named_target_ports_per_pod() -> None:
    a = pod("a", {"app": "web"}, containers=(container("c", (8080, "http")),))
    b = pod("b", {"app": "web"}, containers=(container("c", (9090, "http")),))
    c = pod("c", {"app": "web"}, containers=(container("c", (7070, "other")),))
    other = pod("z", {"app": "db"})
    svc = service("web", {"app": "web"}, ServicePort(80, name="http", target_port="http"))
    state = compile_state(topology(pods=(a, b, c, other), services=(svc,)))
    slices = [s for s in state.endpoint_slices if s.service_name == "web"]
    seen = {}
    for s in slices:
        assert s.meta.labels["endpointslice.kubernetes.io/managed-by"] == \
            "endpointslice-controller.k8s.io"
        for ep in s.endpoints:
            seen[ep.target_ref.name] = [p.port for p in s.ports]
    # c does not declare "http": it is an endpoint without that port, as upstream.
    assert seen == {"a": [8080], "b": [9090], "c": []}
    assert len(slices) == 3


def test_service_without_selector_gets_no_derived_slice() -> None:
    state = compile_state(topology(pods=(pod("a", {"app": "web"}),),
                                   services=(service("manual", None),)))
    assert state.endpoint_slices == ()


def test_endpoints_carry_node_and_hostname_for_statefulsets() -> None:
    svc = service("db", {"app": "db"}, cluster_ip="None")
    state = compile_state(topology(statefulsets=(statefulset("db", 2, {"app": "db"}, "db"),),
                                   services=(svc,)))
    eps = [ep for s in state.endpoint_slices for ep in s.endpoints]
    assert sorted(ep.hostname for ep in eps) == ["db-0", "db-1"]
    assert all(ep.node_name for ep in eps)


def test_pod_cidr_per_node_makes_room_for_large_labs() -> None:
    state = compile_state(topology(lab("a", "b", "c", pod_cidr_per_node=22),
                                   deployments=(deployment("web", 1000, {"app": "web"}),)))
    assert [n.pod_cidr for n in state.nodes] == ["10.244.0.0/22", "10.244.4.0/22",
                                                 "10.244.8.0/22"]
    assert len({p.ip for p in state.pods}) == 1000


def test_a_written_load_balancer_ingress_is_kept() -> None:
    state = compile_state(topology(services=(
        service("lb", {"a": "b"}, type="LoadBalancer", load_balancer_ingress=("192.168.200.77",)),
        service("lb2", {"a": "b"}, type="LoadBalancer"))))
    by = {s.name: s.load_balancer_ip for s in state.services}
    assert by == {"lb": "192.168.200.77", "lb2": "192.168.200.1"}


def test_a_workloads_replicas_spread_over_nodes_even_when_loads_differ() -> None:
    state = compile_state(topology(lab("a", "b", "c"),
                                   pods=(pod("p1", node="a"), pod("p2", node="a")),
                                   deployments=(deployment("web", 3, {"app": "web"}),)))
    assert sorted(p.node for p in state.pods if p.name.startswith("web-")) == ["a", "b", "c"]


@pytest.mark.parametrize("serving, terminating, publish, expected", [
    # (ready, serving, terminating), as the upstream EndpointSlice controller sets them.
    (True, False, False, (True, True, False)),
    (False, False, False, (False, False, False)),
    (True, True, False, (False, True, True)),
    (False, True, False, (False, False, True)),
    (True, False, True, (True, True, False)),
    (False, False, True, (True, False, False)),
    (True, True, True, (True, True, True)),
    (False, True, True, (True, False, True)),
])
def test_endpoint_conditions_table(serving: bool, terminating: bool, publish: bool,
                                   expected: tuple[bool, bool, bool]) -> None:
    from dataclasses import replace

    from labctl.cluster.compile import with_readiness

    svc = service("web", {"app": "web"}, publish_not_ready_addresses=publish)
    state = compile_state(topology(pods=(pod("a", {"app": "web"}),), services=(svc,)))
    state = replace(state, pods=tuple(replace(p, terminating=terminating) for p in state.pods))
    state = with_readiness(state, {"default/a": serving})
    (ep,) = [ep for s in state.endpoint_slices for ep in s.endpoints]
    c = ep.conditions
    assert (c.ready, c.serving, c.terminating) == expected
