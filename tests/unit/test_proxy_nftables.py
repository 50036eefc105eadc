"""kube-proxy's nftables mode (labctl.proxy.nftables), pure: no root, no nft binary.

* goldens: one `nft -f` payload per Service shape, input through the real loader;
* upstream: cases of kubernetes/kubernetes pkg/proxy/nftables/proxier_test.go with the
  same inputs, compared after the canonicalisation upstream applies
  (sortNFTablesTransaction in helpers_test.go);
* partial syncs, cleanup, the per-Service view and structural self-checks.

UPDATE_GOLDEN=1 rewrites the goldens; read every diff against the reference before
committing it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from labctl.cluster.compile import compile_state
from labctl.cluster.state import PortAllocation, ServiceState
from labctl.model.load import load_topology
from labctl.model.objects import (
    Endpoint,
    EndpointPort,
    EndpointSlice,
    ObjectMeta,
    Service,
    ServicePort,
)
from labctl.proxy import nftables
from labctl.proxy.base import ProxyConfig, build_input
from labctl.proxy.nftables_objects import (
    Chain,
    Element,
    NftError,
    NftState,
    Op,
    Rule,
    Table,
    lines,
)

GOLDEN = Path(__file__).parent / "golden" / "proxy" / "nftables"
UPSTREAM = GOLDEN / "upstream"
CASES = sorted(p.stem for p in GOLDEN.glob("*.yaml"))
CONFIG = ProxyConfig(node_name="node1", node_ips=("172.18.0.2",),
                     cluster_cidr="10.244.0.0/16", service_cidr="10.96.0.0/12")


# ----------------------------------------------------------------- helpers


def load_services(path: Path) -> tuple[list[ServiceState], list[EndpointSlice]]:
    topology, _ = load_topology([str(path)])
    state = compile_state(topology)
    for svc in state.services:
        # The goldens pin the VIP in status.loadBalancer.ingress; compile must keep it
        # rather than allocate one from the lab's pool.
        if svc.service.type == "LoadBalancer":
            assert svc.load_balancer_ip == svc.service.load_balancer_ingress[0]
    return list(state.services), list(state.endpoint_slices)


def render_case(case: str, config: ProxyConfig = CONFIG) -> nftables.NftRuleset:
    services, slices = load_services(GOLDEN / f"{case}.yaml")
    return nftables.render(build_input(config, services, slices))


def render(services: Sequence[ServiceState], slices: Sequence[EndpointSlice],
           config: ProxyConfig = CONFIG) -> nftables.NftRuleset:
    return nftables.render(build_input(config, services, slices))


def payload_lines(text: str) -> list[str]:
    return text.splitlines()


# ----------------------------------------------------------------- goldens


def test_there_is_a_golden_per_service_shape() -> None:
    assert len(CASES) >= 14


@pytest.mark.parametrize("case", CASES)
def test_golden_payload(case: str) -> None:
    got = render_case(case).payload()
    golden = GOLDEN / f"{case}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(got)
    assert got == golden.read_text()


_DECLARED = re.compile(r"^add (chain|set|map) ip kube-proxy (\S+)")
_TARGET = re.compile(r"\b(?:jump|goto) (\S+?)(?: |$| })")
_SET_REF = re.compile(r"@(\S+)")


def references(text: str) -> tuple[set[str], set[str]]:
    """Chains jumped to (rules, anonymous vmaps, map elements) and sets looked up."""
    chains, sets = set(), set()
    for ln in payload_lines(text):
        if ln.startswith(("add rule", "add element")):
            chains |= set(_TARGET.findall(ln))
            sets |= set(_SET_REF.findall(ln))
    return chains, sets


@pytest.mark.parametrize("case", CASES)
def test_every_target_is_declared_and_every_service_object_used(case: str) -> None:
    text = render_case(case).payload()
    found = [m.groups() for ln in payload_lines(text) if (m := _DECLARED.match(ln))]
    chains = {name for kind, name in found if kind == "chain"}
    sets = {name for kind, name in found if kind != "chain"}
    jumped, looked_up = references(text)
    assert jumped <= chains, jumped - chains
    assert looked_up <= sets, looked_up - sets
    unused = {c for c in chains if "/" in c} - jumped
    unused |= {s for s in sets if "/" in s} - looked_up  # affinity sets
    assert not unused, f"never referenced: {unused}"


@pytest.mark.parametrize("case", CASES)
def test_map_verdicts_point_at_existing_chains(case: str) -> None:
    state = render_case(case).objects()  # NftState refuses dangling references too
    for name, held in state.elements.items():
        for e in held.values():
            for verdict in e.value:
                target = verdict.split()[-1]
                assert verdict in ("drop", "accept") or target in state.chains, (name, e)


def test_payload_is_one_object_per_line_in_the_ip_kube_proxy_table() -> None:
    text = render_case("loadbalancer").payload()
    assert text.startswith('add table ip kube-proxy { comment "rules for kube-proxy" ; }\n')
    for ln in payload_lines(text):
        assert re.match(r"^(add|flush|delete) (table|chain|rule|set|map|element) "
                        r"ip kube-proxy", ln), ln


def test_headless_and_externalname_add_nothing_to_the_fixed_part() -> None:
    empty = nftables.render(build_input(CONFIG, [], []))
    assert render_case("headless-and-externalname").payload() == empty.payload()
    assert render_case("headless-and-externalname").services == ()


def test_multi_port_service_adds_its_cluster_ip_once() -> None:
    text = render_case("multi-port-udp").payload()
    assert text.count("add element ip kube-proxy cluster-ips { 10.96.0.53 }") == 1
    for proto, port in (("udp", 53), ("tcp", 53), ("tcp", 9153), ("sctp", 3868)):
        assert f"{{ 10.96.0.53 . {proto} . {port} : goto service-" in text
        assert f"meta l4proto {proto} dnat to 10.244.0.7:{port}" in text


# ----------------------------------------------------------------- config variants


def test_nodeport_addresses_fill_the_nodeport_ips_set() -> None:
    cfg = ProxyConfig(node_name="node1", node_ips=("172.18.0.2", "127.0.0.1", "10.0.0.9"),
                      cluster_cidr="10.244.0.0/16",
                      nodeport_addresses=("172.18.0.0/24", "127.0.0.0/8", "fd00::/64"))
    text = render_case("nodeport", cfg).payload()
    assert ("add set ip kube-proxy nodeport-ips { type ipv4_addr ; comment "
            '"IPs that accept NodePort traffic" ; }\nflush set ip kube-proxy nodeport-ips\n'
            "add element ip kube-proxy nodeport-ips { 172.18.0.2 }\n") in text
    assert "127.0.0.1 }" not in text  # localhost NodePorts do not exist in nftables mode
    assert ("add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport "
            "vmap @service-nodeports") in text
    assert "fib daddr type local" not in text


def test_match_all_nodeport_addresses_delete_the_set() -> None:
    text = render_case("nodeport").payload()
    assert "delete set ip kube-proxy nodeport-ips\n" in text
    assert ("services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport "
            "vmap @service-nodeports") in text
    assert "nodeport-ips" not in render_case("nodeport").dump()


def test_masquerade_all_marks_all_cluster_ip_traffic() -> None:
    cfg = ProxyConfig(node_name="node1", node_ips=("172.18.0.2",),
                      cluster_cidr="10.244.0.0/16", masquerade_all=True)
    rules = rules_of(render_case("clusterip-1-endpoint", cfg), "service-")
    assert rules[0] == "ip daddr 10.96.0.20 jump mark-for-masquerade"


def test_without_a_cluster_cidr_there_is_no_local_traffic_detector() -> None:
    cfg = ProxyConfig(node_name="node1", node_ips=("172.18.0.2",))
    rs = render_case("etp-local-with-local-endpoint", cfg)
    assert rules_of(rs, "service-")[0].startswith("numgen random mod 2 vmap")
    assert not any("short-circuit pod" in r for r in rules_of(rs, "external-"))
    assert "Drop traffic to unallocated ClusterIPs" not in rs.payload()


def test_masquerade_mark_is_written_as_kube_proxy_formats_it() -> None:
    text = render_case("clusterip-1-endpoint").payload()
    assert "mark-for-masquerade mark set mark or 0x00004000\n" in text
    assert "masquerading mark and 0x00004000 == 0 return\n" in text


def rules_of(rs: nftables.NftRuleset, prefix: str) -> list[str]:
    """The rules of the (only) Service chain whose name starts with prefix."""
    state = rs.objects()
    chain = next(c for c in state.chains if c.startswith(prefix) and "/" in c)
    return state.rule_lines(chain)


# ----------------------------------------------------------------- upstream cases

UPSTREAM_CONFIG = ProxyConfig(
    node_name="test-node", node_ips=("192.168.0.2", "192.168.1.2", "192.168.99.11"),
    cluster_cidr="10.0.0.0/8", service_cidr="172.30.0.0/16",
    nodeport_addresses=("192.168.0.2/32", "2001:db8::1/128"))
_ORDER = {"table": 10, "chain": 9, "rule": 8, "set": 7, "map": 6, "element": 5}


def canonical(text: str) -> list[str]:
    """sortNFTablesTransaction: drop blank and # lines, sort by object type then name;
    rules keep their order within a chain, other lines sort as whole lines."""
    kept = [ln for ln in payload_lines(text) if ln.strip() and not ln.startswith("#")]

    def key(ln: str) -> tuple[int, str, str]:
        words = ln.split(" ")
        return (-_ORDER.get(words[1], 0), words[4], "" if words[1] == "rule" else ln)

    return sorted(kept, key=key)


def as_upstream(text: str) -> str:
    # Upstream's fake proxier injects the mark as "0x4000"; the real one (and labctl)
    # writes fmt.Sprintf("%#08x", 1<<14) = "0x00004000".
    return text.replace(UPSTREAM_CONFIG.masquerade_mark, "0x4000")


def upstream_file(name: str) -> str:
    return (UPSTREAM / name).read_text()


def blocks() -> dict[str, str]:
    out: dict[str, str] = {}
    name = ""
    for ln in payload_lines(upstream_file("TestSyncProxyRulesRepeated.nft")):
        if ln.startswith("## "):
            name = ln[3:]
            out[name] = ""
        elif name:
            out[name] += ln + "\n"
    return out


def svc(ns: str, name: str, ip: str, port_name: str, port: int, *, type: str = "ClusterIP",
        node_port: int = 0, external_ips: Sequence[str] = (), vip: str = "",
        etp: str = "Cluster", itp: str = "Cluster", ranges: Sequence[str] = (),
        affinity: bool = False) -> ServiceState:
    """A Service as upstream's makeTestService sets it up: used as written, like the
    fake API there (no allocation, no validation)."""
    spec = Service(ObjectMeta(name, ns), type=type,
                   ports=(ServicePort(port, port_name, "TCP", node_port=node_port),),
                   cluster_ip=ip, external_ips=tuple(external_ips),
                   external_traffic_policy=etp, internal_traffic_policy=itp,
                   load_balancer_source_ranges=tuple(ranges),
                   session_affinity="ClientIP" if affinity else "None",
                   load_balancer_ingress=(vip,) if vip else ())
    return ServiceState(spec, ip, (PortAllocation(port_name, "TCP", port, node_port),), vip)


def eps(ns: str, name: str, port_name: str, port: int, *endpoints: str | tuple[str, str]
        ) -> EndpointSlice:
    """makeTestEndpointSlice: "ip" (nodeName unset) or ("ip", nodeName)."""
    pairs = [(e, "") if isinstance(e, str) else e for e in endpoints]
    return EndpointSlice(
        ObjectMeta(f"{name}-1", ns, {"kubernetes.io/service-name": name}),
        endpoints=tuple(Endpoint((ip,), node_name=node) for ip, node in pairs),
        ports=(EndpointPort(port, port_name, "TCP"),))


def test_upstream_TestOverallNFTablesRules() -> None:
    services = [
        svc("ns1", "svc1", "172.30.0.41", "p80", 80),
        svc("ns2", "svc2", "172.30.0.42", "p80", 80, type="LoadBalancer", etp="Local",
            node_port=3001, vip="1.2.3.4", external_ips=["192.168.99.22"]),
        svc("ns3", "svc3", "172.30.0.43", "p80", 80, type="NodePort", node_port=3003),
        svc("ns4", "svc4", "172.30.0.44", "p80", 80, type="NodePort",
            external_ips=["192.168.99.33"]),
        svc("ns5", "svc5", "172.30.0.45", "p80", 80, type="LoadBalancer", node_port=3002,
            vip="5.6.7.8", ranges=[" 203.0.113.0/25"], affinity=True),
        svc("ns6", "svc6", "172.30.0.46", "p80", 80),
    ]
    slices = [eps("ns1", "svc1", "p80", 80, "10.180.0.1"),
              eps("ns2", "svc2", "p80", 80, "10.180.0.2"),
              eps("ns3", "svc3", "p80", 80, "10.180.0.3"),
              eps("ns4", "svc4", "p80", 80, "10.180.0.4", ("10.180.0.5", "test-node")),
              eps("ns5", "svc5", "p80", 80, "10.180.0.3")]
    got = render(services, slices, UPSTREAM_CONFIG).dump()
    want = upstream_file("base-rules.nft") + upstream_file("TestOverallNFTablesRules.nft")
    assert canonical(as_upstream(got)) == canonical(want)


def test_upstream_TestSyncProxyRulesStartup_final_state() -> None:
    services = [svc("ns1", "svc1", "172.30.0.41", "p80", 80),
                svc("ns2", "svc2", "172.30.0.42", "p8080", 8080),
                svc("ns3", "svc3", "172.30.0.43", "p80", 80)]
    slices = [eps("ns1", "svc1", "p80", 80, "10.0.1.1", "10.0.1.2"),
              eps("ns2", "svc2", "p8080", 8080, "10.0.2.1")]
    got = render(services, slices, UPSTREAM_CONFIG).dump()
    want = upstream_file("base-rules.nft") + upstream_file("TestSyncProxyRulesStartup.nft")
    assert canonical(as_upstream(got)) == canonical(want)


def repeated_steps() -> list[tuple[str, list[ServiceState], list[EndpointSlice], list[str],
                                   int, int]]:
    """TestSyncProxyRulesRepeated: (step, Services, slices, expected blocks, operations
    of the sync transaction, chains deleted from an earlier sync)."""
    s1, s2 = (svc("ns1", "svc1", "172.30.0.41", "p80", 80),
              svc("ns2", "svc2", "172.30.0.42", "p8080", 8080))
    s3, s4 = (svc("ns3", "svc3", "172.30.0.43", "p80", 80),
              svc("ns4", "svc4", "172.30.0.44", "p80", 80))
    e1 = eps("ns1", "svc1", "p80", 80, "10.0.1.1")
    e2 = eps("ns2", "svc2", "p8080", 8080, "10.0.2.1")
    e4 = eps("ns4", "svc4", "p80", 80, "10.0.4.1")

    def e3(*ips: str) -> EndpointSlice:
        return eps("ns3", "svc3", "p80", 80, *ips)

    two = e3("10.0.3.2", "10.0.3.3")
    after = ["svc1", "svc3-two-endpoints", "svc4"]
    emptied = ["svc1", "svc3-emptied", "svc4"]
    return [
        ("initial", [s1, s2], [e1, e2], ["svc1", "svc2"], -1, 0),
        ("add svc3", [s1, s2, s3], [e1, e2, e3("10.0.3.1")],
         ["svc1", "svc2", "svc3-10.0.3.1"], 10, 0),
        ("delete svc2", [s1, s3], [e1, e3("10.0.3.1")],
         ["svc1", "svc3-10.0.3.1", "svc2-flushed"], 4, 0),
        ("next sync deletes the flushed chains", [s1, s3], [e1, e3("10.0.3.1")],
         ["svc1", "svc3-10.0.3.1"], 0, 2),
        ("add svc4 without endpoints", [s1, s3, s4], [e1, e3("10.0.3.1")],
         ["svc1", "svc3-10.0.3.1", "svc4-no-endpoints"], 2, 0),
        ("add svc4's endpoint", [s1, s3, s4], [e1, e3("10.0.3.1"), e4],
         ["svc1", "svc3-10.0.3.1", "svc4"], 10, 0),
        ("change svc3's endpoint", [s1, s3, s4], [e1, e3("10.0.3.2"), e4],
         ["svc1", "svc3-10.0.3.2", "svc3-10.0.3.1-flushed", "svc4"], 9, 0),
        ("add an endpoint to svc3", [s1, s3, s4], [e1, two, e4], after, 12, 1),
        ("empty svc3", [s1, s3, s4], [e1, e3(), e4], emptied, 5, 0),
        ("restore svc3 at once", [s1, s3, s4], [e1, two, e4], after, 14, 0),
        ("empty svc3 again", [s1, s3, s4], [e1, e3(), e4], emptied, 5, 0),
        # Upstream ages the stale chains here, so it deletes them in a first transaction
        # and recreates them; labctl keeps chains that are in use again (same table).
        ("restore svc3 later", [s1, s3, s4], [e1, two, e4], after, 14, 0),
        ("no change", [s1, s3, s4], [e1, two, e4], after, 0, 0),
    ]


def test_upstream_TestSyncProxyRulesRepeated() -> None:
    """Each step's sync transaction, applied to the table like the kernel would, leaves
    the dump upstream expects, with as many operations as upstream counts."""
    parts = blocks()
    base = upstream_file("base-rules.nft")
    kernel = NftState()
    old: nftables.NftRuleset | None = None
    for step, services, slices, want, n_ops, n_deleted in repeated_steps():
        rs = render(services, slices, UPSTREAM_CONFIG)
        ops = rs.operations() if old is None else rs.update_operations(old)
        payload = rs.payload() if old is None else rs.update_payload(old)
        assert lines(ops) == payload, step
        kernel.apply_all(ops)
        expected = base + "".join(parts[b] for b in want)
        assert canonical(as_upstream(kernel.dump())) == canonical(expected), step
        deleted = [op for op in ops if op.verb == "delete" and isinstance(op.obj, Chain)]
        if old is not None:
            assert (len(ops) - len(deleted), len(deleted)) == (n_ops, n_deleted), step
        old = rs


# ----------------------------------------------------------------- partial syncs


def web(*endpoints: tuple[str, str], etp: str = "Cluster", itp: str = "Cluster",
        affinity: bool = False, name: str = "web", ip: str = "10.96.0.20"
        ) -> tuple[ServiceState, EndpointSlice]:
    """A NodePort Service demo/<name> (port http 80 -> 8080) and its EndpointSlice."""
    node_port = 30080 if name == "web" else 30081
    return (svc("demo", name, ip, "http", 80, type="NodePort", node_port=node_port, etp=etp,
                itp=itp, affinity=affinity),
            eps("demo", name, "http", 8080, *endpoints))


def rendered(*pairs: tuple[ServiceState, EndpointSlice]) -> nftables.NftRuleset:
    return render([p[0] for p in pairs], [p[1] for p in pairs])


A, B, C = ("10.244.0.5", "node1"), ("10.244.1.5", "node2"), ("10.244.2.5", "node3")


def applied(*rulesets: nftables.NftRuleset) -> NftState:
    """The kernel's table after the first ruleset's payload and each later update."""
    kernel = NftState.of(rulesets[0].operations())
    for old, new in zip(rulesets, rulesets[1:], strict=False):
        kernel.apply_all(new.update_operations(old))
        new.update_payload(old)  # remembers what it flushed for the next update
    return kernel


def test_one_endpoint_removed_rewrites_only_that_service() -> None:
    before = rendered(web(A, B, C), web(A, name="api", ip="10.96.0.21"))
    after = rendered(web(A, B), web(A, name="api", ip="10.96.0.21"))
    text = after.update_payload(before)
    assert "api" not in text
    gone = "endpoint-" + next(c.split("endpoint-")[1] for c in before.active_chains()
                              if "10.244.2.5" in c)
    lines_ = payload_lines(text)
    assert f"flush chain ip kube-proxy {gone}" in lines_
    assert not any(ln.startswith(("add element", "delete element")) for ln in lines_)
    assert any(ln.startswith("add rule ip kube-proxy service-") and "mod 2 vmap" in ln
               for ln in lines_)
    # kube-proxy deletes the flushed chain at its next sync, not in this transaction.
    assert f"delete chain ip kube-proxy {gone}" not in lines_
    assert after.stale_left == (gone,)
    again = rendered(web(A, B), web(A, name="api", ip="10.96.0.21"))
    assert again.update_payload(after) == f"delete chain ip kube-proxy {gone}\n"


def test_updates_leave_the_kernel_with_exactly_the_new_table() -> None:
    first, second = rendered(web(A, B, C)), rendered(web(A, B))
    third = rendered(web(A, B))
    kernel = applied(first, second, third)
    assert canonical(kernel.dump()) == canonical(third.dump())


def test_a_removed_service_loses_its_elements_then_its_chains() -> None:
    before = rendered(web(A, B), web(C, name="api", ip="10.96.0.21"))
    after = rendered(web(A, B))
    lines_ = payload_lines(after.update_payload(before))
    api = {c for c in before.active_chains() if "/api/" in c}
    assert {ln for ln in lines_ if ln.startswith("flush chain")} == {
        f"flush chain ip kube-proxy {c}" for c in api}
    assert {ln for ln in lines_ if ln.startswith("delete element")} == {
        "delete element ip kube-proxy cluster-ips { 10.96.0.21 }",
        "delete element ip kube-proxy service-ips { 10.96.0.21 . tcp . 80 }",
        "delete element ip kube-proxy service-nodeports { tcp . 30081 }"}
    assert not any(ln.startswith("add ") for ln in lines_)
    kernel = applied(before, after, rendered(web(A, B)))
    assert not any("/api/" in c for c in kernel.chains)
    assert canonical(kernel.dump()) == canonical(after.dump())


def test_a_changed_map_value_is_deleted_then_added() -> None:
    before, after = rendered(web(A, B)), rendered(web(A, B, itp="Local"))
    lines_ = payload_lines(after.update_payload(before))
    i = lines_.index("delete element ip kube-proxy service-ips { 10.96.0.20 . tcp . 80 }")
    assert lines_[i + 1].startswith(
        "add element ip kube-proxy service-ips { 10.96.0.20 . tcp . 80 : goto local-")
    assert canonical(applied(before, after).dump()) == canonical(after.dump())


def test_losing_every_endpoint_swaps_the_maps_and_flushes_the_chains() -> None:
    before, after = rendered(web(A)), rendered(web())
    lines_ = payload_lines(after.update_payload(before))
    assert ('add element ip kube-proxy no-endpoint-services { 10.96.0.20 . tcp . 80 comment '
            '"demo/web:http" : goto reject-chain }') in lines_
    assert "delete element ip kube-proxy service-ips { 10.96.0.20 . tcp . 80 }" in lines_
    assert sum(ln.startswith("flush chain") for ln in lines_) == 3  # service, external, ep
    assert canonical(applied(before, after, rendered(web())).dump()) == canonical(after.dump())


def test_dropping_session_affinity_deletes_the_affinity_sets() -> None:
    before, after = rendered(web(A, B, affinity=True)), rendered(web(A, B))
    lines_ = payload_lines(after.update_payload(before))
    assert sum(ln.startswith("delete set ip kube-proxy affinity-") for ln in lines_) == 2
    assert canonical(applied(before, after).dump()) == canonical(after.dump())


def test_unchanged_input_updates_nothing() -> None:
    assert rendered(web(A, B)).update_payload(rendered(web(A, B))) == ""


def test_a_changed_config_or_full_sync_resends_the_fixed_part() -> None:
    old = rendered(web(A, B))
    new = nftables.render(build_input(
        ProxyConfig(node_name="node1", node_ips=("172.18.0.2",), cluster_cidr="10.244.0.0/16",
                    service_cidr="10.96.0.0/12", nodeport_addresses=("172.18.0.0/24",)),
        [web(A, B)[0]], [web(A, B)[1]]))
    text = new.update_payload(old)
    assert text.startswith('add table ip kube-proxy { comment "rules for kube-proxy" ; }\n')
    assert "delete chain" not in text  # base chains are recreated on the first sync only
    kernel = applied(old, new)
    assert canonical(kernel.dump()) == canonical(new.dump())
    full = rendered(web(A, B)).update_payload(old, full_sync=True)
    assert "add rule ip kube-proxy reject-chain reject" in full
    assert "add element" not in full  # elements already there are not re-added


# ----------------------------------------------------------------- cleanup, one Service


def test_cleanup_deletes_the_table() -> None:
    rs = rendered(web(A))
    assert rs.cleanup_payload() == "delete table ip kube-proxy\n"
    kernel = NftState.of(rs.operations())
    kernel.apply_all([Op("delete", Table())])
    assert kernel.table is None and not kernel.chains
    assert rs.cleanup_payload(if_exists=True) == (
        "add table ip kube-proxy\ndelete table ip kube-proxy\n")


def test_for_service_shows_that_service_only() -> None:
    rs = rendered(web(A, B, affinity=True), web(C, name="api", ip="10.96.0.21"))
    text = rs.for_service("demo", "web")
    assert text.startswith("table ip kube-proxy {\n") and text.endswith("\n}\n")
    assert "api" not in text and "10.96.0.21" not in text
    for chain in (c for c in rs.active_chains() if "/web/" in c):
        assert f"\tchain {chain} {{\n" in text
    assert "\t\telements = { 10.96.0.20 }\n" in text
    assert "\t\telements = { tcp . 30080 : goto external-" in text
    assert "\t\tflags dynamic,timeout\n\t\ttimeout 10800s\n" in text
    assert text.index("\tchain service-") < text.index("\tchain endpoint-")
    assert rs.for_service("demo", "nope") == ""


def test_for_service_of_a_service_without_endpoints_shows_its_reject_entry() -> None:
    text = render_case("clusterip-no-endpoints").for_service("demo", "web")
    assert ('10.96.0.20 . tcp . 80 comment "demo/web:http" : goto reject-chain }') in text
    assert "\tchain " not in text


# ----------------------------------------------------------------- the object model


def test_state_refuses_what_nft_refuses() -> None:
    state = NftState.of(rendered(web(A)).operations())
    svc_chain = next(c for c in state.chains if c.startswith("service-") and "/" in c)
    with pytest.raises(NftError, match="busy"):
        state.apply(Op("delete", Chain(svc_chain)))  # service-ips still points at it
    ep_chain = next(c for c in state.chains if c.startswith("endpoint-"))
    with pytest.raises(NftError, match="busy"):
        state.apply(Op("delete", Chain(ep_chain)))  # the service chain's vmap does
    with pytest.raises(NftError, match="no such chain"):
        state.apply(Op("add", Rule("services", "goto nowhere")))
    with pytest.raises(NftError, match="another value"):
        state.apply(Op("add", Element("service-ips", ("10.96.0.20", "tcp", "80"), ("drop",))))
    with pytest.raises(NftError, match="another type"):
        state.apply(Op("add", Chain("nat-output", "nat", "output", 0)))
    state.apply(Op("delete", Chain("nat-output")))  # rules go with it; nothing jumps here
    assert "nat-output" not in state.chains


def test_writer_matches_knftables() -> None:
    assert lines([Op("add", Chain("nat-output", "nat", "output", -100))]) == (
        "add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }\n")
    assert lines([Op("add", Rule("c", "reject", 'say "hi"'))]) == (
        'add rule ip kube-proxy c reject comment "say \\"hi\\""\n')
    assert lines([Op("delete", Element("service-ips", ("1.2.3.4", "tcp", "80"), ("drop",)))]) \
        == "delete element ip kube-proxy service-ips { 1.2.3.4 . tcp . 80 }\n"
