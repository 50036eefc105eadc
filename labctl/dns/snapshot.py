"""A zone from manifests read as a snapshot of a cluster (`labctl dns serve`).

Services keep the clusterIPs they state (compile allocates only the missing ones);
EndpointSlices are taken as written, plus the ones the controller derives from Pods for
selector Services that have none written; Pods keep the status.podIP they state (else
the address compile gives them), in the derived slices too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from labctl.cluster.compile import compile_state
from labctl.cluster.endpointslices import MANAGED_BY
from labctl.cluster.state import ClusterState
from labctl.dns.zone import Zone
from labctl.errors import Diagnostic
from labctl.model.objects import EndpointSlice

MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"


@dataclass(frozen=True)
class PodAddress:
    namespace: str
    name: str
    ip: str


def zone_from_files(paths: Sequence[str], domain: str | None = None, ttl: int = 5,
                    serial: int = 1, ns_ips: Sequence[str] = ()
                    ) -> tuple[Zone, ClusterState, list[Diagnostic]]:
    from labctl.model.load import load_topology

    topology, warnings = load_topology(paths)
    state = compile_state(topology)
    stated = {f"{p.meta.namespace}/{p.meta.name}": p.pod_ip for p in topology.pods if p.pod_ip}
    written = {(s.meta.namespace, s.service_name) for s in topology.endpoint_slices}
    slices: list[EndpointSlice] = []
    for eps in state.endpoint_slices:
        if eps.meta.labels.get(MANAGED_BY_LABEL) == MANAGED_BY:
            if (eps.meta.namespace, eps.service_name) in written:
                continue  # slices written for this Service stand instead
            eps = _with_stated_ips(eps, stated)
        slices.append(eps)
    pods = [PodAddress(p.namespace, p.name, stated.get(p.key, p.ip)) for p in state.pods]
    zone = Zone.build(state.services, slices, pods, state.namespaces,
                      domain or state.lab.cluster_domain, ttl, serial=serial, ns_ips=ns_ips)
    return zone, state, warnings


def _with_stated_ips(eps: EndpointSlice, stated: dict[str, str]) -> EndpointSlice:
    endpoints = []
    for ep in eps.endpoints:
        ref = ep.target_ref
        key = f"{ref.namespace or eps.meta.namespace}/{ref.name}" if ref else ""
        if ref and ref.kind == "Pod" and key in stated:
            ep = replace(ep, addresses=(stated[key],))
        endpoints.append(ep)
    return replace(eps, endpoints=tuple(endpoints))
