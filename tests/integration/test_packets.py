"""Packet-level proof of what kube-proxy's rules do, seen with scapy on the wire.

A connection from a pod to a ClusterIP is DNAT-ed on the way to the backend (source
untouched) and un-NAT-ed on the way back; the node's conntrack table holds the entry;
an outside client's packet to a NodePort reaches the backend SNAT-ed to a node address.
"""

from __future__ import annotations

import contextlib

from labctl.testing.packets import capture, syn_acks, syns, tcp_to
from labctl.testing.runner import netns_exec
from labctl.testing.traffic import http_get
from tests.integration.service_lab import Lab


def _ip_layer(pkt):  # noqa: ANN001, ANN202
    from scapy.layers.inet import IP, TCP

    return pkt[IP], pkt[TCP]


def test_cluster_ip_syn_is_dnated_to_the_backend_and_the_reply_comes_from_the_vip(
        lab: Lab) -> None:
    vip = lab.vip("solo")
    solo_ip = lab.pods["solo"]["status"]["podIP"]
    client_ip = lab.pods["client"]["status"]["podIP"]
    with capture(lab.ns("solo"), match=tcp_to(8080)) as backend, \
            capture(lab.ns("client"), match=tcp_to(80)) as client:
        reply = http_get(lab.ns("client"), vip, 80)
    assert reply.pod == "solo"
    sport = reply.local[1]
    syn = [p for p in syns(backend.stop()) if _ip_layer(p)[1].sport == sport]
    assert syn, f"no SYN from the client reached solo's eth0: {backend.packets}"
    ip, tcp = _ip_layer(syn[0])
    assert (ip.dst, tcp.dport) == (solo_ip, 8080)  # destination rewritten to pod:targetPort
    assert ip.src == client_ip  # source unchanged
    synack = [p for p in syn_acks(client.stop()) if _ip_layer(p)[1].dport == sport]
    assert synack, f"no SYN-ACK reached the client: {client.packets}"
    ip, tcp = _ip_layer(synack[0])
    assert (ip.src, tcp.sport) == (vip, 80)  # the reply appears to come from the VIP


def test_the_nodes_conntrack_table_holds_the_dnat_entry(lab: Lab) -> None:
    vip = lab.vip("solo")
    reply = http_get(lab.ns("client"), vip, 80)
    sport = reply.local[1]
    out = netns_exec(lab.node_ns("node1"), ["conntrack", "-L", "-p", "tcp", "-d", vip]).stdout
    entry = [ln for ln in out.splitlines() if f"sport={sport} " in ln]
    assert entry, out
    solo_ip = lab.pods["solo"]["status"]["podIP"]
    # original direction to the VIP, reply direction from the pod: a DNAT
    assert f"dst={vip} " in entry[0] and f"src={solo_ip} " in entry[0]


def test_node_port_from_outside_arrives_snated_to_a_node_address(lab: Lab) -> None:
    node_ip = lab.nodes["node1"]
    with contextlib.ExitStack() as stack:
        caps = {pod: stack.enter_context(capture(lab.ns(pod), match=tcp_to(8080)))
                for pod in sorted(lab.web_pods())}
        reply = http_get(lab.external, node_ip, 30080)
    sport_seen = reply.fields["client"].rsplit(":", 1)
    syn = syns(caps[reply.pod].stop())
    assert syn, f"no SYN reached {reply.pod}"
    ip, tcp = _ip_layer(syn[-1])
    assert ip.src == sport_seen[0] and ip.src != "172.18.0.254"  # SNAT-ed, not the client
    on_node1 = lab.pods[reply.pod]["spec"]["nodeName"] == "node1"
    # to a pod on the same node the source is the node's bridge address, else its eth0
    assert ip.src == ("10.244.0.1" if on_node1 else node_ip)
    assert tcp.dport == 8080
