"""Loading valid input: typed objects, Kubernetes defaults, positions, lab names, notes."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from labctl.errors import Pos, UserError
from labctl.model.load import load_topology
from labctl.model.objects import Lab, Topology
from labctl.model.report import IGNORED_MESSAGE

NGINX = """\
apiVersion: v1
kind: Service
metadata:
  name: nginx-service
spec:
  selector:
    app.kubernetes.io/name: nginx
  ports:
    - name: name-of-service-port
      protocol: TCP
      port: 80
      targetPort: 8080
"""

EVERY_KIND = """\
apiVersion: labctl/v1
kind: Lab
metadata:
  name: demo
spec:
  nodes:
    - name: node1
    - name: node2
      labels: {zone: b}
  podCIDR: 10.245.0.0/16
  proxyMode: ipvs
  clusterDomain: lab.local
---
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {team: a}
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: shop
  labels: {app: client}
spec:
  nodeName: node1
  enableServiceLinks: false
  containers:
    - name: c
      image: busybox
      command: [sleep, infinity]
status:
  podIP: 10.245.0.7
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
    matchExpressions:
      - {key: tier, operator: NotIn, values: [db]}
  template:
    metadata:
      labels: {app: web, tier: front}
      annotations: {note: hi}
    spec:
      nodeSelector: {zone: b}
      containers:
        - name: nginx
          image: nginx:1.27
          args: [-g, daemon off;]
          ports:
            - {name: http, containerPort: 8080}
            - {name: dns, containerPort: 53, protocol: UDP}
          env:
            - {name: A, value: "1"}
            - name: POD_IP
              valueFrom: {fieldRef: {fieldPath: status.podIP}}
          readinessProbe:
            httpGet: {path: /healthz, port: http}
            periodSeconds: 5
          livenessProbe:
            tcpSocket: {port: 8080}
          startupProbe:
            exec: {command: [cat, /ready]}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: shop}
spec:
  serviceName: db
  replicas: 2
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      subdomain: db
      containers: [{name: db, ports: [{containerPort: 5432, name: pg}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: http, nodePort: 30080}
    - {name: dns, port: 53, protocol: UDP, targetPort: dns}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  externalTrafficPolicy: Local
  loadBalancerIP: 192.168.200.9
  externalIPs: [203.0.113.5]
status:
  loadBalancer:
    ingress: [{ip: 192.168.200.9}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{port: 5432, targetPort: pg}]
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: shop}
spec: {type: ExternalName, externalName: db.example.com}
---
apiVersion: v1
kind: Service
metadata: {name: manual, namespace: shop}
spec:
  clusterIP: 10.96.0.50
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: manual-1
  namespace: shop
  labels: {kubernetes.io/service-name: manual}
addressType: IPv4
endpoints:
  - addresses: [10.245.1.50]
    conditions: {ready: true, serving: true}
    hostname: one
    nodeName: node2
    zone: b
    targetRef: {kind: Pod, name: x, namespace: shop}
ports: [{port: 80, name: "", protocol: TCP}]
"""


def write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return name


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary working folder, so files are given (and reported) by relative path."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load(folder: Path, text: str, name: str = "lab.yaml") -> Topology:
    topology, _ = load_topology([write(folder, name, text)])
    return topology


# ---------------------------------------------------------------- the nginx manifest


def test_nginx_service_loads_with_api_defaults(here: Path) -> None:
    topology, warnings = load_topology([write(here, "nginx.yaml", NGINX)])
    (svc,) = topology.services
    assert svc.meta.name == "nginx-service"
    assert svc.meta.namespace == "default"
    assert dict(svc.selector or {}) == {"app.kubernetes.io/name": "nginx"}
    assert svc.type == "ClusterIP"
    assert svc.cluster_ip == ""
    assert svc.session_affinity == "None"
    assert svc.session_affinity_timeout == 10800
    assert svc.external_traffic_policy == "Cluster"
    (port,) = svc.ports
    assert (port.name, port.protocol, port.port, port.target_port) == (
        "name-of-service-port", "TCP", 80, 8080)
    # The selector matches nothing in this file: a warning, not an error.
    assert [w.severity for w in warnings] == ["warning"]
    assert topology.files == ("nginx.yaml",)


def test_nginx_positions(here: Path) -> None:
    svc = load(here, NGINX, "nginx.yaml").services[0]
    where = svc.source.where
    assert svc.source.pos == Pos("nginx.yaml", 1, 1)
    assert where["metadata.name"] == Pos("nginx.yaml", 4, 9)
    assert where["spec.ports"] == Pos("nginx.yaml", 8, 3)  # a collection: its key
    assert where["spec.ports[0]"] == Pos("nginx.yaml", 9, 7)
    assert where["spec.ports[0].port"] == Pos("nginx.yaml", 11, 13)  # a value: the value
    assert where["spec.ports[0].targetPort"] == Pos("nginx.yaml", 12, 19)
    assert where["spec.selector[app.kubernetes.io/name]"] == Pos("nginx.yaml", 7, 29)
    # Fields not written fall back to their nearest written parent.
    assert svc.source.at("spec.ports[0].nodePort") == Pos("nginx.yaml", 9, 7)
    assert svc.source.at("spec.type") == Pos("nginx.yaml", 5, 1)


def test_defaults_when_target_port_and_protocol_are_absent(here: Path) -> None:
    svc = load(here, """\
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          ports: [{port: 80}]
        """).services[0]
    assert svc.ports[0].target_port == 80
    assert svc.ports[0].protocol == "TCP"
    assert svc.ports[0].node_port == 0
    assert svc.selector is None


# ---------------------------------------------------------------- every kind


def test_every_kind_in_one_file(here: Path) -> None:
    topology, warnings = load_topology([write(here, "all.yaml", EVERY_KIND)])
    assert [d for d in warnings if d.severity == "warning"] == []
    lab = topology.lab
    assert lab.name == "demo"
    assert [n.name for n in lab.nodes] == ["node1", "node2"]
    assert lab.nodes[1].labels["zone"] == "b"
    assert (lab.pod_cidr, lab.proxy_mode, lab.cluster_domain) == (
        "10.245.0.0/16", "ipvs", "lab.local")
    assert lab.service_cidr == Lab("x").service_cidr  # unwritten fields keep defaults

    (ns,) = topology.namespaces
    assert (ns.name, dict(ns.labels)) == ("shop", {"team": "a"})

    (pod,) = topology.pods
    assert pod.spec.node_name == "node1"
    assert pod.spec.enable_service_links is False
    assert pod.spec.containers[0].command == ("sleep", "infinity")
    assert pod.pod_ip == "10.245.0.7"

    (web,) = topology.deployments
    assert web.replicas == 3
    assert dict(web.selector.match_labels) == {"app": "web"}
    assert web.selector.match_expressions == (("tier", "NotIn", ("db",)),)
    assert dict(web.template.annotations) == {"note": "hi"}
    nginx = web.template.spec.containers[0]
    assert nginx.args == ("-g", "daemon off;")
    assert [(p.name, p.container_port, p.protocol) for p in nginx.ports] == [
        ("http", 8080, "TCP"), ("dns", 53, "UDP")]
    assert nginx.env[0].value == "1"
    assert nginx.env[1].value is None
    assert nginx.env[1].value_from == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert nginx.readiness_probe is not None
    assert (nginx.readiness_probe.kind, nginx.readiness_probe.port,
            nginx.readiness_probe.path, nginx.readiness_probe.period_seconds) == (
        "httpGet", "http", "/healthz", 5)
    assert nginx.liveness_probe is not None and nginx.liveness_probe.kind == "tcpSocket"
    assert nginx.liveness_probe.period_seconds == 10
    assert nginx.startup_probe is not None
    assert nginx.startup_probe.command == ("cat", "/ready")

    (db,) = topology.statefulsets
    assert (db.service_name, db.replicas, db.template.spec.subdomain) == ("db", 2, "db")

    services = {s.meta.name: s for s in topology.services}
    lb = services["web"]
    assert (lb.type, lb.session_affinity, lb.session_affinity_timeout) == (
        "LoadBalancer", "ClientIP", 60)
    assert lb.external_traffic_policy == "Local"
    assert lb.load_balancer_ip == "192.168.200.9"
    assert lb.load_balancer_ingress == ("192.168.200.9",)
    assert lb.external_ips == ("203.0.113.5",)
    assert lb.ports[0].node_port == 30080
    assert lb.ports[1].target_port == "dns"
    assert services["db"].headless
    assert services["ext"].external_name == "db.example.com"
    assert services["manual"].cluster_ip == "10.96.0.50"

    (eps,) = topology.endpoint_slices
    assert eps.service_name == "manual"
    (endpoint,) = eps.endpoints
    assert endpoint.addresses == ("10.245.1.50",)
    assert endpoint.conditions.ready is True
    assert endpoint.conditions.terminating is None
    assert (endpoint.hostname, endpoint.node_name, endpoint.zone) == ("one", "node2", "b")
    assert endpoint.target_ref is not None and endpoint.target_ref.name == "x"
    assert eps.ports[0].port == 80


def test_deep_positions(here: Path) -> None:
    web = load(here, EVERY_KIND, "all.yaml").deployments[0]
    where = web.source.where
    prefix = "spec.template.spec.containers[0]"
    assert where[f"{prefix}.ports[1].containerPort"] == Pos("all.yaml", 59, 42)
    assert where[f"{prefix}.readinessProbe.httpGet.port"] == Pos("all.yaml", 65, 45)
    assert where["spec.replicas"] == Pos("all.yaml", 42, 13)
    assert web.source.pos == Pos("all.yaml", 36, 1)


def test_list_kind(here: Path) -> None:
    topology = load(here, """\
        apiVersion: v1
        kind: List
        metadata: {}
        items:
          - apiVersion: v1
            kind: Pod
            metadata: {name: a}
            spec: {containers: [{name: a}]}
          - apiVersion: v1
            kind: Service
            metadata: {name: b}
            spec: {ports: [{port: 80}]}
        """)
    assert [p.meta.name for p in topology.pods] == ["a"]
    assert [s.meta.name for s in topology.services] == ["b"]
    assert topology.pods[0].source.pos == Pos("lab.yaml", 5, 5)


def test_defaults_without_a_lab_document(here: Path) -> None:
    topology = load(here, """\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: web}
        spec:
          selector: {matchLabels: {app: web}}
          template:
            metadata: {labels: {app: web}}
            spec: {containers: [{name: web}]}
        """)
    lab = topology.lab
    assert [n.name for n in lab.nodes] == ["node1", "node2"]
    assert lab.nodes[0].labels["kubernetes.io/hostname"] == "node1"
    assert lab.pod_cidr == "10.244.0.0/16"
    (web,) = topology.deployments
    assert web.replicas == 1
    assert web.meta.namespace == "default"
    spec = web.template.spec
    assert (spec.restart_policy, spec.dns_policy, spec.enable_service_links) == (
        "Always", "ClusterFirst", True)
    assert spec.termination_grace_period_seconds == 30


def test_node_selector_may_use_the_hostname_label(here: Path) -> None:
    topology = load(here, """\
        apiVersion: v1
        kind: Pod
        metadata: {name: pinned}
        spec:
          nodeSelector: {kubernetes.io/hostname: node2}
          containers: [{name: web}]
        """)
    assert topology.pods[0].spec.node_selector["kubernetes.io/hostname"] == "node2"


def test_anchors_and_merge_keys(here: Path) -> None:
    topology = load(here, """\
        apiVersion: v1
        kind: Pod
        metadata:
          name: a
          labels: &labels {app: web, tier: front}
        spec:
          containers:
            - &c {name: web, command: [sleep, "1"]}
            - <<: *c
              name: helper
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web, annotations: &notes {a: b}, labels: *notes}
        spec: {selector: {app: web}, ports: [{port: 80}]}
        """)
    pod = topology.pods[0]
    assert [c.name for c in pod.spec.containers] == ["web", "helper"]
    assert pod.spec.containers[1].command == ("sleep", "1")
    assert dict(pod.meta.labels) == {"app": "web", "tier": "front"}
    assert dict(topology.services[0].meta.labels) == {"a": "b"}


def test_empty_documents_and_files_are_skipped(here: Path) -> None:
    write(here, "lab/empty.yaml", "# nothing here\n")
    write(here, "lab/pod.yaml", """\
        ---
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: a}
        spec: {containers: [{name: a}]}
        ---
        """)
    topology, _ = load_topology(["lab"])
    assert [p.meta.name for p in topology.pods] == ["a"]
    assert topology.pods[0].source.pos == Pos("lab/pod.yaml", 3, 1)


# ---------------------------------------------------------------- folders and names


def test_folder_reads_yaml_files_sorted_and_names_the_lab(here: Path) -> None:
    write(here, "My_Lab/b.yml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n")
    write(here, "My_Lab/a.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n")
    write(here, "My_Lab/notes.txt", "not yaml: [")
    write(here, "My_Lab/sub/c.yaml", "not: [even, yaml")
    topology, _ = load_topology(["My_Lab"])
    assert topology.files == ("My_Lab/a.yaml", "My_Lab/b.yml")
    assert [n.name for n in topology.namespaces] == ["a", "b"]
    assert topology.lab.name == "my-lab"


def test_lab_name_precedence(here: Path) -> None:
    pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: a}]}\n"
    write(here, "Web Demo.v2.yaml", pod)
    assert load_topology(["Web Demo.v2.yaml"])[0].lab.name == "web-demo-v2"
    assert load_topology(["Web Demo.v2.yaml"], lab_name="given")[0].lab.name == "given"
    named = "apiVersion: labctl/v1\nkind: Lab\nmetadata: {name: from-doc}\n---\n" + pod
    write(here, "named.yaml", named)
    assert load_topology(["named.yaml"])[0].lab.name == "from-doc"
    # a running lab's own name (or `up --name`) wins over the document's
    assert load_topology(["named.yaml"], lab_name="given")[0].lab.name == "given"


def test_invalid_lab_name_argument(here: Path) -> None:
    write(here, "lab.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n")
    with pytest.raises(UserError) as raised:
        load_topology(["lab.yaml"], lab_name="Bad_Name")
    assert raised.value.diagnostics[0].field == "lab name"


def test_missing_path(here: Path) -> None:
    with pytest.raises(UserError) as raised:
        load_topology(["nope.yaml"])
    assert raised.value.format() == "error: nope.yaml: no such file or folder"


# ---------------------------------------------------------------- notes and ordering


def test_ignored_fields_are_noted_once_per_kind_and_field(here: Path) -> None:
    deployment = """\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: {name}}}
        spec:
          replicas: 5
          paused: false
          selector: {{matchLabels: {{app: {name}}}}}
          template:
            metadata: {{labels: {{app: {name}}}}}
            spec:
              containers:
                - {{name: a, image: nginx, resources: {{limits: {{cpu: 1}}}}}}
                - {{name: b, image: busybox}}
        """
    text = "---\n".join(textwrap.dedent(deployment).format(name=n) for n in ("x", "y"))
    text += textwrap.dedent("""\
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: p}
        spec:
          hostNetwork: false
          containers: [{name: a, image: nginx}]
        """)
    _, notes = load_topology([write(here, "lab.yaml", text)])
    infos = [d for d in notes if d.severity == "info"]
    assert all(d.message == IGNORED_MESSAGE for d in infos)
    assert [d.field for d in infos] == [
        "Deployment default/x: spec.paused",
        "Deployment default/x: spec.template.spec.containers[0].image",
        "Deployment default/x: spec.template.spec.containers[0].resources",
        "Pod default/p: spec.hostNetwork",
        "Pod default/p: spec.containers[0].image",
    ]
    assert infos[0].pos == Pos("lab.yaml", 6, 3)


def test_user_error_carries_warnings_but_not_notes(here: Path) -> None:
    write(here, "lab.yaml", """\
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          selector: {app: nothing}
          ports: [{port: 80, nodePort: 30000}]
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: p}
        spec: {containers: [{name: a, image: nginx}]}
        """)
    with pytest.raises(UserError) as raised:
        load_topology(["lab.yaml"])
    assert [d.severity for d in raised.value.diagnostics] == ["warning", "error"]


def test_diagnostics_sorted_by_file_order_then_position(here: Path) -> None:
    bad = "apiVersion: v1\nkind: Pod\nmetadata: {name: A}\nspec: {containers: [{name: B}]}\n"
    write(here, "z.yaml", bad)
    write(here, "a.yaml", "\n\n" + bad.replace("name: A", "name: C"))
    with pytest.raises(UserError) as raised:
        load_topology(["z.yaml", "a.yaml"])
    positions = [str(d.pos) for d in raised.value.diagnostics]
    assert positions == ["z.yaml:3:18", "z.yaml:4:28", "a.yaml:5:18", "a.yaml:6:28"]


def test_syntax_error_in_one_document_keeps_the_others(here: Path) -> None:
    write(here, "lab.yaml", """\
        apiVersion: v1
        kind: Pod
        metadata: {name: Bad_Name}
        spec: {containers: [{name: a}]}
        ---
        key: [unclosed
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: 1bad}
        spec: {ports: [{port: 80}]}
        """)
    with pytest.raises(UserError) as raised:
        load_topology(["lab.yaml"])
    lines = [d.pos.line for d in raised.value.diagnostics if d.pos]
    assert lines == [3, 6, 10]
