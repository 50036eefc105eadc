"""Checks of Pods and workloads (Deployment, StatefulSet): containers, ports, probes,
selectors, and where pods may run."""

from __future__ import annotations

from collections.abc import Mapping

from labctl.model.checks import did_you_mean
from labctl.model.context import (
    Context,
    Object,
    PodShape,
    Workload,
    label_of,
    show_labels,
)
from labctl.model.objects import (
    Container,
    Deployment,
    LabelSelector,
    NodeSpec,
    Probe,
    StatefulSet,
)

PROBES = (("readinessProbe", "readiness_probe"), ("livenessProbe", "liveness_probe"),
          ("startupProbe", "startup_probe"))
HANDLERS = ("httpGet", "tcpSocket", "exec", "grpc")
SCHEMES = ("HTTP", "HTTPS")
WELL_KNOWN = ("kubernetes.io/hostname", "kubernetes.io/os")
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def check_pod_spec(ctx: Context, shape: PodShape) -> None:
    """Per-pod checks that need nothing but the pod itself."""
    obj, prefix = shape.owner, shape.prefix
    check_container_names(ctx, shape)
    check_container_ports(ctx, shape)
    for i, container in enumerate(shape.spec.containers):
        check_probes(ctx, shape, f"{prefix}.containers[{i}]", container)
    if prefix != "spec" and shape.spec.restart_policy != "Always":
        ctx.error(obj, f"{prefix}.restartPolicy",
                  f'expected "Always" in a {type(obj).__name__} template, found '
                  f'"{shape.spec.restart_policy}"',
                  "the pods of Deployments and StatefulSets always restart: remove "
                  "restartPolicy")


def check_container_names(ctx: Context, shape: PodShape) -> None:
    first: dict[str, str] = {}
    for i, container in enumerate(shape.spec.containers):
        path = f"{shape.prefix}.containers[{i}].name"
        if container.name in first:
            ctx.error(shape.owner, path, f'duplicate container name "{container.name}" '
                      f"(first at {ctx.where(shape.owner, first[container.name])})",
                      "container names must be unique within a pod")
        elif container.name:
            first[container.name] = path


def check_container_ports(ctx: Context, shape: PodShape) -> None:
    """Containers of a pod share its network namespace: ports and names are pod-wide."""
    obj = shape.owner
    numbers: dict[tuple[int, str], str] = {}
    names: dict[str, str] = {}
    for i, container in enumerate(shape.spec.containers):
        for j, port in enumerate(container.ports):
            path = f"{shape.prefix}.containers[{i}].ports[{j}]"
            key = (port.container_port, port.protocol)
            if key in numbers:
                ctx.error(obj, f"{path}.containerPort",
                          f"containerPort {port.container_port}/{port.protocol} is declared "
                          f"twice in this pod (first at {ctx.where(obj, numbers[key])})",
                          "the containers of a pod share one network namespace: declare each "
                          "port once")
            elif port.container_port:  # 0: missing or not a number, already reported
                numbers[key] = f"{path}.containerPort"
            if port.name in names:
                ctx.error(obj, f"{path}.name",
                          f'duplicate port name "{port.name}" in this pod (first at '
                          f"{ctx.where(obj, names[port.name])})",
                          "port names must be unique across the containers of a pod")
            elif port.name:
                names[port.name] = f"{path}.name"


def check_probes(ctx: Context, shape: PodShape, path: str, container: Container) -> None:
    obj = shape.owner
    declared = {p.name for p in container.ports if p.name}
    for field, attr in PROBES:
        probe = getattr(container, attr)
        if probe is None:
            continue
        probe_path = f"{path}.{field}"
        handlers = [h for h in HANDLERS if ctx.written(obj, f"{probe_path}.{h}")]
        if not handlers:
            ctx.error(obj, probe_path, "a probe needs one handler: httpGet, tcpSocket, exec "
                      "or grpc, found none", "add e.g. httpGet: {path: /, port: 80}")
        elif len(handlers) > 1:
            ctx.error(obj, f"{probe_path}.{handlers[1]}",
                      f"a probe has exactly one handler, found {' and '.join(handlers)}",
                      "keep one of them")
        elif isinstance(probe.port, str) and probe.port not in declared:
            ctx.error(obj, f"{probe_path}.{handlers[0]}.port",
                      f'container "{container.name}" declares no port named "{probe.port}"',
                      f'add a port named "{probe.port}" to the container (ports: [{{name: '
                      f"{probe.port}, containerPort: <number>}}]), or use the port number")
        else:
            check_probe_handler(ctx, obj, probe_path, probe)


def check_probe_handler(ctx: Context, obj: Object, path: str, probe: Probe) -> None:
    """What the API server rejects in a handler, and the handler labctl does not run."""
    if probe.kind == "exec" and not probe.command:
        ctx.error(obj, f"{path}.exec.command", "expected a command, found none",
                  "add command: [<program>, <arg>...]; the probe succeeds when it exits 0")
    elif probe.kind == "httpGet" and probe.scheme not in SCHEMES:
        ctx.error(obj, f"{path}.httpGet.scheme",
                  f'expected "HTTP" or "HTTPS", found "{probe.scheme}"',
                  "scheme is upper case; HTTPS skips certificate checks, as the kubelet does")
    elif probe.kind == "grpc":
        # The prober treats a gRPC probe as absent (kubelet.probes.usable).
        ctx.warning(obj, f"{path}.grpc",
                    "labctl does not run gRPC probes: this probe is ignored, as if it were "
                    "not set", "to have the port checked, use tcpSocket: {port: <same "
                    "port>}, or exec a health-check program")


# ---------------------------------------------------------------- workloads


def check_workload(ctx: Context, workload: Workload) -> None:
    sel = workload.selector
    template_labels = workload.template.labels
    # A broken expression cannot be matched against the template: report it alone.
    if ctx.written(workload, "spec.selector") and \
            check_selector_expressions(ctx, workload, sel):
        if not sel.match_labels and not sel.match_expressions:
            ctx.error(workload, "spec.selector", "expected a non-empty selector, found an "
                      "empty one", "add matchLabels: with the labels of spec.template")
        elif not sel.matches(template_labels):
            ctx.error(workload, "spec.selector",
                      f"selector {show_selector(sel)} does not match the template's labels "
                      f"({show_labels(template_labels)})",
                      "the API server rejects this: copy spec.selector.matchLabels into "
                      "spec.template.metadata.labels")
    if isinstance(workload, StatefulSet):
        check_statefulset_names(ctx, workload)
        check_statefulset_strategy(ctx, workload)
    else:
        check_deployment_strategy(ctx, workload)


def check_deployment_strategy(ctx: Context, dep: Deployment) -> None:
    """What the API server refuses in spec.strategy beyond single fields."""
    strategy = dep.strategy
    if strategy.type == "Recreate" and ctx.written(dep, "spec.strategy.rollingUpdate"):
        ctx.error(dep, "spec.strategy.rollingUpdate", "may not be given when type is "
                  "Recreate", "remove rollingUpdate, or use type: RollingUpdate")
    elif strategy.type == "RollingUpdate" and strategy.max_surge in (0, "0%") \
            and strategy.max_unavailable in (0, "0%"):
        ctx.error(dep, "spec.strategy.rollingUpdate.maxUnavailable", "may not be 0 when "
                  "maxSurge is 0: the rollout could never replace a pod",
                  "allow one extra pod (maxSurge: 1) or one missing (maxUnavailable: 1)")


def check_selector_expressions(ctx: Context, workload: Workload, sel: LabelSelector) -> bool:
    """Report expressions the API server rejects; True when all are usable."""
    ok = True
    for i, (_, operator, values) in enumerate(sel.match_expressions):
        path = f"spec.selector.matchExpressions[{i}]"
        if operator in ("In", "NotIn") and not values:
            ctx.error(workload, f"{path}.values", f"operator {operator} needs values, found "
                      "none", "add values: [...] with at least one value")
        elif operator in ("Exists", "DoesNotExist") and values:
            ctx.error(workload, f"{path}.values", f"operator {operator} takes no values",
                      "remove values")
        elif operator not in OPERATORS:
            pass  # reported by the schema walk
        else:
            continue
        ok = False
    return ok


def show_selector(sel: LabelSelector) -> str:
    """A selector as kubectl prints it: "app=web,tier in (a,b),!canary"."""
    parts = [f"{k}={v}" for k, v in sel.match_labels.items()]
    for key, operator, values in sel.match_expressions:
        listed = ",".join(values)
        parts.append({"In": f"{key} in ({listed})", "NotIn": f"{key} notin ({listed})",
                      "Exists": key, "DoesNotExist": f"!{key}"}[operator])
    return ",".join(parts)


def check_statefulset_strategy(ctx: Context, sts: StatefulSet) -> None:
    if sts.update_strategy == "OnDelete" and ctx.written(sts, "spec.updateStrategy.rollingUpdate"):
        ctx.error(sts, "spec.updateStrategy.rollingUpdate", "may not be given when type is "
                  "OnDelete", "remove rollingUpdate, or use type: RollingUpdate")


def check_statefulset_names(ctx: Context, sts: StatefulSet) -> None:
    last = f"{sts.meta.name}-{max(sts.replicas - 1, 0)}"
    if len(last) > 63:
        ctx.error(sts, "metadata.name",
                  f'pod name "{last}" would be {len(last)} characters long; the limit is 63',
                  "shorten the StatefulSet name: each pod's name, <name>-<ordinal>, is its "
                  "hostname")


# ---------------------------------------------------------------- cross-object


def check_placement(ctx: Context, shape: PodShape) -> None:
    """nodeName and nodeSelector must name nodes of this lab."""
    obj, prefix, spec = shape.owner, shape.prefix, shape.spec
    by_name = {node.name: node for node in ctx.nodes}
    if spec.node_name and spec.node_name not in by_name:
        guess = did_you_mean(spec.node_name, list(by_name))
        ctx.error(obj, f"{prefix}.nodeName", f'no node "{spec.node_name}" in this lab',
                  f"{guess} {_node_list(ctx)}" if guess else _node_list(ctx))
        return
    if not spec.node_selector:
        return
    wanted = show_labels(spec.node_selector)
    candidates = [by_name[spec.node_name]] if spec.node_name else list(ctx.nodes)
    if any(_has_labels(node, spec.node_selector) for node in candidates):
        return
    if spec.node_name:
        ctx.error(obj, f"{prefix}.nodeSelector",
                  f'node "{spec.node_name}" (nodeName) does not have the labels {wanted}',
                  "the kubelet would reject this pod: fix nodeName or nodeSelector")
        return
    ctx.error(obj, f"{prefix}.nodeSelector", f"no node has the labels {wanted}",
              f"nodes: {_node_labels(ctx.nodes)}; add the labels to a node in the Lab's "
              "spec.nodes, or change the selector")


def _node_list(ctx: Context) -> str:
    names = ", ".join(node.name for node in ctx.nodes)
    if ctx.written(ctx.top.lab, "spec.nodes"):
        return f"the lab's nodes: {names} (from the Lab's spec.nodes)"
    return f"the lab's nodes: {names} (the default; list others in a Lab's spec.nodes)"


def _has_labels(node: NodeSpec, wanted: Mapping[str, str]) -> bool:
    return all(node.labels.get(k) == v for k, v in wanted.items())


def _node_labels(nodes: tuple[NodeSpec, ...]) -> str:
    shown = []
    for node in nodes:
        own = {k: v for k, v in node.labels.items() if k not in WELL_KNOWN}
        shown.append(f"{node.name} ({show_labels(own)})" if own else node.name)
    return ", ".join(shown) + f"; each also has {WELL_KNOWN[0]}=<its name>"


def check_statefulset_service(ctx: Context, sts: StatefulSet) -> None:
    if not sts.service_name:
        return
    ns = sts.meta.namespace
    service = next((s for s in ctx.top.services
                    if s.meta.namespace == ns and s.meta.name == sts.service_name), None)
    if service is None:
        ctx.warning(sts, "spec.serviceName",
                    f'no Service "{sts.service_name}" in namespace {ns}',
                    "create a headless Service (clusterIP: None) of this name selecting the "
                    "pods, so each pod gets the DNS name <pod>.<service>")
    elif not service.headless:
        ctx.warning(sts, "spec.serviceName",
                    f"{label_of(service)} is not headless, so the pods get no DNS names "
                    "of their own", "set clusterIP: None in that Service")


def check_pod_name_collisions(ctx: Context) -> None:
    """A Pod named like a StatefulSet's pod (web-0) would clash with it."""
    ordinal_names = {}
    for sts in ctx.top.statefulsets:
        for ordinal in range(max(sts.replicas, 0)):
            ordinal_names[(sts.meta.namespace, f"{sts.meta.name}-{ordinal}")] = sts
    for pod in ctx.top.pods:
        sts = ordinal_names.get((pod.meta.namespace, pod.meta.name))
        if sts is not None:
            ctx.error(pod, "metadata.name",
                      f'Pod "{pod.meta.name}" has the name of a pod of {label_of(sts)}',
                      "rename the Pod: StatefulSet pods are named <name>-<ordinal>")
