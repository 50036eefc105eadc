"""A lab author's packet tests for topologies/quickstart, with labctl's pytest plugin.

    sudo .venv/bin/python -m pytest examples/test_my_lab.py

The `lab` fixture brings the topology up once for this module and takes it down after
it, whatever happens (README: "Write your own packet tests").
"""

import contextlib
import random

import pytest
from scapy.layers.inet import IP, TCP

from labctl.testing.packets import assert_dnat, tcp_to

pytestmark = pytest.mark.lab("topologies/quickstart", name="pp-example")


def test_web_answers_on_its_cluster_ip(lab):
    reply = lab.http_get("client", "web")  # a Service name or an IP
    assert reply.pod in {ep.pod for ep in lab.endpoints("web")}
    assert reply.client_ip == lab.pod("client").ip  # pod to Service: no SNAT


def test_a_crafted_syn_to_the_cluster_ip_is_dnated_to_one_backend(lab):
    web = lab.service("web")
    client = lab.pod("client")
    sport = random.randint(40000, 60000)
    syn = IP(dst=web.cluster_ip) / TCP(sport=sport, dport=80, flags="S")
    backends = lab.endpoints("web")
    with contextlib.ExitStack() as stack:
        caps = [stack.enter_context(lab.capture(ep.pod, match=tcp_to(8080), timeout=5))
                for ep in backends]
        answer = lab.sr1("client", syn)  # sent from inside the client pod
    assert answer is not None and answer[TCP].flags == "SA"
    assert answer[IP].src == web.cluster_ip  # the reply is un-DNAT-ed on its way back
    hit = [(ep, cap.packets) for ep, cap in zip(backends, caps, strict=True) if cap.packets]
    assert len(hit) == 1, "exactly one backend gets the connection"
    ep, packets = hit[0]
    assert_dnat(packets, to=f"{ep.ip}:8080", src=f"{client.ip}:{sport}", flags="S")
    # the client's node keeps the translation in its conntrack table
    [entry] = lab.conntrack(client.node, dst=web.cluster_ip, sport=sport)
    assert entry.dnat and (entry.reply.src, entry.reply.sport) == (ep.ip, 8080)


def test_kube_proxy_programmed_the_service(lab):
    assert "KUBE-SVC-" in lab.rules("node1", service="default/web")
    assert lab.dns("client", "web.default.svc.cluster.local").answers == [
        lab.service("web").cluster_ip]
