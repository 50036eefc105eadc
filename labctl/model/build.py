"""Plain, schema-checked data → the typed objects of `objects.py`, with API defaults.

The input holds only well-typed values (the schema walk dropped the rest and reported
them), so these functions just pick fields and fill in Kubernetes' defaults. Missing
required values get neutral placeholders: the load fails anyway in that case.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from labctl.model.objects import (
    EMPTY,
    Container,
    ContainerPort,
    Deployment,
    DeploymentStrategy,
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    EnvVar,
    HostAlias,
    Lab,
    LabelSelector,
    Namespace,
    NodeSpec,
    ObjectMeta,
    Pod,
    PodDNSConfig,
    PodDNSConfigOption,
    PodSpec,
    PodTemplate,
    Probe,
    Service,
    ServicePort,
    Source,
    StatefulSet,
    TargetRef,
)

Data = Mapping[str, Any]
NO_DATA: Data = MappingProxyType({})

# Labels every kubelet puts on its Node, so `nodeSelector: {kubernetes.io/hostname: node2}`
# works as it does in a real cluster.
HOSTNAME_LABEL = "kubernetes.io/hostname"
OS_LABEL = "kubernetes.io/os"


def frozen(data: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(data)) if data else EMPTY


def sub(data: Data, key: str) -> Data:
    value = data.get(key)
    return value if isinstance(value, Mapping) else NO_DATA


def items(data: Data, key: str) -> list[Any]:
    value = data.get(key)
    return value if isinstance(value, list) else []


def meta(data: Data) -> ObjectMeta:
    m = sub(data, "metadata")
    return ObjectMeta(name=m.get("name", ""), namespace=m.get("namespace") or "default",
                      labels=frozen(m.get("labels")), annotations=frozen(m.get("annotations")))


# ---------------------------------------------------------------- pods


def probe(data: Data) -> Probe | None:
    if not data:
        return None
    handlers = [name for name in ("httpGet", "tcpSocket", "exec", "grpc") if name in data]
    kind = handlers[0] if handlers else ""
    handler = sub(data, kind) if kind else NO_DATA

    def number(key: str, default: int) -> int:
        # Kubernetes defaults zero-valued probe timings too.
        return data.get(key) or default

    return Probe(
        kind=kind,
        port=handler.get("port"),
        path=handler.get("path") or "/",
        command=tuple(handler.get("command", ())),
        initial_delay_seconds=data.get("initialDelaySeconds", 0),
        period_seconds=number("periodSeconds", 10),
        timeout_seconds=number("timeoutSeconds", 1),
        success_threshold=number("successThreshold", 1),
        failure_threshold=number("failureThreshold", 3),
        host=handler.get("host") or "",
        scheme=handler.get("scheme") or "HTTP",
        http_headers=tuple((h.get("name", ""), h.get("value", ""))
                           for h in items(handler, "httpHeaders") if isinstance(h, Mapping)),
    )


def container(data: Data) -> Container:
    return Container(
        name=data.get("name", ""),
        image=data.get("image", ""),
        command=tuple(data.get("command", ())),
        args=tuple(data.get("args", ())),
        ports=tuple(ContainerPort(p.get("containerPort", 0), p.get("name", ""),
                                  p.get("protocol", "TCP")) for p in items(data, "ports")),
        env=tuple(EnvVar(e.get("name", ""), e.get("value"),
                         e.get("valueFrom") if isinstance(e.get("valueFrom"), Mapping) else None)
                  for e in items(data, "env")),
        readiness_probe=probe(sub(data, "readinessProbe")),
        liveness_probe=probe(sub(data, "livenessProbe")),
        startup_probe=probe(sub(data, "startupProbe")),
    )


def dns_config(data: Data) -> PodDNSConfig | None:
    if "dnsConfig" not in data:
        return None
    written = sub(data, "dnsConfig")
    return PodDNSConfig(
        nameservers=tuple(items(written, "nameservers")),
        searches=tuple(items(written, "searches")),
        options=tuple(PodDNSConfigOption(o.get("name", ""), o.get("value"))
                      for o in items(written, "options")),
    )


def pod_spec(data: Data) -> PodSpec:
    return PodSpec(
        containers=tuple(container(c) for c in items(data, "containers")),
        node_name=data.get("nodeName", ""),
        node_selector=frozen(data.get("nodeSelector")),
        hostname=data.get("hostname", ""),
        subdomain=data.get("subdomain", ""),
        enable_service_links=data.get("enableServiceLinks", True),
        restart_policy=data.get("restartPolicy", "Always"),
        termination_grace_period_seconds=data.get("terminationGracePeriodSeconds", 30),
        dns_policy=data.get("dnsPolicy", "ClusterFirst"),
        dns_config=dns_config(data),
        host_aliases=tuple(HostAlias(a.get("ip", ""), tuple(a.get("hostnames", ())))
                           for a in items(data, "hostAliases")),
    )


def pod(data: Data, source: Source) -> Pod:
    return Pod(meta(data), pod_spec(sub(data, "spec")),
               pod_ip=sub(data, "status").get("podIP", ""), source=source)


def selector(data: Data) -> LabelSelector:
    expressions = tuple((e.get("key", ""), e.get("operator", ""), tuple(e.get("values", ())))
                        for e in items(data, "matchExpressions"))
    return LabelSelector(frozen(data.get("matchLabels")), expressions)


def template(data: Data) -> PodTemplate:
    m = sub(data, "metadata")
    return PodTemplate(frozen(m.get("labels")), frozen(m.get("annotations")),
                       pod_spec(sub(data, "spec")))


def deployment(data: Data, source: Source) -> Deployment:
    spec = sub(data, "spec")
    strategy = sub(spec, "strategy")
    rolling = sub(strategy, "rollingUpdate")
    defaults = DeploymentStrategy()
    return Deployment(meta(data), spec.get("replicas", 1), selector(sub(spec, "selector")),
                      template(sub(spec, "template")), source=source,
                      strategy=DeploymentStrategy(
                          strategy.get("type", defaults.type),
                          rolling.get("maxSurge", defaults.max_surge),
                          rolling.get("maxUnavailable", defaults.max_unavailable)),
                      min_ready_seconds=spec.get("minReadySeconds", 0))


def statefulset(data: Data, source: Source) -> StatefulSet:
    spec = sub(data, "spec")
    strategy = sub(spec, "updateStrategy")
    return StatefulSet(meta(data), spec.get("replicas", 1), selector(sub(spec, "selector")),
                       template(sub(spec, "template")), spec.get("serviceName", ""),
                       source=source, update_strategy=strategy.get("type", "RollingUpdate"),
                       partition=sub(strategy, "rollingUpdate").get("partition", 0))


# ---------------------------------------------------------------- services


def service_port(data: Data) -> ServicePort:
    port = data.get("port", 0)
    return ServicePort(port=port, name=data.get("name", ""),
                       protocol=data.get("protocol", "TCP"),
                       target_port=data.get("targetPort", port),
                       node_port=data.get("nodePort", 0),
                       app_protocol=data.get("appProtocol", ""))


def service(data: Data, source: Source) -> Service:
    spec = sub(data, "spec")
    cluster_ips = items(spec, "clusterIPs")
    affinity = sub(sub(spec, "sessionAffinityConfig"), "clientIP")
    ingress = items(sub(sub(data, "status"), "loadBalancer"), "ingress")
    return Service(
        meta(data),
        type=spec.get("type", "ClusterIP"),
        # An empty selector selects nothing, like a missing one (the API stores it as nil).
        selector=frozen(spec["selector"]) if spec.get("selector") else None,
        ports=tuple(service_port(p) for p in items(spec, "ports")),
        cluster_ip=spec.get("clusterIP") or (cluster_ips[0] if cluster_ips else ""),
        external_ips=tuple(items(spec, "externalIPs")),
        external_name=spec.get("externalName", ""),
        session_affinity=spec.get("sessionAffinity", "None"),
        session_affinity_timeout=affinity.get("timeoutSeconds", 10800),
        external_traffic_policy=spec.get("externalTrafficPolicy", "Cluster"),
        internal_traffic_policy=spec.get("internalTrafficPolicy", "Cluster"),
        load_balancer_ip=spec.get("loadBalancerIP", ""),
        load_balancer_source_ranges=tuple(items(spec, "loadBalancerSourceRanges")),
        load_balancer_ingress=tuple(i["ip"] for i in ingress if i.get("ip")),
        publish_not_ready_addresses=spec.get("publishNotReadyAddresses", False),
        health_check_node_port=spec.get("healthCheckNodePort", 0),
        source=source,
    )


def endpoint(data: Data) -> Endpoint:
    conditions = sub(data, "conditions")
    ref = sub(data, "targetRef")
    return Endpoint(
        addresses=tuple(data.get("addresses", ())),
        conditions=EndpointConditions(conditions.get("ready"), conditions.get("serving"),
                                      conditions.get("terminating")),
        hostname=data.get("hostname", ""),
        node_name=data.get("nodeName", ""),
        zone=data.get("zone", ""),
        target_ref=TargetRef(ref.get("kind", ""), ref.get("name", ""),
                             ref.get("namespace", "")) if ref else None,
    )


def endpoint_slice(data: Data, source: Source) -> EndpointSlice:
    return EndpointSlice(
        meta(data),
        address_type=data.get("addressType", "IPv4"),
        endpoints=tuple(endpoint(e) for e in items(data, "endpoints")),
        ports=tuple(EndpointPort(p.get("port"), p.get("name", ""), p.get("protocol", "TCP"),
                                 p.get("appProtocol", "")) for p in items(data, "ports")),
        source=source,
    )


def namespace(data: Data, source: Source) -> Namespace:
    m = sub(data, "metadata")
    return Namespace(m.get("name", ""), frozen(m.get("labels")), source=source)


# ---------------------------------------------------------------- the lab


def node(name: str, labels: Mapping[str, str] | None = None) -> NodeSpec:
    return NodeSpec(name, frozen({HOSTNAME_LABEL: name, OS_LABEL: "linux", **(labels or {})}))


def lab(data: Data, name: str, source: Source) -> Lab:
    spec = sub(data, "spec")
    defaults = Lab(name)
    if "nodes" in spec:
        nodes = tuple(node(n.get("name", ""), n.get("labels")) for n in items(spec, "nodes"))
    else:
        nodes = tuple(node(n.name, n.labels) for n in defaults.nodes)
    return Lab(
        name=name,
        nodes=nodes,
        pod_cidr=spec.get("podCIDR", defaults.pod_cidr),
        pod_cidr_per_node=spec.get("podCIDRPerNode", defaults.pod_cidr_per_node),
        service_cidr=spec.get("serviceCIDR", defaults.service_cidr),
        node_cidr=spec.get("nodeCIDR", defaults.node_cidr),
        load_balancer_cidr=spec.get("loadBalancerCIDR", defaults.load_balancer_cidr),
        proxy_mode=spec.get("proxyMode", defaults.proxy_mode),
        iptables_backend=spec.get("iptablesBackend", defaults.iptables_backend),
        ipvs_scheduler=spec.get("ipvsScheduler", defaults.ipvs_scheduler),
        cluster_domain=spec.get("clusterDomain", defaults.cluster_domain),
        source=source,
    )


BUILDERS = {
    "Pod": pod,
    "Deployment": deployment,
    "StatefulSet": statefulset,
    "Service": service,
    "EndpointSlice": endpoint_slice,
    "Namespace": namespace,
}
