"""`labctl rules`: a node's kube-proxy rules as the kernel holds them, optionally one
Service's only."""

from __future__ import annotations

import re

from labctl.cluster.state import ClusterState
from labctl.errors import NotFoundError
from labctl.net import netfilter
from labctl.proxy import base, sync


def _service_key(service: str) -> tuple[str, str]:
    return tuple(service.split("/", 1)) if "/" in service else ("default", service)  # type: ignore


def service_chains(state: ClusterState, node: str, namespace: str, name: str) -> set[str]:
    """The per-service chain names kube-proxy uses for one Service on this node."""
    mode = state.lab.proxy_mode
    inp = base.input_for_node(state, node)
    out: set[str] = set()
    for spe in inp.ports:
        info = spe.info
        if (info.namespace, info.name) != (namespace, name):
            continue
        if mode == "iptables":
            h = base.port_proto_hash(info)
            out |= {f"KUBE-{k}-{h}" for k in ("SVC", "SVL", "EXT", "FW")}
            out |= {"KUBE-SEP-" + base.endpoint_chain_hash(info, ep.string)
                    for ep in spe.endpoints}
        else:
            n = base.nft_base_name(info)
            out |= {f"{k}-{n}" for k in ("service", "local", "external", "firewall")}
            out |= {"endpoint-" + base.nft_endpoint_name(info, ep) for ep in spe.endpoints}
    return out


def service_pattern(namespace: str, name: str) -> re.Pattern[str]:
    """NS/NAME in a rule's comment or an nft name; the name must end there, so that
    default/db does not pick default/db-any's rules."""
    return re.compile(rf"\b{re.escape(namespace)}/{re.escape(name)}(?![\w.-])")


def node_rules(state: ClusterState, node: str, service: str | None = None) -> str:
    """What `labctl rules NODE` prints, for whatever mode the lab runs."""
    if state.lab.proxy_mode == "userspace":
        from labctl.cli.userspace_view import show_userspace_rules

        return show_userspace_rules(state, node, service)
    if state.lab.proxy_mode == "ipvs":
        from labctl.cli.ipvs_view import show_ipvs_rules

        return show_ipvs_rules(state, node, service)
    return show_rules(state, node, service)


def show_rules(state: ClusterState, node: str, service: str | None) -> str:
    ns = state.node(node).netns
    mode = state.lab.proxy_mode
    if mode == "iptables":
        text = netfilter.iptables_save(ns, sync.iptables_backend(state))
    else:
        text = netfilter.nft_list(ns)
    if service is None:
        return text
    namespace, name = _service_key(service)
    if not any(s.namespace == namespace and s.name == name for s in state.services):
        raise NotFoundError(f'services "{name}" not found in namespace {namespace}')
    chains = service_chains(state, node, namespace, name)
    spn = service_pattern(namespace, name)
    if mode == "iptables":
        return _filter_iptables(text, chains, spn)
    return _filter_nft(text, chains, spn)


def _filter_iptables(text: str, chains: set[str], spn: re.Pattern[str]) -> str:
    out = []
    for line in text.splitlines():
        if line.startswith(("*", "COMMIT", "#")):
            out.append(line)
        elif line.startswith(":"):
            if line[1:].split()[0] in chains:
                out.append(line)
        elif line.startswith("-A"):
            words = line.split()
            if words[1] in chains or spn.search(line) or any(w in chains for w in words):
                out.append(line)
    return "\n".join(out) + "\n"


def _filter_nft(text: str, chains: set[str], spn: re.Pattern[str]) -> str:
    """Keep the Service's own chains whole, and the map elements and rules naming it."""
    out = []
    keep_block = False
    for line in text.splitlines():
        stripped = line.strip()
        head = re.match(r"chain (\S+) \{", stripped)
        if head:
            keep_block = head.group(1) in chains
            if keep_block:
                out.append(line)
            continue
        if keep_block:
            out.append(line)
            if stripped == "}":
                keep_block = False
            continue
        if any(c in line for c in chains) or spn.search(line):
            out.append(line)
    return "\n".join(out) + "\n"
