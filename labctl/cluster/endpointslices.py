"""The EndpointSlice controller, as a pure function of Services and placed pods.

For a Service with a selector: the pods of its namespace whose labels match, each
Service port's targetPort resolved against the pod's containers (a named port a pod
does not declare leaves that pod out, as upstream does). Pods whose resolved ports
differ go into different slices, one slice per distinct port mapping. Services
without a selector use the EndpointSlices the user wrote.

Each endpoint's conditions are the controller's: serving = the pod is Ready;
terminating = the pod is being deleted; ready = the Service publishes not-ready
addresses, or serving and not terminating. Terminating pods stay in their slices.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

from labctl.cluster.state import NodeState, PodState, ServiceState
from labctl.model.objects import (
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    ObjectMeta,
    TargetRef,
)

MANAGED_BY = "endpointslice-controller.k8s.io"


def resolve_target_port(target: int | str | None, port: int, pod: PodState,
                        protocol: str) -> int | None:
    if target is None:
        return port
    if isinstance(target, int):
        return target
    for container in pod.spec.containers:
        for cp in container.ports:
            if cp.name == target and cp.protocol == protocol:
                return cp.container_port
    return None


def endpoint_conditions(serving: bool, terminating: bool,
                        publish_not_ready_addresses: bool) -> EndpointConditions:
    """An endpoint's conditions for a pod that is Ready (`serving`) or not, terminating
    or not, as the EndpointSlice controller sets them."""
    return EndpointConditions(
        ready=publish_not_ready_addresses or (serving and not terminating),
        serving=serving, terminating=terminating)


def _slice_name(service: str, index: int) -> str:
    digest = hashlib.sha256(f"{service}/{index}".encode()).hexdigest()
    return f"{service}-{digest[:5]}"


def derive(svc: ServiceState, pods: Sequence[PodState],
           ready: Mapping[str, bool] | None = None,
           nodes: Iterable[NodeState] = ()) -> list[EndpointSlice]:
    """The slices the controller would write for one Service (empty list: no selector)."""
    spec = svc.service
    if spec.selector is None or spec.type == "ExternalName":
        return []
    zones = {n.name: n.labels.get("topology.kubernetes.io/zone", "") for n in nodes}
    selected = [p for p in pods if p.namespace == svc.namespace
                and all(p.labels.get(k) == v for k, v in spec.selector.items())]
    groups: dict[tuple[tuple[str, str, int | None], ...], list[PodState]] = {}
    for pod in sorted(selected, key=lambda p: p.name):
        mapping = tuple((p.name, p.protocol, resolve_target_port(p.target_port, p.port, pod,
                                                                 p.protocol))
                        for p in spec.ports)
        groups.setdefault(mapping, []).append(pod)
    if not groups:
        mapping = tuple((p.name, p.protocol, None) for p in spec.ports)
        groups[mapping] = []
    slices = []
    for index, (mapping, members) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[0]))):
        endpoints = []
        for pod in members:
            serving = True if ready is None else ready.get(pod.key, True)
            hostname = pod.spec.hostname if (pod.spec.hostname
                                             and pod.spec.subdomain == svc.name) else ""
            endpoints.append(Endpoint(
                addresses=(pod.ip,),
                conditions=endpoint_conditions(serving, pod.terminating,
                                               spec.publish_not_ready_addresses),
                hostname=hostname,
                node_name=pod.node,
                zone=zones.get(pod.node, ""),
                target_ref=TargetRef("Pod", pod.name, pod.namespace),
            ))
        ports = tuple(EndpointPort(port=target, name=name, protocol=protocol)
                      for name, protocol, target in mapping if target is not None)
        labels = {"kubernetes.io/service-name": svc.name,
                  "endpointslice.kubernetes.io/managed-by": MANAGED_BY}
        slices.append(EndpointSlice(
            meta=ObjectMeta(name=_slice_name(svc.name, index), namespace=svc.namespace,
                            labels=labels),
            address_type="IPv4", endpoints=tuple(endpoints), ports=ports,
            source=spec.source))
    return slices
