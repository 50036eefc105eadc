"""`${service:NS/NAME.clusterIP}`-style placeholders in check files: their syntax (pure,
checked when the file loads) and their values in a running lab's ClusterState."""

from __future__ import annotations

import re
from dataclasses import dataclass

from labctl.cluster.state import ClusterState, PodState

PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
FIELDS = {"service": ("clusterIP", "nodePort", "loadBalancerIP"), "pod": ("ip",),
          "node": ("ip",)}
EXAMPLE = "${service:default/web.clusterIP}, ${pod:default/web-*.ip}, ${node:node1.ip}"


class Unresolved(Exception):
    """A reference the running lab cannot fill: the check using it fails with this."""


@dataclass(frozen=True)
class Ref:
    kind: str  # service | pod | node
    name: str  # as written: NAME, NS/NAME or a pod prefix ending in "*"
    field: str

    @property
    def text(self) -> str:
        return f"${{{self.kind}:{self.name}.{self.field}}}"


def parse(body: str) -> Ref | str:
    """The reference inside `${…}`, or why it is not one."""
    kind, colon, rest = body.partition(":")
    if not colon or kind not in FIELDS:
        return (f"unknown placeholder ${{{body}}}: it must start with "
                f"{', '.join(k + ':' for k in FIELDS)}")
    name, dot, field = rest.rpartition(".")
    if not dot or not name:
        return f"placeholder ${{{body}}} names no field: write ${{{kind}:NAME.FIELD}}"
    if field not in FIELDS[kind]:
        return (f"placeholder ${{{body}}}: {kind} has no field {field!r}; fields: "
                f"{', '.join(FIELDS[kind])}")
    if "*" in name[:-1] or (name.endswith("*") and kind != "pod"):
        return f"placeholder ${{{body}}}: only a pod name may end in '*' (a prefix)"
    return Ref(kind, name, field)


def problems(text: str) -> list[str]:
    """Syntax errors of the placeholders in `text`, and `${` left unclosed."""
    out = [p for m in PLACEHOLDER.finditer(text) if isinstance(p := parse(m.group(1)), str)]
    if "${" in PLACEHOLDER.sub("", text):
        out.append("a '${' is never closed by '}'")
    return out


def split_ref(name: str) -> tuple[str, str]:
    """NS/NAME → (NS, NAME); NAME alone is in namespace default."""
    namespace, slash, rest = name.partition("/")
    return (namespace, rest) if slash else ("default", name)


def find_pods(state: ClusterState, ref: str) -> list[PodState]:
    """Pods a reference names: NAME, NS/NAME, or a prefix ending in '*' (all matches,
    by name)."""
    namespace, name = split_ref(ref)
    if name.endswith("*"):
        found = [p for p in state.pods if p.namespace == namespace
                 and p.name.startswith(name[:-1])]
        return sorted(found, key=lambda p: p.name)
    return [p for p in state.pods if p.namespace == namespace and p.name == name]


def find_pod(state: ClusterState, ref: str) -> PodState:
    pods = find_pods(state, ref)
    if not pods:
        raise Unresolved(f"no pod {ref!r} in the lab")
    return pods[0]


def values(state: ClusterState, ref: Ref) -> list[str]:
    """The value(s) of one reference (several for a pod prefix)."""
    if ref.kind == "node":
        for node in state.nodes:
            if node.name == ref.name:
                return [node.ip]
        raise Unresolved(f"no node {ref.name!r} in the lab")
    if ref.kind == "pod":
        pods = find_pods(state, ref.name)
        if not pods:
            raise Unresolved(f"{ref.text}: no pod {ref.name!r} in the lab")
        return [p.ip for p in pods]
    namespace, name = split_ref(ref.name)
    for svc in state.services:
        if (svc.namespace, svc.name) == (namespace, name):
            value = {"clusterIP": svc.cluster_ip, "loadBalancerIP": svc.load_balancer_ip,
                     "nodePort": str(svc.ports[0].node_port) if svc.ports else ""}[ref.field]
            if value in ("", "0", "None"):
                raise Unresolved(f"{ref.text}: Service {namespace}/{name} has no {ref.field}")
            return [value]
    raise Unresolved(f"{ref.text}: no Service {namespace}/{name} in the lab")


def fill(state: ClusterState, text: str, regex: bool = False) -> str:
    """`text` with every placeholder replaced (several values joined by spaces; escaped
    for a regex when `regex`)."""

    def one(m: re.Match[str]) -> str:
        ref = parse(m.group(1))
        assert isinstance(ref, Ref)  # the loader refused anything else
        vals = values(state, ref)
        return " ".join(re.escape(v) if regex else v for v in vals)

    return PLACEHOLDER.sub(one, text)


def fill_list(state: ClusterState, items: tuple[str, ...]) -> list[str]:
    """Each item filled; an item that is exactly one placeholder with several values
    becomes several items."""
    out: list[str] = []
    for item in items:
        m = PLACEHOLDER.fullmatch(item)
        if m:
            ref = parse(m.group(1))
            assert isinstance(ref, Ref)
            out += values(state, ref)
        else:
            out.append(fill(state, item))
    return out
