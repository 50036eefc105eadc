"""A container's environment as the kubelet builds it (pure).

Reproduces, from kubernetes/kubernetes:

* `pkg/kubelet/envvars/envvars.go` `FromServices`: per Service with a cluster IP,
  NAME_SERVICE_HOST, NAME_SERVICE_PORT (first port), NAME_SERVICE_PORT_<PORTNAME> for each
  named port in port order, then the Docker-link block: NAME_PORT (first port only), and
  per port NAME_PORT_<port>_<PROTO>{,_PROTO,_PORT,_ADDR}. Names are upper-cased with
  '-' → '_'; values use the Service `port`; URLs use the lower-case protocol and bracket
  IPv6 addresses (`net.JoinHostPort`).
* `pkg/kubelet/kubelet_pods.go` `getServiceEnvVarMap`: Services whose clusterIP is set
  (not "" nor "None": headless and ExternalName inject nothing) in the pod's namespace when
  enableServiceLinks is true, plus always `default/kubernetes`; a `kubernetes` Service in
  the pod's own namespace (links on) replaces it.
* `kubelet_pods.go` `makeEnvironmentVariables`: the container's `env` entries first, each
  `value` expanded against the entries declared *before* it and then the service
  variables; `valueFrom` resolved; then every service variable whose name the container
  did not declare (a declared name always wins).
* `third_party/forked/golang/expansion/expand.go`: `$(VAR)` expands, `$$` is a literal
  `$` (so `$$(VAR)` gives `$(VAR)`), an unknown `$(VAR)` and a lone `$` stay as written.
* `pkg/kubelet/container/helpers.go` `ExpandContainerCommandAndArgs`: command and args
  are expanded against the final environment.

Order: the kubelet keeps both groups in Go maps, so within each group the order it hands
to the runtime is unspecified (upstream tests sort before comparing). labctl makes it
deterministic: declared variables in declaration order, then the service variables
Service by Service in name order, each Service's variables in `FromServices` order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from labctl.cluster.services import KUBERNETES_SERVICE_INDEX, reserved_service_ip
from labctl.cluster.state import ClusterState, PodState, PortAllocation, ServiceState
from labctl.model.objects import EMPTY, Container, ObjectMeta, Service, ServicePort

Env = list[tuple[str, str]]

MASTER_NAMESPACE = "default"
MASTER_SERVICES = frozenset({"kubernetes"})


# ---------------------------------------------------------------- service variables


def env_name(text: str) -> str:
    """A Service or port name as a variable name part (envvars.go makeEnvVariableName)."""
    return text.replace("-", "_").upper()


def has_cluster_ip(svc: ServiceState) -> bool:
    """IsServiceIPSet: headless ("None") and ExternalName ("") Services have none."""
    return svc.cluster_ip not in ("", "None")


def _url(protocol: str, ip: str, port: int) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return f"{protocol.lower()}://{host}:{port}"


def from_services(services: Iterable[ServiceState]) -> Env:
    """The variables of these Services, in the order given (envvars.go FromServices)."""
    out: Env = []
    for svc in services:
        if not has_cluster_ip(svc):
            continue
        prefix = env_name(svc.name)
        ip = svc.cluster_ip
        ports: Sequence[PortAllocation | ServicePort] = svc.ports or svc.service.ports
        out.append((f"{prefix}_SERVICE_HOST", ip))
        if not ports:  # the API server requires ports here; FromServices would panic
            continue
        out.append((f"{prefix}_SERVICE_PORT", str(ports[0].port)))
        out.extend((f"{prefix}_SERVICE_PORT_{env_name(p.name)}", str(p.port))
                   for p in ports if p.name)
        for i, p in enumerate(ports):
            protocol = p.protocol or "TCP"
            if i == 0:  # "Docker special-cases the first port."
                out.append((f"{prefix}_PORT", _url(protocol, ip, p.port)))
            link = f"{prefix}_PORT_{p.port}_{protocol.upper()}"
            out += [(link, _url(protocol, ip, p.port)),
                    (f"{link}_PROTO", protocol.lower()),
                    (f"{link}_PORT", str(p.port)),
                    (f"{link}_ADDR", ip)]
    return out


def services_for_pod(pod_namespace: str, services: Iterable[ServiceState],
                     enable_service_links: bool) -> list[ServiceState]:
    """The Services a pod's variables come from (kubelet_pods.go getServiceEnvVarMap),
    sorted by name."""
    chosen: dict[str, ServiceState] = {}
    for svc in services:
        if not has_cluster_ip(svc):
            continue
        if svc.namespace == MASTER_NAMESPACE and svc.name in MASTER_SERVICES:
            chosen.setdefault(svc.name, svc)  # a same-named one in the pod's namespace wins
        elif svc.namespace == pod_namespace and enable_service_links:
            chosen[svc.name] = svc
    return [chosen[name] for name in sorted(chosen)]


def service_env(pod_namespace: str, services: Iterable[ServiceState],
                enable_service_links: bool) -> Env:
    """The service variables a pod in `pod_namespace` gets from `services` (the Services
    that existed when it started)."""
    return from_services(services_for_pod(pod_namespace, services, enable_service_links))


def master_service(service_cidr: str) -> ServiceState:
    """default/kubernetes as every cluster has it: first service IP, 443/TCP "https"."""
    ip = reserved_service_ip(service_cidr, KUBERNETES_SERVICE_INDEX)
    svc = Service(ObjectMeta("kubernetes", MASTER_NAMESPACE, {"component": "apiserver",
                                                            "provider": "kubernetes"}),
                  ports=(ServicePort(443, name="https", target_port=6443),), cluster_ip=ip)
    return ServiceState(svc, ip, (PortAllocation("https", "TCP", 443),))


def with_master_service(services: Iterable[ServiceState], service_cidr: str
                        ) -> list[ServiceState]:
    """`services`, plus default/kubernetes when they do not hold it."""
    out = list(services)
    if not any(s.namespace == MASTER_NAMESPACE and s.name in MASTER_SERVICES for s in out):
        out.append(master_service(service_cidr))
    return out


# ---------------------------------------------------------------- $(VAR) expansion

Lookup = Callable[[str], str | None]


def _expand(text: str, lookup: Lookup) -> str:
    """expansion.Expand, step for step."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            following = text[cursor + 1]
            advance = 1
            if following == "$":  # escaped operator
                out.append("$")
            elif following == "(":
                close = text.find(")", cursor + 2)
                if close < 0:  # incomplete reference: kept, scanning goes on after "("
                    out.append("$(")
                else:
                    name = text[cursor + 2:close]
                    value = lookup(name)
                    out.append(f"$({name})" if value is None else value)
                    advance = close - cursor
            else:  # a "$" that starts no reference
                out.append("$" + following)
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    return "".join(out) + text[checkpoint:]


def expand(text: str, env: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    """`text` with `$(VAR)` references to `env` expanded, as the kubelet expands a
    container's command and args (a later duplicate name wins, as in EnvVarsToMap)."""
    values = dict(env.items() if isinstance(env, Mapping) else env)
    return _expand(text, values.get)


def expand_command(container: Container, env: Mapping[str, str] | Iterable[tuple[str, str]]
                   ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The container's command and args expanded against its final environment."""
    values = dict(env.items() if isinstance(env, Mapping) else env)
    return (tuple(_expand(c, values.get) for c in container.command),
            tuple(_expand(a, values.get) for a in container.args))


# ---------------------------------------------------------------- the container's env


@dataclass(frozen=True)
class PodContext:
    """What the kubelet knows about a pod when it builds a container's environment."""

    name: str
    namespace: str = "default"
    ip: str = ""  # status.podIP
    node_name: str = ""  # spec.nodeName
    host_ip: str = ""  # status.hostIP: the node's address
    enable_service_links: bool = True
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    annotations: Mapping[str, str] = field(default_factory=lambda: EMPTY)

    @classmethod
    def of(cls, pod: PodState, state: ClusterState | None = None) -> PodContext:
        host_ip = ""
        if state is not None:
            host_ip = next((n.ip for n in state.nodes if n.name == pod.node), "")
        return cls(name=pod.name, namespace=pod.namespace, ip=pod.ip, node_name=pod.node,
                   host_ip=host_ip, enable_service_links=pod.spec.enable_service_links,
                   labels=pod.labels, annotations=pod.annotations)


@dataclass(frozen=True)
class EnvResult:
    env: Env
    notes: tuple[str, ...] = ()  # entries labctl could not resolve, and why


def _subscript(path: str, prefix: str) -> str | None:
    """The key of `metadata.labels['key']` (or "key"), else None."""
    if not (path.startswith(prefix + "[") and path.endswith("]")):
        return None
    key = path[len(prefix) + 1:-1]
    if len(key) >= 2 and key[0] == key[-1] and key[0] in "'\"":
        return key[1:-1]
    return None


def field_value(pod: PodContext, path: str) -> str | None:
    """A downward-API fieldRef's value (podFieldSelectorRuntimeValue); None when labctl
    cannot know it."""
    simple = {
        "metadata.name": pod.name,
        "metadata.namespace": pod.namespace,
        "spec.nodeName": pod.node_name,
        "status.podIP": pod.ip,
        "status.podIPs": pod.ip,  # single-stack: the one address
        "status.hostIP": pod.host_ip,
        "status.hostIPs": pod.host_ip,
    }
    if path in simple:
        return simple[path] or None
    for prefix, values in (("metadata.labels", pod.labels),
                           ("metadata.annotations", pod.annotations)):
        key = _subscript(path, prefix)
        if key is not None:
            return values.get(key, "")  # a missing key gives "", as in the kubelet
    return None


_SOURCES = {
    "configMapKeyRef": "labctl models no ConfigMaps",
    "secretKeyRef": "labctl models no Secrets",
    "resourceFieldRef": "labctl models no container resources",
    "fileKeyRef": "labctl models no volumes",
}


def _value_from(pod: PodContext, name: str, source: Mapping[str, object]
                ) -> tuple[str | None, str]:
    """(value, note): the value of a valueFrom entry, or None and why it is skipped."""
    ref = source.get("fieldRef")
    if isinstance(ref, Mapping):
        path = str(ref.get("fieldPath", ""))
        value = field_value(pod, path)
        if value is None:
            return None, (f"env {name}: fieldRef {path!r} is not known to labctl "
                          f"(supported: metadata.name, metadata.namespace, "
                          f"metadata.labels['k'], metadata.annotations['k'], spec.nodeName, "
                          f"status.podIP(s), status.hostIP(s)); left out")
        return value, ""
    kind = next((k for k in source if k in _SOURCES), next(iter(source), "valueFrom"))
    why = _SOURCES.get(kind, "labctl does not know this source")
    return None, (f"env {name}: valueFrom.{kind} skipped ({why}); a real kubelet would "
                  f"fail to start the container unless the reference is optional")


def resolve_env(pod: PodContext, container: Container, services: Iterable[ServiceState]
                ) -> EnvResult:
    """The final environment (makeEnvironmentVariables), with notes on what was left out.

    `services` are the Services that existed when the pod started.
    """
    service = dict(service_env(pod.namespace, services, pod.enable_service_links))
    declared: dict[str, str] = {}
    notes: list[str] = []

    def lookup(name: str) -> str | None:
        # The entries declared so far, then the service variables (MappingFuncFor order).
        return declared[name] if name in declared else service.get(name)

    for var in container.env:
        if var.value:
            value: str | None = _expand(var.value, lookup)
        elif var.value_from is not None:
            value, note = _value_from(pod, var.name, var.value_from)
            if value is None:
                notes.append(note)
                continue
        else:
            value = ""
        declared[var.name] = value  # a repeated name keeps its first place, last value
    env = list(declared.items())
    env += [(k, v) for k, v in service.items() if k not in declared]
    return EnvResult(env, tuple(notes))


def container_env(pod: PodContext, container: Container, services: Iterable[ServiceState]
                  ) -> Env:
    """The environment the kubelet gives `container`, in labctl's deterministic version
    of the kubelet's order (see the module docstring)."""
    return resolve_env(pod, container, services).env
