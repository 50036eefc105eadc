"""Plan → Plan: what to create and what to remove to turn one lab into another (pure).

`diff(old, new)` compares the kernel objects of two plans. An object in both plans is
left alone; a changed object (say a route that now goes via another node) is removed
and added again; `diff(None, plan)` creates everything, which is how `up` builds a lab
(one executor for `up` and for changes to a running lab).

The kernel itself removes some objects along with others, and the diff accounts for it:
* everything inside a namespace being deleted goes with it, so it is not listed — except
  a veth whose other end lives in a namespace that stays: that end is deleted
  explicitly (namespace teardown is asynchronous and would leave it around for a while);
  and if that deletion must make room (below), the addresses and routes on its end in
  the vanishing namespace are listed too, so a failed change can put them back;
* addresses on a link that is deleted, and routes out of such a link (or via a gateway
  reached through an address that is deleted), vanish with it; they are listed as
  deletions (so the executor removes them first and can put them back on failure) and,
  if the new plan still has them, as additions too.

Sysctls of a namespace that stays are written again when their value changed; a sysctl
dropped from the plan keeps its value (the kernel has no "unset").

Names are the kernel's keys (a link's name in its namespace, a route's destination in
its namespace). When an added object takes the name of one being deleted (a pod that
gets the address, hence the veth name, of a removed pod; a LoadBalancer route that moves
to another node), that deletion must happen before the additions: `make_room` holds
those deletions and everything that depends on them.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, fields

from labctl.plan.model import Address, Bridge, Namespace, Plan, Route, VethPair

Deletable = Route | Address | VethPair | Bridge


@dataclass(frozen=True)
class Deletions:
    """One group of deletions, in the order they are made (routes first)."""

    routes: tuple[Route, ...] = ()
    addresses: tuple[Address, ...] = ()
    veths: tuple[VethPair, ...] = ()
    bridges: tuple[Bridge, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.routes or self.addresses or self.veths or self.bridges)


@dataclass(frozen=True)
class PlanDiff:
    """The changes that turn one plan into another, in the order they are applied:
    create namespaces, write changed sysctls, make room (`make_room`), add bridges →
    veths → addresses → routes, delete routes → addresses → veths → bridges, and last
    delete namespaces."""

    lab: str
    mark: str
    create_namespaces: tuple[Namespace, ...] = ()
    set_sysctls: tuple[Namespace, ...] = ()  # namespaces that stay: the sysctls to write
    add_bridges: tuple[Bridge, ...] = ()
    add_veths: tuple[VethPair, ...] = ()
    add_addresses: tuple[Address, ...] = ()
    add_routes: tuple[Route, ...] = ()
    delete_routes: tuple[Route, ...] = ()
    delete_addresses: tuple[Address, ...] = ()
    delete_veths: tuple[VethPair, ...] = ()
    delete_bridges: tuple[Bridge, ...] = ()
    delete_namespaces: tuple[Namespace, ...] = ()
    # the deletions (from the delete_* lists) that must precede the additions
    make_room: frozenset[Deletable] = frozenset()

    @property
    def empty(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self)
                       if f.name not in ("lab", "mark"))

    def counts(self) -> dict[str, int]:
        """How many objects each list holds (only the non-empty ones)."""
        return {f.name: len(getattr(self, f.name)) for f in fields(self)
                if f.name not in ("lab", "mark", "make_room") and getattr(self, f.name)}

    def deletions(self, first: bool) -> Deletions:
        """The deletions made before the additions (`first`) or after them."""
        def pick(objs: tuple) -> tuple:
            return tuple(o for o in objs if (o in self.make_room) == first)

        return Deletions(pick(self.delete_routes), pick(self.delete_addresses),
                         pick(self.delete_veths), pick(self.delete_bridges))

    def surviving_end(self, v: VethPair) -> tuple[str, str]:
        """(namespace, ifname) of the end of a deleted veth to delete it by: the one in
        a namespace that stays."""
        gone = {ns.name for ns in self.delete_namespaces}
        if v.netns in gone:
            return v.peer_netns, v.peer_ifname
        return v.netns, v.ifname


def diff(old: Plan | None, new: Plan) -> PlanDiff:
    if old is None:
        return PlanDiff(new.lab, new.mark, create_namespaces=new.namespaces,
                        add_bridges=new.bridges, add_veths=new.veths,
                        add_addresses=new.addresses, add_routes=new.routes)
    old_ns = {ns.name: ns for ns in old.namespaces}
    new_names = {ns.name for ns in new.namespaces}
    gone = {name for name in old_ns if name not in new_names}
    sysctls = []
    for ns in new.namespaces:
        if ns.name in old_ns:
            changed = tuple(kv for kv in ns.sysctls if kv not in old_ns[ns.name].sysctls)
            if changed:
                sysctls.append(Namespace(ns.name, ns.role, changed))

    new_bridges, new_veths = set(new.bridges), set(new.veths)
    new_addrs, new_routes = set(new.addresses), set(new.routes)
    lost_bridges = [b for b in old.bridges if b not in new_bridges]
    lost_veths = [v for v in old.veths if v not in new_veths]
    dead_links = {(b.netns, b.ifname) for b in lost_bridges}
    dead_links |= {end for v in lost_veths for end in _ends(v)}
    lost_addrs = {a for a in old.addresses
                  if a not in new_addrs or (a.netns, a.ifname) in dead_links}
    gateway_of = _gateway_addresses(old)
    lost_routes = {r for r in old.routes
                   if r not in new_routes or (r.netns, r.dev) in dead_links
                   or gateway_of.get(r) in lost_addrs}

    old_bridges, old_veths = set(old.bridges), set(old.veths)
    add_bridges = tuple(b for b in new.bridges if b not in old_bridges)
    add_veths = tuple(v for v in new.veths if v not in old_veths)
    old_addrs, old_routes = set(old.addresses), set(old.routes)
    add_addrs = tuple(a for a in new.addresses if a not in old_addrs or a in lost_addrs)
    add_routes = tuple(r for r in new.routes if r not in old_routes or r in lost_routes)

    del_routes = tuple(r for r in old.routes if r in lost_routes and r.netns not in gone)
    del_addrs = tuple(a for a in old.addresses if a in lost_addrs and a.netns not in gone)
    del_veths = tuple(v for v in lost_veths if not (v.netns in gone and v.peer_netns in gone))
    del_bridges = tuple(b for b in lost_bridges if b.netns not in gone)

    make_room = _make_room(add_bridges, add_veths, add_addrs, add_routes,
                           del_routes, del_addrs, del_veths, del_bridges, gateway_of)
    # a veth deleted early may still have to come back, with what sits on its end in a
    # namespace that is going away (and would otherwise leave unlisted)
    ends = {end for v in make_room if isinstance(v, VethPair) for end in _ends(v)
            if end[0] in gone}
    if ends:
        along = {a for a in old.addresses if (a.netns, a.ifname) in ends}
        along |= {r for r in old.routes
                  if (r.netns, r.dev) in ends or gateway_of.get(r) in along}
        make_room |= along
        del_addrs = tuple(a for a in old.addresses if a in del_addrs or a in along)
        del_routes = tuple(r for r in old.routes if r in del_routes or r in along)
    return PlanDiff(
        new.lab, new.mark,
        create_namespaces=tuple(ns for ns in new.namespaces if ns.name not in old_ns),
        set_sysctls=tuple(sysctls),
        add_bridges=add_bridges, add_veths=add_veths, add_addresses=add_addrs,
        add_routes=add_routes,
        delete_routes=del_routes, delete_addresses=del_addrs, delete_veths=del_veths,
        delete_bridges=del_bridges,
        delete_namespaces=tuple(ns for ns in old.namespaces if ns.name in gone),
        make_room=make_room)


def _ends(v: VethPair) -> tuple[tuple[str, str], tuple[str, str]]:
    return (v.netns, v.ifname), (v.peer_netns, v.peer_ifname)


def _ip(a: Address) -> str:
    return a.cidr.partition("/")[0]


def _gateway_addresses(plan: Plan) -> dict[Route, Address]:
    """For each route via a gateway, the plan's address whose subnet holds the gateway
    (the route goes out of that address's link and vanishes with it)."""
    by_ns: dict[str, list[tuple[ipaddress.IPv4Network, Address]]] = defaultdict(list)
    for a in plan.addresses:
        by_ns[a.netns].append((ipaddress.IPv4Interface(a.cidr).network, a))
    out = {}
    for r in plan.routes:
        if r.via:
            gw = ipaddress.IPv4Address(r.via)
            for net, a in by_ns.get(r.netns, ()):
                if gw in net:
                    out[r] = a
                    break
    return out


def _make_room(add_bridges: Iterable[Bridge], add_veths: Iterable[VethPair],
               add_addrs: Iterable[Address], add_routes: Iterable[Route],
               del_routes: Iterable[Route], del_addrs: Iterable[Address],
               del_veths: Iterable[VethPair], del_bridges: Iterable[Bridge],
               gateway_of: dict[Route, Address]) -> frozenset[Deletable]:
    """Deletions whose kernel name an addition takes, and what depends on them."""
    taken_links = {(b.netns, b.ifname) for b in add_bridges}
    taken_links |= {end for v in add_veths for end in _ends(v)}
    taken_ips = {(a.netns, _ip(a)) for a in add_addrs}
    taken_dsts = {(r.netns, r.dst) for r in add_routes}
    first: set[Deletable] = set()
    first_links = set()
    for b in del_bridges:
        if (b.netns, b.ifname) in taken_links:
            first.add(b)
            first_links.add((b.netns, b.ifname))
    for v in del_veths:
        if any(end in taken_links for end in _ends(v)):
            first.add(v)
            first_links.update(_ends(v))
    for a in del_addrs:  # an address goes before its link
        if (a.netns, _ip(a)) in taken_ips or (a.netns, a.ifname) in first_links:
            first.add(a)
    for r in del_routes:  # a route goes before its link and its gateway's address
        if ((r.netns, r.dst) in taken_dsts or (r.netns, r.dev) in first_links
                or gateway_of.get(r) in first):
            first.add(r)
    return frozenset(first)
