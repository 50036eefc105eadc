"""Small builders for model objects, so unit tests read like manifests."""

from __future__ import annotations

from labctl.model.objects import (
    Container,
    ContainerPort,
    Deployment,
    Lab,
    LabelSelector,
    NodeSpec,
    ObjectMeta,
    Pod,
    PodSpec,
    PodTemplate,
    Service,
    ServicePort,
    StatefulSet,
    Topology,
)


def lab(*nodes: str, **kw: object) -> Lab:
    specs = tuple(NodeSpec(n) for n in (nodes or ("node1", "node2")))
    return Lab(name=str(kw.pop("name", "t")), nodes=specs, **kw)  # type: ignore[arg-type]


def container(name: str = "app", *ports: int | tuple[int, str],
              command: tuple[str, ...] = ()) -> Container:
    cps = tuple(ContainerPort(p) if isinstance(p, int) else ContainerPort(p[0], p[1])
                for p in ports)
    return Container(name=name, ports=cps, command=command)


def pod(name: str, labels: dict[str, str] | None = None, node: str = "",
        ns: str = "default", containers: tuple[Container, ...] | None = None,
        node_selector: dict[str, str] | None = None) -> Pod:
    spec = PodSpec(containers=containers or (container("app", 8080),), node_name=node,
                   node_selector=node_selector or {})
    return Pod(ObjectMeta(name, ns, labels or {}), spec)


def deployment(name: str, replicas: int, labels: dict[str, str],
               containers: tuple[Container, ...] | None = None, ns: str = "default") -> Deployment:
    tpl = PodTemplate(labels=labels, annotations={},
                      spec=PodSpec(containers=containers or (container("app", (8080, "http")),)))
    return Deployment(ObjectMeta(name, ns), replicas, LabelSelector(labels), tpl)


def statefulset(name: str, replicas: int, labels: dict[str, str], service: str) -> StatefulSet:
    tpl = PodTemplate(labels=labels, annotations={},
                      spec=PodSpec(containers=(container("app", 8080),)))
    return StatefulSet(ObjectMeta(name), replicas, LabelSelector(labels), tpl,
                       service_name=service)


def service(name: str, selector: dict[str, str] | None, *ports: ServicePort,
            ns: str = "default", **kw: object) -> Service:
    return Service(ObjectMeta(name, ns), selector=selector,
                   ports=ports or (ServicePort(80, target_port=8080),), **kw)  # type: ignore


def topology(the_lab: Lab | None = None, **kw: object) -> Topology:
    return Topology(lab=the_lab or lab(), **kw)  # type: ignore[arg-type]
