"""Packet-level proof of what kube-proxy's rules do, seen with scapy on the wire.

A connection from a pod to a ClusterIP is DNAT-ed on the way to the backend (source
untouched) and un-NAT-ed on the way back; the node's conntrack table holds the entry;
an outside client's packet to a NodePort reaches the backend SNAT-ed to a node address.
Written with labctl's pytest plugin (labctl.testing.lab), as a lab author would.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import pytest

from labctl.testing.lab import Lab, running
from labctl.testing.packets import assert_dnat, assert_packet, assert_snat, tcp_to
from tests.integration.service_lab import MODES, variant_lab


@pytest.fixture(scope="module", params=MODES)
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Lab]:
    """The suite's Service lab once per proxy mode, brought up and always taken down by
    the plugin's `running` (a module-level `lab`, so it shadows the shared one)."""
    name, path = variant_lab(tmp_path_factory.mktemp("pp-pkt"), "pp-pkt", request.param)
    with running([path], name) as up:
        yield up


def test_cluster_ip_syn_is_dnated_to_the_backend_and_the_reply_comes_from_the_vip(
        lab: Lab) -> None:
    vip = lab.service("solo").cluster_ip
    solo, client = lab.pod("solo").ip, lab.pod("client").ip
    with lab.capture("solo", match=tcp_to(8080)) as backend, \
            lab.capture("client", match=tcp_to(80)) as seen_by_client:
        reply = lab.http_get("client", "solo", 80)
    assert reply.pod == "solo"
    sport = reply.local[1]
    # destination rewritten to pod:targetPort, source unchanged
    assert_dnat(backend.packets, to=f"{solo}:8080", src=f"{client}:{sport}", flags="S",
                original=f"{vip}:80")
    # the reply appears to come from the VIP
    assert_packet(seen_by_client.packets, src=f"{vip}:80", dst=f"{client}:{sport}",
                  flags="SA")


def test_the_nodes_conntrack_table_holds_the_dnat_entry(lab: Lab) -> None:
    vip = lab.service("solo").cluster_ip
    reply = lab.http_get("client", vip, 80)
    entries = lab.conntrack("node1", proto="tcp", dst=vip, sport=reply.local[1])
    assert len(entries) == 1, entries
    # original direction to the VIP, reply direction from the pod: a DNAT
    assert entries[0].dnat and not entries[0].snat
    assert (entries[0].reply.src, entries[0].reply.sport) == (lab.pod("solo").ip, 8080)


def test_a_crafted_syn_to_a_cluster_ip_is_answered_from_it_and_dnated(lab: Lab) -> None:
    from scapy.layers.inet import IP, TCP

    vip = lab.service("solo").cluster_ip
    solo, client = lab.pod("solo"), lab.pod("client")
    sport = random.randint(40000, 60000)
    with lab.capture("solo", match=tcp_to(8080)) as backend:
        answer = lab.sr1("client", IP(dst=vip) / TCP(sport=sport, dport=80, flags="S"))
    assert answer is not None, "no answer to the crafted SYN"
    assert (answer[IP].src, answer[TCP].sport, answer[TCP].flags) == (vip, 80, "SA")
    assert_dnat(backend.packets, to=f"{solo.ip}:8080", src=f"{client.ip}:{sport}", flags="S")
    [entry] = lab.conntrack(client.node, dst=vip, sport=sport)
    assert str(entry.orig) == f"{client.ip}:{sport} -> {vip}:80"
    assert str(entry.reply) == f"{solo.ip}:8080 -> {client.ip}:{sport}"


def test_node_port_from_outside_arrives_snated_to_a_node_address(lab: Lab) -> None:
    node1 = lab.node("node1")
    web = lab.pods({"app": "web"})
    with contextlib.ExitStack() as stack:
        caps = {p.name: stack.enter_context(lab.capture(p.name, match=tcp_to(8080)))
                for p in web}
        reply = lab.http_get("external", node1.ip, 30080)
    backend = lab.pod(reply.pod)
    # to a pod on the same node the source is the node's bridge address, else its eth0
    node_side = node1.pod_gateway if backend.node == "node1" else node1.ip
    assert reply.client_ip == node_side
    assert_snat(caps[reply.pod].packets, to=node_side, dst=f"{backend.ip}:8080", flags="S",
                original=lab.external_ip)
