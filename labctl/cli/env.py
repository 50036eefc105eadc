"""`labctl env`: the environment the kubelet would give a container, from manifests alone."""

from __future__ import annotations

from labctl.cli.commands import PathArg, argument, command, option
from labctl.cli.common import print_warnings
from labctl.cli.output import err
from labctl.cluster.state import ClusterState, PodState
from labctl.errors import LabctlError, NotFoundError

# kubectl's TYPE/NAME forms for the workloads labctl models (first pod of the workload).
WORKLOAD_KINDS = {"deployment": "Deployment", "deployments": "Deployment",
                  "deploy": "Deployment", "statefulset": "StatefulSet",
                  "statefulsets": "StatefulSet", "sts": "StatefulSet"}


def _ordinal(pod: PodState) -> tuple[int, str]:
    tail = pod.name.rsplit("-", 1)[-1]
    return (int(tail) if tail.isdigit() else 0, pod.name)


def pick_pod(state: ClusterState, target: str, namespace: str) -> PodState:
    """A pod named as `labctl get pods` shows it (or NAMESPACE/POD, pod/POD,
    deployment/NAME, statefulset/NAME: the workload's first pod)."""
    from labctl.cli.targets import find_pod

    kind, _, rest = target.partition("/")
    if rest and kind.lower() in ("pod", "pods", "po"):
        target = rest
    elif rest and kind.lower() in WORKLOAD_KINDS:
        owner_kind = WORKLOAD_KINDS[kind.lower()]
        pods = sorted((p for p in state.pods if p.namespace == namespace and p.owner
                       and p.owner.kind == owner_kind and p.owner.name == rest), key=_ordinal)
        if not pods:
            raise NotFoundError(f'{owner_kind} "{rest}" has no pods in namespace {namespace}')
        err(f"using pod {pods[0].name} of {owner_kind} {rest}")
        return pods[0]
    try:
        return find_pod(state, target, namespace)
    except NotFoundError as exc:
        # A workload's name is a prefix of its pods' names; difflib rarely finds those.
        name = target.rsplit("/", 1)[-1]
        ns = target.split("/", 1)[0] if "/" in target else namespace
        owned = [p.name for p in state.pods if p.namespace == ns and p.owner
                 and p.owner.name == name]
        if owned:
            raise NotFoundError(f"{exc}; {name} is a workload, its pods are: "
                                f"{', '.join(owned[:5])}") from None
        raise


@command(name="env")
@argument("pod")
@option("-n", "--namespace", default="default", show_default=True)
@option("-c", "--container", help="Which container (default: the first).")
@option("-f", "--filename", "files", multiple=True, required=True,
        type=PathArg(), help="A YAML file or folder; repeat for more.")
def env(pod: str, namespace: str, container: str | None, files: tuple[str, ...]) -> None:
    """Print the environment the kubelet would give a container of POD, NAME=VALUE a line.

    The container's own env (with $(VAR) references expanded), then the Service
    variables (NAME_SERVICE_HOST, NAME_PORT_80_TCP, ...) of its namespace's Services and
    of default/kubernetes, taking every Service in FILES as existing before the pod and
    its clusterIP as written (allocated when none is written). Needs no lab and no root.

    \b
    Examples:
      labctl env -f lab.yaml client
      labctl env -f lab.yaml -n shop deployment/web -c app
      labctl env -f lab.yaml web-0 | grep SERVICE
    """
    from labctl.cluster.compile import compile_files
    from labctl.kubelet.envvars import PodContext, resolve_env, with_master_service

    state, warnings = compile_files(list(files))
    print_warnings(warnings)
    found = pick_pod(state, pod, namespace)
    names = [c.name for c in found.spec.containers]
    if container is None:
        chosen = found.spec.containers[0]
        if len(names) > 1:
            err(f'Defaulted container "{chosen.name}" out of: {", ".join(names)}')
    else:
        matches = [c for c in found.spec.containers if c.name == container]
        if not matches:
            raise LabctlError(f"container {container!r} is not in pod {found.key}; "
                              f"containers: {', '.join(names)}")
        chosen = matches[0]
    services = with_master_service(state.services, state.lab.service_cidr)
    result = resolve_env(PodContext.of(found, state), chosen, services)
    for note in result.notes:
        err(f"note: {note}")
    for name, value in result.env:
        print(f"{name}={value}")
