"""The one executor: apply a PlanDiff to the kernel, undoing everything on failure.

`up` applies the diff against nothing (`apply_plan`); a running lab applies the diff
between its plan and the next one (`apply_changes`). Same code path, same order:

  create namespaces (lo up + the ownership mark, sysctls) → write changed sysctls →
  deletions that make room for an addition → bridges → veths (peer created straight in
  its namespace, enslaved, up, hairpin) → peer ends up → addresses → routes →
  deletions: routes → addresses → veths → bridges → veths into namespaces being deleted
  (by the end that stays: namespace teardown is asynchronous) → namespaces.

All work happens in the calling thread. Each namespace gets one rtnetlink socket,
opened while the thread is inside it (so it is bound to that namespace for life): a new
namespace's while it is created, an existing one's by entering it — after checking it
carries the lab's mark, so a change never touches what is not the lab's. The requests
for a namespace go out as one batch. Nothing is created in the host's namespace.

Every step registers its undo before it runs; on any failure (or KeyboardInterrupt) the
undos run in reverse: what was added to existing namespaces is deleted, what was deleted
is added back, sysctls get their old values, and the namespaces this call created are
removed. Deleting namespaces (and the veths into them) comes last and is not undone.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import replace

from labctl.errors import LabctlError
from labctl.net import netns
from labctl.net.rtnl import NetlinkError, Rtnl
from labctl.plan.diff import Deletions, PlanDiff, diff
from labctl.plan.model import Address, Bridge, Plan, Route, VethPair

Progress = Callable[[str, int, int], None]


class ApplyError(LabctlError):
    pass


def write_sysctl(key: str, value: str) -> None:
    """Set a sysctl of the calling thread's current namespace."""
    with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
        f.write(value)


def read_sysctl(key: str) -> str:
    with open("/proc/sys/" + key.replace(".", "/")) as f:
        return f.read().strip()


def apply_plan(plan: Plan, progress: Progress | None = None) -> dict[str, float]:
    """Create everything in `plan` (`up`); returns timings per step. On any failure (or
    KeyboardInterrupt) every namespace this call created is removed again."""
    netns.ensure_run_dir()
    clash = [ns.name for ns in plan.namespaces if netns.exists(ns.name)]
    if clash:
        raise ApplyError(
            f"{len(clash)} namespace(s) of lab {plan.lab!r} already exist (e.g. {clash[0]}); "
            f"run `labctl down {plan.lab}` (or `labctl clean`) first")
    return apply_diff(diff(None, plan), progress)


def apply_changes(old: Plan, new: Plan, progress: Progress | None = None) -> PlanDiff:
    """Turn the running lab built from `old` into `new`; returns what was changed. On any
    failure (or KeyboardInterrupt) the lab is put back as `old` built it."""
    d = diff(old, new)
    if not d.empty:
        apply_diff(d, progress)
    return d


def apply_diff(d: PlanDiff, progress: Progress | None = None) -> dict[str, float]:
    """Apply one PlanDiff (see the module docstring); returns timings per step.

    Namespaces it creates must not exist; every other namespace it touches or deletes
    must carry the lab's mark (checked before anything changes)."""
    run = _Run(d)
    try:
        run.execute(progress)
    except BaseException as exc:
        problems = run.rollback()
        run.close()
        if isinstance(exc, NetlinkError):
            if run.committed:
                after = ("the change was made, but some of what it removes may remain; "
                         f"`labctl down {d.lab}` removes everything")
            elif problems:
                after = "undoing it failed too: " + "; ".join(problems)
            elif run.existing:
                after = "the change was undone, the lab is as it was"
            else:
                after = "nothing of the lab was left behind"
            raise ApplyError(f"the kernel refused `{exc.what}`: {exc.strerror}; {after}"
                             ) from exc
        if problems:
            exc.add_note("undoing the change failed: " + "; ".join(problems))
        raise
    run.close()
    return run.times


class _Run:
    """One application of a PlanDiff: a socket per namespace, link indexes, the undo log."""

    def __init__(self, d: PlanDiff) -> None:
        self.d = d
        self.new = {ns.name for ns in d.create_namespaces}
        self.gone = {ns.name for ns in d.delete_namespaces}
        self.existing = sorted(_namespaces_of(d) - self.new - self.gone)
        self.socks: dict[str, Rtnl] = {}
        self.index: dict[tuple[str, str], int] = {}
        self.made: list[str] = []  # namespaces this call created
        self.undo: list[Callable[[], None]] = []
        self.committed = False  # past the point of no return
        self.times: dict[str, float] = {}

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()
        self.socks.clear()

    # ------------------------------------------------------------ the steps

    def execute(self, progress: Progress | None) -> None:
        d = self.d
        self._check()
        t = time.perf_counter()
        self._create_namespaces(progress)
        self._set_sysctls()
        first = d.deletions(first=True)
        if first:
            self.undo.append(lambda: self.add(first.bridges, first.veths, first.addresses,
                                              first.routes, exist_ok=True))
            self.delete(first)
        self.times["namespaces"] = time.perf_counter() - t
        t = time.perf_counter()
        self._undo_additions(d.add_bridges, d.add_veths, (), ())
        self.add_links(d.add_bridges, d.add_veths)
        self.times["links"] = time.perf_counter() - t
        t = time.perf_counter()
        self._undo_additions((), (), d.add_addresses, d.add_routes)
        self.add_addresses_and_routes(d.add_veths, d.add_addresses, d.add_routes)
        self.times["addresses"] = time.perf_counter() - t
        rest = d.deletions(first=False)
        # veths into vanishing namespaces go with them, last: undone, they would lack
        # the addresses and routes of their vanishing ends, which the diff leaves out
        unwired = tuple(v for v in rest.veths if self.gone & {v.netns, v.peer_netns})
        rest = replace(rest, veths=tuple(v for v in rest.veths if v not in unwired))
        if rest:
            self.undo.append(lambda: self.add(rest.bridges, rest.veths, rest.addresses,
                                              rest.routes, exist_ok=True))
            self.delete(rest)
        self.undo.clear()  # the point of no return: what follows cannot be undone
        self.committed = True
        if unwired:
            self.delete(Deletions(veths=unwired))
        for ns in d.delete_namespaces:
            netns.delete(ns.name)

    def _check(self) -> None:
        if self.new:
            netns.ensure_run_dir()
        clash = [name for name in sorted(self.new) if netns.exists(name)]
        if clash:
            raise ApplyError(f"{len(clash)} namespace(s) lab {self.d.lab!r} would create "
                             f"already exist (e.g. {clash[0]})")
        for name in self.existing:
            if not netns.exists(name):
                raise ApplyError(f"namespace {name} of lab {self.d.lab!r} is missing; "
                                 f"take the lab down (`labctl down {self.d.lab}`)")
            self.sock(name)
            self._check_mark(name, self.socks[name])
        for name in sorted(self.gone):
            if netns.exists(name):
                with netns.entered(name), Rtnl() as sock:
                    self._check_mark(name, sock)

    def _check_mark(self, name: str, sock: Rtnl) -> None:
        mark = sock.link("lo").alias
        if mark != self.d.mark:
            raise ApplyError(f"namespace {name} is not lab {self.d.lab!r}'s (its mark is "
                             f"{mark!r}); labctl changes only what it made")

    def _create_namespaces(self, progress: Progress | None) -> None:
        if not self.d.create_namespaces:
            return
        self.undo.append(self._delete_made)
        total = len(self.d.create_namespaces)
        step = max(1, total // 50)  # at most ~50 reports, whatever the lab's size
        for i, ns in enumerate(self.d.create_namespaces):
            self.made.append(ns.name)  # before creating: an interrupt in between is undone
            with netns.created(ns.name):
                sock = self.socks[ns.name] = Rtnl()
                sock.link_set(ifname="lo", up=True, alias=self.d.mark)
                sock.flush()
                for key, value in ns.sysctls:
                    write_sysctl(key, value)
            if progress and (i % step == 0 or i == total - 1):
                progress("namespaces", i + 1, total)

    def _delete_made(self) -> None:
        for sock in [self.socks.pop(name) for name in self.made if name in self.socks]:
            sock.close()
        for name in reversed(self.made):
            netns.delete(name)

    def _set_sysctls(self) -> None:
        for ns in self.d.set_sysctls:
            with netns.entered(ns.name):
                old = [(key, read_sysctl(key)) for key, _ in ns.sysctls]
                self.undo.append(lambda name=ns.name, old=old: _write_in(name, old))
                for key, value in ns.sysctls:
                    write_sysctl(key, value)

    def _undo_additions(self, bridges: Iterable[Bridge], veths: Iterable[VethPair],
                        addresses: Iterable[Address], routes: Iterable[Route]) -> None:
        """Register the removal of what is about to be added to namespaces that existed
        before (what lands in a new namespace goes with it)."""
        old = self.new
        undo = Deletions(
            routes=tuple(r for r in routes if r.netns not in old),
            addresses=tuple(a for a in addresses if a.netns not in old),
            veths=tuple(v for v in veths if v.netns not in old or v.peer_netns not in old),
            bridges=tuple(b for b in bridges if b.netns not in old))
        if undo:
            self.undo.append(lambda: self.delete(undo, vanishing=old))

    def rollback(self) -> list[str]:
        """Run the undo log backwards; returns what could not be undone."""
        problems = []
        for sock in self.socks.values():
            sock.discard()  # requests queued but never sent stay unsent
        for step in reversed(self.undo):
            self.index.clear()  # links may have come and gone
            try:
                step()
            except Exception as exc:  # keep undoing the rest
                problems.append(str(exc))
        self.undo.clear()
        return problems

    # ------------------------------------------------------------ requests

    def sock(self, ns: str) -> Rtnl:
        """The socket of a namespace: made when it was created, or now by entering it."""
        sock = self.socks.get(ns)
        if sock is None:
            with netns.entered(ns):
                sock = self.socks[ns] = Rtnl()
        return sock

    def idx(self, ns: str, ifname: str) -> int:
        key = (ns, ifname)
        if key not in self.index:
            self.index[key] = self.sock(ns).link_index(ifname)
        return self.index[key]

    def _flush(self, namespaces: Iterable[str]) -> None:
        for ns in namespaces:
            self.socks[ns].flush()

    def add(self, bridges: Iterable[Bridge], veths: Iterable[VethPair],
            addresses: Iterable[Address], routes: Iterable[Route],
            exist_ok: bool = False) -> None:
        self.add_links(bridges, veths, exist_ok)
        self.add_addresses_and_routes(veths, addresses, routes, exist_ok)

    def add_links(self, bridges: Iterable[Bridge], veths: Iterable[VethPair],
                  exist_ok: bool = False) -> None:
        mark = self.d.mark
        touched = set()
        for br in bridges:
            self.sock(br.netns).link_add(
                br.ifname, "bridge", up=True, address=br.mac, exist_ok=exist_ok,
                what=f"ip -n {br.netns} link add {br.ifname} type bridge")
            self.sock(br.netns).link_set(  # the kernel ignores an alias at creation
                ifname=br.ifname, alias=mark,
                what=f"ip -n {br.netns} link set {br.ifname} alias {mark}")
            touched.add(br.netns)
        self._flush(touched)

        veths = tuple(veths)
        for key in dict.fromkeys((v.netns, v.master) for v in veths if v.master):
            self.idx(*key)  # each bridge's index, before the batches fill up
        fds: list[int] = []  # peer namespace fds, closed once the batches are sent
        touched = set()
        try:
            for v in veths:
                fd = os.open(netns.path(v.peer_netns), os.O_RDONLY | os.O_CLOEXEC)
                fds.append(fd)
                self.sock(v.netns).link_add(
                    v.ifname, "veth", up=True,
                    master=self.index[v.netns, v.master] if v.master else 0,
                    peer=v.peer_ifname, peer_ns_fd=fd, exist_ok=exist_ok,
                    what=f"ip -n {v.netns} link add {v.ifname} type veth peer name "
                         f"{v.peer_ifname} netns {v.peer_netns}")
                self.sock(v.netns).link_set(
                    ifname=v.ifname, alias=mark,
                    what=f"ip -n {v.netns} link set {v.ifname} alias {mark}")
                touched.add(v.netns)
            for v in veths:  # after creation: a port's options need it enslaved first
                if v.hairpin:
                    self.socks[v.netns].bridge_port_hairpin(
                        v.ifname,
                        what=f"ip -n {v.netns} link set {v.ifname} type bridge_slave hairpin on")
            self._flush(touched)
        finally:
            for fd in fds:
                os.close(fd)

    def add_addresses_and_routes(self, veths: Iterable[VethPair],
                                 addresses: Iterable[Address], routes: Iterable[Route],
                                 exist_ok: bool = False) -> None:
        touched = set()
        for v in veths:  # the peer ends arrive down and unmarked
            self.sock(v.peer_netns).link_set(
                index=self.idx(v.peer_netns, v.peer_ifname), up=True, alias=self.d.mark,
                what=f"ip -n {v.peer_netns} link set {v.peer_ifname} up")
            touched.add(v.peer_netns)
        for a in addresses:
            ip, _, plen = a.cidr.partition("/")
            self.sock(a.netns).addr_add(
                self.idx(a.netns, a.ifname), ip, int(plen), exist_ok=exist_ok,
                what=f"ip -n {a.netns} addr add {a.cidr} dev {a.ifname}")
            touched.add(a.netns)
        for r in routes:
            dst, plen = _dst(r)
            self.sock(r.netns).route_add(
                dst, plen, gateway=r.via, oif=self.idx(r.netns, r.dev) if r.dev else 0,
                exist_ok=exist_ok, what=f"ip -n {r.netns} route add {r.dst} {_where(r)}")
            touched.add(r.netns)
        self._flush(touched)

    def delete(self, objs: Deletions, vanishing: set[str] | None = None) -> None:
        """Delete routes, then addresses, then links (idempotent: what is gone already
        counts as deleted). A veth is deleted by its end outside the namespaces about to
        vanish (by default the diff's deleted ones); if both ends are in them, it goes
        with them."""
        vanishing = self.gone if vanishing is None else vanishing
        indexes = {}
        for a in objs.addresses:  # looked up before the batches fill up
            try:
                indexes[a] = self.idx(a.netns, a.ifname)
            except NetlinkError:  # the link is gone, and its addresses with it
                continue
        touched = set()
        for r in objs.routes:
            dst, plen = _dst(r)
            self.sock(r.netns).route_del(dst, plen, r.via, missing_ok=True,
                                         what=f"ip -n {r.netns} route del {r.dst} {_where(r)}")
            touched.add(r.netns)
        for a, index in indexes.items():
            ip, _, plen = a.cidr.partition("/")
            self.sock(a.netns).addr_del(index, ip, int(plen), missing_ok=True,
                                        what=f"ip -n {a.netns} addr del {a.cidr} dev {a.ifname}")
            touched.add(a.netns)
        self._flush(touched)
        links: dict[str, list[str]] = defaultdict(list)
        for v in objs.veths:
            ns, ifname = (v.netns, v.ifname) if v.netns not in vanishing else \
                (v.peer_netns, v.peer_ifname)
            if ns not in vanishing:  # else both ends go with their namespaces
                links[ns].append(ifname)
        for b in objs.bridges:
            links[b.netns].append(b.ifname)
        for ns, ifnames in links.items():
            self.sock(ns).links_del(ifnames, missing_ok=True,
                                    what=f"ip -n {ns} link del {' / '.join(ifnames)}")
        self._flush(links)
        self.index.clear()  # a name may come back as a new link


def _namespaces_of(d: PlanDiff) -> set[str]:
    """Every namespace a diff names."""
    out = {ns.name for ns in (*d.create_namespaces, *d.set_sysctls, *d.delete_namespaces)}
    for objs in (d.add_bridges, d.add_addresses, d.add_routes, d.delete_routes,
                 d.delete_addresses, d.delete_bridges):
        out.update(o.netns for o in objs)
    for v in (*d.add_veths, *d.delete_veths):
        out.update((v.netns, v.peer_netns))
    return out


def _write_in(name: str, values: list[tuple[str, str]]) -> None:
    with netns.entered(name):
        for key, value in values:
            write_sysctl(key, value)


def _dst(r: Route) -> tuple[str, int]:
    if r.dst == "default":
        return "0.0.0.0", 0
    dst, _, plen = r.dst.partition("/")
    return dst, int(plen)


def _where(r: Route) -> str:
    return f"via {r.via}" if r.via else f"dev {r.dev}"
