"""Switching a running lab's kube-proxy mode: old rules out, new rules in, traffic on."""

from __future__ import annotations

import json
from pathlib import Path

from labctl.testing.runner import labctl
from labctl.testing.traffic import http_get
from tests.integration.conftest import write_lab
from tests.integration.manifests import deployment, join, lab, pod, service

LAB = "it-switch"
MANIFEST = join(lab(LAB), deployment("web", 2),
                service("web", "web", 80, 8080, node_port=30080, type="NodePort"),
                pod("client"))


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


def test_switching_modes_keeps_a_not_ready_pod_out(tmp_path: Path) -> None:
    lab = "it-switch2"
    labctl("up", str(write_lab(tmp_path, lab, MANIFEST.replace(LAB, lab))), "-q")
    try:
        pods = json.loads(labctl("get", "pods", "-o", "json", "--lab", lab).stdout)["items"]
        web = sorted(p["metadata"]["name"] for p in pods if p["metadata"]["name"] != "client")
        svc = next(s for s in json.loads(labctl("get", "svc", "-o", "json", "--lab",
                                                lab).stdout)["items"]
                   if s["metadata"]["name"] == "web")
        labctl("break", "pod", web[0], "--readiness", "--wait", "--lab", lab)
        labctl("proxy-mode", "nftables", "--lab", lab)
        client = f"lc.{lab}.pod.default.client"
        seen = {http_get(client, svc["spec"]["clusterIP"], 80).pod for _ in range(20)}
        assert seen == {web[1]}
        labctl("heal", "pod", web[0], "--wait", "--lab", lab)  # an incremental sync in the new mode
        seen = {http_get(client, svc["spec"]["clusterIP"], 80).pod for _ in range(30)}
        assert seen == set(web)
    finally:
        labctl("down", lab)


def test_a_failed_switch_leaves_the_old_mode_whole(tmp_path: Path) -> None:
    """A switch that fails on one node puts every node back in the old mode — jump rules
    included — and says so; the cleanup removes every per-service chain the kernel has
    (as kube-proxy's does), not only the ones the lab's Services would render."""
    from labctl.net import netfilter

    lab = "it-switch3"
    labctl("up", str(write_lab(tmp_path, lab, MANIFEST.replace(LAB, lab))), "-q")
    try:
        svc = next(s for s in json.loads(labctl("get", "svc", "-o", "json", "--lab",
                                                lab).stdout)["items"]
                   if s["metadata"]["name"] == "web")
        vip, client = svc["spec"]["clusterIP"], f"lc.{lab}.pod.default.client"
        node1, node2 = f"lc.{lab}.node.node1", f"lc.{lab}.node.node2"
        # node1: a per-service chain of a Service the lab no longer has, still jumping
        # to KUBE-MARK-MASQ (what an interrupted sync can leave behind)
        netfilter.run_in(node1, ["iptables-restore", "--noflush"], stdin=(
            "*nat\n:KUBE-SVC-STALE0000000000 - [0:0]\n"
            "-A KUBE-SVC-STALE0000000000 -j KUBE-MARK-MASQ\nCOMMIT\n"))
        # node2: a rule of someone else's that jumps to a kube-proxy chain: its chain
        # cannot be deleted there (EBUSY), so the switch fails half-way
        user_rule = ["-t", "nat", "-I", "OUTPUT", "-m", "comment", "--comment", "not ours",
                     "-j", "KUBE-MARK-MASQ"]
        netfilter.run_in(node2, ["iptables", *user_rule])
        failed = labctl("proxy-mode", "nftables", "--lab", lab, check=False)
        assert failed.returncode != 0
        assert "switching kube-proxy to nftables failed" in failed.stderr
        assert "still in iptables mode" in failed.stderr
        for ns in (node1, node2):
            saved = netfilter.iptables_save(ns, "nft")
            assert "-A PREROUTING -m comment --comment \"kubernetes service portals\" " \
                   "-j KUBE-SERVICES" in saved, ns
            assert "table ip kube-proxy" not in netfilter.nft_list(ns), ns
        assert {http_get(client, vip, 80).pod.startswith("web-") for _ in range(5)} == {True}
        # without the foreign rule the switch goes through, and the stale chain goes
        # with kube-proxy's others
        netfilter.run_in(node2, ["iptables", *["-D" if a == "-I" else a for a in user_rule]])
        labctl("proxy-mode", "nftables", "--lab", lab)
        assert "KUBE-SVC-STALE" not in netfilter.iptables_save(node1, "nft")
        assert "KUBE-MARK-MASQ" not in netfilter.iptables_save(node1, "nft")
        assert http_get(client, vip, 80).pod.startswith("web-")
    finally:
        labctl("down", lab)
