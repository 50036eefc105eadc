"""`labctl graph`: the pure renderer (ClusterState → dot / mermaid text) and the command.

The quickstart goldens pin the output; regenerate them with UPDATE_GOLDEN=1 after
looking at the difference (and at `labctl graph topologies/quickstart -w q.svg`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from labctl.cli import graph as graph_cli
from labctl.cli.commands import invoke
from labctl.cli.main import cli
from labctl.cluster import graph
from labctl.cluster.compile import compile_files, with_readiness
from labctl.cluster.state import ClusterState
from labctl.model.objects import (
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    ObjectMeta,
)
from tests.unit.goldens import check_golden

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGIES = ROOT / "topologies"
GOLDEN = Path(__file__).parent / "golden" / "graph"
HAS_DOT = shutil.which("dot") is not None


def state_of(*paths: Path | str) -> ClusterState:
    state, _warnings = compile_files([str(p) for p in paths], addons=True)
    return state


@pytest.fixture(scope="module")
def quickstart() -> ClusterState:
    return state_of(TOPOLOGIES / "quickstart")


def write(tmp: Path, body: str) -> Path:
    path = tmp / "lab.yaml"
    path.write_text(textwrap.dedent(body))
    return path


SERVICES = """\
    apiVersion: labctl/v1
    kind: Lab
    metadata: {name: kinds}
    ---
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web}
    spec:
      replicas: 2
      selector: {matchLabels: {app: web}}
      template:
        metadata: {labels: {app: web}}
        spec: {containers: [{name: web, ports: [{name: http, containerPort: 8080}]}]}
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: np}
    spec:
      type: NodePort
      selector: {app: web}
      externalTrafficPolicy: Local
      ports: [{name: http, port: 80, targetPort: http, nodePort: 30080}]
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: lb}
    spec:
      type: LoadBalancer
      selector: {app: web}
      sessionAffinity: ClientIP
      ports: [{port: 8080}]
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: headless}
    spec:
      clusterIP: None
      selector: {app: web}
      ports: [{port: 8080}]
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: db}
    spec: {type: ExternalName, externalName: db.example.com}
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: empty}
    spec:
      selector: {app: nothing}
      ports: [{port: 81}]
    """


# ------------------------------------------------------------------ the renderer


@pytest.mark.parametrize("fmt,ext", [("dot", "dot"), ("mermaid", "mmd")])
def test_quickstart_matches_the_golden(quickstart: ClusterState, fmt: str, ext: str) -> None:
    text = graph.render(quickstart, fmt)
    check_golden(GOLDEN / f"quickstart.{ext}", text)


def test_the_same_state_always_gives_the_same_text(quickstart: ClusterState) -> None:
    again = state_of(TOPOLOGIES / "quickstart")
    for fmt in graph.FORMATS:
        assert graph.render(quickstart, fmt) == graph.render(again, fmt)


@pytest.mark.parametrize("fmt", graph.FORMATS)
def test_every_pod_node_and_service_appears(quickstart: ClusterState, fmt: str) -> None:
    text = graph.render(quickstart, fmt)
    for pod in quickstart.pods:
        assert pod.name in text and pod.ip in text, pod.key
    for svc in quickstart.services:
        assert svc.name in text and svc.cluster_ip in text, svc.key
    for node in quickstart.nodes:
        assert f"node {node.name}" in text and node.ip in text and node.pod_cidr in text
        assert f"cni0 {node.pod_gateway}/24" in text
    assert quickstart.external_ip in text and quickstart.lab.node_cidr in text


def test_each_service_points_at_the_pods_of_its_endpoint_slices(
        quickstart: ClusterState) -> None:
    d = graph.diagram(quickstart)
    boxes = {b.id: b for b in d.boxes}
    edges = {(boxes[link.src].lines[0], boxes[link.dst].lines[0]): link
             for link in d.links if link.kind == "endpoint"}
    web = {dst for (src, dst) in edges if src == "web"}
    assert web == {p.name for p in quickstart.pods if p.labels.get("app") == "web"}
    assert all(edges[("web", p)].label == "80→8080" for p in web)
    assert all(edges[("web", p)].state == graph.READY for p in web)
    # default/kubernetes leads to the first node's eth0 (port 6443): no pod backs it
    assert edges[("kubernetes", "eth0 172.18.0.2")].label == "443→6443"
    dns = [link.label for (src, _dst), link in edges.items() if src == "kube-system/kube-dns"]
    assert dns == ["53/UDP, 53, 9153"] * 2


def test_each_pod_hangs_on_its_nodes_bridge(quickstart: ClusterState) -> None:
    d = graph.diagram(quickstart)
    boxes = {b.id: b for b in d.boxes}
    wires = {(link.src, link.dst) for link in d.links if link.kind == "wire"}
    for pod in quickstart.pods:
        box = next(b for b in d.boxes if b.kind == "pod" and pod.ip in b.lines)
        bridge = next(dst for src, dst in wires if src == box.id)
        assert boxes[bridge].lines[0].startswith(f"cni0 {quickstart.node(pod.node).pod_gateway}")
        assert box.group == f"node_{pod.node}" == next(
            b.group for b in d.boxes if b.id == bridge)


def test_not_ready_and_terminating_endpoints_are_drawn_differently(
        quickstart: ClusterState) -> None:
    web = sorted(p.key for p in quickstart.pods if p.labels.get("app") == "web")
    state = with_readiness(quickstart, {web[0]: False})
    slices = []
    for es in state.endpoint_slices:  # the last web pod: being deleted
        eps = tuple(replace(ep, conditions=EndpointConditions(False, True, True))
                    if ep.target_ref and ep.target_ref.name == web[2].split("/")[1] else ep
                    for ep in es.endpoints)
        slices.append(replace(es, endpoints=eps))
    state = replace(state, endpoint_slices=tuple(slices))
    d = graph.diagram(state)
    by_pod = {next(b.lines[0] for b in d.boxes if b.id == link.dst): link.state
              for link in d.links if link.kind == "endpoint" and link.src == "svc_default_web"}
    names = [k.split("/")[1] for k in web]
    assert by_pod == {names[0]: graph.NOT_READY, names[1]: graph.READY,
                      names[2]: graph.TERMINATING}
    dot = graph.to_dot(d)
    assert re.search(rf'{names[0].replace("-", "_")} \[label="80→8080, not ready", '
                     r'color="#c0392b", style=dashed', dot)
    assert re.search(rf'{names[2].replace("-", "_")} \[label="80→8080, terminating", '
                     r'color="#888888", style=dotted', dot)
    mermaid = graph.to_mermaid(d)
    assert '-.->|"80→8080, not ready"|' in mermaid
    assert '-.->|"80→8080, terminating"|' in mermaid
    # linkStyle counts every link, wires included: the indices name the dashed ones
    lines = [ln.strip() for ln in mermaid.splitlines()
             if re.match(r"\s+\w+ (---|-->|-\.->)", ln)]
    styled = dict(re.findall(r"linkStyle (\d+) (\S+)", mermaid))
    assert {lines[int(i)].split("|")[1] for i in styled} == {
        '"80→8080, not ready"', '"80→8080, terminating"'}


def test_service_boxes_show_type_vip_ports_node_ports_and_lb_ip(tmp_path: Path) -> None:
    state = state_of(write(tmp_path, SERVICES))
    svcs = {s.name: s for s in state.services}
    lines = {b.lines[0]: b.lines for b in graph.diagram(state).boxes if b.kind == "service"}
    assert lines["np"] == ("np", f"NodePort {svcs['np'].cluster_ip}",
                           "http 80/TCP → http, NodePort 30080", "externalTrafficPolicy Local")
    lb = svcs["lb"]
    node_port = lb.ports[0].node_port
    assert lines["lb"] == ("lb", f"LoadBalancer {lb.cluster_ip}",
                           f"8080/TCP, NodePort {node_port}",
                           f"LoadBalancer IP {lb.load_balancer_ip}", "sessionAffinity ClientIP")
    assert lb.load_balancer_ip.startswith("192.168.200.")
    assert lines["headless"][1] == "headless (ClusterIP None)"
    assert lines["db"] == ("db", "ExternalName → db.example.com")
    assert lines["empty"][-1] == "no endpoints"
    d = graph.diagram(state)
    targets = {link.src: set() for link in d.links}
    for link in d.links:
        targets[link.src].add(link.dst)
    assert len(targets["svc_default_headless"]) == 2  # headless: edges to its pods too
    assert "svc_default_db" not in targets and "svc_default_empty" not in targets


def test_no_system_leaves_out_the_clusters_own_objects(quickstart: ClusterState) -> None:
    text = graph.render(quickstart, "dot", system=False)
    assert "kube-dns" not in text and "coredns" not in text and "kubernetes" not in text
    assert all(p.name in text for p in quickstart.pods if p.namespace == "default")
    assert "6 pods, 2 services" in text


def test_an_endpoint_outside_the_lab_gets_its_own_box(quickstart: ClusterState) -> None:
    manual = EndpointSlice(
        ObjectMeta("web-manual", labels={"kubernetes.io/service-name": "web"}),
        endpoints=(Endpoint(("203.0.113.7",)),), ports=(EndpointPort(8443, "http"),))
    state = replace(quickstart, endpoint_slices=(*quickstart.endpoint_slices, manual))
    d = graph.diagram(state)
    box = next(b for b in d.boxes if b.kind == "address")
    assert box.lines == ("203.0.113.7",)
    assert any(link.src == "svc_default_web" and link.dst == box.id
               and link.label == "80→8443" for link in d.links)


def test_names_are_escaped_for_dot_and_mermaid(quickstart: ClusterState) -> None:
    weird = 'we"ird\\N<b>#1&x'
    pods = tuple(replace(p, name=weird) if p.name == "client" else p for p in quickstart.pods)
    svcs = tuple(replace(s, service=replace(s.service, meta=replace(s.service.meta,
                                                                   name='a"b\\c')))
                 if s.name == "web" else s for s in quickstart.services)
    state = replace(quickstart, pods=pods, services=svcs,
                    lab=replace(quickstart.lab, name='x"y'))
    dot = graph.render(state, "dot")
    assert 'label="we\\"ird\\\\N<b>#1&x\\n10.244.0.2"' in dot
    assert 'label="a\\"b\\\\c\\nClusterIP' in dot
    assert 'digraph "lab x\\"y: ' in dot
    ids = re.findall(r"^\s+(\w+) \[label=", dot, re.M)
    assert len(ids) == len(set(ids))
    mermaid = graph.render(state, "mermaid")
    assert '["we#quot;ird\\N#lt;b#gt;#35;1#amp;x<br/>10.244.0.2"]' in mermaid
    assert '(["a#quot;b\\c<br/>ClusterIP' in mermaid
    assert 'title: "lab x\\"y: ' in mermaid
    for line in mermaid.splitlines()[4:]:  # after the front matter: quotes only in pairs
        assert line.count('"') % 2 == 0, line
    if HAS_DOT:
        proc = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True,
                              timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        texts = [t.text for t in ET.fromstring(proc.stdout).iter("{http://www.w3.org/2000/svg}text")]
        assert 'we"ird\\N<b>#1&x' in texts and 'a"b\\c' in texts


def test_identifiers_stay_unique_when_names_sanitise_alike() -> None:
    ids = graph._Ids()
    made = [ids("pod a-b/c"), ids("pod a/b-c"), ids("pod a.b/c"), ids("9 lives"), ids("")]
    assert made == ["pod_a_b_c", "pod_a_b_c_2", "pod_a_b_c_3", "n9_lives", "x"]
    assert ids("pod a/b-c") == "pod_a_b_c_2"  # the same key, the same id


def test_an_unknown_format_is_refused(quickstart: ClusterState) -> None:
    with pytest.raises(ValueError, match="unknown diagram format"):
        graph.render(quickstart, "pdf")


# ------------------------------------------------------------------ every exercise


def topology_folders() -> list[Path]:
    return sorted(p for p in TOPOLOGIES.iterdir()
                  if p.is_dir() and any(p.glob("*.y*ml")))


def test_the_topologies_folder_has_labs() -> None:
    assert any(p.name == "quickstart" for p in topology_folders())


@pytest.mark.parametrize("folder", topology_folders(), ids=lambda p: p.name)
def test_every_topology_renders(folder: Path) -> None:
    state = state_of(folder)
    for fmt in graph.FORMATS:
        text = graph.render(state, fmt)
        assert all(p.name in text for p in state.pods)
        assert all(s.name in text for s in state.services)
    if HAS_DOT:
        svg = graph_cli.rendered(state, "svg", system=True)
        assert ET.fromstring(svg).tag == "{http://www.w3.org/2000/svg}svg"


# ------------------------------------------------------------------ the command


def test_graph_prints_dot_by_default(quickstart: ClusterState) -> None:
    result = invoke(cli, ["graph", str(TOPOLOGIES / "quickstart")])
    assert result.exit_code == 0, result.output
    assert result.stdout == graph.render(quickstart, "dot")


def test_graph_writes_the_format_its_extension_names(tmp_path: Path,
                                                     quickstart: ClusterState) -> None:
    out = tmp_path / "q.mmd"
    result = invoke(cli, ["graph", str(TOPOLOGIES / "quickstart"), "-w", str(out),
                                      "--no-system"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out} (mermaid)" in result.stdout
    assert out.read_text() == graph.render(quickstart, "mermaid", system=False)


@pytest.mark.skipif(not HAS_DOT, reason="needs Graphviz's dot (apt-get install graphviz)")
def test_graph_svg_is_valid_xml_naming_every_pod(tmp_path: Path,
                                                 quickstart: ClusterState) -> None:
    out = tmp_path / "q.svg"
    result = invoke(cli, ["graph", str(TOPOLOGIES / "quickstart"), "-w", str(out)])
    assert result.exit_code == 0, result.output
    root = ET.parse(out).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    assert all(p.name in texts for p in quickstart.pods)
    png = tmp_path / "q.png"
    result = invoke(cli, ["graph", str(TOPOLOGIES / "quickstart"), "-o", "png",
                                      "-w", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_without_dot_svg_fails_naming_the_package_and_text_formats_work(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(graph_cli.shutil, "which", lambda _name: None)
    quick = str(TOPOLOGIES / "quickstart")
    for fmt in ("svg", "png"):
        result = invoke(cli, ["graph", quick, "-o", fmt, "-w", str(tmp_path / "x")])
        assert result.exit_code == 1
        assert "graphviz" in result.stderr and "apt-get install graphviz" in result.stderr
        assert "-o dot and -o mermaid work without it" in result.stderr
    for fmt in ("dot", "mermaid"):
        assert invoke(cli, ["graph", quick, "-o", fmt]).exit_code == 0


def test_graph_of_something_neither_file_nor_lab(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    from labctl import names

    monkeypatch.setattr(names, "STATE_ROOT", str(tmp_path / "run"))
    result = invoke(cli, ["graph", "nosuch"])
    assert result.exit_code == 1
    assert "'nosuch' is neither a file nor a running lab; no lab is up" in result.stderr
    result = invoke(cli, ["graph"])
    assert result.exit_code == 1 and "no lab is up" in result.stderr


def test_graph_reports_bad_files_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "svc.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: web}\n"
                   "spec:\n  ports: [{port: 70000}]\n")
    result = invoke(cli, ["graph", str(bad)])
    assert result.exit_code == 2 and "svc.yaml:5:" in result.stderr


def test_output_format_defaults() -> None:
    assert graph_cli.output_format(None, None) == "dot"
    assert graph_cli.output_format(None, "-") == "dot"
    assert graph_cli.output_format(None, "a/b.SVG") == "svg"
    assert graph_cli.output_format(None, "x.gv") == "dot"
    assert graph_cli.output_format(None, "x.txt") == "dot"
    assert graph_cli.output_format("png", "x.svg") == "png"
