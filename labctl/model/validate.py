"""Semantic checks of a typed Topology: per object, then across objects.

The schema walk has already checked types, formats and ranges of single fields; these
checks need several fields, several objects, or the Lab. Cross-object checks run only
when every document could be read: with a broken document missing they would report
its absence as someone else's mistake.
"""

from __future__ import annotations

from labctl.model import check_lab, check_pods, check_services
from labctl.model.context import Context, Object, label_of
from labctl.model.objects import Topology
from labctl.model.report import Reporter


def validate(top: Topology, report: Reporter, complete: bool) -> None:
    ctx = Context(top, report, complete)
    check_duplicates(ctx)
    check_lab.check_lab(ctx)
    for shape in ctx.pod_shapes():
        check_pods.check_pod_spec(ctx, shape)
    for workload in ctx.workloads():
        check_pods.check_workload(ctx, workload)
    for svc in top.services:
        check_services.check_service(ctx, svc)
    for eps in top.endpoint_slices:
        check_services.check_endpoint_slice(ctx, eps)
    if complete:
        check_references(ctx)


def check_references(ctx: Context) -> None:
    check_lab.check_capacity(ctx)
    for shape in ctx.pod_shapes():
        check_pods.check_placement(ctx, shape)
    for sts in ctx.top.statefulsets:
        check_pods.check_statefulset_service(ctx, sts)
    check_pods.check_pod_name_collisions(ctx)
    check_services.check_service_addresses(ctx)
    for svc in ctx.top.services:
        check_services.check_selectors(ctx, svc)
    for eps in ctx.top.endpoint_slices:
        check_services.check_endpoint_slice_refs(ctx, eps)


def check_duplicates(ctx: Context) -> None:
    """Two objects of one kind with one namespace/name: the second would replace the first."""
    top = ctx.top
    groups: tuple[tuple[Object, ...], ...] = (
        top.namespaces, top.pods, top.deployments, top.statefulsets, top.services,
        top.endpoint_slices)
    for group in groups:
        first: dict[str, Object] = {}
        for obj in group:
            key = label_of(obj)
            if key.endswith("(no name)"):
                continue  # reported as a missing name
            if key not in first:
                first[key] = obj
                continue
            ctx.error(obj, "metadata.name",
                      f"duplicate {key} (first defined at "
                      f"{ctx.where(first[key], 'metadata.name')})",
                      "each object needs a unique kind, namespace and name: rename or "
                      "delete one")
