"""kube-proxy's IPVS mode as a pure renderer.

    rs = ipvs.render(input_for_node(state, "node1"))
    rs.payload()              # everything, for display: kube-ipvs0 addresses, virtual and
                              # real servers (ipvsadm-save -n), ipset restore, iptables-restore
    rs.update(None)           # a first full sync, as an IpvsUpdate (what net/ipvs applies)
    rs.update(old)            # a resync after `old`: only what changed
    rs, upd = ipvs.render_update(old, inp)  # the same, re-rendering only changed Services

IPVS mode programs four things per node (what and why: ipvs_render.py):
* the dummy link kube-ipvs0 holding every ClusterIP, externalIP and LoadBalancer IP, so
  packets to them are delivered locally, where IPVS picks them up;
* IPVS virtual servers (one per Service IP:port and node IP × NodePort) with the
  endpoints as masquerading real servers;
* ipsets naming those addresses, ports and endpoints, loaded with one `ipset restore`;
* the iptables rules that still matter — masquerade marks, the NodePort and
  LoadBalancer chains, filters — loaded with one `iptables-restore --noflush`.

A resync changes only what changed: virtual servers and real servers are added,
edited and removed one by one (connections to the others are not disturbed), ipset
entries are added and deleted, and the iptables rules are reloaded only when they
differ. Nothing here touches the kernel.
"""

from __future__ import annotations

import functools
import socket
from dataclasses import dataclass

from labctl.proxy.base import ProxyInput, ServiceKey
from labctl.proxy.ipvs_render import (
    DUMMY_DEVICE,
    FILTER,
    FILTER_CHAINS,
    IPVS_IPS,
    JUMPS,
    NAT,
    NAT_CHAINS,
    SET_NAMES,
    SETS,
    Context,
    IptablesRules,
    NoNodeAccess,
    RealServer,
    ServicePart,
    VirtualServer,
    VsEntry,
    context,
    iptables_rules,
    parts,
    service_part,
    sysctls,
)

__all__ = ["IpvsRuleset", "IpvsUpdate", "RealServer", "VirtualServer", "VsEntry", "render",
           "render_update"]

Argv = list[str]
RESTORE_FLAGS = ("--noflush", "--counters")  # as kube-proxy runs iptables-restore
VsKey = tuple[str, str, int]


def render(inp: ProxyInput, *, random_fully: bool = True) -> IpvsRuleset:
    """What kube-proxy's IPVS mode programs for `inp` (one node's view)."""
    ctx = context(inp)
    return IpvsRuleset(ctx, parts(ctx, inp), random_fully)


def render_update(old: IpvsRuleset, inp: ProxyInput, *, random_fully: bool = True,
                  ) -> tuple[IpvsRuleset, IpvsUpdate]:
    """The ruleset for `inp` and the resync after `old`, re-rendering only the Services
    whose ServicePorts changed (the others' parts are reused). Equal to
    `(render(inp), render(inp).update(old))`."""
    ctx = context(inp)
    if ctx != old.context or random_fully != old.random_fully:
        new = render(inp, random_fully=random_fully)
    else:
        before = old.by_key
        out = []
        for key, ports in inp.services.items():
            prev = before.get(key)
            if prev is None or (prev.ports is not ports and prev.ports != ports):
                prev = service_part(ctx, key, ports)
            out.append(prev)
        new = IpvsRuleset(ctx, tuple(out), random_fully)
    return new, new.update(old)


def _addr_key(ip: str) -> bytes:
    """Sort key of an IPv4 address (inet_aton: ~20x faster than IPv4Address)."""
    return socket.inet_aton(ip)


@dataclass(frozen=True)
class IpvsRuleset:
    """One part per Service and what they were rendered with; every view derives from
    them."""

    context: Context
    parts: tuple[ServicePart, ...]
    random_fully: bool = True

    @functools.cached_property
    def by_key(self) -> dict[ServiceKey, ServicePart]:
        return {p.key: p for p in self.parts}

    @functools.cached_property
    def entries(self) -> dict[VsKey, VsEntry]:
        """Virtual servers by (protocol, address, port), in emission order. Should two
        Services ask for the same one, the later wins (kube-proxy: whichever it syncs
        last)."""
        out: dict[VsKey, VsEntry] = {}
        for part in self.parts:
            for entry in part.entries:
                out[entry.vs.key] = entry
        return out

    @property
    def virtual_servers(self) -> tuple[VsEntry, ...]:
        return tuple(self.entries.values())

    @functools.cached_property
    def addresses(self) -> tuple[str, ...]:
        """kube-ipvs0's addresses (activeBindAddrs), sorted."""
        found = {ip for part in self.parts for ip in part.binds}
        return tuple(sorted(found, key=_addr_key))

    @functools.cached_property
    def ipsets(self) -> dict[str, frozenset[str]]:
        """Every ipset kube-proxy keeps, with its entries (empty ones too: they exist)."""
        found: dict[str, set[str]] = {name: set() for name in SET_NAMES}
        for part in self.parts:
            for name, entry in part.set_entries:
                found[name].add(entry)
        found[IPVS_IPS] = set(self.addresses)
        return {name: frozenset(entries) for name, entries in found.items()}

    @functools.cached_property
    def no_node_access(self) -> tuple[NoNodeAccess, ...]:
        return tuple(x for part in self.parts for x in part.no_node_access)

    @functools.cached_property
    def iptables(self) -> IptablesRules:
        nonempty = frozenset(name for name, entries in self.ipsets.items() if entries)
        return iptables_rules(self.context, nonempty, self.no_node_access, self.random_fully)

    # ------------------------------------------------------------- payloads

    def ipvsadm_save(self) -> str:
        """The virtual and real servers as `ipvsadm-save -n` prints them (and
        `ipvsadm-restore` reads them)."""
        lines = []
        for entry in self.entries.values():
            lines.append(entry.vs.save_line())
            lines += [rs.save_line(entry.vs) for rs in entry.reals]
        return "".join(line + "\n" for line in lines)

    def ipset_payload(self) -> str:
        """`ipset restore` input of a full sync: every set created, every entry added."""
        lines = []
        for spec in SETS:
            lines.append(spec.create_line)
            lines += [f"add {spec.name} {e}" for e in sorted(self.ipsets[spec.name])]
        return "".join(line + "\n" for line in lines)

    def iptables_payload(self) -> str:
        """`iptables-restore --noflush --counters` input (every sync: kube-proxy's IPVS
        mode rewrites its chains whole)."""
        return self.iptables.text

    def address_lines(self) -> str:
        return "".join(f"ip addr add {ip}/32 dev {DUMMY_DEVICE}\n" for ip in self.addresses)

    def payload(self) -> str:
        """A full sync from empty state, for display: kube-ipvs0's addresses, the virtual
        servers, the ipsets and the iptables rules, each under a `#` header."""
        return (f"# {DUMMY_DEVICE} (dummy, down): addresses\n{self.address_lines()}"
                f"# IPVS: ipvsadm-save -n\n{self.ipvsadm_save()}"
                f"# ipset restore\n{self.ipset_payload()}"
                f"# iptables-restore {' '.join(RESTORE_FLAGS)}\n{self.iptables_payload()}")

    def update_payload(self, old: IpvsRuleset | None) -> str:
        """The text of `update(old)` (what a sync records as its payload)."""
        return self.update(old).text()

    def sysctls(self, kernel_release: str | None = None) -> tuple[tuple[str, str], ...]:
        return sysctls(kernel_release)

    def update(self, old: IpvsRuleset | None) -> IpvsUpdate:
        """What to change when the kernel holds `old` (None: nothing yet — a full sync)."""
        if old is None:
            return IpvsUpdate(
                full=True, addresses_add=self.addresses,
                vs_add=tuple(e.vs for e in self.entries.values()),
                rs_add=tuple((e.vs, rs) for e in self.entries.values() for rs in e.reals),
                ipset=self.ipset_payload(), iptables=self.iptables_payload())
        return _diff(old, self)

    # ------------------------------------------------------------- outside the restore

    def jump_rules(self) -> list[Argv]:
        """The jumps kube-proxy ensures (prepends) on every sync, as iptables argv."""
        return [j.argv("-I") for j in JUMPS]

    def ensure_chains(self) -> list[Argv]:
        """`-N` for every chain kube-proxy creates (EnsureChain), in its order."""
        return [["-t", NAT, "-N", c] for c in NAT_CHAINS] + \
            [["-t", FILTER, "-N", c] for c in FILTER_CHAINS]

    @staticmethod
    def cleanup_payload() -> tuple[str, list[Argv]]:
        """kube-proxy --cleanup's iptables part: run the argv first (the jump deletions;
        "does not exist" is success), then the restore text (flush and delete every
        chain). The ipsets go after it (an ipset in use by a rule cannot be destroyed)."""
        argv = [j.argv("-D") for j in JUMPS]
        lines = []
        for table, chains in ((NAT, NAT_CHAINS), (FILTER, FILTER_CHAINS)):
            lines += [f"*{table}", *(f":{c} - [0:0]" for c in chains),
                      *(f"-X {c}" for c in chains), "COMMIT"]
        return "\n".join(lines) + "\n", argv

    @staticmethod
    def ipset_cleanup_payload() -> str:
        """`ipset restore` input destroying every set kube-proxy made (those present)."""
        return "".join(f"destroy {name}\n" for name in SET_NAMES)

    # ------------------------------------------------------------- views

    def for_service(self, namespace: str, name: str) -> str:
        """One Service's virtual and real servers (ipvsadm-save -n lines) and ipset
        entries; "" if kube-proxy programs nothing for it."""
        part = self.by_key.get((namespace, name))
        if part is None or not (part.entries or part.set_entries):
            return ""
        lines = [f"ip addr add {ip}/32 dev {DUMMY_DEVICE}" for ip in part.binds]
        for entry in part.entries:
            lines.append(entry.vs.save_line())
            lines += [rs.save_line(entry.vs) for rs in entry.reals]
        lines += [f"add {s} {e}" for s, e in part.set_entries]
        return "".join(line + "\n" for line in lines)

    def chains(self) -> dict[str, dict[str, list[str]]]:
        return self.iptables.chains()


@dataclass(frozen=True)
class IpvsUpdate:
    """One sync's changes, in the order they are applied (net/ipvs.apply): kube-ipvs0
    addresses added, ipsets (create/add/del), virtual servers added and edited, real
    servers added, edited and removed, iptables (when it changed), virtual servers
    removed, addresses removed."""

    full: bool = False
    addresses_add: tuple[str, ...] = ()
    addresses_del: tuple[str, ...] = ()
    vs_add: tuple[VirtualServer, ...] = ()
    vs_edit: tuple[VirtualServer, ...] = ()
    vs_del: tuple[VirtualServer, ...] = ()
    rs_add: tuple[tuple[VirtualServer, RealServer], ...] = ()
    rs_edit: tuple[tuple[VirtualServer, RealServer], ...] = ()
    rs_del: tuple[tuple[VirtualServer, RealServer], ...] = ()
    ipset: str = ""  # `ipset restore -exist` input ("" = nothing to do)
    iptables: str = ""  # `iptables-restore --noflush` input ("" = unchanged)

    @property
    def empty(self) -> bool:
        return not (self.full or self.addresses_add or self.addresses_del or self.vs_add
                    or self.vs_edit or self.vs_del or self.rs_add or self.rs_edit
                    or self.rs_del or self.ipset or self.iptables)

    def ipvsadm_lines(self) -> list[str]:
        """The IPVS changes as `ipvsadm -R` lines, in the order they are made (not for
        `ipvsadm-restore`: that script clears every virtual server first)."""
        out = [vs.save_line() for vs in self.vs_add]
        out += [vs.save_line("-E") for vs in self.vs_edit]
        out += [rs.save_line(vs) for vs, rs in self.rs_add]
        out += [rs.save_line(vs, "-e") for vs, rs in self.rs_edit]
        out += [rs.save_line(vs, "-d") for vs, rs in self.rs_del]
        out += [vs.save_line("-D") for vs in self.vs_del]
        return out

    def text(self) -> str:
        """Everything this sync changes, as text (what `NodeSync.payload` records)."""
        out = []
        if self.full:
            out.append(f"ip link add {DUMMY_DEVICE} type dummy")
        out += [f"ip addr add {ip}/32 dev {DUMMY_DEVICE}" for ip in self.addresses_add]
        out += self.ipset.splitlines()
        out += self.ipvsadm_lines()
        out += self.iptables.splitlines()
        out += [f"ip addr del {ip}/32 dev {DUMMY_DEVICE}" for ip in self.addresses_del]
        return "".join(line + "\n" for line in out)


def _ipset_delta(old: dict[str, frozenset[str]], new: dict[str, frozenset[str]]) -> str:
    lines = []
    for name in SET_NAMES:
        before, after = old.get(name, frozenset()), new.get(name, frozenset())
        if before == after:
            continue
        lines += [f"del {name} {e}" for e in sorted(before - after)]
        lines += [f"add {name} {e}" for e in sorted(after - before)]
    return "".join(line + "\n" for line in lines)


def _diff(old: IpvsRuleset, new: IpvsRuleset) -> IpvsUpdate:
    before, after = old.entries, new.entries
    if old.parts == new.parts and old.context == new.context:
        return IpvsUpdate()
    vs_add, vs_edit, vs_del = [], [], []
    rs_add: list[tuple[VirtualServer, RealServer]] = []
    rs_edit: list[tuple[VirtualServer, RealServer]] = []
    rs_del: list[tuple[VirtualServer, RealServer]] = []
    for key, entry in after.items():
        prev = before.get(key)
        if prev is entry:
            continue
        if prev is None:
            vs_add.append(entry.vs)
            rs_add += [(entry.vs, rs) for rs in entry.reals]
            continue
        if prev.vs != entry.vs:
            vs_edit.append(entry.vs)
        if prev.reals == entry.reals:
            continue
        was = {rs.key: rs for rs in prev.reals}
        now = {rs.key: rs for rs in entry.reals}
        for k, rs in now.items():
            if k not in was:
                rs_add.append((entry.vs, rs))
            elif was[k] != rs:
                rs_edit.append((entry.vs, rs))
        rs_del += [(entry.vs, rs) for k, rs in was.items() if k not in now]
    vs_del = [entry.vs for key, entry in before.items() if key not in after]
    iptables = new.iptables_payload()
    if old.iptables_payload() == iptables:
        iptables = ""
    had, has = set(old.addresses), set(new.addresses)
    return IpvsUpdate(
        addresses_add=tuple(ip for ip in new.addresses if ip not in had),
        addresses_del=tuple(ip for ip in old.addresses if ip not in has),
        vs_add=tuple(vs_add), vs_edit=tuple(vs_edit), vs_del=tuple(vs_del),
        rs_add=tuple(rs_add), rs_edit=tuple(rs_edit), rs_del=tuple(rs_del),
        ipset=_ipset_delta(old.ipsets, new.ipsets), iptables=iptables)
