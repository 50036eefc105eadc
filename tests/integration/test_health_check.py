"""kube-proxy's service health checks on a real lab: every node answers on the
healthCheckNodePort of a LoadBalancer with externalTrafficPolicy Local — 200 where it
has a ready endpoint, 503 where not — and the answer follows readiness."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from labctl.testing.runner import labctl, netns_exec
from tests.integration.conftest import write_lab

LAB = "it-health"
MANIFEST = f"""
apiVersion: labctl/v1
kind: Lab
metadata: {{name: {LAB}}}
spec:
  nodes: [{{name: node1}}, {{name: node2}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: web, labels: {{app: web}}}}
spec:
  nodeName: node1
  containers:
    - name: web
      ports: [{{name: http, containerPort: 8080}}]
      readinessProbe: {{httpGet: {{path: /, port: http}}, periodSeconds: 1, failureThreshold: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"""
NODE1, NODE2 = "172.18.0.2", "172.18.0.3"


@pytest.fixture(scope="module")
def health_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    path: Path = write_lab(tmp_path_factory.mktemp("health"), LAB, MANIFEST)
    labctl("up", str(path))
    try:
        services = json.loads(labctl("get", "svc", "-o", "json", "--lab", LAB).stdout)
        web = next(s for s in services["items"] if s["metadata"]["name"] == "web")
        yield web["spec"]["healthCheckNodePort"]
    finally:
        labctl("down", LAB, check=False)


def ask(node_ip: str, port: int) -> tuple[int, dict]:  # type: ignore[type-arg]
    """The status code and JSON body a load balancer outside the cluster would get."""
    proc = netns_exec(f"lc.{LAB}.external", [
        "curl", "-s", "-m", "3", "-w", "\n%{http_code}", f"http://{node_ip}:{port}/healthz"])
    body, _, code = proc.stdout.rpartition("\n")
    return int(code), json.loads(body)


def until(node_ip: str, port: int, code: int) -> tuple[int, dict]:  # type: ignore[type-arg]
    deadline = time.monotonic() + 20  # a hang guard: readiness takes ~1 s
    while True:
        got = ask(node_ip, port)
        if got[0] == code or time.monotonic() > deadline:
            return got


def test_nodes_with_and_without_an_endpoint(health_port: int) -> None:
    assert 30000 <= health_port <= 32767
    code, body = until(NODE1, health_port, 200)
    assert (code, body) == (200, {"service": {"namespace": "default", "name": "web"},
                                  "localEndpoints": 1, "serviceProxyHealthy": True})
    code, body = ask(NODE2, health_port)
    assert code == 503 and body["localEndpoints"] == 0


def test_the_answer_follows_readiness(health_port: int) -> None:
    assert until(NODE1, health_port, 200)[0] == 200
    labctl("break", "pod", "web", "--readiness", "--wait", "--lab", LAB)
    try:
        code, body = until(NODE1, health_port, 503)
        assert code == 503 and body["localEndpoints"] == 0
    finally:
        labctl("heal", "pod", "web", "--wait", "--lab", LAB)
    assert until(NODE1, health_port, 200)[0] == 200


def test_an_adopting_agent_serves_them_again(health_port: int) -> None:
    labctl("agent", "restart", "--lab", LAB)
    assert until(NODE1, health_port, 200)[0] == 200
    assert ask(NODE2, health_port)[0] == 503
