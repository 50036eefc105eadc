"""kube-proxy iptables mode (labctl.proxy.iptables): goldens, upstream reproductions, views.

Goldens: tests/unit/golden/proxy/iptables/<case>.yaml (a lab: Services + EndpointSlices
written out) → <case>.txt (the full-sync restore input for node1). Regenerate with
UPDATE_GOLDEN=1, then read the diff against ../shared/reference/kube-proxy.md §3.

Upstream reproductions: the same inputs as tests in kubernetes/kubernetes
pkg/proxy/iptables/proxier_test.go @ 531be812, compared with upstream's expected text
(golden/proxy/iptables/upstream/, verbatim) after upstream's own canonicalisation
(sortIPTablesRules) and two stated differences: the mark is written 0x00004000 (upstream's
fake proxier injects "0x4000") and there are no nfacct matches (its fake pretends the
nfacct counters exist; labctl writes what kube-proxy writes when they do not).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import shlex
from pathlib import Path

import pytest

from labctl.cluster.compile import compile_state
from labctl.cluster.state import PortAllocation, ServiceState
from labctl.model.load import load_topology
from labctl.model.objects import (
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    ObjectMeta,
    Service,
    ServicePort,
)
from labctl.proxy import iptables
from labctl.proxy.base import ProxyConfig, ProxyInput, build_input

GOLDEN = Path(__file__).parent / "golden" / "proxy" / "iptables"
UPSTREAM = GOLDEN / "upstream"
CONFIG = ProxyConfig(node_name="node1", node_ips=("172.18.0.2",), cluster_cidr="10.244.0.0/16",
                     service_cidr="10.96.0.0/12")
CASES = (
    "clusterip-one-endpoint", "clusterip-two-endpoints", "clusterip-three-endpoints",
    "clusterip-ten-endpoints", "clusterip-no-endpoints", "nodeport", "loadbalancer",
    "loadbalancer-source-ranges", "external-ips", "etp-local-with-local-endpoint",
    "etp-local-no-local-endpoint", "itp-local", "itp-local-no-local-endpoint",
    "session-affinity", "multiport-udp", "headless-and-externalname", "terminating-fallback",
)
BUILTIN_TARGETS = {"ACCEPT", "DROP", "REJECT", "RETURN", "MARK", "MASQUERADE", "DNAT"}


# ================================================================= helpers


def golden_input(case: str) -> ProxyInput:
    """The case's lab through the real loader and compiler, as node1's kube-proxy sees it."""
    topology, _ = load_topology([str(GOLDEN / f"{case}.yaml")])
    state = compile_state(topology)
    for svc in state.services:
        # compile_state keeps a written status.loadBalancer.ingress (no pool allocation).
        written = svc.service.load_balancer_ingress
        assert not written or svc.load_balancer_ip == written[0], svc.key
    return build_input(CONFIG, state.services, state.endpoint_slices)


def check_golden(path: Path, got: str) -> None:
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(got)
    assert path.exists(), f"{path.name} missing: run with UPDATE_GOLDEN=1"
    assert got == path.read_text()


def parse_restore(text: str) -> dict[str, dict[str, list[str]]]:
    """table → chain → rule lines, from restore text (checking its shape on the way)."""
    tables: dict[str, dict[str, list[str]]] = {}
    chains: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("*"):
            chains = tables.setdefault(line[1:], {})
        elif line.startswith(":"):
            name = line[1:].split(" ")[0]
            assert line == f":{name} - [0:0]"
            chains[name] = []
        elif line.startswith("-A "):
            name = line.split(" ")[1]
            assert name in chains, f"rule for undeclared chain: {line}"
            chains[name].append(line)
        elif line.startswith("-X "):
            assert line[3:] in chains
        else:
            assert line == "COMMIT", line
    return tables


# ---------------------------------------------------------------- upstream-style inputs

TEST_NODE = "test-node"
UPSTREAM_CONFIG = ProxyConfig(node_name=TEST_NODE,
                              node_ips=("192.168.0.2", "192.168.1.2", "192.168.99.11"),
                              cluster_cidr="10.0.0.0/8")


def svc(ns: str, name: str, cluster_ip: str, *ports: tuple[str, int, str, int],
        type: str = "ClusterIP", ingress: str = "", **spec: object) -> ServiceState:
    """A Service as upstream's makeTestService builds it; ports: (name, port, proto, nodePort)."""
    service = Service(ObjectMeta(name, ns), type=type, cluster_ip=cluster_ip,
                      ports=tuple(ServicePort(p, n, proto, node_port=np)
                                  for n, p, proto, np in ports), **spec)  # type: ignore[arg-type]
    allocs = tuple(PortAllocation(n, proto, p, np) for n, p, proto, np in ports)
    return ServiceState(service, cluster_ip, allocs, ingress)


def eps(ns: str, name: str, ports: list[tuple[str, int, str]],
        *endpoints: tuple[str, str] | tuple[str, str, bool | None, bool | None, bool | None],
        ) -> EndpointSlice:
    """An EndpointSlice; endpoints: (ip, nodeName[, ready, serving, terminating])."""
    items = []
    for ep in endpoints:
        ip, node, *conds = ep
        items.append(Endpoint((ip,), EndpointConditions(*conds), node_name=node))
    return EndpointSlice(ObjectMeta(f"{name}-1", ns, {"kubernetes.io/service-name": name}),
                         endpoints=tuple(items),
                         ports=tuple(EndpointPort(p, n, proto) for n, p, proto in ports))


def upstream_input(services: list[ServiceState], slices: list[EndpointSlice],
                   config: ProxyConfig = UPSTREAM_CONFIG,
                   vips: dict[str, tuple[str, ...]] | None = None) -> ProxyInput:
    """build_input, optionally with several LB VIPs per Service (ServiceState holds one)."""
    inp = build_input(config, services, slices)
    if not vips:
        return inp
    ports = tuple(dataclasses.replace(p, info=dataclasses.replace(
        p.info, load_balancer_vips=vips[f"{p.info.namespace}/{p.info.name}"]))
        if f"{p.info.namespace}/{p.info.name}" in vips else p for p in inp.ports)
    return dataclasses.replace(inp, ports=ports)


P80 = [("p80", 80, "TCP")]


# ---------------------------------------------------------------- upstream's canonical form

WORD = re.compile(r'(?:^|\s)("[^"]*"|[^"]\S*)')


def words(rule: str) -> list[str]:
    return [m.strip('"') for m in WORD.findall(rule)]


def comment_service(rule: str) -> str | None:
    w = words(rule)
    if "--comment" not in w:
        return None
    return re.split(r"[ :]", w[w.index("--comment") + 1], maxsplit=1)[0]


def upstream_sort(text: str) -> str:
    """sortIPTablesRules: tables by name; chains KUBE-NODEPORTS, KUBE-SERVICES, other KUBE-*,
    the rest (each alphabetically); rules grouped per chain; KUBE-NODEPORTS and KUBE-SERVICES
    rules stably sorted by the service named in their comment ("last rule" stays last);
    deletions at the end."""
    tables: list[tuple[str, list[str], dict[str, list[str]], list[str]]] = []
    for line in text.strip("\n").splitlines():
        if line.startswith("*"):
            tables.append((line[1:], [], {}, []))
        elif line.startswith(":"):
            name = line[1:].split(" ")[0]
            tables[-1][1].append(name)
            tables[-1][2][name] = []
        elif line.startswith("-A "):
            tables[-1][2][line.split(" ")[1]].append(line)
        elif line.startswith("-X "):
            tables[-1][3].append(line[3:])
    out = []
    for table, chains, rules, deleted in sorted(tables):
        rank = {"KUBE-NODEPORTS": 0, "KUBE-SERVICES": 1}
        order = sorted(chains, key=lambda c: (rank.get(c, 2 if c.startswith("KUBE-") else 3), c))
        rules["KUBE-NODEPORTS"].sort(key=lambda r: comment_service(r) or "")
        rules["KUBE-SERVICES"].sort(key=lambda r: ("must be the last rule" in r,
                                                   comment_service(r) or ""))
        out += [f"*{table}", *(f":{c} - [0:0]" for c in order)]
        out += [r for c in order for r in rules[c]]
        out += [f"-X {c}" for c in order if c in deleted]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def without_table(text: str, table: str) -> str:
    """A restore input without one table: what a partial sync leaves out when that
    table's rules did not change (labctl's difference from upstream, for speed: see
    IptablesRuleset.partial_payload)."""
    out, skipping = [], False
    for line in text.splitlines(keepends=True):
        if line.startswith("*"):
            skipping = line.strip() == f"*{table}"
        if not skipping:
            out.append(line)
        elif line.strip() == "COMMIT":
            skipping = False
    return "".join(out)


def upstream_expected(name: str) -> str:
    """Upstream's expected text with the two stated differences applied."""
    text = (UPSTREAM / f"{name}.txt").read_text()
    text = text.replace("0x4000", "0x00004000")
    text = text.replace(" -m nfacct --nfacct-name ct_state_invalid_dropped_pkts", "")
    return "".join(line for line in text.splitlines(keepends=True)
                   if "localhost_nps_accepted_pkts" not in line)


# ---------------------------------------------------------------- upstream's packet tracer

TEST_NODE_IPS = {"127.0.0.1", "192.168.0.2", "192.168.1.2", "192.168.99.11"}
VALUE_PARAMS = {"--comment", "-p", "-s", "--src-type", "--sport", "-d", "--dst-type",
                "--dport", "-j", "--probability", "--to-destination", "--mark", "--ctstate",
                "--name", "--seconds", "--mode", "--or-mark", "--xor-mark"}


def parse_rule(line: str) -> dict[str, tuple[bool, str]]:
    """Parameters of one rule: name → (negated, value); "-m MODULE" and flags skipped."""
    w, params, negated, i = words(line)[2:], {}, False, 0
    while i < len(w):
        if w[i] == "-m":
            i += 2
        elif w[i] == "!":
            negated, i = True, i + 1
        elif w[i] in VALUE_PARAMS:
            params[w[i]] = (negated, w[i + 1])
            negated, i = False, i + 2
        else:
            params[w[i]] = (negated, "")
            negated, i = False, i + 1
    return params


class Tracer:
    """A packet walked through the rules the way upstream's iptablesTracer does: nat
    PREROUTING, then (with the first DNAT applied) the filter chains kube-proxy fills."""

    def __init__(self, rs: iptables.IptablesRuleset) -> None:
        self.chains = {t: {c: [parse_rule(r) for r in rules] for c, rules in chains.items()}
                       for t, chains in rs.chains().items()}
        self.chains["nat"]["PREROUTING"] = [
            parse_rule(shlex.join(["-A", "PREROUTING", *argv[4:]]))
            for argv in rs.jump_rules() if argv[1] == "nat" and argv[3] == "PREROUTING"]

    def trace(self, src: str, proto: str, dst: str, dport: int) -> tuple[str, bool]:
        self.outputs: list[str] = []
        self.masq = False
        packet = (src, proto, dst, str(dport))
        self._run("nat", "PREROUTING", packet)
        if self.outputs:
            packet = (src, proto, self.outputs[0].split(":")[0], str(dport))
        for chain in ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS",
                      "KUBE-PROXY-FIREWALL"):
            self._run("filter", chain, packet)
        return ", ".join(self.outputs), self.masq

    def _run(self, table: str, chain: str, packet: tuple[str, str, str, str]) -> bool:
        for rule in self.chains[table].get(chain, []):
            if "-j" not in rule or not _matches(rule, *packet):
                continue
            target = rule["-j"][1]
            if target == "KUBE-MARK-MASQ":
                self.masq = True
            elif target in ("ACCEPT", "REJECT", "DROP"):
                self.outputs.append(target)
                return True
            elif target == "DNAT":
                self.outputs.append(rule["--to-destination"][1])
                return True
            elif self._run(table, target, packet) and "--probability" not in rule:
                return True
        return False


def _address_matches(value: tuple[bool, str], ip: str) -> bool:
    negated, text = value
    hit = ipaddress.ip_address(ip) in ipaddress.ip_network(text, strict=False)
    return hit != negated


def _matches(rule: dict[str, tuple[bool, str]], src: str, proto: str, dst: str,
             dport: str) -> bool:
    def local(ip: str) -> str:
        return "LOCAL" if ip in TEST_NODE_IPS else "not-matched"

    checks = [("-s", lambda v: _address_matches(v, src)),
              ("--src-type", lambda v: (local(src) == v[1]) != v[0]),
              ("-p", lambda v: (proto == v[1]) != v[0]),
              ("-d", lambda v: _address_matches(v, dst)),
              ("--dst-type", lambda v: (local(dst) == v[1]) != v[0]),
              ("--dport", lambda v: (dport == v[1]) != v[0])]
    if any(k in rule for k in ("--rcheck", "--mark", "--ctstate")):
        return False  # rules on past state never match a fresh packet
    return all(check(rule[k]) for k, check in checks if k in rule)


def run_flows(rs: iptables.IptablesRuleset,
              flows: list[tuple[str, str, str, str, int, str, bool]]) -> None:
    tracer = Tracer(rs)
    for name, src, proto, dst, dport, output, masq in flows:
        assert tracer.trace(src, proto, dst, dport) == (output, masq), name


# ================================================================= goldens


def test_every_golden_case_has_input_and_output() -> None:
    assert len(CASES) >= 14
    yamls = {p.stem for p in GOLDEN.glob("*.yaml")}
    assert yamls == set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_golden_payload(case: str) -> None:
    check_golden(GOLDEN / f"{case}.txt", iptables.render(golden_input(case)).payload())


def test_golden_jump_rules() -> None:
    rs = iptables.render(golden_input("clusterip-one-endpoint"))
    text = "".join(shlex.join(argv) + "\n" for argv in rs.jump_rules())
    check_golden(GOLDEN / "clusterip-one-endpoint.jumps.txt", text)


@pytest.mark.parametrize("case", CASES)
def test_ruleset_is_consistent(case: str) -> None:
    """Every -j names a declared chain or a builtin target; every declared per-service
    chain is jumped to and has rules; jump rules target chains the restore declares."""
    rs = iptables.render(golden_input(case))
    tables = parse_restore(rs.payload())
    assert tables == rs.chains()
    for table, chains in tables.items():
        rules = [r for lines in chains.values() for r in lines]
        targets = {r.split(" -j ")[1].split(" ")[0] for r in rules if " -j " in r}
        assert targets <= set(chains) | BUILTIN_TARGETS, table
        for chain in chains:
            if iptables.is_service_chain(chain):
                assert chain in targets, f"{chain} is declared but never used"
                assert chains[chain], f"{chain} is jumped to but empty"
    declared = {(t, c) for t, chains in tables.items() for c in chains}
    for argv in rs.jump_rules():
        if argv[-1] != "KUBE-FIREWALL":
            assert (argv[1], argv[-1]) in declared, argv
    assert len(rs.filter_chains) == len({c.name for c in rs.filter_chains})
    assert len(rs.nat_chains) == len({c.name for c in rs.nat_chains})


def test_probabilities_of_ten_endpoints() -> None:
    rules = iptables.render(golden_input("clusterip-ten-endpoints")).chains()["nat"]
    svc = next(lines for chain, lines in rules.items() if chain.startswith("KUBE-SVC-"))
    probs = [r.split("--probability ")[1].split(" ")[0] for r in svc if "--probability" in r]
    assert probs == ["0.1000000000", "0.1111111111", "0.1250000000", "0.1428571429",
                     "0.1666666667", "0.2000000000", "0.2500000000", "0.3333333333",
                     "0.5000000000"]
    assert "statistic" not in svc[-1] and svc[-1].startswith("-A KUBE-SVC-")


def test_chain_names_match_real_clusters() -> None:
    """kube-dns's chains carry the same names on every kubeadm/kind cluster."""
    chains = iptables.render(golden_input("multiport-udp")).chains()["nat"]
    assert {"KUBE-SVC-TCOU7JCQXEZGVUNU", "KUBE-SVC-ERIFXISQEP7F7OF4",
            "KUBE-SVC-JD5MR3NA4I4DYORP"} <= set(chains)  # dns, dns-tcp, metrics


# ================================================================= upstream reproductions


def overall_input() -> ProxyInput:
    return upstream_input([
        svc("ns1", "svc1", "172.30.0.41", ("p80", 80, "TCP", 0)),
        svc("ns2", "svc2", "172.30.0.42", ("p80", 80, "TCP", 3001), type="LoadBalancer",
            ingress="1.2.3.4", external_traffic_policy="Local",
            external_ips=("192.168.99.22",), health_check_node_port=30000),
        svc("ns3", "svc3", "172.30.0.43", ("p80", 80, "TCP", 3003), type="NodePort"),
        svc("ns4", "svc4", "172.30.0.44", ("p80", 80, "TCP", 0), type="NodePort",
            external_ips=("192.168.99.33",)),
        svc("ns5", "svc5", "172.30.0.45", ("p80", 80, "TCP", 3002), type="LoadBalancer",
            ingress="5.6.7.8", health_check_node_port=30000,
            load_balancer_source_ranges=(" 203.0.113.0/25",), session_affinity="ClientIP",
            session_affinity_timeout=10800),
        svc("ns6", "svc6", "172.30.0.46", ("p80", 80, "TCP", 0)),
    ], [
        eps("ns1", "svc1", P80, ("10.180.0.1", "")),
        eps("ns2", "svc2", P80, ("10.180.0.2", "")),
        eps("ns3", "svc3", P80, ("10.180.0.3", "")),
        eps("ns4", "svc4", P80, ("10.180.0.4", ""), ("10.180.0.5", TEST_NODE)),
        eps("ns5", "svc5", P80, ("10.180.0.3", "")),
    ])


def test_upstream_overall_iptables_rules() -> None:
    """Upstream TestOverallIPTablesRules: ClusterIP, LoadBalancer eTP Local without local
    endpoints (+ externalIP, health check), NodePort, externalIP, LoadBalancer with source
    ranges and ClientIP affinity, and a Service without endpoints."""
    rs = iptables.render(overall_input(), random_fully=False)
    assert upstream_sort(rs.payload()) == upstream_expected("TestOverallIPTablesRules")


def test_upstream_sync_proxy_rules_repeated() -> None:
    """Upstream TestSyncProxyRulesRepeated: a full sync, then partial syncs as Services and
    endpoints come and go (only changed Services' chains are rewritten, stale chains are
    flushed and deleted), and a final full resync that deletes what is stale."""
    svc1 = svc("ns1", "svc1", "172.30.0.41", ("p80", 80, "TCP", 0))
    svc2 = svc("ns2", "svc2", "172.30.0.42", ("p8080", 8080, "TCP", 0))
    svc3 = svc("ns3", "svc3", "172.30.0.43", ("p80", 80, "TCP", 0))
    svc4 = svc("ns4", "svc4", "172.30.0.44", ("p80", 80, "TCP", 0))
    eps1 = eps("ns1", "svc1", P80, ("10.0.1.1", ""))
    eps2 = eps("ns2", "svc2", [("p8080", 8080, "TCP")], ("10.0.2.1", ""))
    eps3 = eps("ns3", "svc3", P80, ("10.0.3.1", ""))
    eps4 = eps("ns4", "svc4", P80, ("10.0.4.1", ""))
    eps3b = eps("ns3", "svc3", P80, ("10.0.3.2", ""))
    eps3c = eps("ns3", "svc3", P80, ("10.0.3.2", ""), ("10.0.3.3", ""))
    steps = [
        ("2-add-svc3", [svc1, svc2, svc3], [eps1, eps2, eps3]),
        ("3-delete-svc2", [svc1, svc3], [eps1, eps2, eps3]),
        ("4-add-svc4-no-endpoints", [svc1, svc3, svc4], [eps1, eps3]),
        ("5-svc4-endpoints", [svc1, svc3, svc4], [eps1, eps3, eps4]),
        ("6-change-svc3-endpoint", [svc1, svc3, svc4], [eps1, eps3b, eps4]),
        ("7-add-svc3-endpoint", [svc1, svc3, svc4], [eps1, eps3c, eps4]),
        ("8-no-change", [svc1, svc3, svc4], [eps1, eps3c, eps4]),
    ]

    def render(services: list[ServiceState], slices: list[EndpointSlice]):
        return iptables.render(upstream_input(services, slices), random_fully=False)

    old = render([svc1, svc2], [eps1, eps2])
    name = "TestSyncProxyRulesRepeated-"
    assert upstream_sort(old.payload()) == upstream_expected(name + "1-initial")
    with_filter = []
    for step, services, slices in steps:
        new = render(services, slices)
        expected = upstream_expected(name + step)
        if new.filter_lines == old.filter_lines:  # labctl's stated difference (see below)
            expected = without_table(expected, "filter")
        else:
            with_filter.append(step)
        assert upstream_sort(new.partial_payload(old)) == expected, step
        old = new
    # svc4 without endpoints gets its REJECT in the filter table, and loses it again
    assert with_filter == ["4-add-svc4-no-endpoints", "5-svc4-endpoints"]
    final = render([svc1, svc3], [eps1, eps3c])
    assert upstream_sort(final.payload(old)) == \
        upstream_expected(name + "9-full-resync-delete-svc4")


def large_cluster_input(*extra: tuple[ServiceState, EndpointSlice]) -> ProxyInput:
    """Upstream TestSyncProxyRulesLargeClusterMode's Services: 2 × 499 endpoints."""
    services = [svc("ns1", "svc1", "172.30.0.41", ("p80", 80, "TCP", 0)),
                svc("ns2", "svc2", "172.30.0.42", ("p8080", 8080, "TCP", 0)),
                svc("ns3", "svc3", "172.30.0.43", ("p8081", 8081, "TCP", 0))]
    slices = [eps("ns1", "svc1", P80,
                  *((f"10.0.{i % 256}.{i // 256}", "") for i in range(499))),
              eps("ns2", "svc2", [("p8080", 8080, "TCP")],
                  *((f"10.1.{i % 256}.{i // 256}", "") for i in range(499)))]
    for service, slice_ in extra:
        services.append(service)
        slices.append(slice_)
    config = dataclasses.replace(UPSTREAM_CONFIG, masquerade_all=True)
    return upstream_input(services, slices, config)


def test_upstream_large_cluster_mode() -> None:
    """Upstream TestSyncProxyRulesLargeClusterMode: above 1000 endpoints the comments on
    SVC and SEP rules go; a partial sync does not rewrite unchanged Services to drop them."""
    def dnat_lines(text: str) -> list[str]:
        return [r for r in text.splitlines() if r.startswith("-A KUBE-SEP-") and "DNAT" in r]

    small = iptables.render(large_cluster_input())
    lines = dnat_lines(small.payload())
    assert len(lines) == 998 and all("--comment" in r for r in lines)
    assert ("-A KUBE-SEP-DKGQUZGBKLTPAR56 -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j "
            "DNAT --to-destination 10.0.0.0:80") in lines

    svc3 = eps("ns3", "svc3", [("p8081", 8081, "TCP")], ("203.0.113.4", ""),
               ("203.0.113.8", ""), ("203.0.113.12", ""))
    large = iptables.render(large_cluster_input(
        (svc("ns4", "svc4", "172.30.0.44", ("p8082", 8082, "TCP", 0)), svc3)))
    partial = dnat_lines(large.partial_payload(small))
    assert len(partial) == 3 and not any("--comment" in r for r in partial)
    assert ("-A KUBE-SEP-RUVVH7YV3PHQBDOS -m tcp -p tcp -j DNAT --to-destination "
            "203.0.113.4:8081") in partial
    full = dnat_lines(large.payload())
    assert len(full) == 1001 and not any("--comment" in r for r in full)
    assert "-A KUBE-SEP-DKGQUZGBKLTPAR56 -m tcp -p tcp -j DNAT --to-destination 10.0.0.0:80" \
        in full


@pytest.mark.parametrize("random_fully", [False, True])
def test_upstream_masquerade_rule(random_fully: bool) -> None:
    """Upstream TestMasqueradeRule (KUBE-POSTROUTING with and without --random-fully)."""
    rs = iptables.render(upstream_input([], []), random_fully=random_fully)
    suffix = " --random-fully" if random_fully else ""
    assert rs.chains()["nat"]["KUBE-POSTROUTING"] == [
        "-A KUBE-POSTROUTING -m mark ! --mark 0x00004000/0x00004000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x00004000",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT"'
        " -j MASQUERADE" + suffix]


def test_upstream_drop_invalid_rule() -> None:
    """Upstream TestDropInvalidRule, the case without nfacct and without tcp_be_liberal."""
    rs = iptables.render(upstream_input([], []))
    assert rs.chains()["filter"]["KUBE-FORWARD"] == [
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark '
        "0x00004000/0x00004000 -j ACCEPT",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m '
        "conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]


def test_upstream_load_balancer_flows() -> None:
    """Upstream TestLoadBalancer: source ranges apply to both VIPs, not to the NodePort; the
    node (its IP is in a range) and the VIPs themselves as sources are let in."""
    service = svc("ns1", "svc1", "172.30.0.41", ("p80", 80, "TCP", 3001), type="LoadBalancer",
                  ingress="1.2.3.4",
                  load_balancer_source_ranges=("192.168.0.0/24", " 203.0.113.0/25"))
    rs = iptables.render(upstream_input([service], [eps("ns1", "svc1", P80,
                                                        ("10.180.0.1", ""))],
                                        vips={"ns1/svc1": ("1.2.3.4", "5.6.7.8")}))
    ep = "10.180.0.1:80"
    run_flows(rs, [
        ("pod to cluster IP", "10.0.0.2", "tcp", "172.30.0.41", 80, ep, False),
        ("external to nodePort", "203.0.113.2", "tcp", "192.168.0.2", 3001, ep, True),
        ("nodePort bypasses LoadBalancerSourceRanges", "203.0.113.130", "tcp",
         "192.168.0.2", 3001, ep, True),
        ("accepted external to LB1", "203.0.113.2", "tcp", "1.2.3.4", 80, ep, True),
        ("accepted external to LB2", "203.0.113.2", "tcp", "5.6.7.8", 80, ep, True),
        ("blocked external to LB1", "203.0.113.130", "tcp", "1.2.3.4", 80, "DROP", False),
        ("blocked external to LB2", "203.0.113.130", "tcp", "5.6.7.8", 80, "DROP", False),
        ("pod to LB1 (blocked)", "10.0.0.2", "tcp", "1.2.3.4", 80, "DROP", False),
        ("pod to LB2 (blocked)", "10.0.0.2", "tcp", "5.6.7.8", 80, "DROP", False),
        ("node to LB1 (allowed)", "192.168.0.2", "tcp", "1.2.3.4", 80, ep, True),
        ("node to LB2 (allowed)", "192.168.0.2", "tcp", "5.6.7.8", 80, ep, True),
        ("same node to LB1, SNATted to LB1", "1.2.3.4", "tcp", "1.2.3.4", 80, ep, True),
        ("same node to LB2, SNATted to LB2", "5.6.7.8", "tcp", "5.6.7.8", 80, ep, True),
    ])


def test_upstream_no_endpoints_reject() -> None:
    """Upstream TestNoEndpointsReject: every address of a Service without endpoints."""
    service = svc("ns1", "svc1", "172.30.0.41", ("p80", 80, "TCP", 3001), type="LoadBalancer",
                  ingress="1.2.3.4", external_ips=("192.168.99.11",))
    rs = iptables.render(upstream_input([service], []))
    run_flows(rs, [
        ("pod to cluster IP", "10.0.0.2", "tcp", "172.30.0.41", 80, "REJECT", False),
        ("external to external IP", "203.0.113.2", "tcp", "192.168.99.11", 80, "REJECT", False),
        ("pod to NodePort", "10.0.0.2", "tcp", "192.168.0.2", 3001, "REJECT", False),
        ("external to NodePort", "203.0.113.2", "tcp", "192.168.0.2", 3001, "REJECT", False),
        ("pod to LB IP", "10.0.0.2", "tcp", "1.2.3.4", 80, "REJECT", False),
        ("external to LB IP", "203.0.113.2", "tcp", "1.2.3.4", 80, "REJECT", False),
    ])


@pytest.mark.parametrize("policy", ["Local", "Cluster"])
def test_upstream_external_traffic_policy(policy: str) -> None:
    """Upstream TestExternalTrafficPolicyLocal / TestExternalTrafficPolicyCluster."""
    service = svc("ns1", "svc1", "172.30.0.41", ("p80", 80, "TCP", 3001), type="LoadBalancer",
                  ingress="1.2.3.4", external_ips=("192.168.99.11",),
                  external_traffic_policy=policy,
                  health_check_node_port=30000 if policy == "Local" else 0)
    rs = iptables.render(upstream_input([service], [eps(
        "ns1", "svc1", P80, ("10.180.0.1", ""), ("10.180.2.1", TEST_NODE))]))
    both, local = "10.180.0.1:80, 10.180.2.1:80", "10.180.2.1:80"
    cluster = policy == "Cluster"
    external = both if cluster else local
    run_flows(rs, [
        ("pod to cluster IP", "10.0.0.2", "tcp", "172.30.0.41", 80, both, False),
        ("pod to external IP", "10.0.0.2", "tcp", "192.168.99.11", 80, both, cluster),
        ("external to external IP", "203.0.113.2", "tcp", "192.168.99.11", 80, external,
         cluster),
        ("pod to LB IP", "10.0.0.2", "tcp", "1.2.3.4", 80, both, cluster),
        ("external to LB IP", "203.0.113.2", "tcp", "1.2.3.4", 80, external, cluster),
        ("pod to NodePort", "10.0.0.2", "tcp", "192.168.0.2", 3001, both, cluster),
        ("external to NodePort", "203.0.113.2", "tcp", "192.168.0.2", 3001, external, cluster),
    ])


def test_upstream_cluster_ip_general() -> None:
    """Upstream TestClusterIPGeneral: hairpin, targetPort, TCP/UDP/SCTP on one port."""
    svc2_ports = [("http", 80, "TCP", 0), ("https", 443, "TCP", 0), ("dns-udp", 53, "UDP", 0),
                  ("dns-tcp", 53, "TCP", 0), ("dns-sctp", 53, "SCTP", 0)]
    rs = iptables.render(upstream_input([
        svc("ns1", "svc1", "172.30.0.41", ("http", 80, "TCP", 0)),
        svc("ns2", "svc2", "172.30.0.42", *svc2_ports),
    ], [
        eps("ns1", "svc1", [("http", 80, "TCP")], ("10.180.0.1", TEST_NODE)),
        eps("ns2", "svc2", [("http", 80, "TCP"), ("https", 8443, "TCP"),
                            ("dns-udp", 53, "UDP"), ("dns-tcp", 5353, "TCP"),
                            ("dns-sctp", 53, "SCTP")],
            ("10.180.0.1", TEST_NODE), ("10.180.2.1", "node2")),
    ]))
    run_flows(rs, [
        ("simple clusterIP", "10.180.0.2", "tcp", "172.30.0.41", 80, "10.180.0.1:80", False),
        ("hairpin to cluster IP", "10.180.0.1", "tcp", "172.30.0.41", 80, "10.180.0.1:80",
         True),
        ("multiple endpoints", "10.180.0.2", "tcp", "172.30.0.42", 80,
         "10.180.0.1:80, 10.180.2.1:80", False),
        ("TargetPort", "10.180.0.2", "tcp", "172.30.0.42", 443,
         "10.180.0.1:8443, 10.180.2.1:8443", False),
        ("TCP 53", "10.180.0.2", "tcp", "172.30.0.42", 53,
         "10.180.0.1:5353, 10.180.2.1:5353", False),
        ("UDP 53", "10.180.0.2", "udp", "172.30.0.42", 53, "10.180.0.1:53, 10.180.2.1:53",
         False),
        ("SCTP 53", "10.180.0.2", "sctp", "172.30.0.42", 53, "10.180.0.1:53, 10.180.2.1:53",
         False),
        ("TCP-only port does not match UDP", "10.180.0.2", "udp", "172.30.0.42", 80, "",
         False),
        ("svc1 does not accept svc2's ports", "10.180.0.2", "tcp", "172.30.0.41", 443, "",
         False),
    ])


@pytest.mark.parametrize(("policy", "nodes", "output"), [
    ("Cluster", (TEST_NODE, "node1", "node2"), "10.0.1.1:80, 10.0.1.2:80, 10.0.1.3:80"),
    ("Local", (TEST_NODE, "node1", "node2"), "10.0.1.1:80"),
    ("Local", (TEST_NODE, TEST_NODE, "node2"), "10.0.1.1:80, 10.0.1.2:80"),
    ("Local", ("node0", "node1", "node2"), "DROP"),
])
def test_upstream_internal_traffic_policy(policy: str, nodes: tuple[str, ...],
                                          output: str) -> None:
    """Upstream TestInternalTrafficPolicy (and REJECT once the endpoints are gone)."""
    service = svc("ns1", "svc1", "172.30.1.1", ("", 80, "TCP", 0),
                  internal_traffic_policy=policy)
    ips = ("10.0.1.1", "10.0.1.2", "10.0.1.3")
    slice_ = eps("ns1", "svc1", [("", 80, "TCP")],
                 *((ip, node, True, None, None) for ip, node in zip(ips, nodes, strict=True)))
    flow = ("pod to ClusterIP", "10.0.0.2", "tcp", "172.30.1.1", 80)
    run_flows(iptables.render(upstream_input([service], [slice_])), [(*flow, output, False)])
    run_flows(iptables.render(upstream_input([service], [])), [(*flow, "REJECT", False)])


@pytest.mark.parametrize(("endpoints", "to_cluster_ip", "to_lb"), [
    ([("10.0.1.1", TEST_NODE, True, True, False), ("10.0.1.2", TEST_NODE, True, True, False),
      ("10.0.1.3", TEST_NODE, False, True, True), ("10.0.1.4", TEST_NODE, False, False, True),
      ("10.0.1.5", "node-1", True, True, False)],
     "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80", "10.0.1.1:80, 10.0.1.2:80"),
    ([("10.0.1.2", TEST_NODE, False, True, True), ("10.0.1.3", TEST_NODE, False, True, True),
      ("10.0.1.4", TEST_NODE, False, False, True), ("10.0.1.5", "node-1", True, True, False)],
     "10.0.1.5:80", "10.0.1.2:80, 10.0.1.3:80"),
    ([("10.0.1.5", "node-1", False, True, True)], "10.0.1.5:80", "DROP"),
    ([("10.0.1.5", TEST_NODE, False, False, True), ("10.0.1.5", "node-1", False, False, True)],
     "REJECT", "REJECT"),
], ids=["ready", "only-terminating", "terminating-remote", "none-usable"])
def test_upstream_terminating_endpoints_policy_local(endpoints: list, to_cluster_ip: str,
                                                     to_lb: str) -> None:
    """Upstream TestTerminatingEndpointsTrafficPolicyLocal."""
    service = svc("ns1", "svc1", "172.30.1.1", ("", 80, "TCP", 0), type="LoadBalancer",
                  ingress="1.2.3.4", external_traffic_policy="Local",
                  health_check_node_port=30000)
    slice_ = eps("ns1", "svc1", [("", 80, "TCP")], *endpoints)
    rs = iptables.render(upstream_input([service], [slice_]))
    run_flows(rs, [
        ("pod to clusterIP", "10.0.0.2", "tcp", "172.30.1.1", 80, to_cluster_ip, False),
        ("external to LB", "203.0.113.2", "tcp", "1.2.3.4", 80, to_lb, False),
    ])


@pytest.mark.parametrize(("localhost", "addresses", "alt_ip", "firewall"), [
    (True, (), True, True),
    (False, (), True, False),
    (False, ("192.168.0.0/24", "127.0.0.1/32"), False, False),
    (False, ("192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64"), True, False),
], ids=["localhost", "no-localhost", "localhost-in-addresses", "several-addresses"])
def test_upstream_node_ports(localhost: bool, addresses: tuple[str, ...], alt_ip: bool,
                             firewall: bool) -> None:
    """Upstream TestNodePorts (IPv4 cases): --iptables-localhost-nodeports and
    --nodeport-addresses, and when KUBE-FIREWALL gets its anti-martian rule."""
    config = dataclasses.replace(UPSTREAM_CONFIG, localhost_nodeports=localhost,
                                 nodeport_addresses=addresses)
    service = svc("ns1", "svc1", "172.30.0.41", ("p80", 80, "TCP", 3001), type="NodePort")
    rs = iptables.render(upstream_input([service], [eps(
        "ns1", "svc1", P80, ("10.180.0.1", ""), ("10.180.2.1", TEST_NODE))], config))
    both = "10.180.0.1:80, 10.180.2.1:80"
    run_flows(rs, [
        ("pod to cluster IP", "10.0.0.2", "tcp", "172.30.0.41", 80, both, False),
        ("external to nodePort", "203.0.113.2", "tcp", "192.168.0.2", 3001, both, True),
        ("node to nodePort", "192.168.0.2", "tcp", "192.168.0.2", 3001, both, True),
        ("localhost to nodePort", "127.0.0.1", "tcp", "127.0.0.1", 3001,
         both if localhost else "", localhost),
        ("external to nodePort on secondary IP", "203.0.113.2", "tcp", "192.168.1.2", 3001,
         both if alt_ip else "", alt_ip),
    ])
    expected = ['-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" '
                "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate "
                "RELATED,ESTABLISHED,DNAT -j DROP"] if firewall else []
    assert rs.chains()["filter"].get("KUBE-FIREWALL", []) == expected


# ================================================================= partial syncs


def two_services(web_endpoint: str, with_api: bool = True) -> iptables.IptablesRuleset:
    services = [svc("default", "web", "10.96.0.20", ("http", 80, "TCP", 0))]
    slices = [eps("default", "web", [("http", 8080, "TCP")], (web_endpoint, "node2"))]
    if with_api:
        services.append(svc("default", "api", "10.96.0.21", ("http", 80, "TCP", 0)))
        slices.append(eps("default", "api", [("http", 8080, "TCP")], ("10.244.1.7", "node1")))
    return iptables.render(build_input(CONFIG, services, slices))


def declared(text: str, table: str = "nat") -> list[str]:
    return list(parse_restore(text)[table])


def test_partial_sync_resends_only_the_changed_service() -> None:
    old, new = two_services("10.244.1.2"), two_services("10.244.1.3")
    partial = new.partial_payload(old)
    web = {c.name for c in new.nat_chains if c.service == "default/web"}
    api = {c.name for c in new.nat_chains if c.service == "default/api"}
    old_sep = next(c.name for c in old.nat_chains
                   if c.service == "default/web" and c.name.startswith("KUBE-SEP-"))
    chains = declared(partial)
    assert web <= set(chains) and not api & set(chains)
    assert f"-X {old_sep}\n" in partial and old_sep in chains
    # Top-level chains are always rewritten; the filter table, unchanged, is left out
    # (its own kernel transaction, ~10 ms with iptables-nft)...
    assert chains[:4] == ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING",
                          "KUBE-MARK-MASQ"]
    assert "filter" not in parse_restore(partial)
    # ... and written whole when it changed: web without endpoints gets a REJECT there
    empty = iptables.render(build_input(CONFIG, [
        svc("default", "web", "10.96.0.20", ("http", 80, "TCP", 0)),
        svc("default", "api", "10.96.0.21", ("http", 80, "TCP", 0))], [
        eps("default", "web", [("http", 8080, "TCP")]),
        eps("default", "api", [("http", 8080, "TCP")], ("10.244.1.7", "node1"))]))
    with_filter = parse_restore(empty.partial_payload(new))
    assert with_filter["filter"] == empty.chains()["filter"]
    assert any("REJECT" in r for r in with_filter["filter"]["KUBE-SERVICES"])
    assert all(svc_ in partial for svc_ in ('"default/api:http cluster IP"',
                                            '"default/web:http cluster IP"'))
    # The deletion comes after every service rule, before the "last rule".
    lines = partial.splitlines()
    assert lines[-3] == f"-X {old_sep}" and "must be the last rule" in lines[-2]


def test_partial_sync_deletes_a_removed_service() -> None:
    old, new = two_services("10.244.1.2"), two_services("10.244.1.2", with_api=False)
    partial = new.partial_payload(old)
    api = sorted(c.name for c in old.nat_chains if c.service == "default/api")
    assert api and all(f":{c} - [0:0]" in partial and f"-X {c}" in partial for c in api)
    assert not any(c.startswith(("KUBE-SVC-", "KUBE-SEP-")) and c not in api
                   for c in declared(partial))
    assert "default/api" not in partial.replace("-X ", "")


def test_partial_sync_without_changes_sends_no_service_chains() -> None:
    rs = two_services("10.244.1.2")
    partial = rs.partial_payload(two_services("10.244.1.2"))
    assert not any(iptables.is_service_chain(c) for c in declared(partial))
    assert "-X" not in partial
    assert rs.payload(rs) == rs.payload()


# ================================================================= cleanup and views


def test_cleanup_removes_everything_but_kubelets_chain() -> None:
    rs = iptables.render(golden_input("loadbalancer-source-ranges"))
    text, argv = rs.cleanup_payload()
    tables = parse_restore(text)
    assert list(tables) == ["nat", "filter"]
    for table, chains in rs.chains().items():
        for chain in chains:
            if chain != "KUBE-FIREWALL":
                assert f":{chain} - [0:0]" in text and chain in tables[table], chain
    for table in ("nat", "filter"):
        section = text.split(f"*{table}\n")[1].split("COMMIT")[0]
        assert ":KUBE-PROXY-CANARY - [0:0]\n" in section and "-X KUBE-PROXY-CANARY\n" in section
        assert "-A " not in section
    jumps = [a for a in rs.jump_rules() if a[-1] != "KUBE-FIREWALL"]
    assert argv[:-1] == [[*a[:2], "-D", *a[3:]] for a in jumps]
    assert argv[-1] == ["-t", "mangle", "-X", "KUBE-PROXY-CANARY"]
    assert "KUBE-FIREWALL" not in text

    text, argv = rs.cleanup_payload(kubelet_chains=True)
    assert "-X KUBE-FIREWALL\n" in text
    assert ["-t", "filter", "-D", "INPUT", "-j", "KUBE-FIREWALL"] in argv


def test_jump_rules_and_chains_they_need() -> None:
    rs = iptables.render(golden_input("clusterip-one-endpoint"))
    jumps = rs.jump_rules()
    assert jumps[0] == ["-t", "filter", "-I", "INPUT", "-m", "conntrack", "--ctstate", "NEW",
                        "-m", "comment", "--comment",
                        "kubernetes externally-visible service portals",
                        "-j", "KUBE-EXTERNAL-SERVICES"]
    assert ["-t", "nat", "-I", "PREROUTING", "-m", "comment", "--comment",
            "kubernetes service portals", "-j", "KUBE-SERVICES"] in jumps
    needed = {(a[1], a[-1]) for a in jumps}
    made = [(a[1], a[3]) for a in rs.ensure_chains()]
    assert needed <= set(made) and len(made) == len(set(made))
    assert ("mangle", "KUBE-PROXY-CANARY") in made


def test_for_service_shows_its_lines_only() -> None:
    rs = iptables.render(overall_input(), random_fully=False)
    text = rs.for_service("ns5", "svc5")
    own = {c.name for c in rs.nat_chains if c.service == "ns5/svc5"}
    got = [line for line in text.splitlines() if line.startswith("-A ")]
    expected = [line for line in rs.payload().splitlines() if line.startswith("-A ") and (
        "ns5/svc5" in line or line.split(" ")[1] in own)]
    assert got == expected
    assert "-A KUBE-PROXY-FIREWALL" in text and "-A KUBE-NODEPORTS" in text
    assert set(declared(text)) == own | {"KUBE-SERVICES", "KUBE-NODEPORTS"}
    assert declared(text, "filter") == ["KUBE-PROXY-FIREWALL"]
    assert "ns6/svc6:p80 has no endpoints" in rs.for_service("ns6", "svc6")
    assert rs.for_service("ns9", "nothing") == ""


# ================================================================= flags


def flag_ruleset(**config: object) -> iptables.IptablesRuleset:
    return iptables.render(upstream_input(
        [svc("ns1", "svc1", "172.30.0.41", ("p80", 80, "TCP", 3001), type="NodePort",
             external_traffic_policy="Local")],
        [eps("ns1", "svc1", P80, ("10.180.0.1", TEST_NODE))],
        dataclasses.replace(UPSTREAM_CONFIG, **config)))  # type: ignore[arg-type]


def test_masquerade_all_and_no_local_detector() -> None:
    masq_all = flag_ruleset(masquerade_all=True).payload()
    assert "--dport 80 -j KUBE-MARK-MASQ" in masq_all and "! -s 10.0.0.0/8" not in masq_all
    no_detector = flag_ruleset(cluster_cidr="").payload()
    assert "cluster IP\" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-MARK-MASQ" \
        not in no_detector
    assert "pod traffic for" not in no_detector
    assert "pod traffic for" in flag_ruleset().payload()


def test_nodeport_addresses_give_one_tail_rule_per_node_ip() -> None:
    rs = flag_ruleset(nodeport_addresses=("192.168.0.0/16",))
    tail = [r for r in rs.chains()["nat"]["KUBE-SERVICES"] if "must be the last" in r]
    assert [r.split(" -d ")[1].split(" ")[0] for r in tail] == \
        ["192.168.0.2", "192.168.1.2", "192.168.99.11"]
    assert "KUBE-FIREWALL" not in rs.chains()["filter"]  # 127/8 excluded: no localhost NPs
    rs = flag_ruleset(localhost_nodeports=False)
    assert rs.chains()["nat"]["KUBE-SERVICES"][-1].endswith(
        "-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS")


def test_hash_prefix_equals_full_base32_of_sha256() -> None:
    import base64
    import hashlib

    from labctl.proxy.base import _b32

    for text in ("ns1/svc1:p80tcp", "kube-system/kube-dns:dnsudp10.244.0.5:53", "x" * 300):
        full = base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()
        assert _b32(text, 16) == full[:16] and _b32(text, 8) == full[:8]
