"""kube-proxy's userspace mode (deprecated): the portal rules as upstream's proxier.go
builds them, the deterministic proxy ports, the sync path, LoadBalancerRR, and the
proxy process's connect retries — all without root (the proxy runs on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
from collections import Counter
from pathlib import Path

import pytest

from labctl.cli.commands import invoke
from labctl.cli.main import cli
from labctl.cluster.compile import compile_state
from labctl.lab.workloads import kube_proxy_pods, workloads_document
from labctl.model.objects import ServicePort
from labctl.proxy import base, sync, userspace
from labctl.proxy.base import ProxyConfig, build_input
from labctl.proxy.userspace import Claim, Portal, ProxiedPort, assign_ports
from labctl.proxy.userspace_daemon import NoEndpoints, Proxier, RoundRobin
from tests.unit import builders as b
from tests.unit.test_proxy_iptables import CASES, P80, UPSTREAM_CONFIG, eps, svc

GOLDEN = Path(__file__).parent / "golden" / "proxy"
NODE_IP = "192.168.0.2"


def render(services: list, slices: list, config: ProxyConfig = UPSTREAM_CONFIG,
           **kw: str) -> userspace.UserspaceRuleset:
    return userspace.render(build_input(config, services, slices), **kw)


def port_of(rs: userspace.UserspaceRuleset, spn: str, proto: str = "TCP") -> int:
    return rs.proxy_port(spn, proto)


# ================================================================= proxy ports


def test_proxy_ports_are_a_hash_of_the_port_name_in_the_range() -> None:
    keys = [f"ns/svc{i}:p/TCP" for i in range(200)]
    got = assign_ports(keys)
    assert got == assign_ports(keys)  # deterministic
    assert len(set(got.values())) == 200  # one port each
    low, high = userspace.PORT_RANGE
    assert all(low <= p <= high for p in got.values())
    assert high < 30000  # below the NodePort range and the ephemeral ports
    # Each key gets its own hash slot unless another key took it first.
    alone = {k: assign_ports([k])[k] for k in keys}
    assert sum(got[k] == alone[k] for k in keys) >= 195


def test_collisions_probe_forward_and_wrap_and_reserved_ports_are_skipped() -> None:
    got = assign_ports(["a", "b", "c", "d"], port_range=(100, 103))
    assert sorted(got.values()) == [100, 101, 102, 103]
    got = assign_ports(["a", "b"], reserved=[100, 101, 5000], port_range=(100, 103))
    assert sorted(got.values()) == [102, 103]
    with pytest.raises(ValueError, match="no free proxy port"):
        assign_ports(["a", "b", "c"], reserved=[100, 101], port_range=(100, 103))


def test_every_node_gets_the_same_ports_and_protocols_get_their_own() -> None:
    state = compile_state(b.topology(
        b.lab("node1", "node2"),
        pods=[b.pod("web-1", {"app": "web"}, node="node1")],
        services=[b.service("web", {"app": "web"}, ServicePort(80, target_port=8080)),
                  b.service("dns", {"app": "web"}, ServicePort(53, "dns", "UDP"),
                            ServicePort(53, "dns-tcp", "TCP"))]))
    one = userspace.render(base.input_for_node(state, "node1"))
    two = userspace.render(base.input_for_node(state, "node2"))
    assert [(p.key, p.proxy_port) for p in one.proxies] == \
        [(p.key, p.proxy_port) for p in two.proxies]
    ports = {p.key: p.proxy_port for p in one.proxies}
    assert len(set(ports.values())) == len(ports) == 3


# ================================================================= the portal rules


def test_cluster_ip_portal_redirects_containers_and_dnats_the_host() -> None:
    rs = render([svc("ns1", "svc1", "172.30.0.41", ("p80", 80, "TCP", 0))],
                [eps("ns1", "svc1", P80, ("10.180.0.1", "test-node"))])
    port = port_of(rs, "ns1/svc1:p80")
    assert [r.line for r in rs.rules] == [
        f"-A KUBE-PORTALS-CONTAINER -m comment --comment ns1/svc1:p80 -p tcp -m tcp "
        f"--dport 80 -d 172.30.0.41/32 -j REDIRECT --to-ports {port}",
        f"-A KUBE-PORTALS-HOST -m comment --comment ns1/svc1:p80 -p tcp -m tcp "
        f"--dport 80 -d 172.30.0.41/32 -j DNAT --to-destination {NODE_IP}:{port}",
    ]
    assert rs.claims == ()
    assert rs.proxies[0].endpoints == ("10.180.0.1:80",)


def test_a_bind_address_means_dnat_for_containers_too() -> None:
    rs = render([svc("ns1", "svc1", "172.30.0.41", ("p80", 80, "TCP", 0))], [],
                bind_address="10.0.0.5")
    port = port_of(rs, "ns1/svc1:p80")
    for rule in rs.rules:  # containers and the host alike
        assert rule.args[-4:] == ("-j", "DNAT", "--to-destination", f"10.0.0.5:{port}")


def test_node_port_rules_claim_and_non_local_accept() -> None:
    rs = render([svc("ns1", "svc1", "172.30.0.41", ("p80", 80, "TCP", 3001),
                     type="NodePort")], [])
    port = port_of(rs, "ns1/svc1:p80")
    match = "-m comment --comment ns1/svc1:p80 -p tcp -m tcp"
    assert [r.line for r in rs.rules][2:] == [
        f"-A KUBE-NODEPORT-CONTAINER {match} --dport 3001 -j REDIRECT --to-ports {port}",
        f"-A KUBE-NODEPORT-HOST {match} --dport 3001 -j DNAT --to-destination "
        f"{NODE_IP}:{port}",
        f"-A KUBE-NODEPORT-NON-LOCAL {match} --dport {port} -m state --state NEW -j ACCEPT",
    ]
    assert rs.rules[-1].table == "filter"
    assert rs.claims == (Claim("", 3001, "TCP", "ns1/svc1:p80"),)


def test_external_ips_are_portals_only_off_bridge_or_when_local() -> None:
    rs = render([svc("ns1", "svc1", "172.30.0.41", ("p80", 80, "TCP", 0),
                     external_ips=("1.2.3.4", "192.168.0.2"))], [])
    port = port_of(rs, "ns1/svc1:p80")
    lines = [r.line for r in rs.rules if "1.2.3.4" in r.line]
    m = "-m comment --comment ns1/svc1:p80 -p tcp -m tcp --dport 80 -d 1.2.3.4/32"
    assert lines == [
        f"-A KUBE-PORTALS-CONTAINER {m} -m physdev ! --physdev-is-in -j REDIRECT "
        f"--to-ports {port}",
        f"-A KUBE-PORTALS-CONTAINER {m} -m addrtype --dst-type LOCAL -j REDIRECT "
        f"--to-ports {port}",
        f"-A KUBE-PORTALS-HOST {m} -m addrtype --dst-type LOCAL -j DNAT --to-destination "
        f"{NODE_IP}:{port}",
    ]
    # An externalIP that is the node's own address is held open by the proxy.
    assert rs.claims == (Claim("192.168.0.2", 80, "TCP", "ns1/svc1:p80"),)


def test_load_balancer_ingress_is_a_portal_like_the_cluster_ip() -> None:
    rs = render([svc("ns1", "svc1", "172.30.0.41", ("p80", 80, "TCP", 3001),
                     type="LoadBalancer", ingress="1.2.3.4",
                     load_balancer_source_ranges=("203.0.113.0/25",))], [])
    port = port_of(rs, "ns1/svc1:p80")
    lb = [r.line for r in rs.rules if "1.2.3.4" in r.line]
    assert lb == [
        f"-A KUBE-PORTALS-CONTAINER -m comment --comment ns1/svc1:p80 -p tcp -m tcp --dport "
        f"80 -d 1.2.3.4/32 -j REDIRECT --to-ports {port}",
        f"-A KUBE-PORTALS-HOST -m comment --comment ns1/svc1:p80 -p tcp -m tcp --dport 80 "
        f"-d 1.2.3.4/32 -j DNAT --to-destination {NODE_IP}:{port}",
    ]
    assert "203.0.113" not in rs.payload()  # source ranges: not a userspace-mode feature


def test_udp_ports_and_no_sctp() -> None:
    rs = render([svc("ns1", "svc1", "172.30.0.41", ("dns", 53, "UDP", 0),
                     ("s", 9, "SCTP", 0))], [])
    assert [p.key for p in rs.proxies] == ["ns1/svc1:dns/UDP"]
    assert "-p udp -m udp --dport 53" in rs.rules[0].line


def test_only_ready_endpoints_are_served() -> None:
    rs = render([svc("ns1", "svc1", "172.30.0.41", ("p80", 80, "TCP", 0))],
                [eps("ns1", "svc1", P80, ("10.0.0.1", "n"), ("10.0.0.2", "n", False, True, True),
                     ("10.0.0.3", "n", False, False, False))])
    assert rs.proxies[0].endpoints == ("10.0.0.1:80",)


def test_headless_and_external_name_get_nothing() -> None:
    rs = render([svc("ns1", "headless", "None", ("p80", 80, "TCP", 0))], [])
    assert rs.proxies == () and rs.rules == ()


def test_payload_jumps_and_cleanup() -> None:
    rs = render([svc("ns1", "svc1", "172.30.0.41", ("p80", 80, "TCP", 3001),
                     type="NodePort")], [])
    text = rs.payload()
    assert text.startswith("*nat\n:KUBE-PORTALS-CONTAINER - [0:0]\n:KUBE-PORTALS-HOST - [0:0]"
                           "\n:KUBE-NODEPORT-CONTAINER - [0:0]\n:KUBE-NODEPORT-HOST - [0:0]\n")
    assert "*filter\n:KUBE-NODEPORT-NON-LOCAL - [0:0]\n" in text and text.endswith("COMMIT\n")
    assert rs.jump_rules() == [
        ["-t", "nat", "-I", "PREROUTING", "-m", "comment", "--comment",
         "handle ClusterIPs; NOTE: this must be before the NodePort rules",
         "-j", "KUBE-PORTALS-CONTAINER"],
        ["-t", "nat", "-I", "OUTPUT", "-m", "comment", "--comment",
         "handle ClusterIPs; NOTE: this must be before the NodePort rules",
         "-j", "KUBE-PORTALS-HOST"],
        ["-t", "nat", "-A", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-m",
         "comment", "--comment",
         "handle service NodePorts; NOTE: this must be the last rule in the chain",
         "-j", "KUBE-NODEPORT-CONTAINER"],
        ["-t", "nat", "-A", "OUTPUT", "-m", "addrtype", "--dst-type", "LOCAL", "-m",
         "comment", "--comment",
         "handle service NodePorts; NOTE: this must be the last rule in the chain",
         "-j", "KUBE-NODEPORT-HOST"],
        ["-t", "filter", "-I", "INPUT", "-m", "comment", "--comment",
         "Ensure that non-local NodePort traffic can flow", "-j", "KUBE-NODEPORT-NON-LOCAL"],
    ]
    cleanup, argv = rs.cleanup_payload()
    assert [a[2] for a in argv] == ["-D"] * 5
    assert "-X KUBE-PORTALS-CONTAINER" in cleanup and "-X KUBE-NODEPORT-NON-LOCAL" in cleanup
    assert rs.for_service("ns1", "svc1").count("-A ") == 5
    assert rs.for_service("ns1", "other") == ""
    assert sum(len(v) for t in rs.chains().values() for v in t.values()) == 5


def test_an_endpoint_change_loads_nothing_and_a_service_change_everything() -> None:
    s1 = svc("ns1", "svc1", "172.30.0.41", ("p80", 80, "TCP", 0))
    old = render([s1], [eps("ns1", "svc1", P80, ("10.0.0.1", "n"))])
    new, text = userspace.render_update(
        old, build_input(UPSTREAM_CONFIG, [s1], [eps("ns1", "svc1", P80, ("10.0.0.2", "n"))]))
    assert text == "" and new.proxies[0].endpoints == ("10.0.0.2:80",)
    s2 = svc("ns1", "svc2", "172.30.0.42", ("p80", 80, "TCP", 0))
    new, text = userspace.render_update(old, build_input(UPSTREAM_CONFIG, [s1, s2], []))
    assert text == new.payload() and "ns1/svc2:p80" in text


@pytest.mark.parametrize("case", CASES)
def test_golden_render(case: str) -> None:
    """`labctl proxy render --mode userspace` over the iptables goldens' inputs."""
    result = invoke(cli, ["proxy", "render", "--mode", "userspace",
                                      "--node-name", "node1", "--node-ip", "172.18.0.2",
                                      str(GOLDEN / "iptables" / f"{case}.yaml")])
    assert result.exit_code == 0, result.output
    path = GOLDEN / "userspace" / f"{case}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(result.stdout)
    assert result.stdout == path.read_text()
    assert result.stdout.startswith("# kube-proxy userspace mode (deprecated")


def test_help_says_deprecated_and_why() -> None:
    out = invoke(cli, ["proxy-mode", "--help"]).output
    assert "DEPRECATED" in out and "1.26" in out and "retries" in out
    out = invoke(cli, ["proxy", "render", "--help"]).output
    assert "deprecated" in out and "userspace" in out


# ================================================================= the sync path


def _state(mode: str = "userspace", ready: bool = True):  # type: ignore[no-untyped-def]
    state = compile_state(b.topology(
        b.lab("node1", "node2", proxy_mode=mode),
        pods=[b.pod("web-1", {"app": "web"}, node="node1"),
              b.pod("web-2", {"app": "web"}, node="node2")],
        services=[b.service("web", {"app": "web"}, ServicePort(80, target_port=8080))]))
    if not ready:
        from labctl.cluster.compile import with_readiness

        state = with_readiness(state, {"default/web-1": False})
    return state


def test_sync_renders_the_rules_without_jumps_and_then_nothing() -> None:
    state = _state()
    inp, rs, payload = sync.render_sync(state, "node1", "userspace")
    assert payload == rs.payload() and "-I PREROUTING" not in payload
    argv, first = sync.first_load(state, "node1")  # `labctl plan`: with the jumps
    assert argv[0].startswith("iptables-") and "-I PREROUTING" in first
    prev = sync.NodeSync("node1", "userspace", rs, 0.0, 0.0, True, inp, payload)
    _inp, rs2, again = sync.render_sync(_state(ready=False), "node1", "userspace", prev)
    assert again == ""  # readiness changed: no rule did
    assert len(rs2.proxies[0].endpoints) == 1
    other = dataclasses.replace(prev, mode="iptables")
    assert sync.render_sync(state, "node1", "userspace", other)[2] == payload
    assert "userspace" in sync.RENDERED_MODES
    assert any("KUBE-PORTALS-CONTAINER" in c for c in sync.load_commands(state))


def test_workloads_get_a_kube_proxy_pod_per_node_in_userspace_mode_only() -> None:
    pods = kube_proxy_pods(_state())
    assert [p["name"] for p in pods] == ["kube-proxy-node1", "kube-proxy-node2"]
    assert pods[0]["netns"] == _state().node("node1").netns
    c = pods[0]["containers"][0]
    assert c["command"][1:] == ["-m", "labctl.proxy.userspace_daemon"]
    assert c["args"][1] == "node1" and c["args"][0].endswith("/t")
    names = [p["name"] for p in workloads_document(_state())["pods"]]
    assert "kube-proxy-node2" in names
    assert kube_proxy_pods(_state("iptables")) == []


# ================================================================= LoadBalancerRR


def test_round_robin_turns_and_reshuffles_only_on_change() -> None:
    shuffles = []
    lb = RoundRobin(shuffle=lambda eps: shuffles.append(list(eps)))
    lb.update("k", ["a:1", "b:1", "c:1"], affinity=False, ttl=0)
    picks = [lb.next_endpoint("k", "10.0.0.1") for _ in range(7)]
    assert picks == ["a:1", "b:1", "c:1", "a:1", "b:1", "c:1", "a:1"]
    lb.update("k", ["c:1", "b:1", "a:1"], affinity=False, ttl=0)  # the same set
    assert lb.next_endpoint("k", "x") == "b:1" and len(shuffles) == 1
    lb.update("k", ["a:1", "b:1"], affinity=False, ttl=0)
    assert lb.next_endpoint("k", "x") == "a:1" and len(shuffles) == 2  # restarted
    lb.update("k", [], affinity=False, ttl=0)
    with pytest.raises(NoEndpoints):
        lb.next_endpoint("k", "x")
    with pytest.raises(NoEndpoints):
        lb.next_endpoint("missing", "x")


def test_client_ip_affinity_reset_and_expiry() -> None:
    now = [0.0]
    lb = RoundRobin(shuffle=lambda eps: None, clock=lambda: now[0])
    lb.update("k", ["a:1", "b:1", "c:1"], affinity=True, ttl=10)
    assert {lb.next_endpoint("k", "10.0.0.1") for _ in range(5)} == {"a:1"}
    assert lb.next_endpoint("k", "10.0.0.2") == "b:1"
    # After a failed connect the next endpoint in turn is taken, and remembered.
    assert lb.next_endpoint("k", "10.0.0.1", reset=True) == "c:1"
    assert lb.next_endpoint("k", "10.0.0.1") == "c:1"
    now[0] = 9.5
    assert lb.next_endpoint("k", "10.0.0.1") == "c:1"  # used: the timer starts again
    now[0] = 19.6
    assert lb.next_endpoint("k", "10.0.0.1") == "a:1"  # idle for 10 s: forgotten
    lb.update("k", ["b:1", "c:1"], affinity=True, ttl=10)  # a:1 gone: so is its session
    assert set(lb.services["k"].sessions) == {"10.0.0.2"}  # b:1 is still there
    now[0] = 100.0
    lb.next_endpoint("k", "10.0.0.9")
    now[0] = 111.0
    lb.cleanup()
    assert lb.services["k"].sessions == {}


# ================================================================= the proxy process


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ruleset(proxies: list[ProxiedPort]) -> userspace.UserspaceRuleset:
    config = ProxyConfig(node_name="n", node_ips=("127.0.0.1",))
    return userspace.UserspaceRuleset(config, "127.0.0.1", "127.0.0.1", tuple(proxies), (), ())


def _proxied(name: str, port: int, endpoints: list[str], protocol: str = "TCP",
             affinity: bool = False) -> ProxiedPort:
    info = base.ServicePortInfo("ns", name, "", protocol, "10.96.0.9", 80,
                                session_affinity=affinity)
    return ProxiedPort(info, port, tuple(endpoints), (Portal("10.96.0.9", 80),))


async def _echo_server() -> tuple[asyncio.AbstractServer, int]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # until the client's half-close
        writer.write(b"port=%d got=%s" % (writer.get_extra_info("sockname")[1], data))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _ask(port: int, text: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(text)
    writer.write_eof()  # the proxy passes the half-close on; the reply still comes back
    data = await asyncio.wait_for(reader.read(), 5.0)
    writer.close()
    return data


def test_tcp_retries_a_refusing_endpoint_and_resets_without_endpoints(tmp_path: Path) -> None:
    async def scenario() -> None:
        server, live = await _echo_server()
        dead = _free_port()  # nothing listens: connection refused
        proxy_port, empty_port = _free_port(), _free_port()
        proxier = Proxier(str(tmp_path), "n", listen="127.0.0.1")
        await proxier.apply(_ruleset([
            _proxied("flaky", proxy_port, [f"127.0.0.1:{dead}", f"127.0.0.1:{live}"]),
            _proxied("empty", empty_port, [])]))
        try:
            replies = [await _ask(proxy_port, b"hi %d" % i) for i in range(6)]
            assert all(r.startswith(b"port=%d got=hi" % live) for r in replies)
            stats = proxier.stats_for("ns/flaky/TCP")
            # Two endpoints: a retry moves the turn on, so the next connection starts at
            # the dead one again — all but (maybe) the first connection pay a failed dial.
            failed = stats.failed_connects[f"127.0.0.1:{dead}"]
            assert failed in (5, 6) and stats.retried == failed
            assert stats.served[f"127.0.0.1:{live}"] == 6
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                reply = await _ask(empty_port, b"x")
                if not reply:
                    raise ConnectionResetError
            assert proxier.stats_for("ns/empty/TCP").refused == 1
            status = proxier.status()
            assert [p["key"] for p in status["ports"]] == sorted(
                ["ns/flaky/TCP", "ns/empty/TCP"],
                key=lambda k: {"ns/flaky/TCP": proxy_port, "ns/empty/TCP": empty_port}[k])
            # Endpoints change: the listener stays, the balancer follows.
            await proxier.apply(_ruleset([_proxied("flaky", proxy_port,
                                                   [f"127.0.0.1:{live}"])]))
            assert await _ask(proxy_port, b"again") == b"port=%d got=again" % live
            assert list(proxier.listeners) == [("TCP", proxy_port)]
        finally:
            proxier.close()
            server.close()

    asyncio.run(scenario())


def test_tcp_gives_up_after_four_connect_attempts(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from labctl.proxy import userspace_daemon

    monkeypatch.setattr(userspace_daemon, "DIAL_TIMEOUTS", (0.01, 0.01, 0.01, 0.01))

    async def scenario() -> None:
        dead = [_free_port() for _ in range(2)]
        port = _free_port()
        proxier = Proxier(str(tmp_path), "n", listen="127.0.0.1")
        await proxier.apply(_ruleset([_proxied("dead", port,
                                               [f"127.0.0.1:{p}" for p in dead])]))
        try:
            with contextlib.suppress(ConnectionResetError):
                assert await _ask(port, b"x") == b""
            stats = proxier.stats_for("ns/dead/TCP")
            assert sum(stats.failed_connects.values()) == 4 and stats.refused == 1
        finally:
            proxier.close()

    asyncio.run(scenario())


def test_udp_sessions_relay_replies_and_end_when_idle(tmp_path: Path) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple) -> None:
                self.transport.sendto(b"echo " + data, addr)  # type: ignore[attr-defined]

        backend, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        backend_port = backend.get_extra_info("sockname")[1]
        port = _free_port(socket.SOCK_DGRAM)
        proxier = Proxier(str(tmp_path), "n", listen="127.0.0.1")
        await proxier.apply(_ruleset([_proxied("dns", port, [f"127.0.0.1:{backend_port}"],
                                               protocol="UDP")]))
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.setblocking(False)
        try:
            for word in (b"a", b"b"):
                await loop.sock_sendto(client, word, ("127.0.0.1", port))
                data = await asyncio.wait_for(loop.sock_recv(client, 100), 5.0)
                assert data == b"echo " + word
            listener = proxier.listeners[("UDP", port)]
            assert len(listener.sessions) == 1  # one "connection" per client address
            await asyncio.sleep(userspace.UDP_IDLE_TIMEOUT * 3)
            assert listener.sessions == {}
            stats = proxier.stats_for("ns/dns/UDP")
            assert stats.connections == 1 and stats.active == 0
        finally:
            client.close()
            proxier.close()
            backend.close()

    asyncio.run(scenario())


def test_the_proxy_refuses_to_run_outside_its_node_namespace() -> None:
    from labctl.errors import LabctlError
    from labctl.proxy.userspace_daemon import check_namespace

    with pytest.raises(LabctlError, match="does not exist"):
        check_namespace("lc.no-such-lab.node.node1")


def test_counter_shapes_in_status(tmp_path: Path) -> None:
    proxier = Proxier(str(tmp_path), "n")
    stats = proxier.stats_for("k")
    stats.served["a"] += 1
    assert stats.json()["served"] == {"a": 1} and isinstance(stats.served, Counter)
