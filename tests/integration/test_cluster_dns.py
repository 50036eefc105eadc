"""Cluster DNS in a lab: pods resolve through kube-dns's ClusterIP and the nodes' rules.

Queries go out of a pod with its kubelet-written resolv.conf (`ip netns exec` semantics),
reach 10.96.0.10, are DNAT-ed by the node's kube-proxy rules to one of the two coredns
pods, and are answered by labctl's responder — all of it real traffic, UDP and TCP.
No query leaves the cluster domain (nothing here is forwarded upstream).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from labctl.testing.runner import labctl, netns_exec
from tests.integration.conftest import write_lab

LAB = "it-dns"
MANIFEST = f"""
apiVersion: labctl/v1
kind: Lab
metadata: {{name: {LAB}}}
spec:
  nodes: [{{name: node1}}, {{name: node2}}]
---
apiVersion: v1
kind: Namespace
metadata: {{name: other}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers: [{{name: web, ports: [{{name: http, containerPort: 8080}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: other}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db}}
spec:
  serviceName: db
  replicas: 2
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      containers: [{{name: db, ports: [{{name: pg, containerPort: 5432}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: db}}
spec:
  clusterIP: None
  selector: {{app: db}}
  ports: [{{name: pg, port: 5432}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: many}}
spec:
  replicas: 40
  selector: {{matchLabels: {{app: many}}}}
  template:
    metadata: {{labels: {{app: many}}}}
    spec:
      containers: [{{name: m}}]
---
apiVersion: v1
kind: Service
metadata: {{name: many}}
spec:
  clusterIP: None
  selector: {{app: many}}
  ports: [{{name: x, port: 9}}]
---
apiVersion: v1
kind: Service
metadata: {{name: ext}}
spec:
  type: ExternalName
  externalName: example.com
---
apiVersion: v1
kind: Service
metadata: {{name: alias}}
spec:
  type: ExternalName
  externalName: web.other.svc.cluster.local
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  containers: [{{name: c}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: other}}
spec:
  containers: [{{name: c}}]
"""


class DnsLab:
    def __init__(self) -> None:
        get = lambda *a: json.loads(labctl("get", *a, "-A", "-o", "json",  # noqa: E731
                                           "--lab", LAB).stdout)["items"]
        self.pods = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in get("pods")}
        self.svcs = {(s["metadata"]["namespace"], s["metadata"]["name"]): s
                     for s in get("services")}

    def ip(self, ns: str, name: str) -> str:
        return self.pods[(ns, name)]["status"]["podIP"]

    def vip(self, ns: str, name: str) -> str:
        return self.svcs[(ns, name)]["spec"]["clusterIP"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsLab]:
    labctl("up", str(write_lab(tmp_path_factory.mktemp("dns"), LAB, MANIFEST)), "-q")
    try:
        yield DnsLab()
    finally:
        labctl("down", LAB)


def in_pod(ns: str, pod: str, *argv: str) -> str:
    proc = netns_exec(f"lc.{LAB}.pod.{ns}.{pod}", list(argv), timeout=20)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def dig(ns: str, *args: str) -> list[str]:
    return in_pod(ns, "client", "dig", "+short", "+time=2", "+tries=2", *args).split()


def test_short_names_resolve_through_the_search_path_per_namespace(lab: DnsLab) -> None:
    assert in_pod("default", "client", "getent", "hosts", "web").split()[0] == \
        lab.vip("default", "web")
    assert in_pod("other", "client", "getent", "hosts", "web").split()[0] == \
        lab.vip("other", "web")
    assert in_pod("default", "client", "getent", "hosts", "web.other").split()[0] == \
        lab.vip("other", "web")
    assert dig("default", "+search", "web") == [lab.vip("default", "web")]


def test_the_kubernetes_service_and_kube_dns_resolve(lab: DnsLab) -> None:
    assert dig("default", "kubernetes.default.svc.cluster.local") == ["10.96.0.1"]
    assert dig("other", "kube-dns.kube-system.svc.cluster.local") == ["10.96.0.10"]


def test_headless_statefulset_names(lab: DnsLab) -> None:
    assert dig("default", "db-0.db.default.svc.cluster.local") == [lab.ip("default", "db-0")]
    assert sorted(dig("default", "db.default.svc.cluster.local")) == sorted(
        [lab.ip("default", "db-0"), lab.ip("default", "db-1")])
    assert in_pod("default", "db-1", "getent", "hosts", "db-1").split()[0] == \
        lab.ip("default", "db-1")  # the kubelet-written hosts file


def test_srv_records_for_named_ports(lab: DnsLab) -> None:
    assert dig("default", "SRV", "_http._tcp.web.default.svc.cluster.local") == \
        ["0", "100", "80", "web.default.svc.cluster.local."]
    targets = dig("default", "SRV", "_pg._tcp.db.default.svc.cluster.local")[3::4]
    assert sorted(targets) == ["db-0.db.default.svc.cluster.local.",
                               "db-1.db.default.svc.cluster.local."]


def test_ptr_for_service_and_endpoint_addresses(lab: DnsLab) -> None:
    assert dig("default", "-x", lab.vip("default", "web")) == ["web.default.svc.cluster.local."]
    assert dig("default", "-x", lab.ip("default", "db-0")) == \
        ["db-0.db.default.svc.cluster.local."]


def test_external_name_is_a_cname(lab: DnsLab) -> None:
    assert dig("default", "CNAME", "ext.default.svc.cluster.local") == ["example.com."]
    # an in-cluster target is chased: the CNAME, then the target's address
    assert dig("default", "alias.default.svc.cluster.local") == \
        ["web.other.svc.cluster.local.", lab.vip("other", "web")]


def test_negative_answers(lab: DnsLab) -> None:
    out = in_pod("default", "client", "dig", "+time=2", "nope.default.svc.cluster.local")
    assert "status: NXDOMAIN" in out and "SOA" in out
    out = in_pod("default", "client", "dig", "+time=2", "AAAA", "web.default.svc.cluster.local")
    assert "status: NOERROR" in out and "ANSWER: 0" in out  # NODATA


def test_pod_records(lab: DnsLab) -> None:
    ip = lab.ip("default", "client")
    assert dig("default", f"{ip.replace('.', '-')}.default.pod.cluster.local") == [ip]


def test_a_large_answer_is_truncated_over_udp_and_whole_over_tcp(lab: DnsLab) -> None:
    name = "many.default.svc.cluster.local"
    # without EDNS0 a UDP reply holds 512 bytes: 40 addresses do not fit
    udp = in_pod("default", "client", "dig", "+notcp", "+noedns", "+ignore", "+time=2", name)
    assert " tc" in udp.split("flags:")[1].split(";")[0]
    assert len(dig("default", "+tcp", name)) == 40
    assert len(dig("default", "+noedns", name)) == 40  # dig retries over TCP by itself
    assert len(dig("default", name)) == 40  # EDNS0's larger buffer holds them all


def test_dns_traffic_is_dnated_by_the_nodes_rules(lab: DnsLab) -> None:
    node = lab.pods[("default", "client")]["spec"]["nodeName"]
    dig("default", "web.default.svc.cluster.local")
    out = netns_exec(f"lc.{LAB}.node.{node}",
                     ["conntrack", "-L", "-p", "udp", "-d", "10.96.0.10"]).stdout
    dns_pods = {lab.ip(ns, n) for (ns, n) in lab.pods if ns == "kube-system"}
    entries = [ln for ln in out.splitlines() if "dport=53" in ln]
    assert entries, out
    assert any(f"src={ip} " in ln for ln in entries for ip in dns_pods)  # reply from a pod


def test_coredns_pods_run_on_two_nodes(lab: DnsLab) -> None:
    nodes = {p["spec"]["nodeName"] for (ns, _), p in lab.pods.items() if ns == "kube-system"}
    assert len(nodes) == 2


def test_pods_get_the_kubelets_service_variables(lab: DnsLab) -> None:
    env = labctl("exec", "client", "--lab", LAB, "--", "env").stdout.splitlines()
    assert f"WEB_SERVICE_HOST={lab.vip('default', 'web')}" in env
    assert "KUBERNETES_SERVICE_HOST=10.96.0.1" in env
    assert not any(v.startswith("DB_SERVICE_HOST") for v in env)  # headless: none
    other = labctl("exec", "other/client", "--lab", LAB, "--", "env").stdout.splitlines()
    assert f"WEB_SERVICE_HOST={lab.vip('other', 'web')}" in other


def test_resolv_conf_is_the_kubelets(lab: DnsLab) -> None:
    text = in_pod("other", "client", "cat", "/etc/resolv.conf")
    assert "nameserver 10.96.0.10" in text
    assert "search other.svc.cluster.local svc.cluster.local cluster.local" in text
    assert "options ndots:5" in text
    assert Path("/etc/netns", f"lc.{LAB}.pod.other.client", "resolv.conf").exists()


def test_queries_are_answered_while_one_dns_replica_is_down(lab: DnsLab) -> None:
    replicas = sorted(n for (ns, n) in lab.pods if ns == "kube-system")
    down, up = replicas
    labctl("break", "pod", down, "-n", "kube-system", "--readiness", "--wait", "--lab", LAB)
    try:
        node = lab.pods[("default", "client")]["spec"]["nodeName"]
        netns_exec(f"lc.{LAB}.node.{node}", ["conntrack", "-D", "-p", "udp", "--dport", "53"])
        for _ in range(20):  # each dig is a new conntrack entry: a fresh choice of backend
            assert dig("default", "web.default.svc.cluster.local") == [lab.vip("default", "web")]
        out = netns_exec(f"lc.{LAB}.node.{node}",
                         ["conntrack", "-L", "-p", "udp", "-d", "10.96.0.10"]).stdout
        assert f"src={lab.ip('kube-system', down)} " not in out
        assert f"src={lab.ip('kube-system', up)} " in out
    finally:
        labctl("heal", "pod", down, "-n", "kube-system", "--wait", "--lab", LAB)
