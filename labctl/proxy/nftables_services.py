"""One ServicePort's chains, rules, affinity sets and map elements for nftables mode.

The body of the per-service loop of kube-proxy's nftables `syncProxyRules`
(pkg/proxy/nftables/proxier.go), as an ordered list of steps in the order upstream
emits them. A `Chain` step is upstream's `ensureChain` (add + flush), an `Element` step
its `ensureElem` (added only when missing or changed), `NftSet` and `Rule` steps plain
adds. On a partial sync the chain, set and rule steps of unchanged Services are skipped
and only their elements are checked, exactly as upstream's `skipServiceUpdate` does.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from labctl.proxy.base import (
    EndpointInfo,
    ServicePortEndpoints,
    nft_base_name,
    nft_endpoint_name,
)
from labctl.proxy.nftables_objects import Chain, Element, NftSet, Rule

Step = Chain | Element | NftSet | Rule

MARK_MASQ = "mark-for-masquerade"
REJECT_CHAIN = "reject-chain"
CLUSTER_IPS = "cluster-ips"
SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
FIREWALL_IPS = "firewall-ips"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"


@dataclass(frozen=True)
class Context:
    """The node-wide kube-proxy settings a ServicePort's rules depend on."""

    pod_cidr: str  # the ClusterCIDR local-traffic detector; "" = no detector
    masquerade_all: bool
    node_ip: str  # the proxier's nodeIP ("" if unknown)


def ipv4(text: str) -> str | None:
    """An address as Go's net.IP.String() prints it, or None when it is not IPv4."""
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    return str(addr) if addr.version == 4 else None


def ipv4_net(text: str) -> ipaddress.IPv4Network | None:
    """A CIDR as net.IPNet.String() prints it (host bits cleared), or None."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None
    return net if isinstance(net, ipaddress.IPv4Network) else None


class PortRules:
    """Everything one ServicePort contributes on one node (see the module docstring)."""

    def __init__(self, pe: ServicePortEndpoints, ctx: Context) -> None:
        self.info, self.cat, self.ctx = pe.info, pe.categorized, ctx
        info = self.info
        base = nft_base_name(info)
        self.cluster_chain = f"service-{base}"
        self.local_chain = f"local-{base}"
        self.external_chain = f"external-{base}"
        self.firewall_chain = f"firewall-{base}"
        self.proto, self.port = info.proto, str(info.port)
        self.cluster_ip = ipv4(info.cluster_ip) or info.cluster_ip
        self.external_ips = [ip for ip in map(ipv4, info.external_ips) if ip]
        self.vips = [ip for ip in map(ipv4, info.load_balancer_vips) if ip]
        self.ranges = [n for n in map(ipv4_net, info.load_balancer_source_ranges) if n]

    # ------------------------------------------------------------- decisions

    @property
    def has_endpoints(self) -> bool:
        return self.cat.has_any

    @property
    def uses_cluster_chain(self) -> bool:
        return bool(self.cat.cluster) and self.info.uses_cluster_endpoints

    @property
    def uses_local_chain(self) -> bool:
        return bool(self.cat.local) and self.info.uses_local_endpoints

    @property
    def internal_chain(self) -> str:
        return self.local_chain if self.info.internal_policy_local else self.cluster_chain

    @property
    def has_internal_endpoints(self) -> bool:
        return self.has_endpoints and not (self.info.internal_policy_local
                                           and not self.cat.local)

    @property
    def external_policy_chain(self) -> str:
        return self.local_chain if self.info.external_policy_local else self.cluster_chain

    @property
    def has_external_endpoints(self) -> bool:
        return self.has_endpoints and not (self.info.external_policy_local
                                           and not self.cat.local)

    @property
    def uses_external_chain(self) -> bool:
        # On has_endpoints, not has_external_endpoints: the short-circuit rules for
        # pod and host traffic are needed even when no local endpoint exists.
        return self.has_endpoints and self.info.externally_accessible

    @property
    def uses_firewall_chain(self) -> bool:
        return bool(self.vips) and bool(self.ranges)

    @property
    def unreachable_verdict(self) -> str:
        """What the no-endpoint-* maps answer: REJECT when the Service has no endpoints
        at all, DROP when only the endpoints its Local policy needs are missing."""
        return "drop" if self.has_endpoints else f"goto {REJECT_CHAIN}"

    def endpoint_chain(self, ep: EndpointInfo) -> str:
        return f"endpoint-{nft_endpoint_name(self.info, ep)}"

    def affinity_set(self, ep: EndpointInfo) -> str:
        return f"affinity-{nft_endpoint_name(self.info, ep)}"

    # ------------------------------------------------------------- steps

    def steps(self) -> list[Step]:
        return [*self._chains(), *self._cluster_ip(), *self._external_ips(),
                *self._load_balancer(), *self._node_port(), *self._internal_masquerade(),
                *self._external_rules(), *self._firewall_rule(), *self._affinity_sets(),
                *self._policy_rules(), *self._endpoint_rules()]

    def _chains(self) -> list[Step]:
        out: list[Step] = [Chain(self.endpoint_chain(ep)) for ep in self.cat.all_reachable]
        if self.uses_cluster_chain:
            out.append(Chain(self.cluster_chain))
        if self.uses_local_chain:
            out.append(Chain(self.local_chain))
        if self.uses_external_chain:
            out.append(Chain(self.external_chain))
        return out

    def _key(self, ip: str) -> tuple[str, str, str]:
        return (ip, self.proto, self.port)

    def _no_endpoint(self, ip: str, verdict: str) -> Element:
        return Element(NO_ENDPOINT_SERVICES, self._key(ip), (verdict,), comment=self.info.spn)

    def _cluster_ip(self) -> list[Step]:
        out: list[Step] = [Element(CLUSTER_IPS, (self.cluster_ip,))]
        if self.has_internal_endpoints:
            out.append(Element(SERVICE_IPS, self._key(self.cluster_ip),
                               (f"goto {self.internal_chain}",)))
        else:
            out.append(self._no_endpoint(self.cluster_ip, self.unreachable_verdict))
        return out

    def _to_external(self, ip: str) -> Element:
        return Element(SERVICE_IPS, self._key(ip), (f"goto {self.external_chain}",))

    def _external_ips(self) -> list[Step]:
        out: list[Step] = []
        for ip in self.external_ips:
            if self.has_endpoints:
                out.append(self._to_external(ip))
            if not self.has_external_endpoints:
                out.append(self._no_endpoint(ip, self.unreachable_verdict))
        return out

    def _load_balancer(self) -> list[Step]:
        out: list[Step] = []
        if self.uses_firewall_chain:
            out.append(Chain(self.firewall_chain))
        for vip in self.vips:
            if self.has_endpoints:
                out.append(self._to_external(vip))
            if self.uses_firewall_chain:  # whatever the endpoints, unlike iptables mode
                out.append(Element(FIREWALL_IPS, self._key(vip),
                                   (f"goto {self.firewall_chain}",)))
        if not self.has_external_endpoints:
            out += [self._no_endpoint(vip, self.unreachable_verdict) for vip in self.vips]
        return out

    def _node_port(self) -> list[Step]:
        if not self.info.node_port:
            return []
        key = (self.proto, str(self.info.node_port))
        out: list[Step] = []
        if self.has_endpoints:  # NodePorts ignore loadBalancerSourceRanges
            out.append(Element(SERVICE_NODEPORTS, key, (f"goto {self.external_chain}",)))
        if not self.has_external_endpoints:
            out.append(Element(NO_ENDPOINT_NODEPORTS, key, (self.unreachable_verdict,),
                               comment=self.info.spn))
        return out

    def _internal_masquerade(self) -> list[Step]:
        """Masquerade traffic to the ClusterIP from outside the pod network (it may
        bounce off-node); with --masquerade-all, all of it; with no detector, none."""
        if not self.has_internal_endpoints:
            return []
        match = f"ip daddr {self.cluster_ip}"
        if self.ctx.masquerade_all:
            return [Rule(self.internal_chain, f"{match} jump {MARK_MASQ}")]
        if self.ctx.pod_cidr:
            return [Rule(self.internal_chain,
                         f"{match} ip saddr != {self.ctx.pod_cidr} jump {MARK_MASQ}")]
        return []

    def _external_rules(self) -> list[Step]:
        if not self.uses_external_chain:
            return []
        chain = self.external_chain
        out: list[Step] = []
        if not self.info.external_policy_local:
            # Cluster policy may pick another node's endpoint: masquerade.
            out.append(Rule(chain, f"jump {MARK_MASQ}"))
        else:
            # Pods and the host reach every endpoint, as if through the real load
            # balancer; only traffic from outside is kept on this node (source kept).
            if self.ctx.pod_cidr:
                out.append(Rule(chain, f"ip saddr {self.ctx.pod_cidr} goto "
                                       f"{self.cluster_chain}", "short-circuit pod traffic"))
            out.append(Rule(chain, f"fib saddr type local jump {MARK_MASQ}",
                            "masquerade local traffic"))
            out.append(Rule(chain, f"fib saddr type local goto {self.cluster_chain}",
                            "short-circuit local traffic"))
        if self.has_external_endpoints:
            out.append(Rule(chain, f"goto {self.external_policy_chain}"))
        return out

    def _firewall_rule(self) -> list[Step]:
        if not self.uses_firewall_chain:
            return []
        sources = [str(n) for n in self.ranges]
        node = ipaddress.ip_address(self.ctx.node_ip) if ipv4(self.ctx.node_ip) else None
        if node is not None and any(node in n for n in self.ranges):
            # A node reaching a VIP held locally loops back with the VIP as source.
            sources += self.vips
        return [Rule(self.firewall_chain, f"ip saddr != {{ {' , '.join(sources)} }} drop")]

    def _affinity_sets(self) -> list[Step]:
        if not self.info.session_affinity:
            return []
        return [NftSet(self.affinity_set(ep), "ipv4_addr", flags=("dynamic", "timeout"),
                       timeout=self.info.sticky_seconds) for ep in self.cat.all_reachable]

    def _policy_rules(self) -> list[Step]:
        out: list[Step] = []
        if self.uses_cluster_chain:
            out += self._to_endpoints(self.cluster_chain, self.cat.cluster)
        if self.uses_local_chain:
            out += self._to_endpoints(self.local_chain, self.cat.local)
        return out

    def _to_endpoints(self, chain: str, endpoints: tuple[EndpointInfo, ...]) -> list[Step]:
        out: list[Step] = []
        if self.info.session_affinity:
            out += [Rule(chain, f"ip saddr @{self.affinity_set(ep)} goto "
                                f"{self.endpoint_chain(ep)}") for ep in endpoints]
        targets = " , ".join(f"{i} : goto {self.endpoint_chain(ep)}"
                             for i, ep in enumerate(endpoints))
        out.append(Rule(chain, f"numgen random mod {len(endpoints)} vmap {{ {targets} }}"))
        return out

    def _endpoint_rules(self) -> list[Step]:
        out: list[Step] = []
        for ep in self.cat.all_reachable:
            chain = self.endpoint_chain(ep)
            out.append(Rule(chain, f"ip saddr {ep.ip} jump {MARK_MASQ}"))  # hairpin
            if self.info.session_affinity:
                out.append(Rule(chain, f"update @{self.affinity_set(ep)} {{ ip saddr }}"))
            out.append(Rule(chain, f"meta l4proto {self.proto} dnat to {ep.string}"))
        return out
