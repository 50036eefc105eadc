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
