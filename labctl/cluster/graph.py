"""The lab as a diagram (pure): ClusterState → Graphviz dot text or Mermaid text.

What `labctl graph` draws, from left to right: the Services (type, VIP, ports,
NodePorts, LoadBalancer IP) with an arrow to every pod their EndpointSlices name — solid
for a ready endpoint, dashed for a not-ready one, dotted for a terminating one — then
the pods (name, IP) inside their node, plugged into the node's `cni0` bridge (with the
node's pod CIDR), the node's `eth0` on the node network (`br0`), and the `external`
client on that network.

`diagram(state)` builds a small format-neutral model; `to_dot` and `to_mermaid` write
it out. Both are deterministic: the same state always gives the same text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from labctl import names
from labctl.cluster.state import ClusterState, PodState, ServiceState
from labctl.model.objects import Endpoint, EndpointSlice

FORMATS = ("dot", "mermaid")
SYSTEM_NAMESPACE = "kube-system"

READY, NOT_READY, TERMINATING = "ready", "not-ready", "terminating"


@dataclass(frozen=True)
class Box:
    """One vertex: `kind` is fabric | external | eth0 | bridge | pod | service | address."""

    id: str  # [A-Za-z0-9_], unique in the diagram
    kind: str
    lines: tuple[str, ...]
    group: str = ""  # the Group.id it is drawn in ("": top level)
    faded: bool = False  # a terminating pod


@dataclass(frozen=True)
class Link:
    """An edge: `wire` (a link between interfaces, no direction) or `endpoint` (a
    Service to a backend, `state` ready | not-ready | terminating)."""

    src: str
    dst: str
    kind: str
    label: str = ""
    state: str = READY


@dataclass(frozen=True)
class Group:
    id: str
    kind: str  # services | node
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Diagram:
    title: str
    groups: tuple[Group, ...]
    boxes: tuple[Box, ...]
    links: tuple[Link, ...]


@dataclass
class _Ids:
    """Stable identifiers made of what Graphviz and Mermaid both accept unquoted."""

    used: set[str] = field(default_factory=set)
    by_key: dict[str, str] = field(default_factory=dict)

    def __call__(self, key: str) -> str:
        if key in self.by_key:
            return self.by_key[key]
        base = re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_") or "x"
        if base[0].isdigit():
            base = "n" + base
        ident, n = base, 2
        while ident in self.used:
            ident, n = f"{base}_{n}", n + 1
        self.used.add(ident)
        self.by_key[key] = ident
        return ident


def _shown(namespace: str, name: str) -> str:
    return name if namespace == "default" else f"{namespace}/{name}"


def _is_system(namespace: str, name: str) -> bool:
    return namespace == SYSTEM_NAMESPACE or (namespace, name) == ("default", "kubernetes")


def service_lines(svc: ServiceState) -> tuple[str, ...]:
    """A Service's box: name, type and VIP, one line per port, the external addresses
    and the policies that differ from the defaults."""
    spec = svc.service
    lines = [_shown(svc.namespace, svc.name)]
    if spec.type == "ExternalName":
        lines.append(f"ExternalName → {spec.external_name}")
    elif svc.cluster_ip == "None":
        lines.append("headless (ClusterIP None)")
    else:
        lines.append(f"{spec.type} {svc.cluster_ip}")
    targets = {(p.name, p.protocol, p.port): p.target_port for p in spec.ports}
    for p in svc.ports:
        text = f"{p.name} {p.port}/{p.protocol}" if p.name else f"{p.port}/{p.protocol}"
        target = targets.get((p.name, p.protocol, p.port))
        if target is not None and str(target) != str(p.port):
            text += f" → {target}"
        if p.node_port:
            text += f", NodePort {p.node_port}"
        lines.append(text)
    if svc.load_balancer_ip:
        lines.append(f"LoadBalancer IP {svc.load_balancer_ip}")
    if spec.external_ips:
        lines.append("externalIPs " + ", ".join(spec.external_ips))
    if spec.session_affinity == "ClientIP":
        lines.append("sessionAffinity ClientIP")
    if spec.type in ("NodePort", "LoadBalancer") and spec.external_traffic_policy == "Local":
        lines.append("externalTrafficPolicy Local")
    if spec.internal_traffic_policy == "Local":
        lines.append("internalTrafficPolicy Local")
    return tuple(lines)


def pod_lines(pod: PodState) -> tuple[str, ...]:
    lines = [_shown(pod.namespace, pod.name), pod.ip]
    if pod.terminating:
        lines.append("terminating")
    return tuple(lines)


def endpoint_state(ep: Endpoint) -> str:
    """ready (also when the condition is unset, as the API says), not-ready, or
    terminating."""
    if ep.conditions.terminating:
        return TERMINATING
    return NOT_READY if ep.conditions.ready is False else READY


def _port_label(svc: ServiceState, es: EndpointSlice) -> str:
    by_name = {(p.name, p.protocol): p.port for p in svc.ports}
    parts = []
    for p in es.ports:
        if p.port is None:
            continue
        front = by_name.get((p.name or "", p.protocol))
        text = f"{front}→{p.port}" if front not in (None, p.port) else str(p.port)
        text += "" if p.protocol == "TCP" else f"/{p.protocol}"
        if text not in parts:
            parts.append(text)
    return ", ".join(parts)


def _slices_of(state: ClusterState, svc: ServiceState) -> Iterable[EndpointSlice]:
    return (es for es in state.endpoint_slices
            if es.meta.namespace == svc.namespace and es.service_name == svc.name)


def diagram(state: ClusterState, system: bool = True) -> Diagram:
    """The lab's diagram. `system=False` leaves out the cluster's own objects
    (kube-system and default/kubernetes)."""
    ids = _Ids()
    lab = state.lab
    pods = [p for p in state.pods if system or not _is_system(p.namespace, p.name)]
    services = [s for s in state.services if system or not _is_system(s.namespace, s.name)]
    groups = [Group("services", "services",
                    ("Services", f"service CIDR {lab.service_cidr}"))]
    boxes: list[Box] = []
    links: list[Link] = []

    fabric = ids("fabric")
    boxes.append(Box(fabric, "fabric", (f"{names.FABRIC_BRIDGE} node network",
                                        lab.node_cidr)))
    by_address: dict[str, str] = {}
    for node in state.nodes:
        group = ids(f"node {node.name}")
        groups.append(Group(group, "node", (f"node {node.name}",)))
        eth0 = ids(f"{node.name} eth0")
        bridge = ids(f"{node.name} {names.POD_BRIDGE}")
        prefix = node.pod_cidr.split("/")[1]
        boxes.append(Box(eth0, "eth0", (f"eth0 {node.ip}",), group))
        boxes.append(Box(bridge, "bridge", (f"{names.POD_BRIDGE} {node.pod_gateway}/{prefix}",
                                            f"pod CIDR {node.pod_cidr}"), group))
        by_address[node.ip] = eth0
        for pod in (p for p in pods if p.node == node.name):
            pid = ids(f"pod {pod.key}")
            boxes.append(Box(pid, "pod", pod_lines(pod), group, faded=pod.terminating))
            links.append(Link(pid, bridge, "wire"))
            by_address.setdefault(pod.ip, pid)
        links.append(Link(bridge, eth0, "wire"))
        links.append(Link(eth0, fabric, "wire"))
    external = ids("external")
    boxes.append(Box(external, "external", ("external client", f"eth0 {state.external_ip}")))
    links.append(Link(fabric, external, "wire"))
    by_address[state.external_ip] = external
    pod_ids = {p.key: ids(f"pod {p.key}") for p in pods}

    outside: dict[str, str] = {}
    for svc in services:
        sid = ids(f"svc {svc.key}")
        lines = service_lines(svc)
        found: dict[tuple[str, str], list[str]] = {}
        for es in _slices_of(state, svc):
            label = _port_label(svc, es)
            for ep in es.endpoints:
                ref = ep.target_ref
                target = None
                if ref is not None and ref.kind == "Pod":
                    target = pod_ids.get(f"{ref.namespace or es.meta.namespace}/{ref.name}")
                if target is None and ep.addresses:
                    addr = ep.addresses[0]
                    target = by_address.get(addr)
                    if target is None:
                        if addr not in outside:
                            outside[addr] = ids(f"address {addr}")
                            boxes.append(Box(outside[addr], "address", (addr,)))
                        target = outside[addr]
                if target is None:
                    continue
                labels = found.setdefault((target, endpoint_state(ep)), [])
                if label and label not in labels:
                    labels.append(label)
        if not found and svc.service.type != "ExternalName":
            lines += ("no endpoints",)
        boxes.append(Box(sid, "service", lines, "services"))
        links += [Link(sid, target, "endpoint", ", ".join(labels), st)
                  for (target, st), labels in found.items()]

    title = (f"lab {lab.name}: {len(state.nodes)} nodes, {len(pods)} pods, "
             f"{len(services)} services, proxy mode {lab.proxy_mode}")
    return Diagram(title, tuple(groups), tuple(boxes), tuple(links))


# ------------------------------------------------------------------ Graphviz


def dot_quote(text: str) -> str:
    """A Graphviz double-quoted string holding `text` literally (backslashes and quotes
    escaped, so no `\\N`-style escape or end of string can sneak in)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def _dot_label(lines: Iterable[str]) -> str:
    # Each line escaped on its own, then joined with Graphviz's centred line break.
    return "\\n".join(dot_quote(line)[1:-1] for line in lines)


_DOT_BOX = {
    "service": 'shape=box, style="rounded,filled", fillcolor="#fff4d6", color="#c99a2e"',
    "pod": 'shape=box, style="rounded,filled", fillcolor="#e3f0ff", color="#4a7fc1"',
    "bridge": 'shape=box, style=filled, fillcolor="#eeeeee", color="#777777"',
    "eth0": 'shape=box, style=filled, fillcolor="#eeeeee", color="#777777"',
    "fabric": 'shape=box, style=filled, fillcolor="#dddddd", color="#555555"',
    "external": 'shape=box, style="rounded,filled", fillcolor="#e8f7e4", color="#4f9a3c"',
    "address": 'shape=box, style="rounded,dashed", color="#777777"',
}
_DOT_EDGE = {
    READY: 'color="#2e6db4"',
    NOT_READY: 'color="#c0392b", style=dashed, fontcolor="#c0392b"',
    TERMINATING: 'color="#888888", style=dotted, fontcolor="#888888"',
}
_STATE_WORDS = {READY: "", NOT_READY: "not ready", TERMINATING: "terminating"}


def _edge_text(link: Link) -> str:
    return ", ".join(x for x in (link.label, _STATE_WORDS[link.state]) if x)


def to_dot(d: Diagram) -> str:
    out = [
        f"digraph {dot_quote(d.title)} {{",
        f"  graph [rankdir=LR, fontname=Helvetica, fontsize=12, labelloc=t, "
        f"label={dot_quote(d.title)}, nodesep=0.25, ranksep=0.6];",
        "  node [fontname=Helvetica, fontsize=10];",
        "  edge [fontname=Helvetica, fontsize=9, arrowsize=0.7];",
    ]

    def box_line(b: Box, indent: str) -> str:
        attrs = f"label=\"{_dot_label(b.lines)}\", {_DOT_BOX[b.kind]}"
        if b.faded:
            attrs += ', fontcolor="#888888", color="#888888"'
        return f"{indent}{b.id} [{attrs}];"

    for g in d.groups:
        style = ('style="rounded,dashed"; color="#c99a2e"' if g.kind == "services"
                 else 'style=rounded; color="#555555"')
        out.append(f"  subgraph cluster_{g.id} {{")
        out.append(f'    label="{_dot_label(g.lines)}"; {style};')
        out += [box_line(b, "    ") for b in d.boxes if b.group == g.id]
        out.append("  }")
    out += [box_line(b, "  ") for b in d.boxes if not b.group]
    for link in d.links:
        if link.kind == "wire":
            out.append(f'  {link.src} -> {link.dst} [dir=none, color="#999999"];')
            continue
        attrs = _DOT_EDGE[link.state]
        text = _edge_text(link)
        if text:
            attrs = f"label={dot_quote(text)}, " + attrs
        out.append(f"  {link.src} -> {link.dst} [{attrs}];")
    out.append("}")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ Mermaid

_MERMAID_ENTITIES = {"#": "#35;", '"': "#quot;", "<": "#lt;", ">": "#gt;", "&": "#amp;",
                     "\n": " "}


def mermaid_text(text: str) -> str:
    """`text` for a Mermaid quoted label: the characters Mermaid would read as syntax
    or HTML written as its entity codes."""
    return "".join(_MERMAID_ENTITIES.get(c, c) for c in text)


def _mermaid_label(lines: Iterable[str]) -> str:
    return '"' + "<br/>".join(mermaid_text(line) for line in lines) + '"'


_MERMAID_CLASSES = {
    "service": "fill:#fff4d6,stroke:#c99a2e",
    "pod": "fill:#e3f0ff,stroke:#4a7fc1",
    "bridge": "fill:#eeeeee,stroke:#777777",
    "eth0": "fill:#eeeeee,stroke:#777777",
    "fabric": "fill:#dddddd,stroke:#555555",
    "external": "fill:#e8f7e4,stroke:#4f9a3c",
    "address": "fill:#ffffff,stroke:#777777,stroke-dasharray:4 3",
    "faded": "fill:#f4f4f4,stroke:#888888,color:#888888,stroke-dasharray:2 2",
}
_MERMAID_LINKS = {
    NOT_READY: "stroke:#c0392b,stroke-dasharray:6 4",
    TERMINATING: "stroke:#888888,stroke-dasharray:2 3",
}


def to_mermaid(d: Diagram) -> str:
    # The title goes into YAML front matter: a JSON string is a YAML double-quoted one.
    out = ["---", f"title: {json.dumps(d.title, ensure_ascii=False)}", "---", "flowchart LR"]

    def box_line(b: Box, indent: str) -> str:
        shape = ("([", "])") if b.kind == "service" else ("[", "]")
        return f"{indent}{b.id}{shape[0]}{_mermaid_label(b.lines)}{shape[1]}"

    for g in d.groups:
        out.append(f"  subgraph {g.id}[{_mermaid_label(g.lines)}]")
        out += [box_line(b, "    ") for b in d.boxes if b.group == g.id]
        out.append("  end")
    out += [box_line(b, "  ") for b in d.boxes if not b.group]
    styled: list[tuple[int, str]] = []
    for i, link in enumerate(d.links):
        if link.kind == "wire":
            out.append(f"  {link.src} --- {link.dst}")
            continue
        arrow = "-->" if link.state == READY else "-.->"
        text = _edge_text(link)
        label = f"|{_mermaid_label([text])}|" if text else ""
        out.append(f"  {link.src} {arrow}{label} {link.dst}")
        if link.state in _MERMAID_LINKS:
            styled.append((i, _MERMAID_LINKS[link.state]))
    for kind, style in _MERMAID_CLASSES.items():
        out.append(f"  classDef {kind} {style}")
    for kind in _MERMAID_CLASSES:
        members = [b.id for b in d.boxes if (b.kind == kind and not b.faded)
                   or (kind == "faded" and b.faded)]
        if members:
            out.append(f"  class {','.join(members)} {kind}")
    out += [f"  linkStyle {i} {style}" for i, style in styled]
    return "\n".join(out) + "\n"


def render(state: ClusterState, fmt: str = "dot", system: bool = True) -> str:
    """The lab as `dot` (Graphviz) or `mermaid` text."""
    d = diagram(state, system)
    if fmt == "dot":
        return to_dot(d)
    if fmt == "mermaid":
        return to_mermaid(d)
    raise ValueError(f"unknown diagram format {fmt!r}; expected one of {', '.join(FORMATS)}")
