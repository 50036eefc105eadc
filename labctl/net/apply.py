"""The one executor: build a Plan's kernel objects, undoing everything on failure.

All work happens in the calling thread. Each namespace gets one rtnetlink socket,
opened while the thread is inside it (so it is bound to that namespace for life), and
the requests for a namespace go out as one batch. Nothing is created in the host's
namespace: the lab's bridges and veths all live in lab namespaces.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable

from labctl.errors import LabctlError
from labctl.net import netns
from labctl.net.rtnl import NetlinkError, Rtnl
from labctl.plan.model import Plan

Progress = Callable[[str, int, int], None]


class ApplyError(LabctlError):
    pass


def write_sysctl(key: str, value: str) -> None:
    """Set a sysctl of the calling thread's current namespace."""
    with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
        f.write(value)


def apply_plan(plan: Plan, progress: Progress | None = None) -> dict[str, float]:
    """Create everything in `plan`; returns timings per step. On any failure (or
    KeyboardInterrupt) every namespace this call created is removed again."""
    netns.ensure_run_dir()
    clash = [ns.name for ns in plan.namespaces if netns.exists(ns.name)]
    if clash:
        raise ApplyError(
            f"{len(clash)} namespace(s) of lab {plan.lab!r} already exist (e.g. {clash[0]}); "
            f"run `labctl down {plan.lab}` (or `labctl clean`) first")
    made: list[str] = []
    socks: dict[str, Rtnl] = {}
    times: dict[str, float] = {}
    try:
        t = time.perf_counter()
        total = len(plan.namespaces)
        for i, ns in enumerate(plan.namespaces):
            made.append(ns.name)  # before creating: an interrupt in between is still undone
            with netns.created(ns.name):
                sock = socks[ns.name] = Rtnl()
                sock.link_set(ifname="lo", up=True, alias=plan.mark)
                sock.flush()
                for key, value in ns.sysctls:
                    write_sysctl(key, value)
            if progress and (i % 50 == 0 or i == total - 1):
                progress("namespaces", i + 1, total)
        times["namespaces"] = time.perf_counter() - t
        t = time.perf_counter()
        _links(plan, socks)
        times["links"] = time.perf_counter() - t
        t = time.perf_counter()
        _addresses_and_routes(plan, socks)
        times["addresses"] = time.perf_counter() - t
    except BaseException as exc:
        for sock in socks.values():
            sock.close()
        for name in reversed(made):
            netns.delete(name)
        if isinstance(exc, NetlinkError):
            raise ApplyError(f"the kernel refused `{exc.what}`: {exc.strerror}; "
                             "nothing of the lab was left behind") from exc
        raise
    for sock in socks.values():
        sock.close()
    return times


def _links(plan: Plan, socks: dict[str, Rtnl]) -> None:
    bridge_index: dict[tuple[str, str], int] = {}
    for br in plan.bridges:
        sock = socks[br.netns]
        sock.link_add(br.ifname, "bridge", up=True, alias=plan.mark,
                      what=f"ip -n {br.netns} link add {br.ifname} type bridge")
    for ns in {br.netns for br in plan.bridges}:
        socks[ns].flush()
    for br in plan.bridges:
        bridge_index[br.netns, br.ifname] = socks[br.netns].link_index(br.ifname)

    by_ns: dict[str, list[int]] = defaultdict(list)  # peer namespace fds to close after flush
    try:
        for v in plan.veths:
            fd = os.open(netns.path(v.peer_netns), os.O_RDONLY | os.O_CLOEXEC)
            by_ns[v.netns].append(fd)
            master = bridge_index[v.netns, v.master] if v.master else 0
            socks[v.netns].link_add(
                v.ifname, "veth", up=True, alias=plan.mark, master=master,
                peer=v.peer_ifname, peer_ns_fd=fd,
                what=f"ip -n {v.netns} link add {v.ifname} type veth peer name "
                     f"{v.peer_ifname} netns {v.peer_netns}")
        for v in plan.veths:  # after creation: a port's options need it enslaved first
            if v.hairpin:
                socks[v.netns].bridge_port_hairpin(
                    v.ifname,
                    what=f"ip -n {v.netns} link set {v.ifname} type bridge_slave hairpin on")
        for ns in by_ns:
            socks[ns].flush()
    finally:
        for fds in by_ns.values():
            for fd in fds:
                os.close(fd)


def _addresses_and_routes(plan: Plan, socks: dict[str, Rtnl]) -> None:
    index: dict[tuple[str, str], int] = {}

    def idx(ns: str, ifname: str) -> int:
        if (ns, ifname) not in index:
            index[ns, ifname] = socks[ns].link_index(ifname)
        return index[ns, ifname]

    touched: set[str] = set()
    for v in plan.veths:  # the peer ends arrive down and unmarked
        socks[v.peer_netns].link_set(index=idx(v.peer_netns, v.peer_ifname), up=True,
                                     alias=plan.mark,
                                     what=f"ip -n {v.peer_netns} link set {v.peer_ifname} up")
        touched.add(v.peer_netns)
    for a in plan.addresses:
        ip, _, plen = a.cidr.partition("/")
        socks[a.netns].addr_add(idx(a.netns, a.ifname), ip, int(plen),
                                what=f"ip -n {a.netns} addr add {a.cidr} dev {a.ifname}")
        touched.add(a.netns)
    for r in plan.routes:
        dst, _, plen = r.dst.partition("/")
        if r.dst == "default":
            dst, plen = "0.0.0.0", "0"
        where = f"via {r.via}" if r.via else f"dev {r.dev}"
        socks[r.netns].route_add(dst, int(plen), gateway=r.via,
                                 oif=idx(r.netns, r.dev) if r.dev else 0,
                                 what=f"ip -n {r.netns} route add {r.dst} {where}")
        touched.add(r.netns)
    for ns in touched:
        socks[ns].flush()


