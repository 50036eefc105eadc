"""kube-proxy in each node: render the node's ruleset (pure) and load it (through net/).

One code path for every sync: `sync_nodes(state, previous)` loads either the full
payload (nothing loaded yet: previous=None) or, given the previous sync's NodeSync, the
partial one kube-proxy would send. A partial sync costs what changed, not the cluster:
build_input reuses the ServicePorts of Services whose objects did not change, and the
mode's render_update re-renders only the others and diffs only them.

IPVS mode loads more than one payload per node (kube-ipvs0's addresses, ipsets, IPVS
virtual and real servers, iptables): its sync is an `ipvs.IpvsUpdate` that net/ipvs
applies; the text recorded for it is the update's text view.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from labctl.cluster.state import ClusterState
from labctl.errors import CapabilityError
from labctl.net import netfilter
from labctl.proxy import base

RENDERED_MODES = ("iptables", "nftables", "ipvs", "userspace")


@dataclass
class NodeSync:
    """One sync of one node; pass it back in `previous` to the node's next sync."""

    node: str
    mode: str
    ruleset: Any  # iptables.IptablesRuleset | nftables.NftRuleset
    render_seconds: float  # input, render and payload: labctl's Python
    load_seconds: float
    full: bool
    inp: base.ProxyInput | None = None  # what `ruleset` was rendered from
    payload: str = ""  # what was loaded
    # IPVS: real servers removed while they had connections, left at weight 0; the
    # next sync deletes those whose connections have ended.
    draining: tuple[Any, ...] = ()


def _check_mode(mode: str) -> None:
    if mode not in RENDERED_MODES:
        raise CapabilityError(f"proxyMode {mode} is not available yet on this host "
                              f"(available: {', '.join(RENDERED_MODES)})")


def _render(inp: base.ProxyInput, mode: str) -> Any:
    _check_mode(mode)
    if mode == "iptables":
        from labctl.proxy import iptables

        return iptables.render(inp)
    if mode == "userspace":
        from labctl.proxy import userspace

        return userspace.render(inp)
    if mode == "ipvs":
        from labctl.proxy import ipvs

        return ipvs.render(inp)
    from labctl.proxy import nftables

    return nftables.render(inp)


def render_node(state: ClusterState, node: str, mode: str) -> Any:
    with base.no_gc_pauses():
        return _render(base.input_for_node(state, node), mode)


# The node's last NodeSync, an (input, ruleset) pair, a bare ruleset, or None (nothing).
Previous = NodeSync | tuple[base.ProxyInput | None, Any] | Any


class _Reload:
    """`previous` for a full sync of a node whose rules exist already (a new agent
    adopting a lab): the full payload, its chains declared, but kube-proxy's jump rules
    not inserted again — they are there (kube-proxy checks each with `-C` first)."""

    def __repr__(self) -> str:
        return "RELOAD"


RELOAD = _Reload()


def render_sync(state: ClusterState, node: str, mode: str, previous: Previous = None,
                ) -> tuple[base.ProxyInput, Any, str]:
    """The pure half of a node's sync: (input, ruleset, payload to load).

    previous: None for a node with nothing loaded (a full first load), else the node's
    last NodeSync (or an (input, ruleset) pair; input may be None: then nothing is
    reused from it). A previous sync of another mode counts as nothing loaded.

    IPVS mode: the payload is text for the record — `rs.payload()` on a first load,
    the update's text afterwards; `render_ipvs_sync` gives the update itself."""
    inp, rs, payload, _update = _render_sync(state, node, mode, previous)
    return inp, rs, payload


def render_ipvs_sync(state: ClusterState, node: str, previous: Previous = None,
                     ) -> tuple[base.ProxyInput, Any, str, Any]:
    """render_sync for IPVS mode, with the `ipvs.IpvsUpdate` to apply (on a first load
    its iptables input has kube-proxy's chains and jumps folded in)."""
    return _render_sync(state, node, "ipvs", previous)


def _render_sync(state: ClusterState, node: str, mode: str, previous: Previous,
                 ) -> tuple[base.ProxyInput, Any, str, Any]:
    prev_inp, prev_rs = None, None
    reload = previous is RELOAD
    if reload:
        previous = None
    if isinstance(previous, NodeSync):
        if previous.mode == mode:
            prev_inp, prev_rs = previous.inp, previous.ruleset
    elif isinstance(previous, tuple):
        prev_inp, prev_rs = previous
    elif previous is not None:  # a bare ruleset
        prev_rs = previous
    _check_mode(mode)
    with base.no_gc_pauses():
        inp = base.build_input(base.config_for_node(state, node), state.services,
                               state.endpoint_slices, previous=prev_inp)
        if mode == "iptables":
            from labctl.proxy import iptables

            if prev_rs is None:
                rs = iptables.render(inp)
                return inp, rs, with_jump_rules(rs.payload(), rs.ensure_chains(),
                                                [] if reload else rs.jump_rules()), None
            rs, payload = iptables.render_update(prev_rs, inp)
            return inp, rs, payload, None
        if mode == "userspace":  # portal rules; "" when only endpoints changed
            from labctl.proxy import userspace

            if prev_rs is None:  # the jumps: _sync_userspace ensures them
                rs = userspace.render(inp)
                return inp, rs, rs.payload(), None
            rs, payload = userspace.render_update(prev_rs, inp)
            return inp, rs, payload, None
        if mode == "ipvs":
            from labctl.proxy import ipvs

            if prev_rs is None:
                rs = ipvs.render(inp)
                update = rs.update(None)
                update = dataclasses.replace(update, iptables=with_jump_rules(
                    update.iptables, rs.ensure_chains(), [] if reload else rs.jump_rules()))
                return inp, rs, rs.payload(), update
            rs, update = ipvs.render_update(prev_rs, inp)
            return inp, rs, update.text(), update
        from labctl.proxy import nftables

        if prev_rs is None:
            rs = nftables.render(inp)
            return inp, rs, rs.payload(), None
        rs, payload = nftables.render_update(prev_rs, inp)
        return inp, rs, payload, None


def _table_and_rest(argv: list[str]) -> tuple[str, list[str]]:
    if "-t" not in argv:
        return "filter", argv
    i = argv.index("-t")
    return argv[i + 1], argv[:i] + argv[i + 2:]


def with_jump_rules(payload: str, chains: list[list[str]], jumps: list[list[str]]) -> str:
    """Fold kube-proxy's EnsureChain/EnsureRule calls into a restore payload.

    Used only for a node's first load, when none of them can exist yet: the chains become
    `:CHAIN - [0:0]` lines and the jumps `-I` lines of the same tables, so the kernel ends
    up with what kube-proxy's separate `iptables -N` / `-I` calls make, in one process.
    """
    declare: dict[str, list[str]] = {}
    for argv in chains:
        table, rest = _table_and_rest(argv)
        declare.setdefault(table, []).append(f":{rest[rest.index('-N') + 1]} - [0:0]")
    insert: dict[str, list[str]] = {}
    for argv in jumps:
        table, rest = _table_and_rest(argv)
        insert.setdefault(table, []).append(" ".join(_quote(a) for a in rest))
    out: list[str] = []
    table = ""
    declared: set[str] = set()
    for line in payload.splitlines():
        if line.startswith("*"):
            table = line[1:]
            out.append(line)
            continue
        if line.startswith(":"):
            declared.add(f"{table} {line.split()[0]}")
        if line == "COMMIT":
            out.extend(d for d in declare.pop(table, [])
                       if f"{table} {d.split()[0]}" not in declared)
            out.extend(insert.pop(table, []))
        out.append(line)
    for table in sorted(set(declare) | set(insert)):
        out += [f"*{table}", *declare.get(table, []), *insert.get(table, []), "COMMIT"]
    return "\n".join(out) + "\n"


def _quote(arg: str) -> str:
    return f'"{arg}"' if (" " in arg or not arg) else arg


def first_load(state: ClusterState, node: str) -> tuple[list[str], str]:
    """The argv and input of a node's first ruleset load (pure: nothing is run)."""
    mode = state.lab.proxy_mode
    rs = render_node(state, node, mode)
    if mode in ("iptables", "userspace"):
        tool = netfilter.iptables_binary(iptables_backend(state), "iptables-restore")
        return [tool, *netfilter.RESTORE_FLAGS], with_jump_rules(
            rs.payload(), rs.ensure_chains(), rs.jump_rules())
    return ["nft", "-f", "-"], rs.payload()


def load_commands(state: ClusterState) -> list[str]:
    """Each node's first ruleset load as a shell here-document (for `labctl plan`)."""
    if state.lab.proxy_mode not in RENDERED_MODES:
        return [f"# proxyMode {state.lab.proxy_mode}: not available on this host yet"]
    out = []
    for node in state.nodes:
        if state.lab.proxy_mode == "ipvs":
            out += ipvs_load_commands(state, node.name)
            continue
        argv, payload = first_load(state, node.name)
        out.append(f"ip netns exec {node.netns} {' '.join(argv)} <<'EOF'\n{payload}EOF")
    return out


def ipvs_load_commands(state: ClusterState, node: str) -> list[str]:
    """A node's first IPVS-mode sync as shell commands: kube-ipvs0 and its addresses,
    the IPVS sysctls, then `ipset restore`, `ipvsadm-restore` and `iptables-restore`
    here-documents (labctl itself programs IPVS over netlink, not with ipvsadm)."""
    from labctl import names
    from labctl.proxy.ipvs_render import DUMMY_DEVICE, sysctls

    ns = state.node(node).netns
    _inp, rs, _text, update = render_ipvs_sync(state, node)
    tool = netfilter.iptables_binary(iptables_backend(state), "iptables-restore")
    out = [f"ip -n {ns} link add {DUMMY_DEVICE} type dummy",
           f"ip -n {ns} link set {DUMMY_DEVICE} alias {names.owner_mark(state.lab.name)}"]
    out += [f"ip -n {ns} addr add {ip}/32 dev {DUMMY_DEVICE}" for ip in rs.addresses]
    out += [f"ip netns exec {ns} sysctl -qw {k}={v}" for k, v in sysctls()]
    for argv, payload in ((["ipset", "restore", "-exist"], update.ipset),
                          (["ipvsadm-restore"], rs.ipvsadm_save()),
                          ([tool, *netfilter.RESTORE_FLAGS], update.iptables)):
        out.append(f"ip netns exec {ns} {' '.join(argv)} <<'EOF'\n{payload}EOF")
    return out


def iptables_backend(state: ClusterState) -> str:
    return state.lab.iptables_backend or netfilter.system_iptables_backend()


def sync_nodes(state: ClusterState, previous: dict[str, Previous] | None = None,
               mode: str | None = None, only: set[str] | None = None) -> dict[str, NodeSync]:
    """Sync the nodes' rules (every node, or those in `only`): render each (pure), then
    load them all at once. `previous` maps node → what this returned for it last time
    (missing: a full first load); pass the result back as the next `previous`."""
    mode = mode or state.lab.proxy_mode
    previous = previous or {}
    if mode == "ipvs":
        return _sync_ipvs(state, previous, only)
    if mode == "userspace":
        return _sync_userspace(state, previous, only)
    if mode == "iptables":
        argv = [netfilter.iptables_binary(iptables_backend(state), "iptables-restore"),
                *netfilter.RESTORE_FLAGS]
    else:
        argv = netfilter.NFT_LOAD
    rendered = []
    loads = netfilter.Loads()  # each node's tool starts as soon as its rules are rendered
    try:
        for node in state.nodes:
            if only is not None and node.name not in only:
                continue
            t = time.perf_counter()
            prev = previous.get(node.name)
            inp, rs, payload = render_sync(state, node.name, mode, prev)
            rendered.append((node, prev, inp, rs, payload, time.perf_counter() - t))
            loads.start(node.netns, argv, payload)
    except BaseException:
        with contextlib.suppress(Exception):
            loads.wait()  # the tools already started finish before the error goes up
        raise
    loaded = loads.wait()
    out = {}
    for (node, prev, inp, rs, payload, secs), done in zip(rendered, loaded, strict=True):
        full = prev is None or prev is RELOAD or (
            isinstance(prev, NodeSync) and prev.mode != mode)
        out[node.name] = NodeSync(node.name, mode, rs, secs, done.seconds, full, inp, payload)
    return out


def _sync_ipvs(state: ClusterState, previous: dict[str, Previous],
               only: set[str] | None) -> dict[str, NodeSync]:
    """sync_nodes in IPVS mode: render every node's update (pure), then apply them."""
    from labctl.net import ipvs as ipvs_net

    rendered = []
    for node in state.nodes:
        if only is not None and node.name not in only:
            continue
        t = time.perf_counter()
        prev = previous.get(node.name)
        inp, rs, payload, update = render_ipvs_sync(state, node.name, prev)
        draining = prev.draining if isinstance(prev, NodeSync) and prev.mode == "ipvs" else ()
        rendered.append((node, prev, inp, rs, payload, update, draining,
                         time.perf_counter() - t))
    argv = [netfilter.iptables_binary(iptables_backend(state), "iptables-restore"),
            *netfilter.RESTORE_FLAGS]
    applied = ipvs_net.apply_many(
        [ipvs_net.NodeLoad(node.netns, update, draining)
         for node, _p, _i, _r, _t, update, draining, _s in rendered],
        state.lab.name, argv)
    out = {}
    for (node, prev, inp, rs, payload, _u, _d, secs), done in zip(rendered, applied,
                                                                  strict=True):
        full = prev is None or prev is RELOAD or (
            isinstance(prev, NodeSync) and prev.mode != "ipvs")
        out[node.name] = NodeSync(node.name, "ipvs", rs, secs, done.seconds, full, inp,
                                  payload, done.draining)
    return out


def cleanup_node(state: ClusterState, node: str, mode: str) -> None:
    """Remove everything `mode` installed in a node (kube-proxy --cleanup)."""
    ns = state.node(node).netns
    if mode == "ipvs":
        from labctl.net import ipvs as ipvs_net

        backend = iptables_backend(state)
        ipvs_net.cleanup(ns, netfilter.iptables_binary(backend),
                         [netfilter.iptables_binary(backend, "iptables-restore"),
                          *netfilter.RESTORE_FLAGS])
        return
    rs = render_node(state, node, mode)
    if mode in ("iptables", "userspace"):
        backend = iptables_backend(state)
        if mode == "iptables":  # every per-service chain the kernel has, as upstream
            payload, commands = rs.cleanup_payload(
                existing_nat=netfilter.chains(ns, backend, "nat"))
        else:
            payload, commands = rs.cleanup_payload()
        netfilter.iptables_commands(ns, commands, backend, ensure=False)
        netfilter.restore_iptables(ns, payload, backend)
    else:
        netfilter.load_nft(ns, rs.cleanup_payload())


def check(state: ClusterState, mode: str | None = None) -> None:
    """Everything a mode needs, checked before anything is created."""
    mode = mode or state.lab.proxy_mode
    if mode not in RENDERED_MODES:
        raise CapabilityError(
            f"proxyMode {mode} is not available yet (available: "
            f"{', '.join(RENDERED_MODES)})")
    if mode == "ipvs":
        check_ipvs(state)
        return
    if mode == "userspace":  # its portals are iptables rules
        netfilter.check_tools("iptables", iptables_backend(state))
        return
    netfilter.check_tools(mode, iptables_backend(state) if mode == "iptables" else "")


IPVS_ELSEWHERE = ("IPVS mode needs a kernel with these (a stock distribution kernel has "
                  "them all as modules): run the lab in the Vagrant VM (vagrant/), or run "
                  "the IPVS tests with `make test-vm`")


def check_ipvs(state: ClusterState) -> None:
    """IPVS mode's kernel features and tools, probed in a throw-away namespace (the
    host is left as it was; modules that exist may be loaded)."""
    from labctl.net import ipvs as ipvs_net

    backend = iptables_backend(state)
    netfilter.check_tools("iptables", backend)
    scheduler = base.config_for_node(state, state.nodes[0].name).ipvs_scheduler \
        if state.nodes else "rr"
    restore = [netfilter.iptables_binary(backend, "iptables-restore"), "-w"]
    missing = ipvs_net.probe(scheduler, restore)
    if missing:
        raise CapabilityError(
            "proxyMode ipvs needs what this host lacks:\n"
            + "".join(f"  - {m}\n" for m in missing)
            + f"{IPVS_ELSEWHERE}. Nothing was created or changed.")


def _sync_userspace(state: ClusterState, previous: dict[str, Previous],
                    only: set[str] | None) -> dict[str, NodeSync]:
    """sync_nodes in userspace mode: the portal rules depend on the Services only, so a
    sync that changed endpoints loads nothing (the node's proxy process is told to
    reload instead: labctl.agent.kube_proxies). A full sync also ensures the jumps into
    kube-proxy's chains as kube-proxy does (`-C`, then `-I`/`-A` when missing), so a
    full resync of a running lab does not add them twice."""
    rendered = []
    for node in state.nodes:
        if only is not None and node.name not in only:
            continue
        t = time.perf_counter()
        prev = previous.get(node.name)
        inp, rs, payload = render_sync(state, node.name, "userspace", prev)
        rendered.append((node, prev, inp, rs, payload, time.perf_counter() - t))
    argv = [netfilter.iptables_binary(iptables_backend(state), "iptables-restore"),
            *netfilter.RESTORE_FLAGS]
    loaded = iter(netfilter.load_many([(node.netns, argv, payload)
                                       for node, _p, _i, _r, payload, _t in rendered
                                       if payload]))
    backend = iptables_backend(state)
    out = {}
    for node, prev, inp, rs, payload, secs in rendered:
        seconds = next(loaded).seconds if payload else 0.0
        full = prev is None or prev is RELOAD or (
            isinstance(prev, NodeSync) and prev.mode != "userspace")
        if full:
            t = time.perf_counter()
            netfilter.iptables_commands(node.netns, rs.jump_rules(), backend)
            seconds += time.perf_counter() - t
        out[node.name] = NodeSync(node.name, "userspace", rs, secs, seconds, full, inp,
                                  payload)
    return out
