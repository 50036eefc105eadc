"""kube-proxy's service health checks (pure): the healthCheckNodePort's allocation, what
each node answers there, and the HTTP response upstream gives."""

from __future__ import annotations

import dataclasses
import json

from labctl.cluster.compile import compile_state
from labctl.cluster.views import service_object
from labctl.model.objects import ServicePort
from labctl.proxy.healthcheck import HealthCheck, node_health_checks, response
from tests.unit.builders import deployment, lab, pod, service, topology


def local_lb(name: str = "lb", **kw: object):  # noqa: ANN201
    return service(name, {"app": "web"}, type="LoadBalancer",
                   external_traffic_policy="Local", **kw)


def test_a_local_load_balancer_gets_a_health_check_port() -> None:
    state = compile_state(topology(services=(
        local_lb(), local_lb("fixed", health_check_node_port=32090),
        service("cluster-lb", {"app": "web"}, type="LoadBalancer"),
        service("local-np", {"app": "web"}, type="NodePort",
                external_traffic_policy="Local"))))
    by = {s.name: s for s in state.services}
    port = by["lb"].health_check_node_port
    assert 30000 <= port <= 32767 and port != by["lb"].ports[0].node_port
    assert by["fixed"].health_check_node_port == 32090
    # upstream: only type LoadBalancer with policy Local has one
    assert by["cluster-lb"].health_check_node_port == 0
    assert by["local-np"].health_check_node_port == 0
    assert service_object(by["lb"])["spec"]["healthCheckNodePort"] == port
    assert service_object(by["lb"])["spec"]["externalTrafficPolicy"] == "Local"
    assert "healthCheckNodePort" not in service_object(by["cluster-lb"])["spec"]


def test_the_port_stays_but_yields_to_a_written_node_port() -> None:
    first = compile_state(topology(services=(local_lb(),)))
    port = first.services[0].health_check_node_port
    again = compile_state(topology(services=(
        local_lb(), service("np", {"app": "x"}, type="NodePort"))), first)
    assert again.services[0].health_check_node_port == port  # kept from `previous`
    taken = compile_state(topology(services=(
        local_lb(), service("np", {"app": "x"}, ServicePort(80, node_port=port),
                            type="NodePort"))), first)
    lb = next(s for s in taken.services if s.name == "lb")
    assert lb.health_check_node_port not in (0, port)


def test_each_node_counts_its_own_ready_endpoints() -> None:
    state = compile_state(topology(
        lab("node1", "node2", "node3"),
        pods=(pod("a", {"app": "web"}, node="node1"), pod("b", {"app": "web"}, node="node1"),
              pod("c", {"app": "web"}, node="node2")),
        services=(local_lb(health_check_node_port=32090),
                  service("plain", {"app": "web"}, type="LoadBalancer"))))
    counts = {n.name: node_health_checks(state, n.name) for n in state.nodes}
    assert {n: {p: c.local_endpoints for p, c in hc.items()} for n, hc in counts.items()} == {
        "node1": {32090: 2}, "node2": {32090: 1}, "node3": {32090: 0}}
    assert counts["node3"][32090] == HealthCheck("default", "lb", 32090, 0)
    userspace = dataclasses.replace(state, lab=dataclasses.replace(state.lab,
                                                                   proxy_mode="userspace"))
    assert node_health_checks(userspace, "node1") == {}


def test_a_not_ready_endpoint_does_not_count() -> None:
    state = compile_state(topology(
        lab("node1"), deployments=(deployment("web", 2, {"app": "web"}),),
        services=(local_lb(health_check_node_port=32090),)))
    slices = tuple(dataclasses.replace(es, endpoints=tuple(
        dataclasses.replace(ep, conditions=dataclasses.replace(ep.conditions, ready=False))
        if i == 0 else ep for i, ep in enumerate(es.endpoints)))
        for es in state.endpoint_slices)
    state = dataclasses.replace(state, endpoint_slices=slices)
    assert node_health_checks(state, "node1")[32090].local_endpoints == 1


def split(raw: bytes) -> tuple[str, dict[str, str], dict]:  # type: ignore[type-arg]
    head, body = raw.decode().split("\r\n\r\n", 1)
    status, *lines = head.split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    assert int(headers["Content-Length"]) == len(body.encode())
    return status, headers, json.loads(body)


def test_the_answer_is_upstreams() -> None:
    status, headers, body = split(response(HealthCheck("default", "web", 32090, 2)))
    assert status == "HTTP/1.1 200 OK"
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Load-Balancing-Endpoint-Weight"] == "2"
    assert body == {"service": {"namespace": "default", "name": "web"},
                    "localEndpoints": 2, "serviceProxyHealthy": True}
    status, headers, body = split(response(HealthCheck("default", "web", 32090, 0)))
    assert status == "HTTP/1.1 503 Service Unavailable"
    assert headers["X-Load-Balancing-Endpoint-Weight"] == "0"
    assert body["localEndpoints"] == 0
    status, _, body = split(response(HealthCheck("default", "web", 32090, 3), False))
    assert status.endswith("503 Service Unavailable") and body["serviceProxyHealthy"] is False
