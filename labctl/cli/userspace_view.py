"""`labctl rules NODE` in userspace mode (deprecated): the portal rules read back with
`iptables-save`, then what the node's proxy process serves, asked over its socket."""

from __future__ import annotations

import re

from labctl import names
from labctl.cluster.state import ClusterState
from labctl.errors import LabctlError, NotFoundError
from labctl.net import netfilter
from labctl.proxy import sync
from labctl.proxy.userspace import FILTER_CHAINS, NAT_CHAINS
from labctl.proxy.userspace_daemon import request


def show_userspace_rules(state: ClusterState, node: str, service: str | None) -> str:
    ns = state.node(node).netns
    text = netfilter.iptables_save(ns, sync.iptables_backend(state))
    spn = None
    if service is not None:
        namespace, _, name = service.rpartition("/")
        namespace = namespace or "default"
        if not any(s.namespace == namespace and s.name == name for s in state.services):
            raise NotFoundError(f'services "{name}" not found in namespace {namespace}')
        spn = re.compile(rf"--comment \"?{re.escape(namespace)}/{re.escape(name)}[\": ]")
        text = _only(text, spn)
    return text + proxy_status(state, node, spn)


def _only(text: str, spn: re.Pattern[str]) -> str:
    ours = set(NAT_CHAINS) | set(FILTER_CHAINS)
    out = []
    for line in text.splitlines():
        if line.startswith(("*", "COMMIT", "#")):
            out.append(line)
        elif line.startswith(":"):
            if line[1:].split()[0] in ours:
                out.append(line)
        elif spn.search(line + " "):
            out.append(line)
    return "\n".join(out) + "\n"


def proxy_status(state: ClusterState, node: str, spn: re.Pattern[str] | None = None) -> str:
    """The proxy process's listeners and endpoints, as `#` lines."""
    head = (f"# kube-proxy userspace mode (deprecated, removed in Kubernetes 1.26): the proxy "
            f"process of {node}")
    try:
        reply = request(names.state_dir(state.lab.name), node, {"op": "status"}, 3.0)
    except LabctlError as e:
        return f"{head} is not answering: {e}\n"
    lines = [f"{head} (pid {reply.get('pid')}) listens on:"]
    for port in reply.get("ports", []):
        if spn is not None and not spn.search(f'--comment {port["service"]} '):
            continue
        served = port.get("served", {})
        eps = ", ".join(f"{ep} ({served.get(ep, 0)})" for ep in port["endpoints"]) or \
            "no endpoints: connections are reset"
        affinity = " sessionAffinity=ClientIP" if port.get("sessionAffinity") else ""
        failed = port.get("failedConnects") or {}
        extra = (f"; failed connects: {', '.join(f'{k} ×{v}' for k, v in failed.items())}"
                 f", retried {port.get('retried', 0)}" if failed else "")
        lines.append(f"#   0.0.0.0:{port['proxyPort']}/{port['protocol']} {port['service']}"
                     f"{affinity} -> {eps}{extra}")
    if reply.get("claims") and spn is None:
        lines.append(f"#   holding NodePorts: {', '.join(reply['claims'])}")
    lines += [f"#   error: {e}" for e in reply.get("errors", [])]
    return "\n".join(lines) + "\n"
