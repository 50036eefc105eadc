"""The kubelet's container environment: Service variables, env, $(VAR) expansion (pure).

Cases marked "upstream" reproduce kubernetes/kubernetes tables:
pkg/kubelet/envvars/envvars_test.go TestFromServices (@729007a8),
pkg/kubelet/kubelet_pods_test.go TestMakeEnvironmentVariables (@001a80e9; it sorts both
lists before comparing, so those cases compare sorted lists), and
third_party/forked/golang/expansion/expand_test.go doExpansionTest (@490ffa43).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from labctl.cluster.state import PortAllocation, ServiceState
from labctl.kubelet.envvars import (
    PodContext,
    container_env,
    expand,
    expand_command,
    from_services,
    master_service,
    resolve_env,
    service_env,
    services_for_pod,
    with_master_service,
)
from labctl.model.objects import Container, EnvVar, ObjectMeta, Service, ServicePort

Port = tuple[int, str, str]  # (port, name, protocol)


def svc(name: str, ip: str, *ports: Port | int, ns: str = "default",
        type_: str = "ClusterIP") -> ServiceState:
    """A ServiceState as compile would give it (ports: number, or (number, name, proto))."""
    full = [(p, "", "TCP") if isinstance(p, int) else p for p in ports]
    service = Service(ObjectMeta(name, ns), type=type_,
                      ports=tuple(ServicePort(p, name=n, protocol=pr) for p, n, pr in full),
                      cluster_ip=ip)
    return ServiceState(service, ip, tuple(PortAllocation(n, pr, p) for p, n, pr in full))


def names(env: Sequence[tuple[str, str]]) -> list[str]:
    return [k for k, _ in env]


def kube_vars(ip: str, port: int) -> list[tuple[str, str]]:
    url = f"tcp://{ip}:{port}"
    return [("KUBERNETES_SERVICE_HOST", ip), ("KUBERNETES_SERVICE_PORT", str(port)),
            ("KUBERNETES_PORT", url), (f"KUBERNETES_PORT_{port}_TCP", url),
            (f"KUBERNETES_PORT_{port}_TCP_PROTO", "tcp"),
            (f"KUBERNETES_PORT_{port}_TCP_PORT", str(port)),
            (f"KUBERNETES_PORT_{port}_TCP_ADDR", ip)]


KUBERNETES = svc("kubernetes", "10.96.0.1", (443, "https", "TCP"))


# ---------------------------------------------------------------- FromServices


def test_docs_redis_primary_gives_exactly_seven_variables() -> None:
    # kubernetes.io "Service" page, "Environment variables".
    got = from_services([svc("redis-primary", "10.0.0.11", 6379)])
    assert got == [
        ("REDIS_PRIMARY_SERVICE_HOST", "10.0.0.11"),
        ("REDIS_PRIMARY_SERVICE_PORT", "6379"),
        ("REDIS_PRIMARY_PORT", "tcp://10.0.0.11:6379"),
        ("REDIS_PRIMARY_PORT_6379_TCP", "tcp://10.0.0.11:6379"),
        ("REDIS_PRIMARY_PORT_6379_TCP_PROTO", "tcp"),
        ("REDIS_PRIMARY_PORT_6379_TCP_PORT", "6379"),
        ("REDIS_PRIMARY_PORT_6379_TCP_ADDR", "10.0.0.11"),
    ]


def test_conformance_fooservice_uses_the_service_port_not_the_target_port() -> None:
    # e2e "Pods should contain environment variables for services" [Conformance]:
    # fooservice port 8765 → targetPort 8080.
    foo = Service(ObjectMeta("fooservice"), selector={"name": "srv"},
                  ports=(ServicePort(8765, target_port=8080),), cluster_ip="10.96.5.5")
    state = ServiceState(foo, "10.96.5.5", (PortAllocation("", "TCP", 8765),))
    env = dict(container_env(PodContext("client-envvars"), Container("env3cont"),
                             [KUBERNETES, state]))
    assert env["FOOSERVICE_SERVICE_HOST"] == "10.96.5.5"
    assert env["FOOSERVICE_SERVICE_PORT"] == "8765"
    assert env["FOOSERVICE_PORT"] == "tcp://10.96.5.5:8765"
    assert env["FOOSERVICE_PORT_8765_TCP_PORT"] == "8765"
    assert env["FOOSERVICE_PORT_8765_TCP_PROTO"] == "tcp"
    assert env["FOOSERVICE_PORT_8765_TCP"] == "tcp://10.96.5.5:8765"
    assert env["FOOSERVICE_PORT_8765_TCP_ADDR"] == "10.96.5.5"
    assert not any("8080" in k or "8080" in v for k, v in env.items())


def test_multiple_ports_named_and_unnamed_and_udp() -> None:
    got = from_services([svc("my-db", "10.96.0.50", (5432, "", "TCP"), (9187, "metrics", "TCP"),
                             (53, "dns-udp", "UDP"))])
    assert got == [
        ("MY_DB_SERVICE_HOST", "10.96.0.50"),
        ("MY_DB_SERVICE_PORT", "5432"),  # the first port, unnamed
        ("MY_DB_SERVICE_PORT_METRICS", "9187"),
        ("MY_DB_SERVICE_PORT_DNS_UDP", "53"),
        ("MY_DB_PORT", "tcp://10.96.0.50:5432"),  # first port only
        ("MY_DB_PORT_5432_TCP", "tcp://10.96.0.50:5432"),
        ("MY_DB_PORT_5432_TCP_PROTO", "tcp"),
        ("MY_DB_PORT_5432_TCP_PORT", "5432"),
        ("MY_DB_PORT_5432_TCP_ADDR", "10.96.0.50"),
        ("MY_DB_PORT_9187_TCP", "tcp://10.96.0.50:9187"),
        ("MY_DB_PORT_9187_TCP_PROTO", "tcp"),
        ("MY_DB_PORT_9187_TCP_PORT", "9187"),
        ("MY_DB_PORT_9187_TCP_ADDR", "10.96.0.50"),
        ("MY_DB_PORT_53_UDP", "udp://10.96.0.50:53"),
        ("MY_DB_PORT_53_UDP_PROTO", "udp"),
        ("MY_DB_PORT_53_UDP_PORT", "53"),
        ("MY_DB_PORT_53_UDP_ADDR", "10.96.0.50"),
    ]


def test_udp_first_port_makes_the_docker_link_udp() -> None:
    got = dict(from_services([svc("dns", "10.96.0.10", (53, "dns", "UDP"),
                                  (53, "dns-tcp", "TCP"))]))
    assert got["DNS_PORT"] == "udp://10.96.0.10:53"
    assert got["DNS_PORT_53_UDP_PROTO"] == "udp" and got["DNS_PORT_53_TCP_PROTO"] == "tcp"


def test_upstream_from_services_table() -> None:
    """upstream envvars_test.go TestFromServices, case for case."""
    services = [
        svc("foo-bar", "1.2.3.4", (8080, "", "TCP")),
        svc("abc-123", "5.6.7.8", (8081, "u-d-p", "UDP"), (8081, "t-c-p", "TCP")),
        svc("q-u-u-x", "9.8.7.6", (8082, "", "TCP"), (8083, "8083", "TCP")),
        svc("svrc-clusterip-none", "None", (8082, "", "TCP")),
        svc("svrc-clusterip-empty", "", (8082, "", "TCP")),
        svc("super-ipv6", "2001:DB8::", (8084, "u-d-p", "UDP"), (8084, "t-c-p", "TCP")),
        svc("sctp-1", "1.2.3.4", (777, "", "SCTP")),
    ]
    assert from_services(services) == [
        ("FOO_BAR_SERVICE_HOST", "1.2.3.4"),
        ("FOO_BAR_SERVICE_PORT", "8080"),
        ("FOO_BAR_PORT", "tcp://1.2.3.4:8080"),
        ("FOO_BAR_PORT_8080_TCP", "tcp://1.2.3.4:8080"),
        ("FOO_BAR_PORT_8080_TCP_PROTO", "tcp"),
        ("FOO_BAR_PORT_8080_TCP_PORT", "8080"),
        ("FOO_BAR_PORT_8080_TCP_ADDR", "1.2.3.4"),
        ("ABC_123_SERVICE_HOST", "5.6.7.8"),
        ("ABC_123_SERVICE_PORT", "8081"),
        ("ABC_123_SERVICE_PORT_U_D_P", "8081"),
        ("ABC_123_SERVICE_PORT_T_C_P", "8081"),
        ("ABC_123_PORT", "udp://5.6.7.8:8081"),
        ("ABC_123_PORT_8081_UDP", "udp://5.6.7.8:8081"),
        ("ABC_123_PORT_8081_UDP_PROTO", "udp"),
        ("ABC_123_PORT_8081_UDP_PORT", "8081"),
        ("ABC_123_PORT_8081_UDP_ADDR", "5.6.7.8"),
        ("ABC_123_PORT_8081_TCP", "tcp://5.6.7.8:8081"),
        ("ABC_123_PORT_8081_TCP_PROTO", "tcp"),
        ("ABC_123_PORT_8081_TCP_PORT", "8081"),
        ("ABC_123_PORT_8081_TCP_ADDR", "5.6.7.8"),
        ("Q_U_U_X_SERVICE_HOST", "9.8.7.6"),
        ("Q_U_U_X_SERVICE_PORT", "8082"),
        ("Q_U_U_X_SERVICE_PORT_8083", "8083"),
        ("Q_U_U_X_PORT", "tcp://9.8.7.6:8082"),
        ("Q_U_U_X_PORT_8082_TCP", "tcp://9.8.7.6:8082"),
        ("Q_U_U_X_PORT_8082_TCP_PROTO", "tcp"),
        ("Q_U_U_X_PORT_8082_TCP_PORT", "8082"),
        ("Q_U_U_X_PORT_8082_TCP_ADDR", "9.8.7.6"),
        ("Q_U_U_X_PORT_8083_TCP", "tcp://9.8.7.6:8083"),
        ("Q_U_U_X_PORT_8083_TCP_PROTO", "tcp"),
        ("Q_U_U_X_PORT_8083_TCP_PORT", "8083"),
        ("Q_U_U_X_PORT_8083_TCP_ADDR", "9.8.7.6"),
        ("SUPER_IPV6_SERVICE_HOST", "2001:DB8::"),
        ("SUPER_IPV6_SERVICE_PORT", "8084"),
        ("SUPER_IPV6_SERVICE_PORT_U_D_P", "8084"),
        ("SUPER_IPV6_SERVICE_PORT_T_C_P", "8084"),
        ("SUPER_IPV6_PORT", "udp://[2001:DB8::]:8084"),
        ("SUPER_IPV6_PORT_8084_UDP", "udp://[2001:DB8::]:8084"),
        ("SUPER_IPV6_PORT_8084_UDP_PROTO", "udp"),
        ("SUPER_IPV6_PORT_8084_UDP_PORT", "8084"),
        ("SUPER_IPV6_PORT_8084_UDP_ADDR", "2001:DB8::"),
        ("SUPER_IPV6_PORT_8084_TCP", "tcp://[2001:DB8::]:8084"),
        ("SUPER_IPV6_PORT_8084_TCP_PROTO", "tcp"),
        ("SUPER_IPV6_PORT_8084_TCP_PORT", "8084"),
        ("SUPER_IPV6_PORT_8084_TCP_ADDR", "2001:DB8::"),
        ("SCTP_1_SERVICE_HOST", "1.2.3.4"),
        ("SCTP_1_SERVICE_PORT", "777"),
        ("SCTP_1_PORT", "sctp://1.2.3.4:777"),
        ("SCTP_1_PORT_777_SCTP", "sctp://1.2.3.4:777"),
        ("SCTP_1_PORT_777_SCTP_PROTO", "sctp"),
        ("SCTP_1_PORT_777_SCTP_PORT", "777"),
        ("SCTP_1_PORT_777_SCTP_ADDR", "1.2.3.4"),
    ]


# ---------------------------------------------------------------- which Services count


def test_enable_service_links_false_leaves_only_kubernetes() -> None:
    services = [KUBERNETES, svc("web", "10.96.0.20", 80), svc("db", "10.96.0.21", 5432)]
    env = service_env("default", services, enable_service_links=False)
    assert env == [("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
                   ("KUBERNETES_SERVICE_PORT", "443"),
                   ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
                   *kube_vars("10.96.0.1", 443)[2:]]


def test_other_namespaces_never_count() -> None:
    services = [KUBERNETES, svc("web", "10.96.0.20", 80, ns="shop")]
    assert not any(k.startswith("WEB_") for k in names(service_env("default", services, True)))
    assert "WEB_SERVICE_HOST" in names(service_env("shop", services, True))


def test_kubernetes_service_in_the_pods_namespace_replaces_the_real_one() -> None:
    fake = svc("kubernetes", "10.96.7.7", 8443, ns="team")
    for services in ([KUBERNETES, fake], [fake, KUBERNETES]):  # input order does not matter
        env = dict(service_env("team", services, True))
        assert env["KUBERNETES_SERVICE_HOST"] == "10.96.7.7"
        assert env["KUBERNETES_SERVICE_PORT"] == "8443"
        assert "KUBERNETES_SERVICE_PORT_HTTPS" not in env
        # with links off, the pod's namespace does not count: the real one is back
        assert dict(service_env("team", services, False))["KUBERNETES_SERVICE_HOST"] \
            == "10.96.0.1"


def test_headless_and_external_name_services_inject_nothing() -> None:
    services = [KUBERNETES, svc("db", "None", 5432),
                svc("ext", "", 443, type_="ExternalName"), svc("web", "10.96.0.20", 80)]
    got = {k.split("_")[0] for k in names(service_env("default", services, True))}
    assert got == {"KUBERNETES", "WEB"}


def test_services_come_in_name_order_whatever_the_input_order() -> None:
    services = [svc("zeta", "10.96.0.30", 1), KUBERNETES, svc("alpha", "10.96.0.31", 2)]
    chosen = services_for_pod("default", services, True)
    assert [s.name for s in chosen] == ["alpha", "kubernetes", "zeta"]
    assert service_env("default", services, True) == \
        service_env("default", list(reversed(services)), True)


def test_master_service_is_added_only_when_missing() -> None:
    added = with_master_service([svc("web", "10.96.0.20", 80)], "10.96.0.0/12")
    assert [s.key for s in added] == ["default/web", "default/kubernetes"]
    assert added[-1] == master_service("10.96.0.0/12")
    assert dict(from_services([added[-1]]))["KUBERNETES_SERVICE_PORT_HTTPS"] == "443"
    own = svc("kubernetes", "10.96.0.1", 443)
    assert with_master_service([own], "10.96.0.0/12") == [own]


# ---------------------------------------------------------------- the container's env


def test_container_env_first_then_service_vars_and_a_declared_name_wins() -> None:
    c = Container("app", env=(EnvVar("ZED", "last-declared"),
                              EnvVar("WEB_SERVICE_HOST", "my-override"),
                              EnvVar("APP_MODE", "prod")))
    env = container_env(PodContext("p"), c, [KUBERNETES, svc("web", "10.96.0.20", 80)])
    # declared variables in declaration order, then the services (by name), each once
    assert names(env)[:3] == ["ZED", "WEB_SERVICE_HOST", "APP_MODE"]
    assert names(env)[3] == "KUBERNETES_SERVICE_HOST"
    assert names(env).index("KUBERNETES_PORT_443_TCP_ADDR") < names(env).index("WEB_SERVICE_PORT")
    assert names(env).count("WEB_SERVICE_HOST") == 1
    assert dict(env)["WEB_SERVICE_HOST"] == "my-override"
    assert dict(env)["WEB_SERVICE_PORT"] == "80"  # the other service vars stay
    assert len(env) == 3 + 8 + 6  # kubernetes: 8 (named port), web: 7 minus the override


def test_expansion_of_service_vars_escapes_and_unresolved_references() -> None:
    c = Container("app", env=(
        EnvVar("BACKEND", "http://$(WEB_SERVICE_HOST):$(WEB_SERVICE_PORT)/"),
        EnvVar("ESCAPED", "$$(WEB_SERVICE_HOST)"),
        EnvVar("UNKNOWN", "$(NOT_A_VAR)-x"),
        EnvVar("LATER_REF", "$(DEFINED_LATER)"),
        EnvVar("DEFINED_LATER", "v"),
        EnvVar("EARLIER_REF", "[$(DEFINED_LATER)]"),
        EnvVar("EMPTY"),
        EnvVar("USES_EMPTY", "a$(EMPTY)b"),
    ))
    env = dict(container_env(PodContext("p"), c, [KUBERNETES, svc("web", "10.96.0.20", 80)]))
    assert env["BACKEND"] == "http://10.96.0.20:80/"
    assert env["ESCAPED"] == "$(WEB_SERVICE_HOST)"
    assert env["UNKNOWN"] == "$(NOT_A_VAR)-x"
    assert env["LATER_REF"] == "$(DEFINED_LATER)"  # only earlier entries are visible
    assert env["EARLIER_REF"] == "[v]"
    assert env["EMPTY"] == "" and env["USES_EMPTY"] == "ab"


def test_a_declared_value_shadows_a_service_var_in_later_expansions() -> None:
    c = Container("app", env=(EnvVar("WEB_SERVICE_HOST", "web.local"),
                              EnvVar("URL", "http://$(WEB_SERVICE_HOST)")))
    env = dict(container_env(PodContext("p"), c, [svc("web", "10.96.0.20", 80)]))
    assert env["URL"] == "http://web.local"


def test_enable_service_links_false_in_the_pod_context() -> None:
    pod = PodContext("p", enable_service_links=False)
    env = container_env(pod, Container("app"), [KUBERNETES, svc("web", "10.96.0.20", 80)])
    assert {k.split("_")[0] for k in names(env)} == {"KUBERNETES"}


def test_field_refs_and_skipped_sources() -> None:
    def ref(path: str) -> dict[str, object]:
        return {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}

    c = Container("app", env=(
        EnvVar("POD_NAME", value_from=ref("metadata.name")),
        EnvVar("POD_NAMESPACE", value_from=ref("metadata.namespace")),
        EnvVar("POD_IP", value_from=ref("status.podIP")),
        EnvVar("NODE", value_from=ref("spec.nodeName")),
        EnvVar("HOST_IP", value_from=ref("status.hostIP")),
        EnvVar("APP", value_from=ref("metadata.labels['app']")),
        EnvVar("NOPE", value_from=ref("metadata.labels['missing']")),
        EnvVar("SA", value_from=ref("spec.serviceAccountName")),
        EnvVar("PASSWORD", value_from={"secretKeyRef": {"name": "s", "key": "k"}}),
        EnvVar("WHO", "$(POD_NAME)@$(NODE)"),
    ))
    pod = PodContext("web-0", "shop", ip="10.244.1.5", node_name="node2",
                     host_ip="172.18.0.3", labels={"app": "web"})
    result = resolve_env(pod, c, [])
    env = dict(result.env)
    assert env == {"POD_NAME": "web-0", "POD_NAMESPACE": "shop", "POD_IP": "10.244.1.5",
                   "NODE": "node2", "HOST_IP": "172.18.0.3", "APP": "web", "NOPE": "",
                   "WHO": "web-0@node2"}
    assert len(result.notes) == 2
    assert "spec.serviceAccountName" in result.notes[0]
    assert "secretKeyRef" in result.notes[1] and "PASSWORD" in result.notes[1]


def test_unknown_inputs_are_left_out_with_a_note() -> None:
    c = Container("app", env=(EnvVar("POD_IP", value_from={"fieldRef": {
        "fieldPath": "status.podIP"}}),))
    result = resolve_env(PodContext("p"), c, [])  # no IP known
    assert result.env == [] and "status.podIP" in result.notes[0]


def test_command_and_args_expand_against_the_final_env() -> None:
    c = Container("app", command=("sh", "-c", "echo $(WEB_SERVICE_HOST) $$(HOME) $(NOPE)"),
                  args=("$(GREETING)",), env=(EnvVar("GREETING", "hi"),))
    env = container_env(PodContext("p"), c, [svc("web", "10.96.0.20", 80)])
    assert expand_command(c, env) == (("sh", "-c", "echo 10.96.0.20 $(HOME) $(NOPE)"),
                                      ("hi",))
    assert expand("$(A)$(B)", {"A": "1"}) == "1$(B)"


# ---------------------------------------------------------------- upstream kubelet tables

# kubelet_pods_test.go TestMakeEnvironmentVariables: its services list (buildService).
UPSTREAM_SERVICES = [
    svc("kubernetes", "1.2.3.1", 8081, ns="default"),
    svc("test", "1.2.3.3", 8083, ns="test1"),
    svc("kubernetes", "1.2.3.4", 8084, ns="test2"),
    svc("test", "1.2.3.5", 8085, ns="test2"),
    svc("test", "None", 8085, ns="test2"),
    svc("test", "", 8085, ns="test2"),
    svc("not-special", "1.2.3.8", 8088, ns="default"),
    svc("not-special", "None", 8088, ns="default"),
    svc("not-special", "", 8088, ns="default"),
]


def svc_vars(prefix: str, ip: str, port: int) -> list[tuple[str, str]]:
    return [(k.replace("KUBERNETES", prefix), v) for k, v in kube_vars(ip, port)]


def upstream_env(ns: str, links: bool, env: tuple[EnvVar, ...] = ()) -> list[tuple[str, str]]:
    pod = PodContext("dapi-test-pod-name", ns, ip="1.2.3.4", node_name="node-name",
                     enable_service_links=links)
    return container_env(pod, Container("c", env=env), UPSTREAM_SERVICES)


def test_upstream_api_server_y_kubelet_y() -> None:
    """Declared variables equal to the service ones: each name once, declared value."""
    declared = (EnvVar("FOO", "BAR"), *(EnvVar(k, v) for k, v in svc_vars("TEST", "1.2.3.3",
                                                                          8083)))
    got = upstream_env("test1", False, declared)
    assert sorted(got) == sorted([("FOO", "BAR"), *svc_vars("TEST", "1.2.3.3", 8083),
                                  *kube_vars("1.2.3.1", 8081)])
    assert names(got)[:8] == [e.name for e in declared]


def test_upstream_api_server_n_kubelet_y_service_env_vars() -> None:
    got = upstream_env("test1", True, (EnvVar("FOO", "BAZ"),))
    assert sorted(got) == sorted([("FOO", "BAZ"), *svc_vars("TEST", "1.2.3.3", 8083),
                                  *kube_vars("1.2.3.1", 8081)])


def test_upstream_master_service_in_pod_ns() -> None:
    assert sorted(upstream_env("test2", False, (EnvVar("FOO", "ZAP"),))) == \
        sorted([("FOO", "ZAP"), *kube_vars("1.2.3.1", 8081)])
    assert sorted(upstream_env("test2", True, (EnvVar("FOO", "ZAP"),))) == \
        sorted([("FOO", "ZAP"), *svc_vars("TEST", "1.2.3.5", 8085),
                *kube_vars("1.2.3.4", 8084)])


def test_upstream_pod_in_master_service_ns() -> None:
    assert upstream_env("default", False) == kube_vars("1.2.3.1", 8081)
    assert sorted(upstream_env("default", True)) == \
        sorted([*svc_vars("NOT_SPECIAL", "1.2.3.8", 8088), *kube_vars("1.2.3.1", 8081)])


def test_upstream_env_expansion_service_env_vars() -> None:
    env = (
        EnvVar("TEST_LITERAL", "test-test-test"),
        EnvVar("POD_NAME", value_from={"fieldRef": {"apiVersion": "v1",
                                                    "fieldPath": "metadata.name"}}),
        EnvVar("OUT_OF_ORDER_TEST", "$(OUT_OF_ORDER_TARGET)"),
        EnvVar("OUT_OF_ORDER_TARGET", "FOO"),
        EnvVar("EMPTY_VAR"),
        EnvVar("EMPTY_TEST", "foo-$(EMPTY_VAR)"),
        EnvVar("POD_NAME_TEST2", "test2-$(POD_NAME)"),
        EnvVar("POD_NAME_TEST3", "$(POD_NAME_TEST2)-3"),
        EnvVar("LITERAL_TEST", "literal-$(TEST_LITERAL)"),
        EnvVar("SERVICE_VAR_TEST", "$(TEST_SERVICE_HOST):$(TEST_SERVICE_PORT)"),
        EnvVar("TEST_UNDEFINED", "$(UNDEFINED_VAR)"),
    )
    expected = [
        ("TEST_LITERAL", "test-test-test"),
        ("POD_NAME", "dapi-test-pod-name"),
        ("POD_NAME_TEST2", "test2-dapi-test-pod-name"),
        ("POD_NAME_TEST3", "test2-dapi-test-pod-name-3"),
        ("LITERAL_TEST", "literal-test-test-test"),
        *svc_vars("TEST", "1.2.3.3", 8083),
        ("SERVICE_VAR_TEST", "1.2.3.3:8083"),
        ("OUT_OF_ORDER_TEST", "$(OUT_OF_ORDER_TARGET)"),
        ("OUT_OF_ORDER_TARGET", "FOO"),
        ("TEST_UNDEFINED", "$(UNDEFINED_VAR)"),
        ("EMPTY_VAR", ""),
        ("EMPTY_TEST", "foo-"),
        *kube_vars("1.2.3.1", 8081),
    ]
    got = upstream_env("test1", True, env)
    assert sorted(got) == sorted(expected)
    assert names(got)[:len(env)] == [e.name for e in env]


def test_upstream_downward_api_pod() -> None:
    def ref(path: str) -> dict[str, object]:
        return {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}

    env = tuple(EnvVar(n, value_from=ref(p)) for n, p in (
        ("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace"),
        ("POD_NODE_NAME", "spec.nodeName"), ("POD_IP", "status.podIP"),
        ("HOST_IP", "status.hostIP")))
    pod = PodContext("dapi-test-pod-name", "downward-api", ip="1.2.3.4",
                     node_name="node-name", host_ip="127.0.0.1", enable_service_links=False)
    got = container_env(pod, Container("c", env=env), [])  # nilLister: no services
    assert got == [("POD_NAME", "dapi-test-pod-name"), ("POD_NAMESPACE", "downward-api"),
                   ("POD_NODE_NAME", "node-name"), ("POD_IP", "1.2.3.4"),
                   ("HOST_IP", "127.0.0.1")]


# ---------------------------------------------------------------- upstream expansion table

_CONTEXT = {"VAR_A": "A", "VAR_B": "B", "VAR_C": "C", "VAR_REF": "$(VAR_A)", "VAR_EMPTY": ""}


@pytest.mark.parametrize(("text", "want"), [
    ("$(VAR_A)", "A"),
    ("$(VAR_A)-$(VAR_A)", "A-A"),
    ("$(VAR_A)-1", "A-1"),
    ("___$(VAR_B)___", "___B___"),
    ("___$(VAR_C)", "___C"),
    ("$(VAR_A)_$(VAR_B)_$(VAR_C)", "A_B_C"),
    ("$$(VAR_B)_$(VAR_A)", "$(VAR_B)_A"),
    ("$$(VAR_A)_$$(VAR_B)", "$(VAR_A)_$(VAR_B)"),
    ("f000-$$VAR_A", "f000-$VAR_A"),
    ("foo\\$(VAR_C)bar", "foo\\Cbar"),
    ("foo\\\\$(VAR_C)bar", "foo\\\\Cbar"),
    ("foo\\\\\\\\$(VAR_A)bar", "foo\\\\\\\\Abar"),
    ("$(VAR_A$(VAR_B))", "$(VAR_A$(VAR_B))"),
    ("$(VAR_A$(VAR_B)", "$(VAR_A$(VAR_B)"),
    ("$(VAR_REF)", "$(VAR_A)"),
    ("%%$(VAR_REF)--$(VAR_REF)%%", "%%$(VAR_A)--$(VAR_A)%%"),
    ("foo$(VAR_EMPTY)bar", "foobar"),
    ("foo$(VAR_Awhoops!", "foo$(VAR_Awhoops!"),
    ("f00__(VAR_A)__", "f00__(VAR_A)__"),
    ("$?_boo_$!", "$?_boo_$!"),
    ("$VAR_A", "$VAR_A"),
    ("$(VAR_DNE)", "$(VAR_DNE)"),
    ("$$$$$$(BIG_MONEY)", "$$$(BIG_MONEY)"),
    ("$$$$$$(VAR_A)", "$$$(VAR_A)"),
    ("$$$$$$$(GOOD_ODDS)", "$$$$(GOOD_ODDS)"),
    ("$$$$$$$(VAR_A)", "$$$A"),
    ("$VAR_A)", "$VAR_A)"),
    ("${VAR_A}", "${VAR_A}"),
    ("$(VAR_B)_______$(A", "B_______$(A"),
    ("$(VAR_C)_______$(", "C_______$("),
    ("$(VAR_A)foobarzab$", "Afoobarzab$"),
    ("foo-\\$(VAR_A", "foo-\\$(VAR_A"),
    ("--$($($($($--", "--$($($($($--"),
    ("$($($($($--foo$(", "$($($($($--foo$("),
    ("foo0--$($($($(", "foo0--$($($($("),
    ("$(foo$$var)", "$(foo$$var)"),
    ("\n", "\n"),
])
def test_upstream_expansion_table(text: str, want: str) -> None:
    assert expand(text, _CONTEXT) == want
