"""Checks of the `kind: Lab` document: nodes, address ranges, and whether everything fits."""

from __future__ import annotations

import ipaddress
import math

from labctl.model.context import Context, Workload, label_of, network
from labctl.model.objects import Lab, Pod


def pods_per_node(prefix: int) -> int:
    """A node subnet minus network, broadcast and the cni0 gateway (.1)."""
    return 2 ** (32 - prefix) - 3
RANGES = (("podCIDR", "pod_cidr"), ("serviceCIDR", "service_cidr"),
          ("nodeCIDR", "node_cidr"), ("loadBalancerCIDR", "load_balancer_cidr"))


def check_lab(ctx: Context) -> None:
    lab = ctx.top.lab
    check_node_names(ctx, lab)
    check_overlaps(ctx, lab)
    check_pod_cidr(ctx, lab)
    check_node_cidr(ctx, lab)


def check_capacity(ctx: Context) -> None:
    """Cross-object: all pods, Service IPs and load-balancer IPs fit the lab's ranges."""
    check_pod_count(ctx, ctx.top.lab)
    check_service_cidr(ctx, ctx.top.lab)
    check_load_balancer_cidr(ctx, ctx.top.lab)


def check_node_names(ctx: Context, lab: Lab) -> None:
    first: dict[str, int] = {}
    for index, node in enumerate(lab.nodes):
        if node.name in first:
            other = f"spec.nodes[{first[node.name]}].name"
            ctx.error(lab, f"spec.nodes[{index}].name",
                      f'duplicate node name "{node.name}" (first at {ctx.where(lab, other)})',
                      "node names must be unique; rename one of them")
        elif node.name:
            first[node.name] = index


def _range_text(ctx: Context, lab: Lab, field: str, attr: str) -> str:
    value = getattr(lab, attr)
    return f"{field} {value}" + ("" if ctx.written(lab, f"spec.{field}") else " (the default)")


def check_overlaps(ctx: Context, lab: Lab) -> None:
    nets = [(field, attr, network(getattr(lab, attr))) for field, attr in RANGES]
    for i, (field_a, attr_a, net_a) in enumerate(nets):
        for field_b, attr_b, net_b in nets[i + 1:]:
            if net_a is None or net_b is None or not net_a.overlaps(net_b):
                continue
            # Point at the range the user wrote (the later one when both are written).
            field, attr, other = field_b, attr_b, (field_a, attr_a)
            if not ctx.written(lab, f"spec.{field_b}"):
                field, attr, other = field_a, attr_a, (field_b, attr_b)
            ctx.error(lab, f"spec.{field}",
                      f"{field} {getattr(lab, attr)} overlaps {_range_text(ctx, lab, *other)}",
                      "the pod, service, node and load-balancer ranges must not share "
                      "addresses; choose a range that does not overlap")


def check_pod_cidr(ctx: Context, lab: Lab) -> None:
    net = network(lab.pod_cidr)
    per_node = lab.pod_cidr_per_node
    if net is None:
        return
    if net.prefixlen > per_node:
        ctx.error(lab, "spec.podCIDR",
                  f"podCIDR {net} is smaller than the /{per_node} each node gets",
                  f"use a prefix of at most /{per_node}, e.g. 10.244.0.0/16")
        return
    slots = 2 ** (per_node - net.prefixlen)
    if len(lab.nodes) > slots:
        need = per_node - math.ceil(math.log2(len(lab.nodes)))
        ctx.error(lab, "spec.podCIDR",
                  f"podCIDR {net} holds {slots} node /{per_node}s, but the lab has "
                  f"{len(lab.nodes)} nodes",
                  f"each node gets a /{per_node} of the pod CIDR: use a prefix of /{need} "
                  "or shorter")


def check_node_cidr(ctx: Context, lab: Lab) -> None:
    net = network(lab.node_cidr)
    if net is None:
        return
    hosts = max(net.num_addresses - 2, 0)
    need = len(lab.nodes) + 2
    if hosts < need:
        prefix = 32 - math.ceil(math.log2(need + 2))
        ctx.error(lab, "spec.nodeCIDR",
                  f"nodeCIDR {net} has room for {hosts} addresses, but the lab needs {need}: "
                  f"one per node ({len(lab.nodes)}), the gateway and the external client",
                  f"use a larger range, e.g. {net.network_address}/{prefix}")


def check_pod_count(ctx: Context, lab: Lab) -> None:
    net = network(lab.pod_cidr)
    per_node = lab.pod_cidr_per_node
    if net is None or net.prefixlen > per_node:
        return
    usable_nodes = min(len(lab.nodes), 2 ** (per_node - net.prefixlen))
    counts: list[tuple[int, str, Pod | Workload]] = [
        (1, label_of(p), p) for p in ctx.top.pods]
    counts += [(max(w.replicas, 0), label_of(w), w) for w in ctx.workloads()]
    total = sum(c[0] for c in counts)
    capacity = usable_nodes * pods_per_node(per_node)
    if total <= capacity:
        return
    count, name, owner = max(counts, key=lambda c: c[0])
    message = (f"{total} pods do not fit on {usable_nodes} node(s): each node's "
               f"/{per_node} holds {pods_per_node(per_node)} pods ({name} alone has {count})")
    hint = (f"add nodes to the Lab's spec.nodes (at least "
            f"{math.ceil(total / pods_per_node(per_node))}), lower replicas, or give each "
            "node a larger pod subnet with spec.podCIDRPerNode (e.g. 22)")
    # Point at the Lab's node list when it was written, else at the biggest workload.
    if ctx.written(lab, "spec.nodes") or isinstance(owner, Pod):
        ctx.error(lab, "spec.nodes", message, hint)
    else:
        ctx.error(owner, "spec.replicas", message, hint)


def check_service_cidr(ctx: Context, lab: Lab) -> None:
    net = network(lab.service_cidr)
    if net is None:
        return
    if net.num_addresses < 16:
        ctx.error(lab, "spec.serviceCIDR",
                  f"serviceCIDR {net} is too small: it must hold the kubernetes Service (.1) "
                  "and cluster DNS (.10)", "use a prefix of at most /28, e.g. 10.96.0.0/12")
        return
    needed = 2 + sum(1 for s in ctx.top.services
                     if s.type != "ExternalName" and not s.headless)
    if needed > net.num_addresses - 2:
        ctx.error(lab, "spec.serviceCIDR",
                  f"serviceCIDR {net} has {net.num_addresses - 2} addresses, but {needed} "
                  "are needed (one per Service, plus the kubernetes Service and cluster DNS)",
                  "use a larger serviceCIDR")


def check_load_balancer_cidr(ctx: Context, lab: Lab) -> None:
    net = network(lab.load_balancer_cidr)
    if net is None:
        return
    wanted = sum(1 for s in ctx.top.services if s.type == "LoadBalancer")
    hosts = max(net.num_addresses - 2, 1)
    if wanted > hosts:
        ctx.error(lab, "spec.loadBalancerCIDR",
                  f"loadBalancerCIDR {net} has {hosts} addresses for {wanted} LoadBalancer "
                  "Services", "use a larger loadBalancerCIDR")


def in_network(address: str, cidr: str) -> bool:
    net = network(cidr)
    try:
        return net is not None and ipaddress.IPv4Address(address) in net
    except ValueError:
        return False
