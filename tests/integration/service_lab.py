"""The lab the Service tests share: one per proxy mode, built from one manifest."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from labctl.testing.runner import labctl
from tests.integration.conftest import write_lab

# kube-proxy modes this host runs; iptables with each backend Debian ships.
MODES = ["iptables", "iptables-legacy", "nftables"]
EXTERNAL_IP = "203.0.113.10"

MANIFEST = """
apiVersion: labctl/v1
kind: Lab
metadata: {{name: {lab}}}
spec:
  nodes: [{{name: node1}}, {{name: node2}}, {{name: node3}}]
  proxyMode: {mode}{backend}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
        - name: web
          ports:
            - {{name: http, containerPort: 8080}}
            - {{name: dns, containerPort: 9053, protocol: UDP}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeName: node1
  containers: [{{name: c, ports: [{{containerPort: 7000}}]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: solo, labels: {{app: solo}}}}
spec:
  nodeName: node2
  containers: [{{name: s, ports: [{{containerPort: 8080}}]}}]
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
metadata: {{name: web-np}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080, nodePort: 30080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-lb}}
spec:
  type: LoadBalancer
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: solo-local}}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {{app: solo}}
  ports: [{{port: 80, targetPort: 8080, nodePort: 30090}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-ext}}
spec:
  selector: {{app: web}}
  externalIPs: [{external_ip}]
  ports: [{{port: 8000, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: sticky}}
spec:
  selector: {{app: web}}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 300}}}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: dns}}
spec:
  selector: {{app: web}}
  ports: [{{name: dns, port: 53, targetPort: dns, protocol: UDP}}]
---
apiVersion: v1
kind: Service
metadata: {{name: empty}}
spec:
  selector: {{app: nothing-has-this-label}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: lb-allowed}}
spec:
  type: LoadBalancer
  loadBalancerSourceRanges: [172.18.0.0/24]
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: lb-denied}}
spec:
  type: LoadBalancer
  loadBalancerSourceRanges: [10.0.0.0/8]
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: multi}}
spec:
  selector: {{app: web}}
  ports:
    - {{name: http, port: 80, targetPort: http}}
    - {{name: dns, port: 53, targetPort: dns, protocol: UDP}}
---
apiVersion: v1
kind: Service
metadata: {{name: web-itp}}
spec:
  internalTrafficPolicy: Local
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: solo}}
spec:
  selector: {{app: solo}}
  ports: [{{port: 80, targetPort: 8080}}]
"""


class Lab:
    def __init__(self, name: str, mode: str):
        self.name, self.mode = name, mode
        get = lambda *a: json.loads(labctl("get", *a, "-o", "json", "--lab", name).stdout)  # noqa: E731
        self.pods = {p["metadata"]["name"]: p for p in get("pods")["items"]}
        self.services = {s["metadata"]["name"]: s for s in get("services")["items"]}
        self.nodes = {n["metadata"]["name"]: n["status"]["addresses"][0]["address"]
                      for n in get("nodes")["items"]}

    def ns(self, pod: str) -> str:
        return f"lc.{self.name}.pod.default.{pod}"

    def node_ns(self, node: str) -> str:
        return f"lc.{self.name}.node.{node}"

    @property
    def external(self) -> str:
        return f"lc.{self.name}.external"

    def vip(self, svc: str) -> str:
        return self.services[svc]["spec"]["clusterIP"]

    def lb_ip(self, svc: str) -> str:
        return self.services[svc]["status"]["loadBalancer"]["ingress"][0]["ip"]

    def web_pods(self) -> set[str]:
        return {n for n in self.pods if n.startswith("web-")}

    def pod_on_other_node(self, node: str) -> str:
        return next(n for n, p in self.pods.items()
                    if n.startswith("web-") and p["spec"]["nodeName"] != node)


def variant_lab(tmp: Path, prefix: str, variant: str) -> tuple[str, Path]:
    """The lab's name (`<prefix>-ipt`, `-iptleg`, `-nft`) and its manifest for one of MODES."""
    mode, _, legacy = variant.partition("-")
    name = f"{prefix}-{mode[:3]}{legacy[:3]}"
    return name, write_lab(tmp, name, MANIFEST.format(
        lab=name, mode=mode, backend="\n  iptablesBackend: legacy" if legacy else "",
        external_ip=EXTERNAL_IP))


@pytest.fixture(scope="module", params=MODES)
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Lab]:
    prefix = f"it-{request.module.__name__.rsplit('_', 1)[-1][:4]}"
    name, path = variant_lab(tmp_path_factory.mktemp(prefix), prefix, request.param)
    mode = request.param.partition("-")[0]
    labctl("up", str(path), "-q")
    try:
        yield Lab(name, mode)
    finally:
        labctl("down", name)


