"""Switching a running lab's kube-proxy mode: old rules out, new rules in, traffic on."""

from __future__ import annotations

import json
from pathlib import Path

from labctl.testing.runner import labctl
from labctl.testing.traffic import http_get
from tests.integration.conftest import write_lab

LAB = "it-switch"
MANIFEST = f"""
apiVersion: labctl/v1
kind: Lab
metadata: {{name: {LAB}}}
spec:
  nodes: [{{name: node1}}, {{name: node2}}]
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
      containers: [{{name: web, ports: [{{containerPort: 8080}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080, nodePort: 30080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  containers: [{{name: c}}]
"""


def test_switch_between_iptables_and_nftables(tmp_path: Path) -> None:
    labctl("up", str(write_lab(tmp_path, LAB, MANIFEST)), "-q")
    try:
        svc = next(s for s in json.loads(labctl("get", "svc", "-o", "json", "--lab",
                                                LAB).stdout)["items"]
                   if s["metadata"]["name"] == "web")
        vip = svc["spec"]["clusterIP"]
        client = f"lc.{LAB}.pod.default.client"
        assert http_get(client, vip, 80).pod.startswith("web-")
        assert "KUBE-SERVICES" in labctl("rules", "node1", "--lab", LAB).stdout

        out = labctl("proxy-mode", "nftables", "--lab", LAB).stdout
        assert "from iptables to nftables" in out
        rules = labctl("rules", "node1", "--lab", LAB).stdout
        assert "table ip kube-proxy" in rules
        from labctl.net import netfilter

        saved = netfilter.iptables_save(f"lc.{LAB}.node.node1", "nft")
        assert "KUBE-SVC-" not in saved and "KUBE-SERVICES" not in saved
        assert http_get(client, vip, 80).pod.startswith("web-")
        assert http_get(f"lc.{LAB}.external", "172.18.0.3", 30080).pod.startswith("web-")

        assert "already" in labctl("proxy-mode", "nftables", "--lab", LAB).stdout
        labctl("proxy-mode", "iptables", "--lab", LAB)
        assert "table ip kube-proxy" not in netfilter.nft_list(f"lc.{LAB}.node.node1")
        assert http_get(client, vip, 80).pod.startswith("web-")
    finally:
        labctl("down", LAB)
