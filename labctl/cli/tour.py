"""`labctl up --tour`: a short guided look at a lab that just came up (for `make demo`)."""

from __future__ import annotations

import subprocess

from labctl.cli.output import table
from labctl.cluster.state import ClusterState


def tour(state: ClusterState) -> None:
    print("")
    print("Nodes (each a network namespace with a cni0 bridge, routed to the others):")
    print(table(["NODE", "NODE-IP", "POD-CIDR", "NETNS"],
                     [[n.name, n.ip, n.pod_cidr, n.netns] for n in state.nodes]))
    print("")
    print("Pods (each its own network namespace, eth0 plugged into its node's bridge):")
    print(table(["NAMESPACE", "POD", "IP", "NODE"],
                     [[p.namespace, p.name, p.ip, p.node] for p in state.pods[:12]]))
    if len(state.pods) > 12:
        print(f"  ... and {len(state.pods) - 12} more (labctl get pods -A -o wide)")
    pair = _cross_node_pair(state)
    if pair is None:
        return
    client, server, port = pair
    print("")
    print(f"A request from {client.name} ({client.node}) to {server.name} ({server.node}),")
    print("routed across nodes by the kernel:")
    _curl(client, f"http://{server.ip}:{port}/tour")
    svc = next((s for s in state.services if s.cluster_ip and s.cluster_ip != "None"
                and s.service.selector and s.namespace == client.namespace
                and s.ports and s.ports[0].protocol == "TCP"), None)
    if svc is not None:
        port = svc.ports[0].port
        print("")
        print(f"The same client to Service {svc.name} by name: cluster DNS answers "
                   f"{svc.cluster_ip}, then kube-proxy's")
        print(f"{state.lab.proxy_mode} rules in {client.node} pick a backend pod and "
                   f"DNAT to it (labctl rules {client.node} --service {svc.key}):")
        _curl(client, f"http://{svc.name}{'' if port == 80 else f':{port}'}/tour")
    print("")


def _curl(client, url: str) -> None:  # noqa: ANN001 - a PodState
    print(f"  $ labctl exec {client.name} -- curl -s {url}")
    proc = subprocess.run(["ip", "netns", "exec", client.netns, "curl", "-s", "-m", "3", url],
                          capture_output=True, text=True, check=False)
    body = proc.stdout.strip() or proc.stderr.strip() or f"(curl exited {proc.returncode})"
    print("\n".join("  | " + line for line in body.splitlines()))


def _cross_node_pair(state: ClusterState):  # -> (client, server, port) | None
    # Prefer a Deployment's pod as the server and a bare pod as the client.
    servers = sorted(((p, c.ports[0].container_port) for p in state.pods
                      for c in p.spec.containers
                      if c.ports and c.ports[0].protocol == "TCP" and not c.command),
                     key=lambda sp: sp[0].owner is None)
    clients = sorted(state.pods, key=lambda p: p.owner is not None)
    for server, port in servers:
        for client in clients:
            if client.node != server.node:
                return client, server, port
    return None
