"""The lab the Service tests share: one per proxy mode, built from one manifest."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from labctl.testing.runner import labctl
from tests.integration.conftest import write_lab

# kube-proxy's kernel-NAT modes this host runs; iptables with each backend Debian ships.
MODES = ["iptables", "iptables-legacy", "nftables"]
# The modes the Service behaviour tests run over here; tests/vm runs them over "ipvs".
SERVICE_MODES = [*MODES, "userspace"]
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


@dataclass(frozen=True)
class Behaviour:
    """Where the modes' data paths differ (../shared/reference/kube-proxy.md): the tests
    assert each mode's own behaviour, so a mode that behaved like another one would fail."""

    pod_source_kept: bool = True  # a backend sees a client pod's own address
    traffic_policies: bool = True  # external/internalTrafficPolicy Local honoured
    source_ranges: bool = True  # loadBalancerSourceRanges enforced
    no_endpoints: str = "refused"  # at connect; userspace: "reset" after accepting


BEHAVIOUR = {
    "iptables": Behaviour(), "nftables": Behaviour(), "ipvs": Behaviour(),
    # a proxy process per node: backends see the node, and policies never existed for it
    "userspace": Behaviour(pod_source_kept=False, traffic_policies=False,
                           source_ranges=False, no_endpoints="reset"),
}


def routes_to(mode: str, rules: str, ip: str) -> list[str]:
    """The lines of `labctl rules` output that send new connections to endpoint `ip`."""
    if mode == "ipvs":  # real servers; a removed one drains at weight 0
        return [ln for ln in rules.splitlines()
                if (m := re.match(rf"\s*->\s+{re.escape(ip)}:\d+\s+\w+\s+(\d+)", ln))
                and int(m.group(1)) > 0]
    if mode == "userspace":  # the proxy's live endpoint lists
        return [ln for ln in rules.splitlines()
                if ln.startswith("#   0.0.0.0:") and f" {ip}:" in ln.replace("-> ", " ")]
    return [ln for ln in rules.splitlines() if ip in ln and any(
        w in ln for w in ("goto endpoint-", "-j KUBE-SEP", "DNAT", "dnat to"))]


class Lab:
    def __init__(self, name: str, mode: str):
        self.name, self.mode = name, mode
        self.behaves = BEHAVIOUR[mode]
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

    def node_side(self) -> set[str]:
        """The addresses a node's own traffic to a pod leaves with: node IPs, gateways."""
        return set(self.nodes.values()) | {"10.244.0.1", "10.244.1.1", "10.244.2.1"}

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


def running_lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                variant: str) -> Iterator[Lab]:
    prefix = f"it-{request.module.__name__.rsplit('_', 1)[-1][:4]}"
    name, path = variant_lab(tmp_path_factory.mktemp(prefix), prefix, variant)
    labctl("up", str(path), "-q")
    try:
        yield Lab(name, variant.partition("-")[0])
    finally:
        labctl("down", name)


@pytest.fixture(scope="module", params=SERVICE_MODES)
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Lab]:
    yield from running_lab(request, tmp_path_factory, request.param)


