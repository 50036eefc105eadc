"""ClusterState as Kubernetes-shaped objects (pure): what `labctl get -o json|yaml` prints."""

from __future__ import annotations

import time
from collections.abc import Mapping
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


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _container_status(c: Mapping[str, Any]) -> dict[str, Any]:
    """One container as the kubelet reports it (state, restarts, the last exit)."""
    word = str(c.get("state", "Waiting"))
    started = float(c.get("started") or 0.0)
    if word == "Running":
        st: dict[str, Any] = {"running": {"startedAt": _rfc3339(started)} if started else {}}
    elif word in ("Completed", "Error"):
        st = {"terminated": {"exitCode": int(c.get("lastExit") or 0), "reason": word}}
    else:  # Waiting, CrashLoopBackOff, ContainerCreating
        st = {"waiting": {"reason": word if word != "Waiting" else "ContainerCreating"}}
    out = {"name": c.get("name", ""), "ready": bool(c.get("ready")),
           "restartCount": int(c.get("restarts", 0)), "started": word == "Running",
           "state": st}
    if c.get("lastExit") is not None and int(c.get("restarts", 0)):
        out["lastState"] = {"terminated": {"exitCode": int(c["lastExit"]),
                                           "reason": str(c.get("lastReason") or "Error")}}
    return out


def _pod_status(pod: PodState, host_ip: str, live: Mapping[str, Any] | None
                ) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Running", "hostIP": host_ip, "podIP": pod.ip,
                              "podIPs": [{"ip": pod.ip}]}
    if live is None:  # no agent to ask: what the lab was built as
        return status
    containers = [_container_status(c) for c in live.get("containers", [])]
    if live.get("status") == "ContainerCreating" or not containers:
        status["phase"] = "Pending"
    ready = "True" if live.get("ready") else "False"
    all_ready = "True" if containers and all(c["ready"] for c in containers) else "False"
    status["conditions"] = [
        {"type": "PodScheduled", "status": "True"}, {"type": "Initialized", "status": "True"},
        {"type": "ContainersReady", "status": all_ready}, {"type": "Ready", "status": ready}]
    if live.get("created"):
        status["startTime"] = _rfc3339(float(live["created"]))
    status["containerStatuses"] = containers
    return status


def pod_object(state: ClusterState, pod: PodState,
               live: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The Pod; `live` (the agent's view of it: containers, readiness) fills its status
    as the kubelet would, else the status says only where it runs."""
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
            "status": _pod_status(pod, node.ip, live)}


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
