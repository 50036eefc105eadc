"""`labctl trace` in a real two-node lab: a probe from a pod on node1 to Services whose
pod is on node2, in iptables (nft backend) and nftables mode — the DNAT rule, the
REJECT of a Service without endpoints, both nodes crossed — and nothing temporary left
behind (trace tables, monitor processes), even after Ctrl-C; the host unchanged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from labctl.net import nftrace
from labctl.testing import host
from labctl.testing.runner import labctl, labctl_argv, processes_in
from tests.integration import manifests as m
from tests.integration.conftest import only_own_labs, write_lab

LAB = "tr-trace"
MODES = ["iptables", "nftables"]


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """This module's lab leaves nothing behind (and other sessions' labs are left alone)."""
    yield from only_own_labs(LAB)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("trace")
    path = write_lab(tmp, LAB, m.join(
        m.lab(LAB, iptablesBackend="nft"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web, labels: {app: web}}\n"
        "spec:\n  nodeName: node2\n  containers: [{name: web, ports: [{name: http, "
        "containerPort: 8080}, {name: echo, containerPort: 9000, protocol: UDP}]}]\n",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: client}\n"
        "spec:\n  nodeName: node1\n  containers: [{name: c}]\n",
        m.service("web", "web", 80, 8080),
        "apiVersion: v1\nkind: Service\nmetadata: {name: echo}\nspec:\n  selector: {app: web}\n"
        "  ports: [{name: echo, port: 9000, targetPort: echo, protocol: UDP}]\n",
        m.service("empty", "nothing", 80, 8080),
        m.service("webnp", "web", 8081, 8080, node_port=30080, type="NodePort"),
        m.service("weblb", "web", 8082, 8080, type="LoadBalancer")))
    labctl("down", LAB, check=False)
    try:
        labctl("up", str(path))
        pods = json.loads(labctl("get", "pods", "-o", "json", "--lab", LAB).stdout)["items"]
        info = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}
        svcs = json.loads(labctl("get", "svc", "-o", "json", "--lab", LAB).stdout)["items"]
        vips = {s["metadata"]["name"]: s["spec"]["clusterIP"] for s in svcs}
        from labctl.lab import store

        state = store.state_of(LAB)
        yield {"web_ip": info["web"], "client_ip": info["client"], "vips": vips,
               "netns": [n.netns for n in state.nodes] + [p.netns for p in state.pods]
               + [state.external_netns],
               "mode": "iptables"}
    finally:
        labctl("down", LAB, check=False)


@pytest.fixture(params=MODES)
def mode_lab(request: pytest.FixtureRequest, lab: dict[str, Any]) -> dict[str, Any]:
    if lab["mode"] != request.param:
        labctl("proxy-mode", request.param, "--lab", LAB)
        lab["mode"] = request.param
    return lab


def trace_json(*args: str) -> dict[str, Any]:
    proc = labctl("trace", "--lab", LAB, "-o", "json", *args)
    return json.loads(proc.stdout)


def rules_hit(direction: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for s in direction["steps"] for c in s["chains"] for r in c["rules"]]


def test_a_clusterip_probe_shows_the_dnat_rule(mode_lab: dict[str, Any]) -> None:
    doc = trace_json("client", "web")
    web = mode_lab["web_ip"]
    assert doc["proxyMode"] == mode_lab["mode"]
    assert doc["destination"]["ip"] == mode_lab["vips"]["web"]
    assert doc["outcome"]["result"] == "connected", doc["outcome"]
    dnat = [r for r in rules_hit(doc["request"]) if r["action"] == f"DNAT to {web}:8080"]
    assert len(dnat) == 1, rules_hit(doc["request"])
    if mode_lab["mode"] == "iptables":  # quoted as iptables-save shows it
        assert dnat[0]["rule"].startswith("-A KUBE-SEP-")
        assert f"-j DNAT --to-destination {web}:8080" in dnat[0]["rule"]
    else:
        assert dnat[0]["chain"].startswith("endpoint-")
        assert f"dnat to {web}:8080" in dnat[0]["rule"]
    step = next(s for s in doc["request"]["steps"] if any(
        r in dnat for c in s["chains"] for r in c["rules"]))
    assert (step["where"], step["hook"]) == ("node1", "prerouting")
    assert doc["request"]["result"] == "arrived"
    assert doc["reply"]["result"] == "arrived" and doc["reply"]["packet"] == "TCP SYN-ACK"
    assert any(f"DNAT {mode_lab['vips']['web']}:80 → {web}:8080" in e
               for e in doc["conntrack"]["node1"])


def test_a_service_without_endpoints_shows_the_reject(mode_lab: dict[str, Any]) -> None:
    doc = trace_json("client", "empty")
    assert doc["outcome"]["result"] == "refused"
    req = doc["request"]
    assert req["result"] == "rejected"
    last = rules_hit(req)[-1]
    assert last["action"].startswith("REJECT")
    if mode_lab["mode"] == "iptables":
        assert last["chain"] == "KUBE-SERVICES"
        assert '"default/empty:http has no endpoints"' in last["rule"]
        assert "-j REJECT --reject-with icmp-port-unreachable" in last["rule"]
    else:
        hits = rules_hit(req)
        lookup = next(r for r in hits if "@no-endpoint-services" in r["rule"])
        assert lookup["element"].endswith(': goto reject-chain comment "default/empty:http"')
    assert req["summary"].startswith("rejected by ")


def test_a_masqueraded_nodeport_probe_is_followed_to_the_other_node(
        mode_lab: dict[str, Any]) -> None:
    # client on node1 → node1's own NodePort → the endpoint on node2: node1 DNATs and
    # masquerades (a new source port), and the trace still finds the packet on node2.
    doc = trace_json("client", "172.18.0.2:30080")
    assert doc["destination"]["what"] == "NodePort 30080 of Service default/webnp on node1"
    assert doc["outcome"]["result"] == "connected", doc["outcome"]
    req = doc["request"]
    masq = [s for s in req["steps"] for c in s["chains"] for r in c["rules"]
            if r["action"].startswith("MASQUERADE")]
    assert [(s["where"], s["hook"]) for s in masq] == [("node1", "postrouting")]
    on_node2 = [s for s in req["steps"] if s["where"] == "node2"]
    assert on_node2 and on_node2[0]["headers"]["saddr"] == "172.18.0.2"
    assert on_node2[0]["headers"]["dscp"] == "0x2d"
    assert req["result"] == "arrived" and doc["reply"]["result"] == "arrived"
    assert [s["where"] for s in doc["reply"]["steps"]][:1] == ["node2"]
    assert "SNAT 10.244.0.2:" in doc["conntrack"]["node1"][0]
    assert doc["conntrack"]["node2"][0].startswith("tcp 172.18.0.2:")


def test_a_trace_across_nodes_shows_both_nodes_and_the_route(lab: dict[str, Any]) -> None:
    text = labctl("trace", "--lab", LAB, "client", "default/web:http").stdout
    web = lab["web_ip"]
    assert "\n pod default/client\n" in text and "\n node1\n" in text and "\n node2\n" in text
    request = text.split("\nreply:")[0]
    assert request.index(" node1\n") < request.index(" node2\n")
    assert f"route: {web} via 172.18.0.3 dev eth0" in request  # node1 → node2
    assert f"arrived at pod default/web on node2 ({web})" in request
    assert "DNAT to " + web in request


def test_a_hairpin_through_the_pods_own_service_comes_back_into_the_pod(
        lab: dict[str, Any]) -> None:
    doc = trace_json("web", "web")
    req = doc["request"]
    assert [s["where"] for s in req["steps"]] == [
        "pod default/web", "node2", "node2", "node2", "pod default/web"]
    assert req["result"] == "arrived" and req["summary"] == "arrived at pod default/web"
    back = req["steps"][-1]["headers"]
    assert (back["saddr"], back["daddr"]) == ("10.244.1.1", lab["web_ip"])  # masqueraded
    assert "SNAT" in doc["conntrack"]["node2"][0]


def test_a_udp_probe_is_answered_by_the_pod_and_traced(lab: dict[str, Any]) -> None:
    doc = trace_json("client", "echo")
    assert doc["destination"]["protocol"] == "udp" and doc["destination"]["port"] == 9000
    assert doc["outcome"]["result"] == "answered" and "pod=web" in doc["outcome"]["reply"]
    assert doc["request"]["packet"] == "UDP datagram"
    assert any(r["action"] == f"DNAT to {lab['web_ip']}:9000" for r in rules_hit(doc["request"]))
    assert doc["reply"]["result"] == "arrived"


def test_bad_destinations_are_user_errors_that_create_nothing(lab: dict[str, Any]) -> None:
    proc = labctl("trace", "--lab", LAB, "client", "wbe", check=False)
    assert proc.returncode == 2
    assert "error: DEST: no Service or pod named 'wbe'" in proc.stderr
    assert "hint: did you mean web" in proc.stderr
    proc = labctl("trace", "--lab", LAB, "nosuch", "web", check=False)
    assert proc.returncode == 2 and "error: SOURCE: no pod, node or client named" in proc.stderr
    assert "node1, node2" in proc.stderr and "`external`" in proc.stderr
    proc = labctl("trace", "--lab", LAB, "external", "web", check=False)  # a ClusterIP
    assert proc.returncode == 2 and "not reachable from outside the cluster" in proc.stderr
    assert not _trace_tables(lab)


@pytest.mark.parametrize(("dest", "what", "dnat_on"), [
    ("webnp", "NodePort 30080 of Service default/webnp on node1", "node1"),
    ("node2:30080", "NodePort 30080 of Service default/webnp on node2", "node2"),
    ("weblb", "Service default/weblb (port http), LoadBalancer IP", None),
])
def test_a_probe_from_outside_enters_through_a_node(mode_lab: dict[str, Any], dest: str,
                                                    what: str, dnat_on: str | None) -> None:
    """From the external client: to a NodePort (by Service or by node) and to the
    LoadBalancer IP (the node announcing it): the node DNATs and masquerades, the pod on
    node2 answers, and the reply comes back out to the client."""
    doc = trace_json("external", dest)
    assert doc["source"]["kind"] == "external" and doc["source"]["ip"] == "172.18.0.254"
    assert doc["destination"]["what"] == what
    assert doc["outcome"]["result"] == "connected", doc["outcome"]
    req = doc["request"]
    assert req["steps"][0]["where"] == "external" and req["steps"][0]["hook"] == "output"
    dnat = [s["where"] for s in req["steps"] for c in s["chains"] for r in c["rules"]
            if "DNAT" in r["action"] or r["action"].startswith("dnat")]
    assert dnat and (dnat_on is None or dnat == [dnat_on]), dnat
    masq = [s["where"] for s in req["steps"] for c in s["chains"] for r in c["rules"]
            if r["action"].startswith(("MASQUERADE", "masquerade"))]
    assert masq == dnat  # externalTrafficPolicy Cluster: the client's address is hidden
    assert req["result"] == "arrived"
    assert doc["reply"]["result"] == "arrived" and \
        doc["reply"]["steps"][-1]["where"] == "external"


def test_a_probe_from_a_node_leaves_by_its_output_hook(lab: dict[str, Any]) -> None:
    doc = trace_json("node1", "web")
    assert doc["source"] == {**doc["source"], "kind": "node", "node": "node1",
                             "ip": "172.18.0.2"}
    first = doc["request"]["steps"][0]
    assert (first["where"], first["hook"]) == ("node1", "output")
    assert doc["outcome"]["result"] == "connected", doc["outcome"]
    text = labctl("trace", "--lab", LAB, "node1", "web").stdout
    assert "from node node1 to Service default/web" in text


def _trace_tables(lab: dict[str, Any]) -> dict[str, list[str]]:
    found = {ns: nftrace.tables_in(ns) for ns in lab["netns"]}
    return {ns: t for ns, t in found.items() if t}


def _monitors(lab: dict[str, Any]) -> list[int]:
    inodes = {os.stat(f"/run/netns/{ns}").st_ino for ns in lab["netns"]}
    out = []
    for pid in processes_in(inodes):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv[:1] == [b"nft"] and b"monitor" in argv:
            out.append(pid)
    return out


def test_nothing_temporary_is_left_and_the_host_is_unchanged(lab: dict[str, Any]) -> None:
    before = host.snapshot()
    labctl("trace", "--lab", LAB, "client", "web")
    labctl("trace", "--lab", LAB, "client", "web", "--proto", "icmp", "--timeout", "0.5")
    assert not _trace_tables(lab)
    assert not _monitors(lab)
    assert host.diff(before, host.snapshot()) == []


def test_ctrl_c_during_the_probe_removes_tables_and_monitors(lab: dict[str, Any]) -> None:
    # 172.18.0.254 (the external client) has no route back to pods: the SYN goes
    # unanswered, so the probe waits its whole --timeout — time to press Ctrl-C.
    proc = subprocess.Popen(labctl_argv("trace", "--lab", LAB, "client", "172.18.0.254:9",
                                        "--timeout", "30"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(_monitors(lab)) < 3 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        assert len(_monitors(lab)) == 3  # the pod and both nodes
        assert _trace_tables(lab)
        time.sleep(0.3)  # the monitors are subscribed and the SYN is out
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not _trace_tables(lab)
    assert not _monitors(lab)


def test_kill_9_takes_the_monitors_along_and_the_next_trace_removes_the_tables(
        lab: dict[str, Any]) -> None:
    proc = subprocess.Popen(labctl_argv("trace", "--lab", LAB, "client", "172.18.0.254:9",
                                        "--timeout", "30"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(_monitors(lab)) < 3 and time.monotonic() < deadline:
            assert proc.poll() is None
            time.sleep(0.05)
        assert len(_monitors(lab)) == 3
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while _monitors(lab) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _monitors(lab)  # setpriv --pdeathsig: they died with labctl
    assert _trace_tables(lab)  # nothing could remove these …
    labctl("trace", "--lab", LAB, "client", "web")
    assert not _trace_tables(lab)  # … but the next trace did

