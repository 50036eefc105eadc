"""The pod network a lab builds, checked with real packets (ICMP, TCP, UDP)."""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from labctl import names
from labctl.testing.runner import labctl, netns_exec
from tests.integration.conftest import write_lab

LAB = "it-net"
MANIFEST = f"""
apiVersion: labctl/v1
kind: Lab
metadata: {{name: {LAB}}}
spec:
  nodes: [{{name: node1}}, {{name: node2}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: a1, labels: {{app: a}}}}
spec:
  nodeName: node1
  containers:
    - name: main
      ports: [{{containerPort: 8080, name: http}}]
    - name: sidecar
      ports: [{{containerPort: 9001, protocol: UDP}}, {{containerPort: 9002}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: a2, labels: {{app: a}}}}
spec:
  nodeName: node1
  containers:
    - name: main
      ports: [{{containerPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: b1, labels: {{app: b}}}}
spec:
  nodeName: node2
  containers:
    - name: main
      ports: [{{containerPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: files, namespace: tools}}
spec:
  nodeName: node2
  containers:
    - name: http
      command: ["python3", "-m", "http.server", "8081", "--bind", "0.0.0.0"]
      ports: [{{containerPort: 8081}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: crasher, namespace: tools}}
spec:
  containers:
    - name: c
      command: ["sh", "-c", "echo boom; exit 3"]
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict]]:
    path = write_lab(tmp_path_factory.mktemp("net"), LAB, MANIFEST)
    labctl("up", str(path), "-q")
    try:
        pods = json.loads(labctl("get", "pods", "-A", "-o", "json", "--lab", LAB).stdout)
        yield {p["metadata"]["name"]: p for p in pods["items"]}
    finally:
        labctl("down", LAB)


def ns_of(name: str, namespace: str = "default") -> str:
    return f"lc.{LAB}.pod.{namespace}.{name}"


def echo_fields(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.split() if "=" in line)


def curl(netns: str, url: str) -> subprocess.CompletedProcess[str]:
    return netns_exec(netns, ["curl", "-sS", "-m", "3", url])


def ip_of(lab: dict[str, dict], pod: str) -> str:
    return lab[pod]["status"]["podIP"]


def test_pod_addresses_in_the_kernel_match_get_pods(lab: dict[str, dict]) -> None:
    for name, pod in lab.items():
        ns = pod["metadata"]["namespace"]
        out = netns_exec(ns_of(name, ns), ["ip", "-j", "addr", "show", "eth0"]).stdout
        addrs = [a["local"] for a in json.loads(out)[0]["addr_info"] if a["family"] == "inet"]
        assert addrs == [pod["status"]["podIP"]]


def test_ping_between_pods_on_one_node(lab: dict[str, dict]) -> None:
    proc = netns_exec(ns_of("a1"), ["ping", "-c", "2", "-W", "2", ip_of(lab, "a2")])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_tcp_between_pods_on_one_node_keeps_the_source_address(lab: dict[str, dict]) -> None:
    proc = curl(ns_of("a1"), f"http://{ip_of(lab, 'a2')}:8080/hello")
    assert proc.returncode == 0, proc.stderr
    fields = echo_fields(proc.stdout)
    assert fields["pod"] == "a2" and fields["node"] == "node1"
    assert fields["client"].split(":")[0] == ip_of(lab, "a1")


def test_ping_and_tcp_across_nodes(lab: dict[str, dict]) -> None:
    assert lab["a1"]["spec"]["nodeName"] != lab["b1"]["spec"]["nodeName"]
    proc = netns_exec(ns_of("a1"), ["ping", "-c", "2", "-W", "2", ip_of(lab, "b1")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = curl(ns_of("b1"), f"http://{ip_of(lab, 'a1')}:8080/")
    fields = echo_fields(proc.stdout)
    assert fields["pod"] == "a1" and fields["node"] == "node1"
    assert fields["client"].split(":")[0] == ip_of(lab, "b1")  # routed, not NATed


def test_udp_across_nodes(lab: dict[str, dict]) -> None:
    proc = subprocess.run(
        ["ip", "netns", "exec", ns_of("b1"), "nc", "-u", "-w", "1", ip_of(lab, "a1"), "9001"],
        input="ping-udp\n", capture_output=True, text=True, timeout=10, check=False)
    fields = echo_fields(proc.stdout)
    assert fields.get("pod") == "a1" and fields.get("container") == "sidecar", proc.stdout
    assert "ping-udp" in proc.stdout


def test_containers_of_one_pod_share_localhost(lab: dict[str, dict]) -> None:
    proc = labctl("exec", "a1", "-c", "main", "--lab", LAB, "--",
                  "curl", "-sS", "-m", "3", "http://127.0.0.1:9002/")
    fields = echo_fields(proc.stdout)
    assert fields["container"] == "sidecar" and fields["client"].startswith("127.0.0.1:")


def test_a_real_process_serves_from_its_pod(lab: dict[str, dict]) -> None:
    url = f"http://{ip_of(lab, 'files')}:8081/"
    for _ in range(50):  # the process may still be starting
        proc = curl(ns_of("a1"), url)
        if proc.returncode == 0:
            break
        time.sleep(0.1)
    assert "Directory listing" in proc.stdout, proc.stderr
    log = labctl("logs", "files", "-n", "tools", "--lab", LAB).stdout
    assert "GET / HTTP/1.1" in log


def test_logs_show_the_built_in_servers_requests(lab: dict[str, dict]) -> None:
    curl(ns_of("a2"), f"http://{ip_of(lab, 'b1')}:8080/logged-path")
    assert "/logged-path" in labctl("logs", "b1", "--lab", LAB).stdout


def test_external_reaches_node_ips_but_no_pod(lab: dict[str, dict]) -> None:
    nodes = json.loads(labctl("get", "nodes", "-o", "json", "--lab", LAB).stdout)["items"]
    ext = f"lc.{LAB}.external"
    server = subprocess.Popen(["ip", "netns", "exec", f"lc.{LAB}.node.node2", "python3", "-c",
                               "import socket;s=socket.create_server(('0.0.0.0',7000));"
                               "c,a=s.accept();c.sendall(a[0].encode());c.close()"])
    try:
        for node in nodes:
            ip = node["status"]["addresses"][0]["address"]
            proc = netns_exec(ext, ["ping", "-c", "1", "-W", "2", ip])
            assert proc.returncode == 0, proc.stdout
        node2 = nodes[1]["status"]["addresses"][0]["address"]
        out = ""
        for _ in range(50):
            proc = netns_exec(ext, ["nc", "-w", "2", node2, "7000"])
            out = proc.stdout
            if out:
                break
            time.sleep(0.1)
        assert out == "172.18.0.254"  # the external client's own address, seen by the node
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=5)
    route = netns_exec(ext, ["ip", "route", "get", ip_of(lab, "a1")])
    assert route.returncode != 0 or "unreachable" in route.stdout + route.stderr


def test_lab_namespaces_have_no_path_to_the_host_network(lab: dict[str, dict]) -> None:
    # Pods route everything to their node; the nodes and the external client must have
    # no route at all towards any of the host's own addresses, so nothing leaves the lab.
    # (A host address inside the lab's own ranges would be shadowed by the lab's routes,
    # which lead into the lab's closed node network: skip those.)
    lab_ranges = [ipaddress.ip_network(c) for c in ("10.244.0.0/16", "10.96.0.0/12",
                                                    "172.18.0.0/24", "192.168.200.0/24")]
    host_addrs = subprocess.run(["ip", "-4", "-j", "addr"], capture_output=True, text=True,
                                check=True).stdout
    for entry in json.loads(host_addrs):
        for info in entry.get("addr_info", []):
            if info["local"].startswith("127.") or any(
                    ipaddress.ip_address(info["local"]) in net for net in lab_ranges):
                continue
            for ns in (f"lc.{LAB}.node.node1", f"lc.{LAB}.node.node2", f"lc.{LAB}.external"):
                proc = netns_exec(ns, ["ip", "route", "get", info["local"]])
                assert proc.returncode != 0, f"{ns} has a route to the host's {info['local']}"


def test_exec_passes_the_exit_code_through(lab: dict[str, dict]) -> None:
    assert labctl("exec", "a1", "--lab", LAB, "--", "sh", "-c", "exit 7",
                  check=False).returncode == 7
    proc = labctl("exec", "node1", "--lab", LAB, "--", "cat", "/proc/sys/net/ipv4/ip_forward")
    assert proc.stdout.strip() == "1"  # nodes forward; the host's own setting is untouched


def test_get_tables(lab: dict[str, dict]) -> None:
    out = labctl("get", "pods", "-o", "wide", "--lab", LAB).stdout
    assert out.splitlines()[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP",
                                           "NODE"]
    assert {ln.split()[0] for ln in out.splitlines()[1:]} == {"a1", "a2", "b1"}
    nodes = labctl("get", "nodes", "--lab", LAB).stdout
    assert "10.244.1.0/24" in nodes


def test_get_pods_shows_what_the_agent_sees(lab: dict[str, dict]) -> None:
    rows = {}
    for _ in range(50):  # the crasher needs a moment to exit for the first time
        out = labctl("get", "pods", "-A", "--lab", LAB).stdout
        rows = {ln.split()[1]: ln.split() for ln in out.splitlines()[1:]}
        if rows["crasher"][3] == "CrashLoopBackOff":
            break
        time.sleep(0.1)
    assert rows["a1"][2:4] == ["2/2", "Running"]
    assert rows["crasher"][2:4] == ["0/1", "CrashLoopBackOff"]
    assert "boom" in labctl("logs", "crasher", "-n", "tools", "--lab", LAB).stdout


def test_every_link_carries_the_ownership_mark(lab: dict[str, dict]) -> None:
    from labctl.net import inventory

    namespaces = inventory.lab_namespaces()[LAB]
    assert len(namespaces) >= 3 + len(lab)  # fabric, external, nodes, pods
    unmarked = []
    for ns in namespaces:
        for link in netns_exec(ns, ["ls", "/sys/class/net"]).stdout.split():
            alias = netns_exec(ns, ["cat", f"/sys/class/net/{link}/ifalias"]).stdout.strip()
            if alias != f"labctl:{LAB}":
                unmarked.append(f"{ns}/{link}")
    assert not unmarked


def test_a_bridge_keeps_its_mac_when_its_lowest_port_goes(tmp_path: Path) -> None:
    """Without a fixed address a Linux bridge takes its lowest port's MAC: deleting that
    pod would change the gateway's MAC under every other pod on the node."""
    name = "it-net-mac"
    body = (f"apiVersion: labctl/v1\nkind: Lab\nmetadata: {{name: {name}}}\n"
            "spec:\n  nodes: [{name: node1}]\n" + "".join(
                f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}}}\n"
                "spec:\n  containers: [{name: c, ports: [{containerPort: 8080}]}]\n"
                for i in range(4)))
    path = write_lab(tmp_path, name, body)
    labctl("up", str(path), "-q")
    try:
        node = f"lc.{name}.node.node1"

        def mac() -> str:
            return netns_exec(node, ["cat", "/sys/class/net/cni0/address"]).stdout.strip()

        before = mac()
        ports = netns_exec(node, ["ls", "/sys/class/net/cni0/brif"]).stdout.split()
        lowest = min(ports, key=lambda p: netns_exec(
            node, ["cat", f"/sys/class/net/{p}/address"]).stdout)
        ips = {(p["metadata"]["namespace"], p["metadata"]["name"]): p["status"]["podIP"]
               for p in json.loads(labctl("get", "pods", "-A", "-o", "json", "--lab",
                                          name).stdout)["items"]}
        ns, pod = next(k for k, ip in ips.items() if names.veth_for(ip) == lowest)
        labctl("delete", "pod", pod, "-n", ns, "--grace-period", "0", "--lab", name)
        assert mac() == before
    finally:
        labctl("down", name)
