"""ClusterState as Kubernetes-shaped objects (pure): what `labctl get -o json|yaml` prints."""

from __future__ import annotations

from typing import Any

from labctl.cluster.state import ClusterState, NodeState, PodState, ServiceState
from labctl.model.objects import EndpointSlice


def _meta(name: str, namespace: str | None = None, labels: Any = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = dict(labels)
    return meta


def pod_object(state: ClusterState, pod: PodState) -> dict[str, Any]:
    node = state.node(pod.node)
    containers = [{
        "name": c.name,
        **({"command": list(c.command)} if c.command else {}),
        **({"args": list(c.args)} if c.args else {}),
        "ports": [{"name": p.name, "containerPort": p.container_port, "protocol": p.protocol}
                  if p.name else {"containerPort": p.container_port, "protocol": p.protocol}
                  for p in c.ports],
    } for c in pod.spec.containers]
    meta = _meta(pod.name, pod.namespace, pod.labels)
    if pod.owner:
        meta["ownerReferences"] = [{"kind": pod.owner.kind, "name": pod.owner.name}]
    spec: dict[str, Any] = {"nodeName": pod.node, "containers": containers}
    if pod.spec.hostname:
        spec["hostname"] = pod.spec.hostname
    if pod.spec.subdomain:
        spec["subdomain"] = pod.spec.subdomain
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec,
            "status": {"phase": "Running", "hostIP": node.ip, "podIP": pod.ip,
                       "podIPs": [{"ip": pod.ip}]}}


def node_object(node: NodeState) -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": node.name, **node.labels}
    return {"apiVersion": "v1", "kind": "Node", "metadata": _meta(node.name, labels=labels),
            "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": node.ip},
                                     {"type": "Hostname", "address": node.name}]}}


def service_object(svc: ServiceState) -> dict[str, Any]:
    s = svc.service
    ports = []
    for p, alloc in zip(s.ports, svc.ports, strict=True):
        port: dict[str, Any] = {"protocol": p.protocol, "port": p.port,
                                "targetPort": p.target_port if p.target_port is not None
                                else p.port}
        if p.name:
            port["name"] = p.name
        if alloc.node_port:
            port["nodePort"] = alloc.node_port
        ports.append(port)
    spec: dict[str, Any] = {"type": s.type, "ports": ports}
    if s.selector is not None:
        spec["selector"] = dict(s.selector)
    if svc.cluster_ip:
        spec["clusterIP"] = svc.cluster_ip
        spec["clusterIPs"] = [svc.cluster_ip]
    if s.external_name:
        spec["externalName"] = s.external_name
    if s.external_ips:
        spec["externalIPs"] = list(s.external_ips)
    spec["sessionAffinity"] = s.session_affinity
    if s.type in ("NodePort", "LoadBalancer") or s.external_ips:
        spec["externalTrafficPolicy"] = s.external_traffic_policy
    if svc.health_check_node_port:
        spec["healthCheckNodePort"] = svc.health_check_node_port
    status: dict[str, Any] = {"loadBalancer": {}}
    if svc.load_balancer_ip:
        status["loadBalancer"] = {"ingress": [{"ip": svc.load_balancer_ip, "ipMode": "VIP"}]}
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _meta(svc.name, svc.namespace, s.meta.labels),
            "spec": spec, "status": status}


def endpoint_slice_object(es: EndpointSlice) -> dict[str, Any]:
    endpoints = []
    for ep in es.endpoints:
        item: dict[str, Any] = {"addresses": list(ep.addresses), "conditions": {
            k: v for k, v in (("ready", ep.conditions.ready), ("serving", ep.conditions.serving),
                              ("terminating", ep.conditions.terminating)) if v is not None}}
        if ep.hostname:
            item["hostname"] = ep.hostname
        if ep.node_name:
            item["nodeName"] = ep.node_name
        if ep.zone:
            item["zone"] = ep.zone
        if ep.target_ref:
            item["targetRef"] = {"kind": ep.target_ref.kind, "name": ep.target_ref.name,
                                 "namespace": ep.target_ref.namespace}
        endpoints.append(item)
    ports = [{k: v for k, v in (("name", p.name), ("port", p.port), ("protocol", p.protocol))
              if v is not None} for p in es.ports]
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": _meta(es.meta.name, es.meta.namespace, es.meta.labels),
            "addressType": es.address_type, "endpoints": endpoints, "ports": ports}


def service_port_text(svc: ServiceState) -> str:
    """kubectl's PORT(S) column: 80/TCP, 80:30080/TCP."""
    parts = []
    for p in svc.ports:
        parts.append(f"{p.port}:{p.node_port}/{p.protocol}" if p.node_port
                     else f"{p.port}/{p.protocol}")
    return ",".join(parts) or "<none>"


def external_ip_text(svc: ServiceState) -> str:
    """kubectl's EXTERNAL-IP column: the LoadBalancer IP, externalIPs or externalName."""
    return (svc.load_balancer_ip or ",".join(svc.service.external_ips)
            or svc.service.external_name or "<none>")


def endpoints_text(state: ClusterState, svc: ServiceState, limit: int = 3) -> str:
    """kubectl's ENDPOINTS column: ip:port list, '+ N more...' past three."""
    items = []
    for es in state.endpoint_slices:
        if es.meta.namespace != svc.namespace or es.service_name != svc.name:
            continue
        for ep in es.endpoints:
            if ep.conditions.ready is False:
                continue
            items += [f"{ep.addresses[0]}:{p.port}" for p in es.ports if p.port]
    if not items:
        return "<none>"
    shown = ",".join(items[:limit])
    return shown + (f" + {len(items) - limit} more..." if len(items) > limit else "")
