"""Incremental syncs (labctl.proxy: build_input(previous=…), iptables/nftables
render_update, sync.render_sync): re-rendering only the changed Services must give
exactly what a from-scratch render and today's diff give — the same payload, the same
ruleset — for every kind of change, one at a time and in a row.

Pure: no root, no iptables or nft binary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
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
from labctl.proxy import base, iptables, nftables, sync
from labctl.proxy.base import ProxyConfig, ProxyInput, build_input

CONFIG = ProxyConfig(node_name="node1", node_ips=("172.18.0.2",), cluster_cidr="10.244.0.0/16",
                     service_cidr="10.96.0.0/12")
GOLDEN = Path(__file__).parent / "golden" / "proxy" / "iptables"

World = tuple[list[ServiceState], list[EndpointSlice]]
Change = Callable[[World], World]


# ----------------------------------------------------------------- a cluster of every shape


def svc(name: str, ip: str, *, ports: tuple[tuple[str, int, str, int], ...] = (
        ("http", 80, "TCP", 0),), type: str = "ClusterIP", external_ips: tuple[str, ...] = (),
        vip: str = "", ranges: tuple[str, ...] = (), etp: str = "Cluster",
        itp: str = "Cluster", affinity: bool = False, hc: int = 0) -> ServiceState:
    """A Service used as written (ports: name, port, protocol, nodePort)."""
    spec = Service(ObjectMeta(name, "demo"), type=type, cluster_ip=ip,
                   ports=tuple(ServicePort(p, n, proto, node_port=np)
                               for n, p, proto, np in ports),
                   external_ips=external_ips, external_traffic_policy=etp,
                   internal_traffic_policy=itp, load_balancer_source_ranges=ranges,
                   session_affinity="ClientIP" if affinity else "None",
                   load_balancer_ingress=(vip,) if vip else (), health_check_node_port=hc)
    return ServiceState(spec, ip, tuple(PortAllocation(n, proto, p, np)
                                        for n, p, proto, np in ports), vip)


def eps(name: str, *endpoints: tuple, ports: tuple[tuple[str, int, str], ...] = (
        ("http", 8080, "TCP"),)) -> EndpointSlice:
    """endpoints: (ip, node[, ready, serving, terminating])."""
    items = tuple(Endpoint((ip,), EndpointConditions(*conds), node_name=node)
                  for ip, node, *conds in endpoints)
    return EndpointSlice(ObjectMeta(f"{name}-x1", "demo",
                                    {"kubernetes.io/service-name": name}),
                         endpoints=items,
                         ports=tuple(EndpointPort(p, n, proto) for n, p, proto in ports))


def world() -> World:
    services = [
        svc("a", "10.96.0.10"),
        svc("b", "10.96.0.11", type="NodePort", ports=(("http", 80, "TCP", 30011),),
            etp="Local"),
        svc("c", "10.96.0.12", type="LoadBalancer", ports=(("http", 80, "TCP", 30012),),
            vip="192.0.2.12", ranges=("172.18.0.0/24", "203.0.113.0/25"), affinity=True,
            etp="Local", hc=31012),
        svc("d", "10.96.0.13", external_ips=("192.0.2.13",)),
        svc("e", "10.96.0.14", itp="Local"),
        svc("f", "10.96.0.15", ports=(("http", 80, "TCP", 0), ("dns", 53, "UDP", 0))),
        # g and h claim the same external IP and port: their service-ips elements disagree.
        svc("g", "10.96.0.16", external_ips=("192.0.2.99",)),
        svc("h", "10.96.0.17", external_ips=("192.0.2.99",)),
        # i lists its own ClusterIP as an external IP: its own elements disagree.
        svc("i", "10.96.0.18", external_ips=("10.96.0.18",)),
        svc("j", "10.96.0.19"),
    ]
    slices = [
        eps("a", ("10.244.0.10", "node1"), ("10.244.1.10", "node2")),
        eps("b", ("10.244.0.11", "node1"), ("10.244.1.11", "node2")),
        eps("c", ("10.244.0.12", "node1"), ("10.244.1.12", "node2")),
        eps("e", ("10.244.1.14", "node2")),
        eps("f", ("10.244.0.15", "node1"),
            ports=(("http", 8080, "TCP"), ("dns", 5353, "UDP"))),
        eps("g", ("10.244.0.16", "node1")),
        eps("h", ("10.244.1.17", "node2")),
        eps("i", ("10.244.0.18", "node1")),
        eps("j", ("10.244.0.19", "node1", False, True, True)),  # terminating only
    ]
    return services, slices


def replace_slice(name: str, *endpoints: tuple) -> Change:
    def change(w: World) -> World:
        services, slices = w
        others = [s for s in slices if s.service_name != name]
        return services, [*others, eps(name, *endpoints)] if endpoints else others
    return change


def replace_service(name: str, new: ServiceState | None) -> Change:
    def change(w: World) -> World:
        services, slices = w
        others = [s for s in services if s.name != name]
        return ([*others, new] if new else others), slices
    return change


def toggle_affinity(name: str) -> Change:
    def change(w: World) -> World:
        services, slices = w
        out = []
        for s in services:
            if s.name == name:
                spec = s.service
                on = "None" if spec.session_affinity == "ClientIP" else "ClientIP"
                s = dataclasses.replace(s, service=dataclasses.replace(spec,
                                                                       session_affinity=on))
            out.append(s)
        return out, slices
    return change


def equal_copies(w: World) -> World:
    """Every object replaced by an equal one (a state compiled again from the files)."""
    services, slices = w
    return ([dataclasses.replace(s) for s in services],
            [dataclasses.replace(s) for s in slices])


CHANGES: dict[str, Change] = {
    "endpoint changed": replace_slice("a", ("10.244.0.99", "node1"), ("10.244.1.10", "node2")),
    "endpoint added": replace_slice("a", ("10.244.0.10", "node1"), ("10.244.1.10", "node2"),
                                    ("10.244.2.10", "node3")),
    "endpoint removed": replace_slice("a", ("10.244.1.10", "node2")),
    "local endpoint lost": replace_slice("b", ("10.244.1.11", "node2")),
    "all endpoints gone": replace_slice("c"),
    "first endpoint": replace_slice("d", ("10.244.0.13", "node1")),
    "endpoint not ready": replace_slice("a", ("10.244.0.10", "node1", False),
                                        ("10.244.1.10", "node2")),
    "service added": replace_service("k", svc("k", "10.96.0.20", type="NodePort",
                                              ports=(("http", 80, "TCP", 30020),))),
    "service removed": replace_service("c", None),
    "affinity on": toggle_affinity("a"),
    "affinity off": toggle_affinity("c"),
    "port changed": replace_service("e", svc("e", "10.96.0.14", itp="Local",
                                             ports=(("http", 8080, "TCP", 0),))),
    "conflicting service changes": replace_slice("g", ("10.244.2.16", "node3")),
    "conflicting service removed": replace_service("g", None),
    "conflict resolved": replace_service("h", svc("h", "10.96.0.17")),
    "self-conflicting service changes": replace_slice("i", ("10.244.2.18", "node3")),
    "service takes another's external IP": replace_service(
        "j", svc("j", "10.96.0.19", external_ips=("192.0.2.13",))),
    "nothing": lambda w: w,
    "equal copies": equal_copies,
}
CONFIG_CHANGES = {
    "masquerade all": dataclasses.replace(CONFIG, masquerade_all=True),
    "nodeport addresses": dataclasses.replace(CONFIG, nodeport_addresses=("172.18.0.0/24",)),
    "other node": dataclasses.replace(CONFIG, node_name="node2"),
}


# ----------------------------------------------------------------- helpers


def inputs(w: World, config: ProxyConfig = CONFIG,
           previous: ProxyInput | None = None) -> ProxyInput:
    return build_input(config, *w, previous=previous)


def check_iptables(old_inp: ProxyInput, old: iptables.IptablesRuleset, w: World,
                   config: ProxyConfig = CONFIG) -> tuple[ProxyInput, iptables.IptablesRuleset]:
    """render_update against a from-scratch render and partial_payload: the same."""
    inp = inputs(w, config, previous=old_inp)
    scratch = inputs(w, config)
    assert inp == scratch
    assert inp.services == scratch.services
    new, payload = iptables.render_update(old, inp)
    ref = iptables.render(scratch)
    assert payload == ref.partial_payload(old)
    assert new == ref
    assert (new.nat_rules, new.filter_rules, new.nat_chains) == (
        ref.nat_rules, ref.filter_rules, ref.nat_chains)
    assert new.payload() == ref.payload() and new.payload(old) == ref.payload(old)
    return inp, new


def check_nftables(old_inp: ProxyInput, old: nftables.NftRuleset, w: World,
                   config: ProxyConfig = CONFIG, ref_old: nftables.NftRuleset | None = None,
                   ) -> tuple[ProxyInput, nftables.NftRuleset, nftables.NftRuleset]:
    """render_update against a from-scratch render and update_payload: the same.

    ref_old: the from-scratch track's previous ruleset (its stale_left set by its own
    update_payload); `old` by default."""
    inp = inputs(w, config, previous=old_inp)
    scratch = inputs(w, config)
    assert inp == scratch
    new, payload = nftables.render_update(old, inp)
    ref = nftables.render(scratch)
    assert payload == ref.update_payload(ref_old or old)
    assert new.config == ref.config and new.services == ref.services
    assert new.stale_left == ref.stale_left
    assert new.payload() == ref.payload()
    return inp, new, ref


# ----------------------------------------------------------------- build_input


def test_build_input_reuses_the_ports_of_unchanged_services() -> None:
    first = inputs(world())
    again = inputs(CHANGES["endpoint changed"](world()), previous=first)
    assert again == inputs(CHANGES["endpoint changed"](world()))
    for key, ports in again.services.items():
        if key == ("demo", "a"):
            assert ports != first.services[key]
        else:
            assert ports is first.services[key]  # the very same objects


def test_build_input_reuses_equal_copies_but_not_across_nodes() -> None:
    first = inputs(world())
    w = equal_copies(world())
    copies = inputs(w, previous=first)
    assert all(copies.services[k] is first.services[k] for k in first.services)
    # The memo now holds the copies: the next build finds the very same objects.
    assert all(copies.sources[(s.namespace, s.name)].service is s for s in w[0])
    assert inputs(w, previous=copies).sources == copies.sources
    other = inputs(world(), CONFIG_CHANGES["other node"], previous=first)
    assert other == inputs(world(), CONFIG_CHANGES["other node"])
    assert all(other.services[k] is not first.services[k] for k in first.services)


def test_services_view_groups_ports_and_survives_replace() -> None:
    inp = inputs(world())
    assert [p for ports in inp.services.values() for p in ports] == list(inp.ports)
    assert len(inp.services[("demo", "f")]) == 2
    fewer = dataclasses.replace(inp, ports=inp.ports[:1])
    assert list(fewer.services) == [("demo", "a")]


# ----------------------------------------------------------------- iptables


@pytest.mark.parametrize("change", CHANGES)
def test_iptables_update_equals_render_and_partial_payload(change: str) -> None:
    inp = inputs(world())
    old = iptables.render(inp)
    new_inp, new = check_iptables(inp, old, CHANGES[change](world()))
    kept = [k for k in new.by_key if new.by_key[k] is old.by_key.get(k)]
    assert len(kept) >= len(new.parts) - 2  # unchanged Services' parts are reused


@pytest.mark.parametrize("config", CONFIG_CHANGES)
def test_iptables_config_change_renders_everything(config: str) -> None:
    inp = inputs(world())
    old = iptables.render(inp)
    _, new = check_iptables(inp, old, world(), CONFIG_CHANGES[config])
    assert not any(new.by_key[k] is old.by_key[k] for k in new.by_key)


def test_iptables_updates_in_a_row() -> None:
    w = world()
    inp = inputs(w)
    rs = iptables.render(inp)
    for change in CHANGES.values():
        w = change(w)
        inp, rs = check_iptables(inp, rs, w)


def test_iptables_large_cluster_switch_renders_everything() -> None:
    """Above 1000 endpoints the comments go from every Service's own chains: the flag
    is part of what every part depends on, so each is rendered again — and, as in
    partial_payload, the unchanged ones are still not rewritten."""
    inp = inputs(world())
    old = iptables.render(inp)
    many = replace_slice("k", *((f"10.245.{i // 250}.{i % 250 + 1}", "node2")
                                for i in range(1000)))
    big = many(CHANGES["service added"](world()))
    big_inp, new = check_iptables(inp, old, big)
    assert new.context.large_cluster and not old.context.large_cluster
    payload = new.partial_payload(old)
    assert "demo/a:http -> " not in payload  # a's chains are not rewritten
    check_iptables(big_inp, new, world())  # and back


# ----------------------------------------------------------------- nftables


@pytest.mark.parametrize("change", CHANGES)
def test_nftables_update_equals_render_and_update_payload(change: str) -> None:
    inp = inputs(world())
    old = nftables.render(inp)
    _, new, _ = check_nftables(inp, old, CHANGES[change](world()))
    kept = [s for s in new.services if s is old.by_key.get(s.key)]
    assert len(kept) >= len(new.services) - 2  # unchanged Services' rules are reused


@pytest.mark.parametrize("config", CONFIG_CHANGES)
def test_nftables_config_change_is_a_full_sync(config: str) -> None:
    inp = inputs(world())
    old = nftables.render(inp)
    _, new, _ = check_nftables(inp, old, world(), CONFIG_CHANGES[config])
    _, payload = nftables.render_update(old, inputs(world(), CONFIG_CHANGES[config]))
    assert payload.startswith('add table ip kube-proxy { comment "rules for kube-proxy" ; }\n')


def test_nftables_updates_in_a_row() -> None:
    """Each step from the previous one, both tracks carrying their own stale_left: the
    deferred chain deletions come out the same too."""
    w = world()
    inp = inputs(w)
    rs = ref = nftables.render(inp)
    for name, change in [*CHANGES.items(), *CHANGES.items()]:
        w = change(w)
        inp, rs, ref = check_nftables(inp, rs, w, ref_old=ref)
        assert rs.element_index().values == nftables.ElementIndex.of(rs.services).values, name


def test_nftables_update_after_a_generic_update_payload() -> None:
    """A ruleset whose stale_left came from update_payload (not render_update)."""
    inp = inputs(world())
    first = nftables.render(inp)
    second_inp = inputs(CHANGES["endpoint changed"](world()))
    second = nftables.render(second_inp)
    second.update_payload(first)
    assert second.stale_left
    check_nftables(second_inp, second, world())


# ----------------------------------------------------------------- sync


def golden_state(case: str = "session-affinity"):
    topology, _ = load_topology([str(GOLDEN / f"{case}.yaml")])
    return compile_state(topology)


@pytest.mark.parametrize("mode", sync.RENDERED_MODES)
def test_render_sync_first_full_then_partial(mode: str) -> None:
    state = golden_state()
    inp, rs, payload = sync.render_sync(state, "node1", mode)
    if mode == "iptables":
        assert payload == sync.with_jump_rules(rs.payload(), rs.ensure_chains(),
                                               rs.jump_rules())
    else:
        assert payload == rs.payload()
    previous = sync.NodeSync("node1", mode, rs, 0.0, 0.0, True, inp, payload)
    (slice_,) = state.endpoint_slices
    fewer = dataclasses.replace(slice_, endpoints=slice_.endpoints[:1])
    state2 = dataclasses.replace(state, endpoint_slices=(fewer,))
    inp2, rs2, payload2 = sync.render_sync(state2, "node1", mode, previous)
    ref = sync.render_node(state2, "node1", mode)
    expected = ref.partial_payload(rs) if mode == "iptables" else ref.update_payload(rs)
    assert payload2 == expected and inp2 == base.input_for_node(state2, "node1")
    # (input, ruleset) pairs and bare rulesets work too
    assert sync.render_sync(state2, "node1", mode, (inp, rs))[2] == expected
    assert sync.render_sync(state2, "node1", mode, rs)[2] == expected


def test_render_sync_after_another_mode_is_a_full_load() -> None:
    state = golden_state()
    inp, rs, _ = sync.render_sync(state, "node1", "iptables")
    previous = sync.NodeSync("node1", "iptables", rs, 0.0, 0.0, True, inp)
    _, nft_rs, payload = sync.render_sync(state, "node1", "nftables", previous)
    assert payload == nft_rs.payload()
