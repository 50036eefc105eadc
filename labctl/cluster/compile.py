"""compile_state: Topology (+ the previous state, to keep addresses stable, + the lab's
Runtime: scale, deletions, terminating pods) → ClusterState."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from labctl import names
from labctl.cluster import endpointslices, ipam, services
from labctl.cluster.runtime import Runtime
from labctl.cluster.scheduling import schedule
from labctl.cluster.state import ClusterState, NodeState, PodState
from labctl.cluster.workloads import expand
from labctl.errors import Diagnostic, UserError
from labctl.model.objects import Topology


def compile_state(topology: Topology, previous: ClusterState | None = None,
                  runtime: Runtime | None = None) -> ClusterState:
    """The cluster the manifests describe, as `runtime` changed it, continuing `previous`.

    Pods that ran in `previous` keep their node and address. A pod in
    `runtime.terminating` that ran in `previous` is carried over as it was (node,
    address, namespace) with `terminating=True`: its address is not handed out and no
    new pod of the same name starts until it is gone (a StatefulSet's comes back then,
    as a new pod). Without `previous`, a pod whose key is terminating is compiled fresh
    and marked terminating."""
    runtime = runtime or Runtime()
    topology = runtime.visible(topology)
    lab = topology.lab
    errors: list[Diagnostic] = []
    subnets = ipam.node_subnets(lab.pod_cidr, len(lab.nodes), lab.pod_cidr_per_node)
    if len(subnets) < len(lab.nodes):
        raise UserError(Diagnostic(
            "error", lab.source.at("spec.podCIDR"), "Lab: spec.podCIDR",
            f"{lab.pod_cidr} holds {len(subnets)} node /{lab.pod_cidr_per_node} subnet(s) but "
            f"the lab has {len(lab.nodes)} nodes", "use a larger pod CIDR, e.g. 10.244.0.0/16"))
    node_ips, external_ip = ipam.node_network(lab.node_cidr, len(lab.nodes))
    nodes = tuple(
        NodeState(name=n.name, index=i, ip=node_ips[i], pod_cidr=str(subnets[i]),
                  pod_gateway=str(subnets[i].network_address + 1), labels=n.labels,
                  netns=names.node_ns(lab.name, n.name))
        for i, n in enumerate(lab.nodes))

    node_names = {n.name for n in nodes}
    old_pods = previous.pods if previous else ()
    carried = {p.key: replace(p, terminating=True) for p in old_pods
               if p.key in runtime.terminating and p.node in node_names}
    # A rollout's old pods run on as they are (the old ReplicaSet's), beside the new.
    carried.update((p.key, p) for p in old_pods
                   if p.key in runtime.held and not p.terminating and p.key not in carried
                   and p.node in node_names)
    # Only a pod that was running (not terminating) continues: one that terminated and
    # comes back under the same name (a StatefulSet's) is a new pod.
    running = [p for p in old_pods if not p.terminating and p.key not in carried]
    expanded = [(p, slot) for p, slot in expand(topology, runtime)
                if f"{p.meta.namespace}/{p.meta.name}" not in carried]
    pods = [p for p, _slot in expanded]
    placement = schedule(pods, lab.nodes,
                         {p.key: p.node for p in running} if previous else None)
    prev_ips = {p.key: p.ip for p in running}
    prev_ips.update((k, p.ip) for k, p in carried.items())
    ips: dict[str, str] = {}
    for node, subnet in zip(nodes, subnets, strict=True):
        keys = [k for k, n in placement.items() if n == node.name]
        held = [k for k, p in carried.items() if p.node == node.name]
        got = ipam.assign_pod_ips(subnet, keys + held, prev_ips)
        if got is None:
            errors.append(Diagnostic(
                "error", lab.source.at("spec.podCIDR"), "Lab: spec.podCIDR",
                f"node {node.name} has {len(keys) + len(held)} pods but its subnet {subnet} "
                f"holds {ipam.pod_capacity(subnet)}",
                "add nodes, spread the pods (nodeName/nodeSelector), lower replicas, or "
                "raise the Lab's spec.podCIDRPerNode"))
            continue
        ips.update((k, got[k]) for k in keys)
    if errors:
        raise UserError(errors)

    fresh = (PodState(namespace=p.meta.namespace, name=p.meta.name, node=placement[key],
                      ip=ips[key], labels=p.meta.labels, spec=p.spec,
                      netns=names.pod_ns(lab.name, p.meta.namespace, p.meta.name),
                      host_veth=names.veth_for(ips[key]), owner=p.owner,
                      annotations=p.meta.annotations, source=p.source, slot=slot,
                      terminating=key in runtime.terminating)
             for p, slot in expanded for key in [f"{p.meta.namespace}/{p.meta.name}"])
    pod_states = tuple(sorted((*fresh, *carried.values()),
                              key=lambda p: (p.namespace, p.name)))

    prev_svcs = {s.key: s for s in previous.services} if previous else {}
    svc_states = tuple(services.allocate(lab, topology.services, prev_svcs))
    slices = []
    for svc in svc_states:
        slices.extend(endpointslices.derive(svc, pod_states, nodes=nodes))
    slices.extend(s for s in topology.endpoint_slices
                  if s.meta.labels.get("endpointslice.kubernetes.io/managed-by")
                  != endpointslices.MANAGED_BY)

    namespaces = sorted({"default", "kube-system", *(n.name for n in topology.namespaces),
                         *(p.namespace for p in pod_states), *(s.namespace for s in svc_states)})
    return ClusterState(
        lab=lab, nodes=nodes, pods=pod_states, services=svc_states,
        endpoint_slices=tuple(slices), namespaces=tuple(namespaces),
        fabric_netns=names.fabric_ns(lab.name),
        external_netns=names.external_ns(lab.name), external_ip=external_ip)


def compile_files(paths: Sequence[str], lab_name: str | None = None, addons: bool = False,
                  previous: ClusterState | None = None, runtime: Runtime | None = None
                  ) -> tuple[ClusterState, list[Diagnostic]]:
    """Load, validate and compile: the whole pure front half of `up`.

    `addons` adds what every cluster has (the kubernetes Service, cluster DNS): labs get
    them; offline commands (`proxy render`, `dns serve`, `env`) read the files alone."""
    from labctl.cluster.addons import with_addons
    from labctl.model.load import load_topology

    topology, warnings = load_topology(paths, lab_name)
    return compile_state(with_addons(topology) if addons else topology, previous,
                         runtime), warnings


def initial_readiness(state: ClusterState) -> dict[str, bool]:
    """Each pod's Ready condition when it starts (pod key → ready): a pod with a
    readinessProbe or startupProbe on any container is not Ready until the probe
    succeeds, as the kubelet reports; the others are Ready at once."""
    return {p.key: not any(c.readiness_probe or c.startup_probe for c in p.spec.containers)
            for p in state.pods}


def with_readiness(state: ClusterState, ready: Mapping[str, bool]) -> ClusterState:
    """The same cluster with pods' readiness applied to the controller's EndpointSlices
    (`ready`: pod key → ready; pods not named are ready). Slices the user wrote stay."""
    slices = []
    for svc in state.services:
        slices.extend(endpointslices.derive(svc, state.pods, ready=ready, nodes=state.nodes))
    slices.extend(s for s in state.endpoint_slices
                  if s.meta.labels.get("endpointslice.kubernetes.io/managed-by")
                  != endpointslices.MANAGED_BY)
    return replace(state, endpoint_slices=tuple(slices))
