"""`labctl get`: kubectl-like tables and -o json|yaml of a running lab."""

from __future__ import annotations

from typing import Any

from labctl.cli.output import age, as_list, table
from labctl.cluster import views
from labctl.cluster.state import ClusterState

KINDS = {"pods": "pods", "pod": "pods", "po": "pods", "nodes": "nodes", "node": "nodes",
         "no": "nodes", "services": "services", "service": "services", "svc": "services",
         "endpoints": "endpoints", "ep": "endpoints", "endpointslices": "endpointslices",
         "endpointslice": "endpointslices", "deployments": "deployments",
         "deployment": "deployments", "deploy": "deployments",
         "replicasets": "replicasets", "replicaset": "replicasets", "rs": "replicasets",
         "statefulsets": "statefulsets", "statefulset": "statefulsets",
         "sts": "statefulsets"}
WORKLOADS = ("deployments", "replicasets", "statefulsets")  # need the manifests too


def show_workloads(state: ClusterState, resource: str, fmt: str | None,
                   namespace: str | None, created: float, topology: Any, runtime: Any,
                   pod_states: dict[str, dict[str, Any]] | None) -> str:
    """Deployments (READY, UP-TO-DATE, AVAILABLE), their ReplicaSets (DESIRED, CURRENT,
    READY) and StatefulSets (READY), counted from the pods, as kubectl shows them."""
    import time

    from labctl.cluster import workload_status as ws

    kind = KINDS[resource]
    in_ns = (lambda ns: True) if namespace is None else (lambda ns: ns == namespace)
    ns_col = namespace is None
    since = age(created) if created else "-"
    if kind == "statefulsets":
        stss = [ws.statefulset_status(state, s, runtime, pod_states)
                for s in topology.statefulsets if in_ns(s.meta.namespace)]
        if fmt in ("json", "yaml"):
            return as_list([ws.statefulset_object(s) for s in stss], fmt)
        rows = [([s.statefulset.meta.namespace] if ns_col else [])
                + [s.statefulset.meta.name, f"{s.ready}/{s.desired}", since] for s in stss]
        return _table(["NAME", "READY", "AGE"], rows, ns_col, "statefulsets", namespace)
    now = time.time()
    deps = [ws.deployment_status(state, d, runtime, pod_states, now)
            for d in topology.deployments if in_ns(d.meta.namespace)]
    if kind == "replicasets":
        sets = [(d, rs) for d in deps for rs in d.replica_sets]
        if fmt in ("json", "yaml"):
            return as_list([ws.replicaset_object(d, rs) for d, rs in sets], fmt)
        rows = [([d.deployment.meta.namespace] if ns_col else [])
                + [rs.name, rs.desired, rs.current, rs.ready, since] for d, rs in sets]
        return _table(["NAME", "DESIRED", "CURRENT", "READY", "AGE"], rows, ns_col,
                      "replicasets", namespace)
    if fmt in ("json", "yaml"):
        return as_list([ws.deployment_object(d) for d in deps], fmt)
    rows = [([d.deployment.meta.namespace] if ns_col else [])
            + [d.deployment.meta.name, f"{d.ready}/{d.desired}", d.updated, d.available,
               since] for d in deps]
    return _table(["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"], rows, ns_col,
                  "deployments", namespace)


def pod_columns(info: dict[str, Any] | None, containers: int) -> tuple[str, str, int, float]:
    """READY, STATUS, RESTARTS and creation time as kubectl shows them, from the agent's
    view of the pod (None: no agent answered)."""
    if info is None:
        return f"0/{containers}", "Unknown", 0, 0.0
    states = info.get("containers", [])
    ready = sum(1 for c in states if c.get("ready"))
    restarts = sum(int(c.get("restarts", 0)) for c in states)
    return (f"{ready}/{containers}", str(info.get("status", "Unknown")), restarts,
            float(info.get("created") or 0.0))


def show(state: ClusterState, resource: str, fmt: str | None, namespace: str | None,
         created: float, pod_states: dict[str, dict[str, Any]] | None = None) -> str:
    kind = KINDS[resource]
    in_ns = (lambda ns: True) if namespace is None else (lambda ns: ns == namespace)
    ns_col = namespace is None
    since = age(created) if created else "-"
    if kind == "pods":
        pods = [p for p in state.pods if in_ns(p.namespace)]
        if fmt in ("json", "yaml"):
            return as_list([views.pod_object(state, p, None if pod_states is None
                                             else pod_states.get(p.key)) for p in pods], fmt)
        headers = ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
        if fmt == "wide":
            headers += ["IP", "NODE"]
        rows = []
        for p in pods:
            ready, status, restarts, born = pod_columns(
                None if pod_states is None else pod_states.get(p.key), len(p.spec.containers))
            if p.terminating:
                status = "Terminating"
            row = [p.name, ready, status, restarts, age(born) if born else since]
            if fmt == "wide":
                row += [p.ip, p.node]
            rows.append(([p.namespace] if ns_col else []) + row)
        return _table(headers, rows, ns_col, "pods", namespace)
    if kind == "nodes":
        if fmt in ("json", "yaml"):
            return as_list([views.node_object(n) for n in state.nodes], fmt)
        headers = ["NAME", "STATUS", "ROLES", "AGE", "INTERNAL-IP", "POD-CIDR"]
        rows = [[n.name, "Ready", "<none>", since, n.ip, n.pod_cidr] for n in state.nodes]
        return table(headers, rows)
    if kind == "services":
        svcs = [s for s in state.services if in_ns(s.namespace)]
        if fmt in ("json", "yaml"):
            return as_list([views.service_object(s) for s in svcs], fmt)
        headers = ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
        if fmt == "wide":
            headers.append("SELECTOR")
        rows = []
        for s in svcs:
            row = [s.name, s.service.type, s.cluster_ip or "<none>", views.external_ip_text(s),
                   views.service_port_text(s), since]
            if fmt == "wide":
                sel = s.service.selector
                row.append(",".join(f"{k}={v}" for k, v in sel.items()) if sel else "<none>")
            rows.append(([s.namespace] if ns_col else []) + row)
        return _table(headers, rows, ns_col, "services", namespace)
    slices = [e for e in state.endpoint_slices if in_ns(e.meta.namespace)]
    if kind == "endpointslices" or fmt in ("json", "yaml"):
        if fmt in ("json", "yaml"):
            return as_list([views.endpoint_slice_object(e) for e in slices], fmt)
        headers = ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]
        rows = []
        for e in slices:
            ports = ",".join(str(p.port) for p in e.ports if p.port) or "<unset>"
            addrs = [a for ep in e.endpoints for a in ep.addresses[:1]]
            shown = ",".join(addrs[:3]) + (f" + {len(addrs) - 3} more..." if len(addrs) > 3
                                           else "")
            rows.append(([e.meta.namespace] if ns_col else [])
                        + [e.meta.name, e.address_type, ports, shown or "<unset>", since])
        return _table(headers, rows, ns_col, "endpointslices", namespace)
    svcs = [s for s in state.services if in_ns(s.namespace) and s.service.type != "ExternalName"]
    rows = [([s.namespace] if ns_col else []) + [s.name, views.endpoints_text(state, s), since]
            for s in svcs]
    return _table(["NAME", "ENDPOINTS", "AGE"], rows, ns_col, "endpoints", namespace)


def _table(headers: list[str], rows: list[list[object]], ns_col: bool, what: str,
           namespace: str | None) -> str:
    if not rows:
        return f"No resources found in {namespace} namespace." if namespace else \
            "No resources found"
    return table((["NAMESPACE"] if ns_col else []) + headers, rows)
