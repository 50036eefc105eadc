"""kube-proxy IPVS mode (labctl.proxy.ipvs): goldens, upstream expectations, the Local
fallback, partial updates, the sync path, the kernel-side update logic against a fake
IPVS handle, and the capability error on a host without IPVS.

Goldens: the Service kinds of tests/unit/golden/proxy/iptables/<case>.yaml (shared with
the iptables goldens) and IPVS-only cases in golden/proxy/ipvs/<case>.yaml → the full
payload for node1 in golden/proxy/ipvs/<case>.txt (kube-ipvs0's addresses, ipvsadm-save
-n, ipset restore, iptables-restore). Regenerate with UPDATE_GOLDEN=1 and read the diff
against ../shared/reference/kube-proxy.md §5.

Upstream expectations: inputs of kubernetes/kubernetes pkg/proxy/ipvs/proxier_test.go
(@ 531be812), checked the way those tests check: virtual and real servers, ipset
entries, and per chain the (target, --match-set) sequence of the iptables rules. Its fake
proxier has no local-traffic detector, so the ClusterIP masquerade rule is `src,dst`.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from labctl.cli.commands import invoke
from labctl.cluster.compile import compile_state
from labctl.model.load import load_topology
from labctl.proxy import base, ipvs, sync
from labctl.proxy import ipvs_render as r
from labctl.proxy.base import ProxyConfig, ProxyInput, build_input
from tests.unit.test_proxy_iptables import P80, TEST_NODE, eps, svc

GOLDEN = Path(__file__).parent / "golden" / "proxy" / "ipvs"
SHARED = Path(__file__).parent / "golden" / "proxy" / "iptables"
SHARED_CASES = (
    "clusterip-one-endpoint", "clusterip-three-endpoints", "clusterip-no-endpoints",
    "nodeport", "loadbalancer", "loadbalancer-source-ranges", "external-ips",
    "etp-local-with-local-endpoint", "etp-local-no-local-endpoint", "itp-local",
    "itp-local-no-local-endpoint", "session-affinity", "multiport-udp",
    "headless-and-externalname", "terminating-fallback",
)
OWN_CASES = ("itp-local-nodeport-fallback", "lb-etp-local-source-ranges-udp")
# node1 as a lab builds it: the node IP and its cni0 gateway
CONFIG = ProxyConfig(node_name="node1", node_ips=("172.18.0.2", "10.244.0.1"),
                     cluster_cidr="10.244.0.0/16", service_cidr="10.96.0.0/12")
BUILTIN = {"ACCEPT", "DROP", "REJECT", "RETURN", "MARK", "MASQUERADE"}


# ================================================================= helpers


def case_path(case: str) -> Path:
    return (GOLDEN if case in OWN_CASES else SHARED) / f"{case}.yaml"


def golden_state(case: str):
    topology, _ = load_topology([str(case_path(case))])
    return compile_state(topology)


def golden_input(case: str, config: ProxyConfig = CONFIG) -> ProxyInput:
    state = golden_state(case)
    return build_input(config, state.services, state.endpoint_slices)


def check_golden(path: Path, got: str) -> None:
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(got)
    assert path.exists(), f"{path.name} missing: run with UPDATE_GOLDEN=1"
    assert got == path.read_text()


def servers(rs: ipvs.IpvsRuleset) -> dict[str, list[str]]:
    """"PROTO ip:port" → its real servers ("ip:port"), as upstream's FakeIPVS holds them."""
    return {f"{e.vs.protocol} {e.vs.address}:{e.vs.port}": [x.string for x in e.reals]
            for e in rs.virtual_servers}


def chain_rules(rs: ipvs.IpvsRuleset, chain: str) -> list[tuple[str, str]]:
    """(target, --match-set name or "") of a chain's rules in nat then filter (upstream's
    getRules reads both tables), like checkIptables compares them."""
    out = []
    for table in ("nat", "filter"):
        for line in rs.chains()[table].get(chain, []):
            m = re.search(r"--match-set (\S+)", line)
            out.append((line.split(" -j ")[1].split()[0], m.group(1) if m else ""))
    return out


def upstream(services: list, slices: list, node_ips: tuple[str, ...] = (),
             nodeport_addresses: tuple[str, ...] = (), **flags: Any) -> ipvs.IpvsRuleset:
    """NewFakeProxier: no local detector, the given node IPs, rr."""
    config = ProxyConfig(node_name=TEST_NODE, node_ips=node_ips,
                         nodeport_addresses=nodeport_addresses, **flags)
    return ipvs.render(build_input(config, services, slices))


# ================================================================= goldens


def test_every_golden_case_has_its_output() -> None:
    assert {p.stem for p in GOLDEN.glob("*.yaml")} == set(OWN_CASES)
    assert {p.stem for p in GOLDEN.glob("*.txt")} == set(SHARED_CASES) | set(OWN_CASES)


@pytest.mark.parametrize("case", SHARED_CASES + OWN_CASES)
def test_golden_payload(case: str) -> None:
    check_golden(GOLDEN / f"{case}.txt", ipvs.render(golden_input(case)).payload())


@pytest.mark.parametrize("case", SHARED_CASES + OWN_CASES)
def test_ruleset_is_consistent(case: str) -> None:
    """The iptables input declares every chain it uses and only uses known ipsets; the
    ipset input creates every set once and each entry fits its set's type; kube-ipvs0
    holds exactly the bound virtual-server addresses, which KUBE-IPVS-IPS lists."""
    rs = ipvs.render(golden_input(case))
    chains: dict[str, set[str]] = {}
    table = ""
    for line in rs.iptables_payload().splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":"):
            chains.setdefault(table, set()).add(line[1:].split()[0])
        elif line.startswith("-A "):
            assert line.split()[1] in chains[table], line
            target = line.split(" -j ")[1].split()[0]
            assert target in chains[table] | BUILTIN, line
            for name in re.findall(r"--match-set (\S+)", line):
                assert name in r.SET_NAMES
        else:
            assert line == "COMMIT"
    creates = [line.split()[1] for line in rs.ipset_payload().splitlines()
               if line.startswith("create ")]
    assert creates == list(r.SET_NAMES)
    ip = r"\d+\.\d+\.\d+\.\d+"
    shape = {r.HASH_IP: rf"{ip}", r.HASH_IP_PORT: rf"{ip},(tcp|udp|sctp):\d+",
             r.HASH_IP_PORT_IP: rf"{ip},(tcp|udp|sctp):\d+,{ip}",
             r.HASH_IP_PORT_NET: rf"{ip},(tcp|udp|sctp):\d+,{ip}/\d+", r.BITMAP_PORT: r"\d+"}
    for name, entries in rs.ipsets.items():
        for entry in entries:
            assert re.fullmatch(shape[r.SET_BY_NAME[name].type], entry), (name, entry)
    bound = {e.vs.address for e in rs.virtual_servers if e.bind}
    assert set(rs.addresses) == bound == rs.ipsets[r.IPVS_IPS]
    for e in rs.virtual_servers:
        assert e.bind == (e.kind != "node-port" and e.vs.address not in ("172.18.0.2",
                                                                         "10.244.0.1"))


def test_headless_and_externalname_program_nothing() -> None:
    rs = ipvs.render(golden_input("headless-and-externalname"))
    assert not rs.virtual_servers and not rs.addresses
    assert rs.for_service("default", "db") == ""


def test_node_ports_on_every_node_address() -> None:
    """One NodePort virtual server per node address (eth0 and cni0 here), not on
    kube-ipvs0's or loopback."""
    rs = ipvs.render(golden_input("nodeport"))
    ports = [k for k in servers(rs) if k.endswith(":30080")]
    assert ports == ["TCP 10.244.0.1:30080", "TCP 172.18.0.2:30080"]  # sorted by address
    cfg = dataclasses.replace(CONFIG, node_ips=("172.18.0.2", "127.0.0.1", "169.254.1.1"))
    assert r.node_addresses(cfg) == ("172.18.0.2",)
    cfg = dataclasses.replace(CONFIG, nodeport_addresses=("172.18.0.0/24",))
    assert r.nodeport_ips(cfg) == ("172.18.0.2",)


# ================================================================= upstream expectations


def test_upstream_node_port_tcp() -> None:
    """TestNodePortIPv4 "1 service with node port, has 2 endpoints" (the IPv6 one is
    another family's)."""
    rs = upstream([svc("ns1", "svc1", "10.20.30.41", ("p80", 80, "TCP", 3001),
                       type="NodePort")],
                  [eps("ns1", "svc1", P80, ("10.180.0.1", ""))], ("100.101.102.103",))
    assert servers(rs) == {"TCP 10.20.30.41:80": ["10.180.0.1:80"],
                           "TCP 100.101.102.103:3001": ["10.180.0.1:80"]}
    assert {e.vs.scheduler for e in rs.virtual_servers} == {"rr"}
    assert {x.weight for e in rs.virtual_servers for x in e.reals} == {1}


def test_upstream_node_port_udp() -> None:
    """TestNodePortIPv4 "1 UDP service with node port, has endpoints"."""
    rs = upstream([svc("ns1", "svc1", "10.20.30.41", ("p80", 80, "UDP", 3001),
                       type="NodePort")],
                  [eps("ns1", "svc1", [("p80", 80, "UDP")], ("10.180.0.1", ""))],
                  ("100.101.102.103",), ("0.0.0.0/0",))
    assert servers(rs) == {"UDP 10.20.30.41:80": ["10.180.0.1:80"],
                           "UDP 100.101.102.103:3001": ["10.180.0.1:80"]}
    assert rs.ipsets[r.NODE_PORT_UDP] == {"3001"}
    assert chain_rules(rs, r.KUBE_NODE_PORT) == [
        (r.KUBE_MARK_MASQ, r.NODE_PORT_UDP), ("ACCEPT", r.HEALTH_CHECK_NODE_PORT)]
    assert chain_rules(rs, r.KUBE_SERVICES) == [
        ("RETURN", ""), (r.KUBE_MARK_MASQ, r.CLUSTER_IP), (r.KUBE_NODE_PORT, ""),
        ("ACCEPT", r.CLUSTER_IP)]
    assert "-s 127.0.0.0/8 -j RETURN" in rs.chains()["nat"][r.KUBE_SERVICES][0]
    # no local-traffic detector: masquerade what comes from a VIP
    assert "--match-set KUBE-CLUSTER-IP src,dst -j KUBE-MARK-MASQ" in \
        rs.chains()["nat"][r.KUBE_SERVICES][1]


def test_upstream_node_port_without_endpoints() -> None:
    """TestNodePortIPv4 "service has node port but no endpoints": the virtual servers
    exist, with no real servers."""
    rs = upstream([svc("ns1", "svc1", "10.20.30.41", ("p80", 80, "TCP", 3001),
                       type="NodePort")], [], ("100.101.102.103",))
    assert servers(rs) == {"TCP 10.20.30.41:80": [], "TCP 100.101.102.103:3001": []}


def test_upstream_node_port_sctp() -> None:
    """TestNodePortIPv4 SCTP cases: hash:ip,port NodePort entries, one per node IP; with
    externalTrafficPolicy Local the NodePort virtual server gets the local endpoint
    only, the ClusterIP one both."""
    ips = ("100.101.102.103", "100.101.102.104", "100.101.102.105")
    sctp = [("p80", 80, "SCTP")]
    rs = upstream([svc("ns1", "svc1", "10.20.30.41", ("p80", 80, "SCTP", 3001),
                       type="NodePort")],
                  [eps("ns1", "svc1", sctp, ("10.180.0.1", ""))], ips)
    assert len(servers(rs)) == 4
    assert rs.ipsets[r.NODE_PORT_SCTP] == {f"{ip},sctp:3001" for ip in ips}
    rs = upstream([svc("ns1", "svc1", "10.20.30.41", ("p80", 80, "SCTP", 3001),
                       type="NodePort", external_traffic_policy="Local")],
                  [eps("ns1", "svc1", sctp, ("10.180.0.1", TEST_NODE),
                       ("10.180.1.1", "other-node"))], ("100.101.102.103",))
    assert servers(rs) == {"SCTP 10.20.30.41:80": ["10.180.0.1:80", "10.180.1.1:80"],
                           "SCTP 100.101.102.103:3001": ["10.180.0.1:80"]}
    assert rs.ipsets[r.NODE_PORT_SCTP] == rs.ipsets[r.NODE_PORT_LOCAL_SCTP] == \
        {"100.101.102.103,sctp:3001"}
    assert chain_rules(rs, r.KUBE_NODE_PORT) == [
        ("RETURN", r.NODE_PORT_LOCAL_SCTP), (r.KUBE_MARK_MASQ, r.NODE_PORT_SCTP),
        ("ACCEPT", r.HEALTH_CHECK_NODE_PORT)]


def test_upstream_load_balancer() -> None:
    """TestLoadBalancer: two virtual servers (no node IPs), the LB set, and the order of
    KUBE-SERVICES."""
    rs = upstream([svc("ns1", "svc1", "10.20.30.41", ("p80", 80, "TCP", 3001),
                       type="LoadBalancer", ingress="1.2.3.4")],
                  [eps("ns1", "svc1", [("p80", 80, "UDP")], ("10.180.0.1", ""))])
    assert set(servers(rs)) == {"TCP 10.20.30.41:80", "TCP 1.2.3.4:80"}
    assert rs.ipsets[r.LOAD_BALANCER] == {"1.2.3.4,tcp:80"}
    assert chain_rules(rs, r.KUBE_SERVICES) == [
        ("RETURN", ""), (r.KUBE_LOAD_BALANCER, r.LOAD_BALANCER),
        (r.KUBE_MARK_MASQ, r.CLUSTER_IP), (r.KUBE_NODE_PORT, ""), ("ACCEPT", r.CLUSTER_IP),
        ("ACCEPT", r.LOAD_BALANCER)]
    assert chain_rules(rs, r.KUBE_LOAD_BALANCER) == [(r.KUBE_MARK_MASQ, "")]


def test_upstream_only_local_node_ports() -> None:
    """TestOnlyLocalNodePorts: --nodeport-addresses 100.101.102.0/24."""
    rs = upstream([svc("ns1", "svc1", "10.20.30.41", ("p80", 80, "TCP", 3001),
                       type="NodePort", external_traffic_policy="Local")],
                  [eps("ns1", "svc1", P80, ("10.180.0.1", TEST_NODE),
                       ("10.180.1.1", "other-node"))],
                  ("100.101.102.103",), ("100.101.102.0/24",))
    assert servers(rs)["TCP 100.101.102.103:3001"] == ["10.180.0.1:80"]
    assert len(servers(rs)) == 2
    assert rs.ipsets[r.NODE_PORT_TCP] == rs.ipsets[r.NODE_PORT_LOCAL_TCP] == {"3001"}
    assert chain_rules(rs, r.KUBE_SERVICES) == [
        ("RETURN", ""), (r.KUBE_MARK_MASQ, r.CLUSTER_IP), (r.KUBE_NODE_PORT, ""),
        ("ACCEPT", r.CLUSTER_IP)]
    assert chain_rules(rs, r.KUBE_NODE_PORT) == [
        ("RETURN", r.NODE_PORT_LOCAL_TCP), (r.KUBE_MARK_MASQ, r.NODE_PORT_TCP),
        ("ACCEPT", r.HEALTH_CHECK_NODE_PORT)]


def test_upstream_health_check_node_port() -> None:
    """TestHealthCheckNodePort: only LoadBalancers with externalTrafficPolicy Local."""
    def lb(name: str, hc: int, etp: str) -> Any:
        return svc("ns1", name, "10.20.30.41", ("p80", 80, "TCP", 3000),
                   type="LoadBalancer", external_traffic_policy=etp,
                   health_check_node_port=hc)

    rs = upstream([lb("valid-svc1", 30000, "Local"), lb("valid-svc2", 30001, "Local"),
                   lb("invalid-svc3", 30002, "Cluster")], [], ("100.101.102.103",),
                  ("100.101.102.0/24",))
    assert rs.ipsets[r.HEALTH_CHECK_NODE_PORT] == {"30000", "30001"}


def test_upstream_load_balancer_source_ranges() -> None:
    """TestLoadBalancerSourceRanges (the node IP is outside the range, so the node's own
    connections to the VIP are dropped in KUBE-IPVS-OUT-FILTER)."""
    rs = upstream([svc("ns1", "svc1", "10.20.30.41", ("p80", 80, "TCP", 0),
                       type="LoadBalancer", ingress="1.2.3.4",
                       load_balancer_source_ranges=("10.0.0.0/8",))],
                  [eps("ns1", "svc1", P80, ("10.180.0.1", ""))])
    assert servers(rs)["TCP 1.2.3.4:80"] == ["10.180.0.1:80"] and len(servers(rs)) == 2
    assert rs.ipsets[r.LOAD_BALANCER] == rs.ipsets[r.LOAD_BALANCER_FW] == {"1.2.3.4,tcp:80"}
    assert rs.ipsets[r.LOAD_BALANCER_SOURCE_CIDR] == {"1.2.3.4,tcp:80,10.0.0.0/8"}
    assert chain_rules(rs, r.KUBE_SERVICES) == [
        ("RETURN", ""), (r.KUBE_LOAD_BALANCER, r.LOAD_BALANCER),
        (r.KUBE_MARK_MASQ, r.CLUSTER_IP), (r.KUBE_NODE_PORT, ""), ("ACCEPT", r.CLUSTER_IP),
        ("ACCEPT", r.LOAD_BALANCER)]
    assert chain_rules(rs, r.KUBE_PROXY_FIREWALL) == [
        (r.KUBE_SOURCE_RANGES_FIREWALL, r.LOAD_BALANCER_FW)]
    assert chain_rules(rs, r.KUBE_SOURCE_RANGES_FIREWALL) == [
        ("RETURN", r.LOAD_BALANCER_SOURCE_CIDR), ("DROP", "")]
    assert rs.chains()["filter"][r.KUBE_IPVS_OUT_FILTER] == [
        "-A KUBE-IPVS-OUT-FILTER -s 1.2.3.4 -m ipvs --vaddr 1.2.3.4 --vproto tcp "
        "--vport 80 -j DROP"]
    # a range holding the node IP lets the node in (the VIP as source, as it connects)
    rs = upstream([svc("ns1", "svc1", "10.20.30.41", ("p80", 80, "TCP", 0),
                       type="LoadBalancer", ingress="1.2.3.4",
                       load_balancer_source_ranges=("100.101.102.0/24",))],
                  [eps("ns1", "svc1", P80, ("10.180.0.1", ""))], ("100.101.102.103",))
    assert rs.ipsets[r.LOAD_BALANCER_SOURCE_IP] == {"1.2.3.4,tcp:80,1.2.3.4"}
    assert rs.chains()["filter"][r.KUBE_IPVS_OUT_FILTER] == []


def test_upstream_accept_ipvs_traffic() -> None:
    """TestAcceptIPVSTraffic: the external-IP rules sit between the ClusterIP masquerade
    and the NodePort jump; the ACCEPTs come last."""
    rs = upstream([
        svc("ns1", "svc1", "10.20.30.40", ("p80", 80, "TCP", 80), external_ips=("5.6.7.8",)),
        svc("ns1", "svc2", "10.20.30.41", ("p80", 80, "TCP", 80), type="LoadBalancer",
            ingress="1.2.3.4"),
        svc("ns1", "svc3", "10.20.30.42", ("p80", 80, "TCP", 80), type="NodePort"),
    ], [])
    assert chain_rules(rs, r.KUBE_SERVICES) == [
        ("RETURN", ""), (r.KUBE_LOAD_BALANCER, r.LOAD_BALANCER),
        (r.KUBE_MARK_MASQ, r.CLUSTER_IP), (r.KUBE_MARK_MASQ, r.EXTERNAL_IP),
        ("ACCEPT", r.EXTERNAL_IP), ("ACCEPT", r.EXTERNAL_IP), (r.KUBE_NODE_PORT, ""),
        ("ACCEPT", r.CLUSTER_IP), ("ACCEPT", r.LOAD_BALANCER)]


def test_upstream_only_local_load_balancing() -> None:
    """TestOnlyLocalLoadBalancing: the LB virtual server gets the local endpoint only."""
    rs = upstream([svc("ns1", "svc1", "10.20.30.41", ("p80", 80, "TCP", 3001),
                       type="LoadBalancer", ingress="1.2.3.4",
                       external_traffic_policy="Local")],
                  [eps("ns1", "svc1", P80, ("10.180.0.1", TEST_NODE),
                       ("10.180.1.1", "other-node"))])
    assert servers(rs)["TCP 1.2.3.4:80"] == ["10.180.0.1:80"] and len(servers(rs)) == 2
    assert rs.ipsets[r.LOAD_BALANCER] == rs.ipsets[r.LOAD_BALANCER_LOCAL] == \
        {"1.2.3.4,tcp:80"}
    assert chain_rules(rs, r.KUBE_LOAD_BALANCER) == [
        ("RETURN", r.LOAD_BALANCER_LOCAL), (r.KUBE_MARK_MASQ, "")]


def test_upstream_external_ips() -> None:
    """TestExternalIPs / TestOnlyLocalExternalIPs / TestExternalIPsNoEndpoint."""
    ext = ("50.60.70.81", "2012::51", "127.0.0.1")
    rs = upstream([svc("ns1", "svc1", "10.20.30.41", ("p80", 80, "TCP", 0),
                       external_ips=ext)],
                  [eps("ns1", "svc1", [("p80", 80, "UDP")], ("10.180.0.1", ""))])
    assert len(servers(rs)) == 3  # ClusterIP + the two IPv4 external IPs
    rs = upstream([svc("ns1", "svc1", "10.20.30.41", ("p80", 80, "TCP", 0),
                       type="NodePort", external_ips=ext, external_traffic_policy="Local")],
                  [eps("ns1", "svc1", P80, ("10.180.0.1", TEST_NODE),
                       ("10.180.1.1", "other-node"))])
    assert len(servers(rs)) == 3
    assert servers(rs)["TCP 50.60.70.81:80"] == ["10.180.0.1:80"]
    assert rs.ipsets[r.EXTERNAL_IP_LOCAL] == {"50.60.70.81,tcp:80", "127.0.0.1,tcp:80"}
    rs = upstream([svc("ns1", "svc1", "10.20.30.41", ("p80", 80, "TCP", 0),
                       external_ips=("50.60.70.81",))], [])
    assert servers(rs) == {"TCP 10.20.30.41:80": [], "TCP 50.60.70.81:80": []}


def test_upstream_create_and_link_kube_chain() -> None:
    """TestCreateAndLinkKubeChain: the chains, declared in this order."""
    text = upstream([], []).iptables_payload()
    assert ":KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-NODE-PORT - [0:0]\n" \
           ":KUBE-LOAD-BALANCER - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n" in text
    assert ":KUBE-FORWARD - [0:0]\n:KUBE-NODE-PORT - [0:0]\n:KUBE-PROXY-FIREWALL - [0:0]\n" \
           ":KUBE-SOURCE-RANGES-FIREWALL - [0:0]\n:KUBE-IPVS-FILTER - [0:0]\n" \
           ":KUBE-IPVS-OUT-FILTER - [0:0]\n" in text


@pytest.mark.parametrize("random_fully", [False, True])
def test_upstream_masquerade_rule(random_fully: bool) -> None:
    """TestMasqueradeRule: --random-fully exactly when iptables has it."""
    rs = ipvs.render(build_input(ProxyConfig("n", ()), [], []), random_fully=random_fully)
    (masq,) = [x for x in rs.chains()["nat"][r.KUBE_POSTROUTING] if "-j MASQUERADE" in x]
    assert masq.endswith("--random-fully") == random_fully


def slice_conditions(*endpoints: tuple[str, str, bool, bool, bool]) -> Any:
    return eps("ns1", "svc1", [("", 80, "TCP")], *endpoints)


def test_upstream_endpoint_slice_e2e_and_loop_back() -> None:
    """TestEndpointSliceE2E: ready endpoints as real servers (sorted), a not-ready one
    left out; KUBE-LOOP-BACK names the local endpoint."""
    rs = upstream([svc("ns1", "svc1", "172.20.1.1", ("", 80, "TCP", 0))],
                  [slice_conditions(("10.0.1.1", TEST_NODE, True, None, None),
                                    ("10.0.1.2", "node2", True, None, None),
                                    ("10.0.1.3", "node3", True, None, None),
                                    ("10.0.1.4", "node3", False, None, None))])
    assert servers(rs) == {"TCP 172.20.1.1:80": ["10.0.1.1:80", "10.0.1.2:80",
                                                 "10.0.1.3:80"]}
    assert rs.ipsets[r.LOOP_BACK] == {"10.0.1.1,tcp:80,10.0.1.1"}


@pytest.mark.parametrize("itp,nodes,reals,loop_back", [
    ("Cluster", (TEST_NODE, "node1", "node2"), 3, 1),
    ("Cluster", ("node0", "node1", "node2"), 3, 0),
    ("Local", (TEST_NODE, "node1", "node2"), 1, 1),
    ("Local", ("node0", "node1", "node2"), 0, 0),
])
def test_upstream_internal_traffic_policy(itp: str, nodes: tuple[str, ...], reals: int,
                                          loop_back: int) -> None:
    """TestTestInternalTrafficPolicyE2E. A ClusterIP-only Service with iTP Local computes
    no cluster endpoints, so here the fallback has nothing to fall back to."""
    rs = upstream([svc("ns1", "svc1", "172.20.1.1", ("", 80, "TCP", 0),
                       internal_traffic_policy=itp)],
                  [slice_conditions(*((f"10.0.1.{i + 1}", n, True, None, None)
                                      for i, n in enumerate(nodes)))])
    (entry,) = rs.virtual_servers
    assert len(entry.reals) == reals
    assert len(rs.ipsets[r.LOOP_BACK]) == loop_back


@pytest.mark.parametrize("etp,external", [("Cluster", ["10.0.1.1:80", "10.0.1.2:80",
                                                       "10.0.1.5:80"]),
                                          ("Local", ["10.0.1.1:80", "10.0.1.2:80"])])
def test_upstream_ready_and_terminating(etp: str, external: list[str]) -> None:
    """Test_EndpointSliceReadyAndTerminating{Cluster,Local}: ready endpoints win over
    terminating ones; every local endpoint (even not serving) is in KUBE-LOOP-BACK."""
    rs = upstream([svc("ns1", "svc1", "172.20.1.1", ("", 80, "TCP", 0), type="NodePort",
                       external_traffic_policy=etp, external_ips=("1.2.3.4",))],
                  [slice_conditions(("10.0.1.1", TEST_NODE, True, True, False),
                                    ("10.0.1.2", TEST_NODE, True, True, False),
                                    ("10.0.1.3", TEST_NODE, False, True, True),
                                    ("10.0.1.4", TEST_NODE, False, False, True),
                                    ("10.0.1.5", "another-node", True, True, False))])
    assert servers(rs) == {"TCP 172.20.1.1:80": ["10.0.1.1:80", "10.0.1.2:80",
                                                 "10.0.1.5:80"],
                           "TCP 1.2.3.4:80": external}
    assert len(rs.ipsets[r.LOOP_BACK]) == 4


def test_upstream_only_terminating_falls_back() -> None:
    """Test_EndpointSliceOnlyReadyAndTerminatingCluster: only serving+terminating
    endpoints left: they are used."""
    rs = upstream([svc("ns1", "svc1", "172.20.1.1", ("", 80, "TCP", 0), type="NodePort",
                       external_ips=("1.2.3.4",))],
                  [slice_conditions(("10.0.1.1", TEST_NODE, False, True, True),
                                    ("10.0.1.2", TEST_NODE, False, True, True),
                                    ("10.0.1.3", TEST_NODE, False, False, True),
                                    ("10.0.1.4", "another-node", False, True, True),
                                    ("10.0.1.5", "another-node", False, False, False))])
    assert servers(rs)["TCP 172.20.1.1:80"] == ["10.0.1.1:80", "10.0.1.2:80",
                                                "10.0.1.4:80"]
    assert len(rs.ipsets[r.LOOP_BACK]) == 3


# ================================================================= IPVS-mode behaviour


@pytest.mark.parametrize("case,vs,expected", [
    # eTP Local, no endpoint on node1: NodePort and externalIP fall back to all endpoints
    ("etp-local-no-local-endpoint", "TCP 172.18.0.2:30091", ["10.244.1.14:8080"]),
    ("etp-local-no-local-endpoint", "TCP 192.168.200.52:80", ["10.244.1.14:8080"]),
    # eTP Local with a local endpoint: that one only
    ("etp-local-with-local-endpoint", "TCP 172.18.0.2:30090", None),
    # iTP Local on a NodePort Service, none local: the ClusterIP gets every endpoint
    ("itp-local-nodeport-fallback", "TCP 10.96.0.41:80",
     ["10.244.1.41:8080", "10.244.2.41:8080"]),
    # iTP Local on a ClusterIP-only Service, none local: nothing to fall back to
    ("itp-local-no-local-endpoint", "TCP 10.96.0.31:9100", []),
])
def test_local_policy_fallback(case: str, vs: str, expected: list[str] | None) -> None:
    """IPVS mode's Local fallback (where it differs from iptables/nftables, which drop)."""
    got = servers(ipvs.render(golden_input(case)))
    if expected is None:  # only local endpoints
        inp = golden_input(case)
        local = {f"{e.ip}:{e.port}" for p in inp.ports for e in p.endpoints if e.is_local}
        assert got[vs] and set(got[vs]) <= local
    else:
        assert got[vs] == expected


def test_no_endpoints_means_no_real_servers() -> None:
    rs = ipvs.render(golden_input("clusterip-no-endpoints"))
    assert all(not e.reals for e in rs.virtual_servers) and rs.virtual_servers


@pytest.mark.parametrize("scheduler", ["rr", "wrr", "lc", "sh", "mh"])
def test_scheduler_and_affinity_flags(scheduler: str) -> None:
    cfg = dataclasses.replace(CONFIG, ipvs_scheduler=scheduler)
    rs = ipvs.render(golden_input("session-affinity", cfg))
    (entry,) = rs.virtual_servers
    assert entry.vs.scheduler == scheduler and entry.vs.timeout == 600
    assert entry.vs.flags & r.FLAG_PERSISTENT
    assert bool(entry.vs.flags & r.FLAG_SOURCE_HASH) == (scheduler == "mh")
    line = entry.vs.save_line()
    assert line.startswith(f"-A -t 10.96.0.32:80 -s {scheduler}") and line.endswith("-p 600")
    assert ("-b mh-port" in line) == (scheduler == "mh")


def test_sysctls_follow_the_kernel() -> None:
    assert ("net.ipv4.vs.conn_reuse_mode", "0") in r.sysctls("5.4.0-150-generic")
    assert ("net.ipv4.vs.conn_reuse_mode", "0") not in r.sysctls("6.1.0-26-amd64")
    assert dict(r.sysctls())["net.ipv4.vs.conntrack"] == "1"
    assert dict(r.sysctls())["net.ipv4.vs.expire_nodest_conn"] == "1"
    assert dict(r.sysctls())["net.ipv4.vs.expire_quiescent_template"] == "1"


def test_for_service_and_cleanup() -> None:
    rs = ipvs.render(golden_input("multiport-udp"))
    text = rs.for_service("kube-system", "kube-dns")
    assert "-A -u 10.96.0.10:53 -s rr" in text and "add KUBE-CLUSTER-IP 10.96.0.10,udp:53" \
        in text and "--sctp-service 10.96.0.10:9999" in text
    assert rs.for_service("default", "nope") == ""
    restore, argv = rs.cleanup_payload()
    assert "-X KUBE-IPVS-FILTER" in restore and ["-t", "nat", "-D", "PREROUTING", "-m",
                                                 "comment", "--comment",
                                                 "kubernetes service portals", "-j",
                                                 "KUBE-SERVICES"] in argv
    assert rs.ipset_cleanup_payload().splitlines() == [f"destroy {n}" for n in r.SET_NAMES]


# ================================================================= partial updates


def state_with(case: str, **changes: Any):
    state = golden_state(case)
    return dataclasses.replace(state, **changes)


def inp_of(state) -> ProxyInput:
    return build_input(CONFIG, state.services, state.endpoint_slices)


def fewer_endpoints(state, keep: int):
    (slice_,) = [s for s in state.endpoint_slices if s.service_name == "web"] or \
        state.endpoint_slices[:1]
    fewer = dataclasses.replace(slice_, endpoints=slice_.endpoints[:keep])
    return dataclasses.replace(state, endpoint_slices=tuple(
        fewer if s is slice_ else s for s in state.endpoint_slices))


def test_update_from_nothing_is_everything() -> None:
    rs = ipvs.render(golden_input("nodeport"))
    upd = rs.update(None)
    assert upd.full and upd.addresses_add == rs.addresses
    assert [vs for vs in upd.vs_add] == [e.vs for e in rs.virtual_servers]
    assert len(upd.rs_add) == sum(len(e.reals) for e in rs.virtual_servers)
    assert upd.ipset == rs.ipset_payload() and upd.iptables == rs.iptables_payload()


def test_update_with_nothing_changed_is_empty() -> None:
    old = ipvs.render(golden_input("nodeport"))
    new, upd = ipvs.render_update(old, golden_input("nodeport"))
    assert upd.empty and upd.text() == ""
    assert new.update(old).empty


def test_endpoint_removed_touches_only_its_real_servers() -> None:
    """An endpoint gone: a real-server deletion on each of its virtual servers, its
    ipset entries gone — no virtual server or iptables change (connections to the other
    endpoints are left alone)."""
    state = golden_state("nodeport")
    old_inp = inp_of(state)
    old = ipvs.render(old_inp)
    new_state = fewer_endpoints(state, 1)
    new, upd = ipvs.render_update(old, build_input(CONFIG, new_state.services,
                                                   new_state.endpoint_slices,
                                                   previous=old_inp))
    assert upd == new.update(old) and new == ipvs.render(inp_of(new_state))
    assert not (upd.vs_add or upd.vs_edit or upd.vs_del or upd.rs_add or upd.rs_edit)
    assert not upd.iptables and not upd.addresses_add and not upd.addresses_del
    removed = {rs.string for _vs, rs in upd.rs_del}
    assert len(removed) == 1
    assert len(upd.rs_del) == len(old.virtual_servers)  # one per virtual server
    # and back: the same real servers are added
    _, back = ipvs.render_update(new, old_inp)
    assert {(vs.key, x.key) for vs, x in back.rs_add} == \
        {(vs.key, x.key) for vs, x in upd.rs_del}
    lines = upd.text().splitlines()
    assert all(line.startswith(("-d ", "del ")) for line in lines), lines


def test_service_added_and_removed() -> None:
    """A new Service: its virtual servers, real servers, addresses and ipset entries
    added; iptables reloaded only if a set went from empty to not empty."""
    a = golden_state("clusterip-one-endpoint")
    b = golden_state("loadbalancer")
    both = dataclasses.replace(a, services=a.services + b.services,
                               endpoint_slices=a.endpoint_slices + b.endpoint_slices)
    old = ipvs.render(inp_of(a))
    new, upd = ipvs.render_update(old, inp_of(both))
    added = {e.vs.key for e in new.virtual_servers} - {e.vs.key for e in old.virtual_servers}
    assert {vs.key for vs in upd.vs_add} == added and not upd.vs_del and not upd.rs_del
    assert set(upd.addresses_add) == set(new.addresses) - set(old.addresses)
    assert "KUBE-LOAD-BALANCER" in upd.iptables  # the LB set is no longer empty
    assert all(line.startswith("add ") for line in upd.ipset.splitlines())
    # and removed again
    back, upd2 = ipvs.render_update(new, inp_of(a))
    assert {vs.key for vs in upd2.vs_del} == added and not upd2.vs_add
    assert set(upd2.addresses_del) == set(upd.addresses_add)
    assert all(line.startswith("del ") for line in upd2.ipset.splitlines())
    assert back.iptables_payload() == old.iptables_payload() and upd2.iptables


def test_affinity_change_edits_the_virtual_server() -> None:
    state = golden_state("session-affinity")
    old = ipvs.render(inp_of(state))
    (s,) = state.services
    plain = dataclasses.replace(s, service=dataclasses.replace(s.service,
                                                               session_affinity="None"))
    _, upd = ipvs.render_update(old, inp_of(dataclasses.replace(state, services=(plain,))))
    assert [vs.flags for vs in upd.vs_edit] == [0]
    assert upd.vs_edit[0].save_line("-E") == "-E -t 10.96.0.32:80 -s rr"
    assert not (upd.vs_add or upd.vs_del or upd.rs_add or upd.rs_del)


def test_render_update_reuses_unchanged_services() -> None:
    state = golden_state("multiport-udp")
    extra = golden_state("nodeport")
    both = dataclasses.replace(state, services=state.services + extra.services,
                               endpoint_slices=state.endpoint_slices + extra.endpoint_slices)
    inp1 = inp_of(both)
    old = ipvs.render(inp1)
    changed = fewer_endpoints(both, 1)
    inp2 = build_input(CONFIG, changed.services, changed.endpoint_slices, previous=inp1)
    new, _ = ipvs.render_update(old, inp2)
    assert new.by_key[("kube-system", "kube-dns")] is old.by_key[("kube-system", "kube-dns")]
    assert new.by_key[("default", "web")] is not old.by_key[("default", "web")]


# ================================================================= the sync path


def test_render_sync_first_load_then_partial() -> None:
    state = dataclasses.replace(golden_state("nodeport"), lab=dataclasses.replace(
        golden_state("nodeport").lab, proxy_mode="ipvs"))
    inp, rs, payload, upd = sync.render_ipvs_sync(state, "node1")
    assert payload == rs.payload() and upd.full
    # the first load folds kube-proxy's chains and jumps into the iptables input
    assert "-I PREROUTING -m comment --comment \"kubernetes service portals\" " \
           "-j KUBE-SERVICES" in upd.iptables
    assert "-I OUTPUT -m comment --comment \"kubernetes ipvs access filter\" " \
           "-j KUBE-IPVS-OUT-FILTER" in upd.iptables
    assert sync.render_sync(state, "node1", "ipvs")[2] == payload
    previous = sync.NodeSync("node1", "ipvs", rs, 0.0, 0.0, True, inp, payload)
    state2 = fewer_endpoints(state, 1)
    inp2, rs2, payload2, upd2 = sync.render_ipvs_sync(state2, "node1", previous)
    assert payload2 == upd2.text() == ipvs.render(inp2).update(rs).text()
    assert inp2 == base.input_for_node(state2, "node1")
    # after another mode: a full load
    ipt = sync.NodeSync("node1", "iptables", None, 0.0, 0.0, True)
    assert sync.render_ipvs_sync(state2, "node1", ipt)[3].full


def test_lab_node_config_has_both_node_addresses() -> None:
    state = golden_state("nodeport")
    cfg = base.config_for_node(state, "node1")
    assert cfg.node_ips == ("172.18.0.2", "10.244.0.1") and cfg.ipvs_scheduler == "rr"


def test_lab_ipvs_scheduler_reaches_every_virtual_server(tmp_path: Path) -> None:
    text = (SHARED / "nodeport.yaml").read_text()
    assert "\nspec:\n  nodes:" in text  # its Lab document comes first
    (tmp_path / "lab.yaml").write_text(text.replace(
        "\nspec:\n  nodes:", "\nspec:\n  ipvsScheduler: wrr\n  nodes:", 1))
    state = compile_state(load_topology([str(tmp_path / "lab.yaml")])[0])
    assert base.config_for_node(state, "node1").ipvs_scheduler == "wrr"
    rs = ipvs.render(base.input_for_node(state, "node1"))
    assert {e.vs.scheduler for e in rs.virtual_servers} == {"wrr"}


def test_plan_load_commands() -> None:
    state = golden_state("nodeport")
    state = dataclasses.replace(state, lab=dataclasses.replace(state.lab, proxy_mode="ipvs"))
    cmds = sync.load_commands(state)
    ns = state.node("node1").netns
    text = "\n".join(cmds)
    assert f"ip -n {ns} link add kube-ipvs0 type dummy" in cmds
    assert f"ip netns exec {ns} ipset restore -exist <<'EOF'" in text
    assert f"ip netns exec {ns} ipvsadm-restore <<'EOF'\n-A -t 10.96.0.25:80 -s rr" in text
    assert f"ip netns exec {ns} sysctl -qw net.ipv4.vs.conntrack=1" in cmds


def test_cli_render_ipvs() -> None:
    from labctl.cli.main import cli
    from labctl.cli.proxy import SCHEDULERS

    assert SCHEDULERS == r.SCHEDULERS
    path = str(SHARED / "nodeport.yaml")
    result = invoke(cli, [
        "proxy", "render", "--mode", "ipvs", "--node-name", "node1",
        "--node-ip", "172.18.0.2,10.244.0.1", "--cluster-cidr", "10.244.0.0/16", path])
    assert result.exit_code == 0, result.output
    assert result.output == (GOLDEN / "nodeport.txt").read_text()
    result = invoke(cli, [
        "proxy", "render", "--mode", "ipvs", "--node-name", "node1", "--node-ip",
        "172.18.0.2", "--ipvs-scheduler", "wrr", path])
    assert "-A -t 10.96.0.25:80 -s wrr\n" in result.output


# ================================================================= kernel side (fake IPVS)


class FakeMsg:
    def __init__(self, **attrs: Any) -> None:
        self.attrs = attrs

    def get(self, key: str) -> Any:
        return self.attrs.get(key)


class FakeIPVS:
    """Enough of pyroute2's IPVS handle for net/ipvs: services and destinations with
    connection counts; errors as the kernel gives them."""

    def __init__(self) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        self.error = NetlinkError
        self.services: dict[tuple, dict] = {}
        self.dests: dict[tuple, dict[tuple, dict]] = {}
        self.calls: list[str] = []

    @staticmethod
    def _key(s: Any) -> tuple:
        return (s["protocol"], s["addr"], s["port"])

    def service(self, cmd: str, service: Any = None) -> list:
        key = self._key(service) if service is not None else None
        self.calls.append(f"service {cmd} {key}")
        if cmd == "add":
            if key in self.services:
                raise self.error(errno.EEXIST)
            self.services[key] = dict(service)
            self.dests[key] = {}
        elif cmd == "set":
            self.services[key] = dict(service)
        elif cmd == "del":
            if key not in self.services:
                raise self.error(errno.ESRCH)
            del self.services[key], self.dests[key]
        elif cmd == "dump":
            return [FakeMsg(IPVS_CMD_ATTR_SERVICE=FakeMsg(
                IPVS_SVC_ATTR_PROTOCOL=k[0], IPVS_SVC_ATTR_ADDR=k[1], IPVS_SVC_ATTR_PORT=k[2],
                IPVS_SVC_ATTR_SCHED_NAME=s["sched_name"],
                IPVS_SVC_ATTR_FLAGS=FakeMsg(flags=s["flags"]["flags"] | r.FLAG_HASHED),
                IPVS_SVC_ATTR_TIMEOUT=s["timeout"])) for k, s in self.services.items()]
        return []

    def dest(self, cmd: str, service: Any, dest: Any = None) -> list:
        key = self._key(service)
        table = self.dests[key]
        self.calls.append(f"dest {cmd} {key} {dest['addr'] if dest else ''} "
                          f"{dest['weight'] if dest else ''}".rstrip())
        if cmd == "dump":
            return [FakeMsg(IPVS_CMD_ATTR_DEST=FakeMsg(
                IPVS_DEST_ATTR_ADDR=a, IPVS_DEST_ATTR_PORT=p,
                IPVS_DEST_ATTR_WEIGHT=d["weight"], IPVS_DEST_ATTR_FWD_METHOD=d["fwd_method"],
                IPVS_DEST_ATTR_ACTIVE_CONNS=d.get("active", 0),
                IPVS_DEST_ATTR_INACT_CONNS=d.get("inactive", 0)))
                for (a, p), d in table.items()]
        dkey = (dest["addr"], dest["port"])
        if cmd == "add":
            if dkey in table:
                raise self.error(errno.EEXIST)
            table[dkey] = dict(dest)
        elif cmd == "set":
            table[dkey].update(weight=dest["weight"], fwd_method=dest["fwd_method"])
        elif cmd == "del":
            if dkey not in table:
                raise self.error(errno.ENOENT)
            del table[dkey]
        return []


def test_kernel_update_logic_with_graceful_removal() -> None:
    """net/ipvs against a fake handle: a full load (masquerading, scheduler given), a
    removed endpoint with live connections drained (weight 0), deleted once idle, and a
    drained one that comes back set to weight 1 again — other real servers untouched."""
    from labctl.net import ipvs as ipvs_net

    state = golden_state("nodeport")
    rs1 = ipvs.render(inp_of(state))
    fake = FakeIPVS()
    assert ipvs_net._ipvs(fake, rs1.update(None), ()) == ()
    assert {d["fwd_method"] for t in fake.dests.values() for d in t.values()} == {0}
    assert {s["sched_name"] for s in fake.services.values()} == {"rr"}
    dumped = ipvs_net._dump(fake)
    assert [s.vs for s in dumped] == [e.vs for e in rs1.virtual_servers]
    assert ipvs_net.format_list(dumped).count("Masq") == len(rs1.update(None).rs_add)
    gone = "10.244.1.7"
    for table in fake.dests.values():  # connections to the endpoint about to go
        table[(gone, 8080)]["active"] = 1
    rs2 = ipvs.render(inp_of(fewer_endpoints(state, 1)))
    assert {x.address for _vs, x in rs2.update(rs1).rs_del} == {gone}
    fake.calls.clear()
    draining = ipvs_net._ipvs(fake, rs2.update(rs1), ())
    assert {x.address for _vs, x in draining} == {gone}
    assert all(t[(gone, 8080)]["weight"] == 0 for t in fake.dests.values())
    assert not [c for c in fake.calls if "10.244.0.7" in c]  # the other one: untouched
    for table in fake.dests.values():
        table[(gone, 8080)]["active"] = 0
    assert ipvs_net._ipvs(fake, rs2.update(rs2), draining) == ()
    assert all((gone, 8080) not in t for t in fake.dests.values())
    # drained, then wanted again before it was deleted
    draining = ipvs_net._ipvs(fake, rs1.update(rs2), ())
    for table in fake.dests.values():
        table[(gone, 8080)].update(active=2, weight=0)
    assert ipvs_net._ipvs(fake, rs1.update(rs2), ()) == ()
    assert all(t[(gone, 8080)]["weight"] == 1 for t in fake.dests.values())


# ================================================================= capabilities


def host_has_ipvs() -> bool:
    return os.path.exists("/proc/net/ip_vs") or subprocess.run(
        ["modprobe", "-n", "-q", "ip_vs"], capture_output=True).returncode == 0 \
        if shutil.which("modprobe") else os.path.exists("/proc/net/ip_vs")


@pytest.mark.skipif(os.geteuid() != 0, reason="labctl up needs root")
@pytest.mark.skipif(host_has_ipvs(), reason="this host has ip_vs: the probe passes here")
def test_up_without_ipvs_fails_cleanly(tmp_path: Path) -> None:
    """`labctl up` of an IPVS lab on a kernel without IPVS: exit 3, the missing features
    and where to run it, and nothing created (no namespace, no state, host untouched)."""
    lab = tmp_path / "lab.yaml"
    lab.write_text((SHARED / "nodeport.yaml").read_text().replace(
        "metadata: {name: golden}", "metadata: {name: ipvs-captest}").replace(
        "spec:\n  nodes:", "spec:\n  proxyMode: ipvs\n  nodes:", 1))
    before = subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True).stdout \
        if shutil.which("ipset") else ""
    proc = subprocess.run([str(Path(sys.executable).parent / "labctl"), "up", str(lab)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "proxyMode ipvs needs what this host lacks" in proc.stderr
    assert "ip_vs" in proc.stderr and "make test-vm" in proc.stderr
    assert "Vagrant" in proc.stderr and "Nothing was created" in proc.stderr
    assert not [n for n in os.listdir("/run/netns") if ".ipvs-captest." in n] \
        if os.path.isdir("/run/netns") else True
    assert not os.path.exists("/run/labctl/ipvs-captest")
    after = subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True).stdout \
        if shutil.which("ipset") else ""
    assert before == after


def test_kernel_apply_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """net/ipvs.apply: addresses in, sysctls (full sync), ipsets, IPVS, iptables, gone
    virtual servers, addresses out — each step in the node's namespace."""
    import contextlib

    from labctl.net import ipvs as ipvs_net

    fake = FakeIPVS()
    steps: list[str] = []
    entered: list[str] = []

    @contextlib.contextmanager
    def enter(ns: str):
        entered.append(ns)
        yield

    @contextlib.contextmanager
    def handle(ns: str):
        steps.append("ipvs-handle")
        yield fake

    monkeypatch.setattr(ipvs_net.netns, "entered", enter)
    monkeypatch.setattr(ipvs_net, "handle_in", handle)
    monkeypatch.setattr(ipvs_net, "_links", lambda ns, lab, upd, add: steps.append(
        f"links {'add' if add else 'del'} {len(upd.addresses_add if add else upd.addresses_del)}"))
    monkeypatch.setattr(ipvs_net, "_run", lambda argv, stdin, ns: steps.append(argv[0]))
    monkeypatch.setattr(ipvs_net, "_write_sysctl", lambda k, v: steps.append(f"sysctl {k}"))
    rs1 = ipvs.render(golden_input("nodeport"))
    load = ipvs_net.NodeLoad("lc.x.node.node1", rs1.update(None))
    ipvs_net.apply("lc.x.node.node1", "x", load, ["iptables-restore"], "6.1.0")
    assert steps[0] == "links add 1" and steps[1] == "ipvs-handle"
    assert steps[2:6] == ["sysctl net.ipv4.vs.conntrack", "sysctl net.ipv4.vs.expire_nodest_conn",
                          "sysctl net.ipv4.vs.expire_quiescent_template",
                          "sysctl net.ipv4.ip_forward"]
    assert steps[6:] == ["ipset", "iptables-restore", "links del 0"]
    assert len(fake.services) == len(rs1.virtual_servers)
    assert set(entered) == {"lc.x.node.node1"}
    # a resync that only changes ipset entries opens no IPVS handle
    steps.clear()
    a = golden_state("nodeport")
    only_vs = ipvs.render(inp_of(dataclasses.replace(a, endpoint_slices=())))
    upd = only_vs.update(rs1)
    assert upd.rs_del and not upd.vs_del
    ipvs_net.apply("lc.x.node.node1", "x", ipvs_net.NodeLoad("lc.x.node.node1", upd),
                   ["iptables-restore"], "6.1.0")
    assert steps[:2] == ["links add 0", "ipvs-handle"] and "sysctl" not in " ".join(steps)
    steps.clear()
    same = ipvs.render(golden_input("nodeport")).update(rs1)
    ipvs_net.apply("lc.x.node.node1", "x", ipvs_net.NodeLoad("lc.x.node.node1", same),
                   ["iptables-restore"], "6.1.0")
    assert "ipvs-handle" not in steps


def test_sync_nodes_hands_updates_and_draining_to_the_kernel_side(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """sync_nodes in IPVS mode: a full update per node first (iptables with kube-proxy's
    jumps folded in), then partial ones; real servers left draining by one sync are
    handed to the next."""
    from labctl.net import ipvs as ipvs_net

    calls: list[list[ipvs_net.NodeLoad]] = []
    left = ((r.VirtualServer("TCP", "10.96.0.25", 80), r.RealServer("10.244.1.7", 8080)),)

    def apply_many(loads, lab, argv):
        calls.append(list(loads))
        assert lab == "golden" and "iptables" in argv[0] and "--noflush" in argv
        return [ipvs_net.Applied(0.001, left) for _ in loads]

    monkeypatch.setattr(ipvs_net, "apply_many", apply_many)
    monkeypatch.setattr(sync, "iptables_backend", lambda state: "nft")
    state = golden_state("nodeport")
    state = dataclasses.replace(state, lab=dataclasses.replace(state.lab, proxy_mode="ipvs"))
    done = sync.sync_nodes(state)
    assert [load.ns for load in calls[0]] == [n.netns for n in state.nodes]
    assert all(load.update.full and "-I PREROUTING" in load.update.iptables
               and load.draining == () for load in calls[0])
    assert all(s.full and s.mode == "ipvs" and s.draining == left for s in done.values())
    done2 = sync.sync_nodes(fewer_endpoints(state, 1), done)
    assert all(not load.update.full and load.draining == left for load in calls[1])
    assert all(not s.full and "-d -t 10.96.0.25:80 -r 10.244.1.7:8080\n" in s.payload
               for s in done2.values())


def test_rules_view_keeps_one_services_blocks() -> None:
    from labctl.cli.ipvs_view import _filter_iptables, _filter_ipvs

    text = (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        "TCP  10.96.0.1:443 rr\n"
        "  -> 172.18.0.2:6443             Masq    1      0          0\n"
        "TCP  10.96.0.25:80 rr\n"
        "  -> 10.244.0.7:8080             Masq    1      0          0\n"
        "  -> 10.244.1.7:8080             Masq    1      1          0\n"
        "UDP  10.96.0.10:53 rr\n")
    got = _filter_ipvs(text, {"TCP 10.96.0.25:80"})
    assert got.splitlines() == text.splitlines()[:3] + [
        "TCP  10.96.0.25:80 rr", "  -> 10.244.0.7:8080             Masq    1      0          0",
        "  -> 10.244.1.7:8080             Masq    1      1          0"]
    ipt = "*filter\n:X - [0:0]\n-A X -s 1.2.3.4 -j DROP\n-A X -s 1.2.3.40 -j DROP\nCOMMIT\n"
    assert _filter_iptables(ipt, {"1.2.3.4"}) == "*filter\n-A X -s 1.2.3.4 -j DROP\nCOMMIT\n"


def test_kernel_entry_points_leave_a_running_event_loop_alone() -> None:
    """pyroute2's sync API cannot run in a thread that runs an asyncio loop (the agent's):
    net/ipvs's entry points then run in a helper thread, exceptions included."""
    import asyncio
    import threading

    from labctl.net.ipvs import off_loop

    @off_loop
    def where(fail: bool = False) -> tuple[str, bool]:
        try:
            asyncio.get_running_loop()
            running = True
        except RuntimeError:
            running = False
        if fail:
            raise ValueError("boom")
        return threading.current_thread().name, running

    assert where() == (threading.current_thread().name, False)

    async def in_loop() -> tuple[str, bool]:
        with pytest.raises(ValueError, match="boom"):
            where(fail=True)
        return where()

    name, running = asyncio.run(in_loop())
    assert name == "labctl-ipvs-where" and not running
