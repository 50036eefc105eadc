"""What `up`, `down` and `apply` print when they are done: the summary tables a person
reads, and the `-o json` object a script reads. Pure formatting of a ClusterState and the
library's results; the JSON shape is documented in docs/architecture.md ("-o json").

The JSON object has the same keys for the three commands:

    apiVersion  "labctl/v1"         kind     "LabReport"
    command     up | down | apply   lab      the lab's name
    proxyMode   iptables | … (null after down)
    counts      {nodes, pods, services} of the lab after the command (0 after down)
    timings     phase → milliseconds, in the order they ran, and "total"
    nodes       [{name, ip, podCIDR}]
    pods        [{namespace, name, node, ip}]
    services    [{namespace, name, type, clusterIP, externalIPs, loadBalancerIP,
                  externalName, ports: [{name, protocol, port, nodePort}]}]
    dns         {service, clusterIP, domain, servers: [{pod, node, ip}]} or null
    changes     [{object, action}] (apply; [] for up and down)
and, per command: up: adopted, agentPid; down: namespacesRemoved; apply: dryRun, commands,
synced (node → ms), rollouts (a line per Deployment rolling out a new pod template).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from labctl.cli.output import table, timings_text
from labctl.cluster import views
from labctl.cluster.addons import BUILTIN_ANNOTATION
from labctl.cluster.state import ClusterState, ServiceState

API_VERSION = "labctl/v1"
KIND = "LabReport"
DNS_SERVICE = ("kube-system", "kube-dns")
ROWS = 20  # a summary table longer than this is cut, with the command that shows it all


# ------------------------------------------------------------------ -o json


def as_ms(seconds: Mapping[str, float]) -> dict[str, float]:
    """Phase → seconds as phase → milliseconds (0.1 ms), with their "total"."""
    out = {k: round(v * 1000, 1) for k, v in seconds.items()}
    out["total"] = round(sum(seconds.values()) * 1000, 1)
    return out


def lab_report(command: str, lab: str | None, state: ClusterState | None,
               timings_ms: Mapping[str, float],
               changes: Sequence[Mapping[str, str]] = (), **extra: Any) -> dict[str, Any]:
    """The `-o json` object (see the module's doc). `state`: the lab after the command
    (None after down)."""
    doc: dict[str, Any] = {
        "apiVersion": API_VERSION, "kind": KIND, "command": command, "lab": lab,
        "proxyMode": state.lab.proxy_mode if state else None,
        "counts": {"nodes": len(state.nodes) if state else 0,
                   "pods": len(state.pods) if state else 0,
                   "services": len(state.services) if state else 0},
        "timings": {**{k: v for k, v in timings_ms.items() if k != "total"},
                    "total": timings_ms.get("total", round(sum(timings_ms.values()), 1))},
        "nodes": [{"name": n.name, "ip": n.ip, "podCIDR": n.pod_cidr}
                  for n in (state.nodes if state else ())],
        "pods": [{"namespace": p.namespace, "name": p.name, "node": p.node, "ip": p.ip}
                 for p in (state.pods if state else ())],
        "services": [service_entry(s) for s in (state.services if state else ())],
        "dns": dns_entry(state) if state else None,
        "changes": [dict(c) for c in changes],
    }
    doc.update(extra)
    return doc


def service_entry(svc: ServiceState) -> dict[str, Any]:
    return {"namespace": svc.namespace, "name": svc.name, "type": svc.service.type,
            "clusterIP": svc.cluster_ip or None,
            "externalIPs": list(svc.service.external_ips),
            "loadBalancerIP": svc.load_balancer_ip or None,
            "externalName": svc.service.external_name or None,
            "ports": [{"name": p.name, "protocol": p.protocol, "port": p.port,
                       "nodePort": p.node_port or None} for p in svc.ports]}


def dns_entry(state: ClusterState) -> dict[str, Any] | None:
    """The cluster DNS Service and the pods labctl's responder serves it from."""
    svc = next((s for s in state.services if (s.namespace, s.name) == DNS_SERVICE), None)
    if svc is None:
        return None
    servers = [{"pod": p.key, "node": p.node, "ip": p.ip} for p in state.pods
               if p.annotations.get(BUILTIN_ANNOTATION) == "dns"]
    return {"service": svc.key, "clusterIP": svc.cluster_ip,
            "domain": state.lab.cluster_domain, "servers": servers}


def apply_changes(changes: Sequence[tuple[str, str]], pods: Mapping[str, Sequence[str]],
                  proxy_mode: tuple[str, str] | None) -> list[dict[str, str]]:
    """An apply's changes as JSON entries: objects (created | configured | deleted), pods
    (created | terminating) and a proxy mode switch."""
    out = [{"object": obj, "action": verb} for obj, verb in changes]
    for action in ("created", "terminating"):
        out += [{"object": f"pod/{key.partition('/')[2]}", "namespace": key.partition("/")[0],
                 "action": action} for key in pods.get(action, [])]
    if proxy_mode:
        out.append({"object": "proxyMode", "action": "switched",
                    "from": proxy_mode[0], "to": proxy_mode[1]})
    return out


def to_json(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2)


# ------------------------------------------------------------------ for people


def headline(state: ClusterState) -> str:
    return (f"{len(state.nodes)} nodes, {len(state.pods)} pods, {len(state.services)} "
            f"services, proxy mode {state.lab.proxy_mode}")


def _block(headers: list[str], rows: list[list[Any]], what: str, command: str) -> str:
    """A table of at most ROWS rows; past that, how many more and what shows them all."""
    text = table(headers, rows[:ROWS])
    if len(rows) > ROWS:
        text += f"\n… {len(rows) - ROWS} more {what}: {command}"
    return text


def summary(state: ClusterState, timings_ms: Mapping[str, float]) -> str:
    """The tables `up` ends with: nodes, pods, Services, cluster DNS and the timings."""
    per_node = {n.name: 0 for n in state.nodes}
    for p in state.pods:
        per_node[p.node] = per_node.get(p.node, 0) + 1
    blocks = [table(["NODE", "INTERNAL-IP", "POD-CIDR", "PODS"],
                    [[n.name, n.ip, n.pod_cidr, per_node[n.name]] for n in state.nodes])]
    if state.pods:
        blocks.append(_block(["NAMESPACE", "POD", "NODE", "IP"],
                             [[p.namespace, p.name, p.node, p.ip] for p in state.pods],
                             "pods", "labctl get pods -A -o wide"))
    if state.services:
        blocks.append(_block(["NAMESPACE", "SERVICE", "TYPE", "CLUSTER-IP", "EXTERNAL-IP",
                              "PORT(S)"],
                             [[s.namespace, s.name, s.service.type, s.cluster_ip or "<none>",
                               views.external_ip_text(s), views.service_port_text(s)]
                              for s in state.services],
                             "services", "labctl get svc -A"))
    lines = []
    dns = dns_entry(state)
    if dns:
        nodes = ", ".join(s["node"] for s in dns["servers"])
        lines.append(f"dns:     {dns['service']} {dns['clusterIP']}, zone {dns['domain']}, "
                     f"{len(dns['servers'])} pods" + (f" (on {nodes})" if nodes else ""))
    lines.append(f"proxy:   {state.lab.proxy_mode} mode on every node")
    lines.append(f"timings: {timings_text(timings_ms)}")
    blocks.append("\n".join(lines))
    return "\n\n".join(blocks)

