"""What the semantic checks share: the topology, the reporter, and position helpers."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from labctl.errors import Pos
from labctl.model.objects import (
    Deployment,
    EndpointSlice,
    Lab,
    Namespace,
    NodeSpec,
    Pod,
    PodSpec,
    Service,
    StatefulSet,
    Topology,
)
from labctl.model.report import Reporter, object_label

Object = Lab | Namespace | Pod | Deployment | StatefulSet | Service | EndpointSlice
Workload = Deployment | StatefulSet


def label_of(obj: Object) -> str:
    kind = type(obj).__name__
    if isinstance(obj, Lab | Namespace):
        return object_label(kind, obj.name)
    return object_label(kind, obj.meta.name, obj.meta.namespace)


def show_labels(labels: Mapping[str, str]) -> str:
    """{app: web, tier: front} → "app=web,tier=front" (how kubectl shows selectors)."""
    return ",".join(f"{k}={v}" for k, v in labels.items()) or "(none)"


def network(text: str) -> ipaddress.IPv4Network | None:
    """The network of a CIDR, or None when it is invalid (already reported)."""
    if "/" not in text:
        return None
    try:
        return ipaddress.IPv4Network(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class PodShape:
    """A Pod, or the template of a workload: what a Service selector can match."""

    owner: Pod | Workload
    labels: dict[str, str]
    spec: PodSpec
    prefix: str  # path of the PodSpec in its object: "spec" or "spec.template.spec"


@dataclass
class Context:
    top: Topology
    report: Reporter
    complete: bool  # every document was read; cross-object checks are meaningful

    def pos(self, obj: Object, path: str) -> Pos | None:
        return obj.source.at(path)

    def written(self, obj: Object, path: str) -> bool:
        return path in obj.source.where

    def error(self, obj: Object, path: str, message: str, hint: str = "") -> None:
        self.report.error(self.pos(obj, path), label_of(obj), path, message, hint)

    def warning(self, obj: Object, path: str, message: str, hint: str = "") -> None:
        self.report.warning(self.pos(obj, path), label_of(obj), path, message, hint)

    def where(self, obj: Object, path: str) -> str:
        """ "file:line:col" of a field, for messages that point at a second place."""
        pos = self.pos(obj, path)
        return str(pos) if pos else label_of(obj)

    @property
    def nodes(self) -> tuple[NodeSpec, ...]:
        return self.top.lab.nodes

    def workloads(self) -> Iterator[Workload]:
        yield from self.top.deployments
        yield from self.top.statefulsets

    def pod_shapes(self) -> Iterator[PodShape]:
        for pod in self.top.pods:
            yield PodShape(pod, dict(pod.meta.labels), pod.spec, "spec")
        for workload in self.workloads():
            template = workload.template
            yield PodShape(workload, dict(template.labels), template.spec,
                           "spec.template.spec")
