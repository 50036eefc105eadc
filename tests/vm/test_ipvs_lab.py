"""IPVS mode for real: a two-node lab in proxyMode ipvs, on a kernel with ip_vs.

Run where the kernel has IPVS — in the VM (`make test-vm`, scripts/run-vm-tests.sh) —
skipped elsewhere with the reason. Python under emulation is slow (seconds per
interpreter), so one lab serves every test and traffic goes through `ip netns exec`
with curl, not through `labctl exec`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labctl.kubelet.echo import parse_fields
from labctl.net import netns
from labctl.testing.runner import labctl
from tests.integration.manifests import deployment, join, lab, pod, service
from tests.integration.service_lab import Lab as ServiceLab

pytestmark = pytest.mark.ipvs

LAB = "vm-ipvs"
MANIFEST = join(
    lab(LAB, proxyMode="ipvs"), deployment("web", 2, port_name="http"),
    pod("client", node="node1", port=7000),
    service("web", "web", 80, "http", port_name=""),
    service("web-np", "web", 80, 8080, node_port=30080, port_name="", type="NodePort"))


def missing_capability() -> str | None:
    """Why IPVS tests cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, IPVS)"
    if shutil.which("modprobe") is None:
        return "needs modprobe to load ip_vs"
    proc = subprocess.run(["modprobe", "ip_vs"], capture_output=True, text=True)
    if proc.returncode != 0:
        return (f"needs the ip_vs kernel module: `modprobe ip_vs` failed "
                f"({proc.stderr.strip() or proc.returncode}); run them with `make test-vm`")
    # node sysctls need br_netfilter, a module on stock kernels
    subprocess.run(["modprobe", "br_netfilter"], capture_output=True)
    return None


def run_in(ns: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True,
                          text=True, timeout=timeout, check=False)


class Lab(ServiceLab):
    """The Service tests' view of a lab (pods, Services, nodes, namespaces), plus IPVS's."""

    def __init__(self) -> None:
        super().__init__(LAB, "ipvs")

    def web(self) -> dict[str, str]:
        """web pod name → IP."""
        return {n: p["status"]["podIP"] for n, p in self.pods.items() if n.startswith("web-")}

    def ipvsadm(self, node: str = "node1") -> str:
        proc = run_in(self.node_ns(node), "ipvsadm", "-Ln")
        assert proc.returncode == 0, proc.stderr
        return proc.stdout


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = missing_capability()
    if reason:
        pytest.skip(reason)
    path = Path(tmp_path_factory.mktemp("ipvs")) / "lab.yaml"
    path.write_text(MANIFEST)
    labctl("down", LAB, check=False, timeout=300)
    labctl("up", str(path), timeout=900)
    try:
        yield Lab()
    finally:
        labctl("down", LAB, check=False, timeout=300)


def real_servers(ipvsadm: str, vs: str) -> dict[str, tuple[str, int]]:
    """The real servers of virtual server `vs` ("TCP  10.96.0.5:80") in `ipvsadm -Ln`
    output: address → (forwarding, weight)."""
    out: dict[str, tuple[str, int]] = {}
    inside = False
    for line in ipvsadm.splitlines():
        if line.startswith(("TCP", "UDP", "SCTP")):
            inside = line.split()[:2] == vs.split()
        elif inside and line.strip().startswith("->") and "RemoteAddress" not in line:
            words = line.split()
            out[words[1]] = (words[2], int(words[3]))
    return out


def test_virtual_servers_kube_ipvs0_and_rules_view(lab: Lab) -> None:
    """Every ClusterIP:port and node IP:NodePort is a virtual server (rr) with the web
    pods as masquerading real servers, weight 1; kube-ipvs0 is a down dummy link owned
    by the lab, holding the ClusterIPs; `labctl rules` shows it all."""
    text = lab.ipvsadm()
    web = {f"{ip}:8080" for ip in lab.web().values()}
    for vs in (f"TCP  {lab.vip('web')}:80", f"TCP  {lab.vip('web-np')}:80",
               f"TCP  {lab.nodes['node1']}:30080"):
        assert re.search(rf"^{re.escape(vs)} rr\s*$", text, re.M), text
        assert real_servers(text, vs) == {ep: ("Masq", 1) for ep in web}, text
    link = subprocess.run(["ip", "-n", lab.node_ns("node1"), "-d", "addr", "show", "dev",
                           "kube-ipvs0"], capture_output=True, text=True).stdout
    assert "dummy" in link, link
    assert "state DOWN" in link, link
    assert f"alias labctl:{LAB}" in link, link
    assert f"inet {lab.vip('web')}/32" in link, link
    shown = labctl("rules", "node1", "--lab", LAB, timeout=300).stdout
    assert "# ipvsadm -Ln" in shown and f"{lab.vip('web')}:80" in shown
    assert "KUBE-CLUSTER-IP" in shown and "-j KUBE-NODE-PORT" in shown


def test_clusterip_from_a_pod_round_robin(lab: Lab) -> None:
    """Four requests from the client pod to the ClusterIP: rr alternates the two pods."""
    loop = f"for i in 1 2 3 4; do curl -s -m 5 http://{lab.vip('web')}/; done"
    proc = run_in(lab.ns("client"), "sh", "-c", loop, timeout=60)
    pods = re.findall(r"^pod=(\S+)$", proc.stdout, re.M)
    assert len(pods) == 4, proc.stdout + proc.stderr
    assert set(pods) == set(lab.web())
    assert pods[0] != pods[1] and pods[0] == pods[2] and pods[1] == pods[3]
    # the client's own address reaches the pod: no masquerading inside the cluster
    assert f"client={lab.pods['client']['status']['podIP']}:" in proc.stdout


def test_trace_in_ipvs_mode(lab: Lab) -> None:
    """`labctl trace` in IPVS mode: the probe connects and arrives at a web pod; the
    walk says IPVS translates in its own hooks, and conntrack shows the translation."""
    proc = labctl("trace", "client", "web", "-o", "json", "--lab", LAB, timeout=600)
    doc = json.loads(proc.stdout)
    assert doc["proxyMode"] == "ipvs" and doc["destination"]["ip"] == lab.vip("web")
    assert doc["outcome"]["result"] == "connected", doc["outcome"]
    assert doc["request"]["result"] == "arrived", doc["request"]
    assert any("IPVS mode: the translation" in n for n in doc["notes"]), doc["notes"]
    node = lab.pods["client"]["spec"]["nodeName"]
    assert any(lab.vip("web") in e for e in doc["conntrack"][node]), doc["conntrack"]
    text = labctl("trace", "client", "web", "--lab", LAB, timeout=600).stdout
    assert "IPVS" in text and "arrived" in text, text


def diagnostics(lab: Lab) -> str:
    """What the nodes' IPVS and conntrack hold, and the agent's last words."""
    out = []
    for node in lab.nodes:
        for argv in (["ipvsadm", "-Ln"], ["ipvsadm", "-Lnc"], ["conntrack", "-L"]):
            proc = run_in(lab.node_ns(node), *argv)
            out.append(f"## {node}: {' '.join(argv)}\n{proc.stdout[-3000:]}{proc.stderr}")
    for name in ("agent.log", "events.log"):
        path = Path("/run/labctl") / LAB / name
        if path.exists():
            out.append(f"## {name}\n" + "\n".join(path.read_text().splitlines()[-40:]))
    return "\n".join(out)


def test_removing_a_real_server_keeps_other_connections(lab: Lab) -> None:
    """An established connection through the ClusterIP survives the removal of another
    endpoint (a resync removes that one real server and touches nothing else).

    The connection kept is the one to the web pod on the client's node, and the pod
    removed is on the other node: removing a pod also removes its bridge port, which
    can change that node's cni0 MAC address under its other pods (a lab-network matter,
    not IPVS's)."""
    vip = lab.vip("web")
    node_of = {name: lab.pods[name]["spec"]["nodeName"] for name in lab.web()}
    conns = []
    for _ in range(2):  # rr: one connection to each web pod
        with netns.entered(lab.ns("client")):
            conns.append(socket.create_connection((vip, 80), timeout=60))  # emulated CPU
    files = [c.makefile("rwb") for c in conns]

    def ask(f: Any, word: str) -> dict[str, str]:
        f.write(f"{word}\n".encode())
        f.flush()
        return parse_fields(f.readline().decode())

    replies = [ask(f, "one") for f in files]
    keep = next((i for i, rep in enumerate(replies) if node_of.get(rep["pod"]) == "node1"),
                0)
    for i, (c, f) in enumerate(zip(conns, files, strict=True)):
        if i != keep:
            f.close()
            c.close()
    conn, f, first = conns[keep], files[keep], replies[keep]
    with conn, f:
        serving = first["pod"]
        other = next(name for name in lab.web() if name != serving)
        other_ip = lab.web()[other]
        labctl("delete", "pod", other, "--grace-period", "1", "--lab", LAB, timeout=600)
        try:
            after = ask(f, "two")
        except OSError as e:
            raise AssertionError(f"the connection to {serving} broke ({e}):\n"
                                 f"{diagnostics(lab)}") from None
        assert after["pod"] == serving and after["client"] == first["client"]
        assert after["echo"] == "two"
    text = lab.ipvsadm()
    assert f"{other_ip}:8080" not in real_servers(text, f"TCP  {vip}:80"), text
    assert f"{lab.web()[serving]}:8080" in real_servers(text, f"TCP  {vip}:80")


def test_switching_away_cleans_up(lab: Lab) -> None:
    """`labctl proxy-mode iptables` does kube-proxy --cleanup in every node: no virtual
    server, no kube-ipvs0, none of IPVS mode's ipsets or chains — and the Service works
    on through iptables."""
    labctl("proxy-mode", "iptables", "--lab", LAB, timeout=600)
    for node in lab.nodes:
        ns = lab.node_ns(node)
        assert not re.search(r"^(TCP|UDP|SCTP) ", lab.ipvsadm(node), re.M)
        assert run_in(ns, "ip", "link", "show", "kube-ipvs0").returncode != 0
        assert "KUBE-" not in run_in(ns, "ipset", "list", "-n").stdout
        saved = run_in(ns, "iptables-save").stdout
        assert "KUBE-IPVS-FILTER" not in saved and "KUBE-LOAD-BALANCER" not in saved
        assert "KUBE-SVC-" in saved
    proc = run_in(lab.ns("client"), "curl", "-s", "-m", "5",
                  f"http://{lab.vip('web')}/", timeout=30)
    assert re.search(r"^pod=web-", proc.stdout, re.M), proc.stdout + proc.stderr


def test_switching_back_to_ipvs(lab: Lab) -> None:
    """`labctl proxy-mode ipvs` (the agent loads every node in full): virtual servers
    again, and the Service answers through IPVS."""
    labctl("proxy-mode", "ipvs", "--lab", LAB, timeout=600)
    text = lab.ipvsadm("node2")
    assert re.search(rf"^TCP  {re.escape(lab.vip('web'))}:80 rr\s*$", text, re.M), text
    proc = run_in(lab.ns("client"), "curl", "-s", "-m", "5",
                  f"http://{lab.vip('web')}/", timeout=30)
    assert re.search(r"^pod=web-", proc.stdout, re.M), proc.stdout + proc.stderr
