"""`labctl trace`'s pure parts: the `nft monitor trace` parser, the rule book, the walk
and its text, and DEST resolution. The fixtures are real output captured in a two-node
lab (client on node1, Service web → pod web on node2; Service empty has no endpoints)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from labctl.cluster.compile import compile_state
from labctl.errors import UserError
from labctl.model.objects import ServicePort
from labctl.trace import events, report, target, walk
from labctl.trace.rulebook import RuleBook
from tests.unit.builders import container, lab, pod, service, topology

GOLDEN = Path(__file__).parent / "golden" / "nftrace"
PODS = {"10.244.1.2": "default/web on node2", "10.244.0.2": "default/client on node1"}


def lines(name: str) -> list[str]:
    return (GOLDEN / name).read_text().splitlines()


def book(mode: str, node: str) -> RuleBook:
    return RuleBook.of(json.loads((GOLDEN / f"{mode}-{node}-ruleset.json").read_text()),
                       (GOLDEN / f"{mode}-{node}-save.txt").read_text())


def fake_route(ns: str, dst: str, src: str, iif: str) -> dict[str, object]:
    return {"dst": dst, "gateway": "172.18.0.3", "dev": "eth0"} if iif == "cni0" and \
        ns == "n1" and dst.startswith("10.244.1.") else {"dst": dst, "dev": "cni0"}


# ------------------------------------------------------------------ the parser


def test_a_packet_line_gives_the_headers_the_hook_saw() -> None:
    e = events.parse_line(lines("iptables-dnat-node1.txt")[0])
    assert e is not None and e.kind == "packet" and e.packet is not None
    assert (e.family, e.table, e.chain) == ("inet", "labctl-trace-4242", "pre")
    p = e.packet
    assert (p.iif, p.oif, p.saddr, p.daddr) == ("cni0", "", "10.244.0.2", "10.100.195.26")
    assert (p.protocol, p.sport, p.dport, p.tcp_flags, p.ttl) == ("tcp", 45682, 80, "syn", 64)
    assert p.endpoints() == "10.244.0.2:45682 → 10.100.195.26:80"


def test_rule_lines_give_the_rule_its_handle_and_verdict() -> None:
    line = ("trace id 960b970f ip filter KUBE-SERVICES rule meta l4proto tcp ip daddr "
            "10.110.52.197  tcp dport 80 counter packets 0 bytes 0 reject # handle 8 "
            "(verdict drop)")
    e = events.parse_line(line)
    assert e is not None and e.kind == "rule" and e.final
    assert e.rule.endswith("reject") and e.handle == 8 and e.verdict == "drop"
    jump = events.parse_line("trace id 0120c10a ip kube-proxy services rule ip daddr . meta "
                             "l4proto . th dport vmap @service-ips # handle 53 (verdict goto "
                             "service-SUSTUHLJ-default/web/tcp/http)")
    assert jump is not None and (jump.verdict, jump.target) == (
        "goto", "service-SUSTUHLJ-default/web/tcp/http")
    assert not jump.final
    policy = events.parse_line("trace id e499f6b4 ip filter FORWARD policy accept ")
    assert policy is not None and policy.kind == "policy" and policy.final
    assert events.parse_line("Error: something else") is None


def test_visits_group_each_base_chain_pass() -> None:
    vs = events.visits(lines("iptables-dnat-node1.txt"))
    nat = next(v for v in vs
               if v.chain == "PREROUTING" and v.packet and v.packet.tcp_flags == "syn")
    assert [e.chain for e in nat.rules] == [
        "PREROUTING", "KUBE-SERVICES", "KUBE-SVC-CDGGSHYLG3RE2FKL", "KUBE-SEP-UIQK3OSOSTRHRPBX"]
    assert nat.end is not None and nat.end.verdict == "accept"
    assert "dnat to 10.244.1.2:8080" in nat.rules[-1].rule
    # every visit starts with its headers and most end with a verdict
    assert all(v.packet is not None for v in vs)


def test_interleaved_packets_stay_apart() -> None:
    raw = lines("iptables-dnat-node1.txt")
    a = [ln for ln in raw if "f64a4f06" in ln][:3]
    b = [ln for ln in raw if "trace id" in ln and "f64a4f06" not in ln][:3]
    mixed = [a[0], b[0], a[1], b[1], a[2], b[2]]
    vs = events.visits(mixed)
    assert len(vs) == 2 and [len(v.events) for v in vs] == [2, 2]


# ------------------------------------------------------------------ the rule book


def test_iptables_nft_rules_are_quoted_as_iptables_save_shows_them() -> None:
    b = book("iptables", "node1")
    vs = events.visits(lines("iptables-dnat-node1.txt"))
    sep = next(e for v in vs for e in v.rules if e.chain.startswith("KUBE-SEP-"))
    quoted = b.quote(sep.family, sep.table, sep.chain, sep.handle, sep.rule)
    assert quoted == ('-A KUBE-SEP-UIQK3OSOSTRHRPBX -p tcp -m comment --comment '
                      '"default/web:http" -m tcp -j DNAT --to-destination 10.244.1.2:8080')
    assert b.hook("ip", "nat", "PREROUTING") == ("prerouting", -100)
    assert b.hook("inet", "labctl-trace-1", "out") == ("output", -350)
    # a rule the save does not line up with keeps nft's own text
    assert b.quote("ip", "nat", "NO-SUCH-CHAIN", 1, "nft text") == "nft text"


# ------------------------------------------------------------------ the walk


def iptables_walk() -> walk.Walk:
    places = [
        walk.Place("pod default/client", "pod", "p", lines("iptables-dnat-client.txt")),
        walk.Place("node2", "node", "n2", lines("iptables-dnat-node2.txt"),
                   book("iptables", "node2")),
        walk.Place("node1", "node", "n1", lines("iptables-dnat-node1.txt"),
                   book("iptables", "node1"),
                   ["tcp      6 116 TIME_WAIT src=10.244.0.2 dst=10.100.195.26 sport=45682 "
                    "dport=80 src=10.244.1.2 dst=10.244.0.2 sport=8080 dport=45682 [ASSURED] "
                    "mark=0 use=1"]),
    ]
    return walk.build(places, walk.Flow("tcp", 45682), PODS, fake_route, "iptables")


def test_the_walk_crosses_pod_node1_node2_and_shows_the_dnat() -> None:
    w = iptables_walk()
    req = w.request
    assert [(s.where, s.hook) for s in req.steps] == [
        ("pod default/client", "output"), ("node1", "prerouting"), ("node1", "forward"),
        ("node1", "postrouting"), ("node2", "prerouting"), ("node2", "forward"),
        ("node2", "postrouting")]
    dnat = [r for s in req.steps for c in s.chains for r in c.rules if r.action.startswith("DNAT")]
    assert [r.action for r in dnat] == ["DNAT to 10.244.1.2:8080"]
    assert dnat[0].rule.startswith("-A KUBE-SEP-UIQK3OSOSTRHRPBX")
    assert req.result == "arrived" and "default/web on node2" in req.summary
    assert "route: 10.244.1.2 via 172.18.0.3 dev eth0" in req.steps[3].notes
    # the trace table itself is not part of the walk
    assert all(not c.table.startswith("inet labctl-trace") for s in req.steps for c in s.chains)
    assert w.conntrack["node1"] == [
        "tcp 10.244.0.2:45682 → 10.100.195.26:80 [TIME_WAIT]: DNAT 10.100.195.26:80 → "
        "10.244.1.2:8080"]


def test_the_reply_comes_back_through_node2_node1_to_the_pod_un_dnatted() -> None:
    rep = iptables_walk().reply
    assert rep.packet == "TCP SYN-ACK"
    assert [s.where for s in rep.steps] == ["node2", "node2", "node1", "node1",
                                            "pod default/client"]
    assert rep.steps[0].n == 8  # numbering goes on from the request
    assert rep.steps[-1].packet == "10.100.195.26:80 → 10.244.0.2:45682"
    assert rep.result == "arrived"


def test_a_service_without_endpoints_is_rejected_by_the_kube_services_rule() -> None:
    places = [walk.Place("node1", "node", "n1", lines("iptables-reject-node1.txt"))]
    w = walk.build(places, walk.Flow("tcp", 45680), PODS)
    assert w.request.result == "rejected"
    assert w.request.summary.startswith("rejected by ip filter KUBE-SERVICES rule '")
    assert "reject" in w.request.summary
    assert w.reply.summary.startswith("none: the REJECT rule answers")


def test_nftables_mode_walk_shows_the_service_map_and_endpoint_chain() -> None:
    nft_book = RuleBook.of(json.loads((GOLDEN / "nftables-node1-ruleset.json").read_text()))
    places = [walk.Place("node1", "node", "n1", lines("nftables-dnat-node1.txt"), nft_book),
              walk.Place("node2", "node", "n2", lines("nftables-dnat-node2.txt"))]
    w = walk.build(places, walk.Flow("tcp", 45681), PODS)
    hits = [(r.chain, r.action) for s in w.request.steps for c in s.chains for r in c.rules]
    assert ("services", "goto service-SUSTUHLJ-default/web/tcp/http") in hits
    lookup = next(r for s in w.request.steps for c in s.chains for r in c.rules
                  if r.chain == "services")
    assert lookup.element == ("10.100.195.26 . tcp . 80 : goto "
                              "service-SUSTUHLJ-default/web/tcp/http")
    assert w.request.steps[0].hook == "prerouting"
    # a Service without endpoints: the map element's comment names it
    assert nft_book.element("ip", "kube-proxy", "ip daddr . meta l4proto . th dport vmap "
                            "@no-endpoint-services", "reject-chain",
                            ("10.110.52.197", "tcp", 80)) == \
        '10.110.52.197 . tcp . 80 : goto reject-chain comment "default/empty:http"'
    assert ("endpoint-SVLGPL42-default/web/tcp/http__10.244.1.2/8080",
            "DNAT to 10.244.1.2:8080") in hits
    assert [s.where for s in w.request.steps][0] == "node1"
    assert {s.where for s in w.request.steps} == {"node1", "node2"}


def test_actions_in_words() -> None:
    assert walk.action("meta l4proto tcp dnat to 10.244.1.2:8080", "accept", "") == \
        "DNAT to 10.244.1.2:8080"
    assert walk.action("counter packets 0 bytes 0 masquerade", "accept", "").startswith(
        "MASQUERADE")
    assert walk.action("meta l4proto tcp redirect to :20480", "accept", "") == \
        "REDIRECT to local port 20480"
    assert walk.action("jump KUBE-SERVICES", "jump", "KUBE-SERVICES") == "jump KUBE-SERVICES"


def test_mode_notes_say_what_ipvs_and_userspace_cannot_show() -> None:
    w = iptables_walk()
    assert walk.mode_notes("ipvs", w.request)[0].startswith("IPVS mode: the translation")
    assert "REDIRECT" in walk.mode_notes("userspace", w.request)[0]
    assert walk.mode_notes("iptables", w.request) == []


def test_the_text_numbers_hooks_and_quotes_rules() -> None:
    text = "\n".join(report.render_walk(iptables_walk()))
    assert "request: TCP SYN — left by cni0: arrived at pod default/web on node2" in text
    assert "\n node1\n   2. prerouting" in text
    assert ("ip nat KUBE-SEP-UIQK3OSOSTRHRPBX: rule '-A KUBE-SEP-UIQK3OSOSTRHRPBX -p tcp -m "
            "comment --comment \"default/web:http\" -m tcp -j DNAT --to-destination "
            "10.244.1.2:8080' → DNAT to 10.244.1.2:8080") in text
    assert "conntrack (the translation each node recorded" in text


# ------------------------------------------------------------------ DEST


@pytest.fixture(scope="module")
def state():  # type: ignore[no-untyped-def]
    web = pod("web-0", {"app": "web"}, node="node2",
              containers=(container("web", (8080, "http")),))
    client = pod("client", node="node1", containers=(container("c"),))
    dns = service("dns", {"app": "web"}, ServicePort(53, name="dns", protocol="UDP",
                                                      target_port=8080))
    svc = service("web", {"app": "web"}, ServicePort(80, name="http", target_port="http"),
                  ServicePort(443, name="https", target_port=8443))
    headless = service("db", {"app": "web"}, cluster_ip="None")
    return compile_state(topology(lab("node1", "node2"), pods=(web, client),
                                  services=(svc, dns, headless)))


def test_dest_service_name_port_name_and_default_port(state) -> None:  # type: ignore[no-untyped-def]
    web = next(s for s in state.services if s.name == "web")
    d = target.resolve(state, "web", None)
    assert (d.ip, d.port, d.protocol, d.service) == (web.cluster_ip, 80, "tcp", "default/web")
    assert d.what == "Service default/web (port http)"
    assert target.resolve(state, "default/web:https", None).port == 443
    assert target.resolve(state, f"{web.cluster_ip}:443", None).what == \
        "Service default/web (port https)"
    udp = target.resolve(state, "dns", None)
    assert (udp.port, udp.protocol) == (53, "udp")


def test_dest_pod_by_name_or_ip_and_icmp(state) -> None:  # type: ignore[no-untyped-def]
    web = state.pod("default", "web-0")
    d = target.resolve(state, "web-0", None)
    assert (d.ip, d.port, d.pod) == (web.ip, 8080, "default/web-0")
    assert target.resolve(state, f"{web.ip}:http", None).port == 8080
    icmp = target.resolve(state, "web-0", "icmp")
    assert (icmp.ip, icmp.port, icmp.protocol) == (web.ip, 0, "icmp")
    assert target.resolve(state, "10.9.9.9:99", None).what == "10.9.9.9"


@pytest.mark.parametrize(("dest", "proto", "message", "hint"), [
    ("wbe", None, "no Service or pod named 'wbe' in namespace default", "did you mean web"),
    ("web:nope", None, "Service default/web has no port named 'nope'", "http (80/TCP)"),
    ("db", None, "Service default/db is headless", "trace one of its pods"),
    ("10.9.9.9", None, "needs a port number", "10.9.9.9:80"),
    ("web:80", "icmp", "ICMP has no ports", "--proto icmp"),
    ("client", None, "declares no containerPort", "client:PORT"),
    (":80", None, "is not DEST[:PORT]", "e.g. web"),
])
def test_dest_errors_name_the_field_and_give_a_hint(state, dest: str,  # type: ignore[no-untyped-def]
                                                     proto: str | None, message: str,
                                                     hint: str) -> None:
    with pytest.raises(UserError) as info:
        target.resolve(state, dest, proto)
    text = info.value.format()
    assert info.value.exit_code == 2
    assert "error: DEST: " in text and message in text and hint in text.split("hint:")[1]


def test_a_port_the_service_does_not_expose_is_still_probed(state) -> None:  # type: ignore[no-untyped-def]
    d = target.resolve(state, "web:8443", None)
    assert (d.port, d.protocol) == (8443, "tcp")
    assert replace(d, port=1).port == 1


def test_iptables_legacy_labs_are_refused_with_the_reason() -> None:
    from labctl.errors import CapabilityError
    from labctl.lab.trace import check_traceable

    legacy = compile_state(topology(lab("node1", iptables_backend="legacy")))
    with pytest.raises(CapabilityError, match="cannot see iptables-legacy rules"):
        check_traceable(legacy)
    check_traceable(compile_state(topology(lab("node1", iptables_backend="nft"))))
    check_traceable(compile_state(topology(lab("node1", proxy_mode="nftables",
                                               iptables_backend="legacy"))))


def test_a_masqueraded_request_is_still_the_probe_by_its_dscp() -> None:
    flow = walk.Flow("tcp", 36135)
    after_snat = events.Packet.parse(
        'iif "eth0" ip saddr 172.18.0.2 ip daddr 10.244.1.2 ip dscp 0x2d ip ecn not-ect '
        "ip ttl 63 ip id 7 ip length 60 tcp sport 51876 tcp dport 8080 tcp flags == syn")
    assert after_snat.dscp == "0x2d" and walk.is_request(after_snat, flow)
    reply = replace(after_snat, saddr="10.244.1.2", daddr="172.18.0.2", sport=8080,
                    dport=51876, tcp_flags="0x12", dscp="cs0")
    assert walk.is_reply(reply, flow) and not walk.is_request(reply, flow)
    marker = replace(reply, daddr="127.0.0.1", protocol="udp", tcp_flags="")
    assert not walk.is_reply(marker, walk.Flow("udp", 40000))
    # node2's conntrack entry is found by the tuple the request had there
    line = ("tcp      6 117 TIME_WAIT src=172.18.0.2 dst=10.244.1.2 sport=51876 dport=8080 "
            "src=10.244.1.2 dst=172.18.0.2 sport=8080 dport=51876 [ASSURED] mark=0 use=1")
    assert walk.same_flow(line, after_snat)
    assert not walk.same_flow(line, replace(after_snat, sport=1))
    icmp = ("icmp     1 29 src=10.244.0.2 dst=10.100.195.26 type=8 code=0 id=4242 "
            "src=10.100.195.26 dst=10.244.0.2 type=0 code=0 id=4242 mark=0 use=1")
    ping = events.Packet.parse("ip saddr 10.244.0.2 ip daddr 10.100.195.26 ip protocol icmp "
                               "icmp type echo-request icmp code 0 icmp id 4242")
    assert walk.same_flow(icmp, ping) and not walk.same_flow(icmp, replace(ping, icmp_id=1))
    assert walk.describe_conntrack(icmp) == "icmp 10.244.0.2 → 10.100.195.26: no NAT"


# ------------------------------------------------------------------ SOURCE, and DEST from outside


def test_source_is_a_pod_a_node_or_the_external_client(state) -> None:  # type: ignore[no-untyped-def]
    client = state.pod("default", "client")
    src = target.resolve_source(state, "client")
    assert (src.kind, src.name, src.netns, src.ip, src.node) == (
        "pod", "default/client", client.netns, client.ip, "node1")
    node = state.node("node2")
    assert target.resolve_source(state, "node2") == target.Source(
        "node", "node2", node.netns, node.ip, "node2")
    ext = target.resolve_source(state, "external")
    assert (ext.kind, ext.netns, ext.ip) == ("external", state.external_netns,
                                             state.external_ip)
    with pytest.raises(UserError) as err:
        target.resolve_source(state, "nobody")
    d = err.value.diagnostics[0]
    assert d.field == "SOURCE" and "node1, node2" in d.hint and "`external`" in d.hint


def test_dest_from_outside_is_the_address_outside_traffic_uses() -> None:
    web = pod("web-0", {"app": "web"}, node="node2",
              containers=(container("web", (8080, "http")),))
    np = service("np", {"app": "web"}, ServicePort(80, name="http", target_port="http",
                                                    node_port=30080), type="NodePort")
    lb = service("lb", {"app": "web"}, ServicePort(81, name="http", target_port="http"),
                 type="LoadBalancer")
    ext = service("ext", {"app": "web"}, ServicePort(82, name="http", target_port="http"),
                  external_ips=("203.0.113.9",))
    cip = service("cip", {"app": "web"}, ServicePort(83, name="http", target_port="http"))
    st = compile_state(topology(lab("node1", "node2"), pods=(web,),
                                services=(np, lb, ext, cip)))
    d = target.resolve(st, "np", None, outside=True)
    assert (d.ip, d.port, d.what) == (st.node("node1").ip, 30080,
                                      "NodePort 30080 of Service default/np on node1")
    d = target.resolve(st, "lb", None, outside=True)
    lb_ip = next(s for s in st.services if s.name == "lb").load_balancer_ip
    assert (d.ip, d.port) == (lb_ip, 81) and d.what.endswith("LoadBalancer IP")
    d = target.resolve(st, "ext", None, outside=True)
    assert (d.ip, d.port) == ("203.0.113.9", 82) and d.what.endswith("externalIP")
    d = target.resolve(st, "node2:30080", None, outside=True)  # a node by name
    assert (d.ip, d.what) == (st.node("node2").ip,
                              "NodePort 30080 of Service default/np on node2")
    with pytest.raises(UserError, match="not reachable from outside the cluster"):
        target.resolve(st, "cip", None, outside=True)
    assert target.resolve(st, "cip", None).port == 83  # from inside: its ClusterIP
