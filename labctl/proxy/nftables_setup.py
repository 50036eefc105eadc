"""The fixed part of kube-proxy's nftables table: upstream `setupNFTables`.

The table, its base chains (newest upstream layout), the top-level chains and the jump
rules into them, masquerading, the ClusterIP checks, the NodePort address set, the
no-endpoint and firewall handling and the service dispatch maps — in the order
pkg/proxy/nftables/proxier.go adds them to its transaction. Pure.
"""

from __future__ import annotations

import ipaddress

from labctl.proxy.base import ProxyConfig
from labctl.proxy.nftables_objects import Chain, Element, NftSet, Op, Rule, Table
from labctl.proxy.nftables_services import (
    CLUSTER_IPS,
    FIREWALL_IPS,
    MARK_MASQ,
    NO_ENDPOINT_NODEPORTS,
    NO_ENDPOINT_SERVICES,
    REJECT_CHAIN,
    SERVICE_IPS,
    SERVICE_NODEPORTS,
    ipv4,
    ipv4_net,
)

TABLE_COMMENT = "rules for kube-proxy"
SERVICES = "services"
MASQUERADING = "masquerading"
CLUSTER_IPS_CHECK = "cluster-ips-check"
FIREWALL_CHECK = "firewall-check"
SERVICE_ENDPOINTS_CHECK = "service-endpoints-check"
NODEPORT_ENDPOINTS_CHECK = "nodeport-endpoints-check"
NODEPORT_IPS = "nodeport-ips"
_ADDR_PROTO_PORT = "ipv4_addr . inet_proto . inet_service : verdict"
_PROTO_PORT = "inet_proto . inet_service : verdict"
_DISPATCH = "ip daddr . meta l4proto . th dport vmap"
_NO_LOCALHOST = "ip daddr != 127.0.0.0/8"

# Base chains, newest upstream layout: LoadBalancerSourceRanges are checked before DNAT
# (dstnat-10), the no-endpoint REJECT/DROP and ClusterIP checks at filter priority.
BASE_CHAINS = (
    Chain("filter-prerouting-pre-dnat", "filter", "prerouting", -110),
    Chain("filter-output-pre-dnat", "filter", "output", -110),
    Chain("filter-input", "filter", "input", 0),
    Chain("filter-forward", "filter", "forward", 0),
    Chain("filter-output", "filter", "output", 0),
    Chain("nat-prerouting", "nat", "prerouting", -100),
    Chain("nat-output", "nat", "output", -100),
    Chain("nat-postrouting", "nat", "postrouting", 100),
)

# (regular chain, base chain jumping to it, match before the jump), upstream's order.
JUMP_CHAINS = (
    (NODEPORT_ENDPOINTS_CHECK, "filter-input", "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, "filter-input", "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, "filter-forward", "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, "filter-output", "ct state new"),
    (FIREWALL_CHECK, "filter-prerouting-pre-dnat", "ct state new"),
    (FIREWALL_CHECK, "filter-output-pre-dnat", "ct state new"),
    (SERVICES, "nat-output", ""),
    (SERVICES, "nat-prerouting", ""),
    (MASQUERADING, "nat-postrouting", ""),
    (CLUSTER_IPS_CHECK, "filter-forward", "ct state new"),
    (CLUSTER_IPS_CHECK, "filter-output", "ct state new"),
)

SETS = {s.name: s for s in (
    NftSet(CLUSTER_IPS, "ipv4_addr", comment="Active ClusterIPs"),
    NftSet(NODEPORT_IPS, "ipv4_addr", comment="IPs that accept NodePort traffic"),
    NftSet(NO_ENDPOINT_SERVICES, _ADDR_PROTO_PORT, is_map=True,
           comment="vmap to drop or reject packets to services with no endpoints"),
    NftSet(NO_ENDPOINT_NODEPORTS, _PROTO_PORT, is_map=True,
           comment="vmap to drop or reject packets to service nodeports with no endpoints"),
    NftSet(FIREWALL_IPS, _ADDR_PROTO_PORT, is_map=True,
           comment="destinations that are subject to LoadBalancerSourceRanges"),
    NftSet(SERVICE_IPS, _ADDR_PROTO_PORT, is_map=True,
           comment="ClusterIP, ExternalIP and LoadBalancer IP traffic"),
    NftSet(SERVICE_NODEPORTS, _PROTO_PORT, is_map=True, comment="NodePort traffic"),
)}

# The containers whose elements kube-proxy diffs (its nftElementStorage), in the order
# it deletes leftovers.
ELEMENT_CONTAINERS = (CLUSTER_IPS, SERVICE_IPS, FIREWALL_IPS, NO_ENDPOINT_SERVICES,
                      NO_ENDPOINT_NODEPORTS, SERVICE_NODEPORTS)


def nodeport_ips(cfg: ProxyConfig) -> tuple[str, ...] | None:
    """The node IPs accepting NodePorts, or None when --nodeport-addresses matches all
    (kube-proxy's NodePortAddresses for IPv4; loopback is never accepted)."""
    primary = next((ip for ip in map(ipv4, cfg.node_ips) if ip), "")
    nets = [ipv4_net(f"{primary}/32" if a == "primary" else a) for a in cfg.nodeport_addresses]
    cidrs = [n for n in nets if n is not None]
    if not cidrs or any(int(n.network_address) == 0 for n in cidrs):
        return None
    found = []
    for ip in filter(None, map(ipv4, cfg.node_ips)):
        addr = ipaddress.IPv4Address(ip)
        if any(addr in n for n in cidrs) and not addr.is_loopback and ip not in found:
            found.append(ip)
    return tuple(found)


def ensure_chain(chain: Chain) -> list[Op]:
    """upstream ensureChain: add the chain, and flush what an earlier sync left in it."""
    return [Op("add", chain), Op("flush", chain)]


def _rule(chain: str, text: str, comment: str = "") -> Op:
    return Op("add", Rule(chain, text, comment))


def setup_ops(cfg: ProxyConfig, first_sync: bool) -> list[Op]:
    """upstream setupNFTables: the table, base chains, fixed chains, sets and maps."""
    ops = [Op("add", Table(TABLE_COMMENT))]
    if first_sync:
        # Once per kube-proxy process: recreate base chains so an older layout's
        # priorities can never make the transaction fail.
        for bc in BASE_CHAINS:
            ops += [Op("add", Chain(bc.name)), Op("delete", Chain(bc.name))]
    for bc in BASE_CHAINS:
        ops += ensure_chain(bc)
    created: set[str] = set()
    for dst, src, match in JUMP_CHAINS:
        if dst not in created:
            ops += ensure_chain(Chain(dst))
            created.add(dst)
        ops.append(_rule(src, f"{match} jump {dst}".strip()))
    ops += ensure_chain(Chain(MARK_MASQ))
    ops += _masquerade_rules(cfg.masquerade_mark)
    ops += _cluster_ips_check(cfg)
    ops += _nodeport_ips_set(cfg)
    ops += _no_endpoint_handling(cfg)
    ops += _dispatch(cfg)
    return ops


def _masquerade_rules(mark: str) -> list[Op]:
    return [_rule(MARK_MASQ, f"mark set mark or {mark}"),
            _rule(MASQUERADING, f"mark and {mark} == 0 return"),
            _rule(MASQUERADING, f"mark set mark xor {mark}"),
            _rule(MASQUERADING, "masquerade fully-random")]


def _cluster_ips_check(cfg: ProxyConfig) -> list[Op]:
    ops = [Op("add", SETS[CLUSTER_IPS]),
           _rule(CLUSTER_IPS_CHECK, f"ip daddr @{CLUSTER_IPS} reject",
                 "Reject traffic to invalid ports of ClusterIPs")]
    if cfg.service_cidr:
        ops.append(_rule(CLUSTER_IPS_CHECK, f"ip daddr {{ {cfg.service_cidr} }} drop",
                         "Drop traffic to unallocated ClusterIPs"))
    return ops


def _nodeport_ips_set(cfg: ProxyConfig) -> list[Op]:
    ips = nodeport_ips(cfg)
    ops = [Op("add", SETS[NODEPORT_IPS])]
    if ips is None:  # add+delete: a bare delete fails when the set does not exist
        return ops + [Op("delete", NftSet(NODEPORT_IPS))]
    ops.append(Op("flush", NftSet(NODEPORT_IPS)))
    return ops + [Op("add", Element(NODEPORT_IPS, (ip,))) for ip in ips]


def _nodeport_match(cfg: ProxyConfig) -> str:
    if nodeport_ips(cfg) is None:
        return _NO_LOCALHOST
    return f"ip daddr @{NODEPORT_IPS}"


def _no_endpoint_handling(cfg: ProxyConfig) -> list[Op]:
    reject = Chain(REJECT_CHAIN, comment="helper for @no-endpoint-services / "
                                         "@no-endpoint-nodeports")
    return [Op("add", SETS[NO_ENDPOINT_SERVICES]), Op("add", SETS[NO_ENDPOINT_NODEPORTS]),
            *ensure_chain(reject), _rule(REJECT_CHAIN, "reject"),
            _rule(SERVICE_ENDPOINTS_CHECK, f"{_DISPATCH} @{NO_ENDPOINT_SERVICES}"),
            _rule(NODEPORT_ENDPOINTS_CHECK, f"{_nodeport_match(cfg)} meta l4proto . th dport "
                                            f"vmap @{NO_ENDPOINT_NODEPORTS}")]


def _dispatch(cfg: ProxyConfig) -> list[Op]:
    local = "fib daddr type local " if nodeport_ips(cfg) is None else ""
    return [Op("add", SETS[FIREWALL_IPS]),
            _rule(FIREWALL_CHECK, f"{_DISPATCH} @{FIREWALL_IPS}"),
            Op("add", SETS[SERVICE_IPS]), Op("add", SETS[SERVICE_NODEPORTS]),
            _rule(SERVICES, f"{_DISPATCH} @{SERVICE_IPS}"),
            _rule(SERVICES, f"{local}{_nodeport_match(cfg)} meta l4proto . th dport "
                            f"vmap @{SERVICE_NODEPORTS}")]
