"""kube-proxy's IPVS mode in a node namespace: what proxy/ipvs rendered, made real.

Per node and sync, all in the calling thread while it is inside the node's namespace:

1. kube-ipvs0 — a dummy link, left down as kube-proxy leaves it (a down link's
   addresses still get their local routes), marked `labctl:<lab>` — and its addresses,
   over labctl's own rtnetlink socket (net/rtnl);
2. the ipsets, with one `ipset restore -exist` process (forked from the thread inside
   the namespace, as net/netfilter runs its tools);
3. virtual and real servers over generic netlink with pyroute2's IPVS API. pyroute2 0.9
   binds a handle's socket to the *thread* that uses it (reference/anchors.md §5), so
   each handle is created, used and closed inside one `netns.entered` block, and its
   socket's namespace is checked (SIOCGSKNS) before the first write. Forwarding is
   masquerading (fwd_method 0: pyroute2's default, 3, is direct routing) and the
   scheduler is always given (pyroute2 defaults to wlc);
4. the iptables rules, with one `iptables-restore --noflush`;
5. virtual servers and kube-ipvs0 addresses that are gone.

A real server that is removed while it still has connections is not deleted at once:
like kube-proxy's graceful termination, its weight drops to 0 (no new connections)
and a later sync deletes it once its connections are gone.

pyroute2's synchronous API runs its own asyncio loop, which it cannot do in a thread
that already runs one (the agent's): called from such a thread, the entry points here
run in a helper thread of their own, which enters the namespace, opens, uses and
closes its handle itself (no handle ever crosses threads). `apply_many` gives each
node such a thread of its own, so the nodes sync at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from labctl import names
from labctl.errors import LabctlError
from labctl.net import netns, syscalls
from labctl.net.rtnl import NetlinkError, Rtnl
from labctl.proxy.ipvs import IpvsRuleset, IpvsUpdate
from labctl.proxy.ipvs_render import (
    DUMMY_DEVICE,
    FLAG_HASHED,
    RealServer,
    VirtualServer,
    sysctls,
)

PROTO_NUMBER = {"TCP": 6, "UDP": 17, "SCTP": 132}
PROTO_NAME = {v: k for k, v in PROTO_NUMBER.items()}
FWD_MASQ = 0  # IP_VS_CONN_F_MASQ
FWD_NAMES = {0: "Masq", 1: "Local", 2: "Tunnel", 3: "Route"}
SIOCGSKNS = 0x894C  # the network namespace of a socket, as an fd
IPSET_RESTORE = ("ipset", "restore", "-exist")
Draining = tuple[tuple[VirtualServer, RealServer], ...]


class IpvsError(LabctlError):
    pass


class IpvsUnavailable(IpvsError):
    """The kernel has no IPVS (no generic netlink family IPVS)."""


T = TypeVar("T")


def off_loop(fn: Callable[..., T]) -> Callable[..., T]:
    """Run `fn` in a helper thread when the calling thread runs an asyncio loop (see the
    module docstring); otherwise in the calling thread."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return fn(*args, **kwargs)
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["result"] = fn(*args, **kwargs)
            except BaseException as e:  # handed to the caller below
                box["error"] = e

        helper = threading.Thread(target=run, name=f"labctl-ipvs-{fn.__name__}")
        helper.start()
        helper.join()
        if "error" in box:
            raise box["error"]
        return box["result"]

    return wrapper


# ----------------------------------------------------------------- pyroute2


def _pyroute2() -> Any:
    """pyroute2's IPVS API (imported on first use: it costs ~0.3 s)."""
    import pyroute2

    return pyroute2


def _service(vs: VirtualServer) -> Any:
    p = _pyroute2()
    return p.IPVSService(addr=vs.address, port=vs.port, protocol=PROTO_NUMBER[vs.protocol],
                         sched_name=vs.scheduler, timeout=vs.timeout,
                         flags={"flags": vs.flags, "mask": 0xFFFF})


def _dest(rs: RealServer, weight: int | None = None) -> Any:
    p = _pyroute2()
    return p.IPVSDest(addr=rs.address, port=rs.port, fwd_method=FWD_MASQ,
                      weight=rs.weight if weight is None else weight)


def _code(exc: BaseException) -> int:
    return int(getattr(exc, "code", 0) or 0)


def _socket_inode(handle: Any) -> int | None:
    """The inode of the network namespace a pyroute2 handle's socket lives in."""
    try:
        fileno = handle.asyncore.socket.fileno()
        fd = fcntl.ioctl(fileno, SIOCGSKNS, 0)
    except (AttributeError, OSError):
        return None
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


@contextlib.contextmanager
def handle_in(ns: str) -> Iterator[Any]:
    """A pyroute2 IPVS handle for node namespace `ns`, for use in the body only: the
    calling thread stays inside `ns` meanwhile (the handle acts where its thread is)."""
    target = os.stat(netns.path(ns)).st_ino
    with netns.entered(ns):
        h = _open_handle()
        try:
            where = _socket_inode(h)
            here = os.stat(netns.thread_ns_path()).st_ino
            if here != target or (where is not None and where != target):
                raise IpvsError(f"IPVS handle for {ns} is not in that namespace "
                                f"(thread {here}, socket {where}, wanted {target})")
            yield h
        finally:
            h.close()


def _open_handle() -> Any:
    try:
        return _pyroute2().IPVS()
    except Exception as e:  # pyroute2's NetlinkError: no IPVS family (ip_vs missing)
        raise IpvsUnavailable(f"cannot open IPVS (generic netlink family IPVS): {e}; the "
                              "kernel lacks ip_vs") from e


def _svc_add(h: Any, vs: VirtualServer) -> None:
    try:
        h.service("add", service=_service(vs))
    except Exception as e:
        if _code(e) != errno.EEXIST:
            raise IpvsError(f"ipvsadm {vs.save_line()}: {e}") from e
        h.service("set", service=_service(vs))


def _svc_set(h: Any, vs: VirtualServer) -> None:
    try:
        h.service("set", service=_service(vs))
    except Exception as e:
        if _code(e) not in (errno.ESRCH, errno.ENOENT):
            raise IpvsError(f"ipvsadm {vs.save_line('-E')}: {e}") from e
        _svc_add(h, vs)


def _svc_del(h: Any, vs: VirtualServer) -> None:
    try:
        h.service("del", service=_service(vs))
    except Exception as e:
        if _code(e) not in (errno.ESRCH, errno.ENOENT):
            raise IpvsError(f"ipvsadm {vs.save_line('-D')}: {e}") from e


def _dest_add(h: Any, vs: VirtualServer, rs: RealServer) -> None:
    try:
        h.dest("add", service=_service(vs), dest=_dest(rs))
    except Exception as e:
        if _code(e) != errno.EEXIST:
            raise IpvsError(f"ipvsadm {rs.save_line(vs)}: {e}") from e
        _dest_set(h, vs, rs)  # e.g. one being drained, wanted again


def _dest_set(h: Any, vs: VirtualServer, rs: RealServer, weight: int | None = None) -> None:
    try:
        h.dest("set", service=_service(vs), dest=_dest(rs, weight))
    except Exception as e:
        raise IpvsError(f"ipvsadm {rs.save_line(vs, '-e')}: {e}") from e


def _dest_del(h: Any, vs: VirtualServer, rs: RealServer) -> None:
    try:
        h.dest("del", service=_service(vs), dest=_dest(rs))
    except Exception as e:
        if _code(e) not in (errno.ENOENT, errno.ESRCH):
            raise IpvsError(f"ipvsadm {rs.save_line(vs, '-d')}: {e}") from e


# ----------------------------------------------------------------- reading back


@dataclass(frozen=True)
class Destination:
    address: str
    port: int
    weight: int
    forward: int  # 0 masq, 1 local, 2 tunnel, 3 route (read raw: pyroute2 misreports it)
    active: int
    inactive: int


@dataclass(frozen=True)
class Service:
    vs: VirtualServer  # flags without the kernel's own "hashed" bit
    dests: tuple[Destination, ...]


def _attr(nla: Any, name: str, default: Any = None) -> Any:
    value = nla.get(name) if nla is not None else None
    return default if value is None else value


def _read_service(msg: Any) -> VirtualServer:
    s = msg.get("IPVS_CMD_ATTR_SERVICE")
    flags = _attr(s, "IPVS_SVC_ATTR_FLAGS")
    if flags is not None and not isinstance(flags, int):
        flags = flags.get("flags")
    return VirtualServer(
        protocol=PROTO_NAME.get(_attr(s, "IPVS_SVC_ATTR_PROTOCOL", 0), "?"),
        address=str(_attr(s, "IPVS_SVC_ATTR_ADDR", "")),
        port=int(_attr(s, "IPVS_SVC_ATTR_PORT", 0)),
        scheduler=str(_attr(s, "IPVS_SVC_ATTR_SCHED_NAME", "")),
        flags=int(flags or 0) & ~FLAG_HASHED,
        timeout=int(_attr(s, "IPVS_SVC_ATTR_TIMEOUT", 0)))


def _read_dest(msg: Any) -> Destination:
    d = msg.get("IPVS_CMD_ATTR_DEST")
    return Destination(
        address=str(_attr(d, "IPVS_DEST_ATTR_ADDR", "")),
        port=int(_attr(d, "IPVS_DEST_ATTR_PORT", 0)),
        weight=int(_attr(d, "IPVS_DEST_ATTR_WEIGHT", 0)),
        forward=int(_attr(d, "IPVS_DEST_ATTR_FWD_METHOD", 0)) & 0x7,
        active=int(_attr(d, "IPVS_DEST_ATTR_ACTIVE_CONNS", 0)),
        inactive=int(_attr(d, "IPVS_DEST_ATTR_INACT_CONNS", 0)))


def _dests(h: Any, vs: VirtualServer) -> list[Destination]:
    try:
        return [_read_dest(m) for m in h.dest("dump", service=_service(vs))]
    except Exception as e:
        if _code(e) in (errno.ESRCH, errno.ENOENT):
            return []
        raise


def _dump(h: Any) -> list[Service]:
    out = []
    for msg in h.service("dump"):
        vs = _read_service(msg)
        out.append(Service(vs, tuple(_dests(h, vs))))
    return out


@off_loop
def dump(ns: str) -> list[Service]:
    """Every virtual server in a node namespace, with its real servers and their
    connection counts."""
    with handle_in(ns) as h:
        return _dump(h)


def format_list(services: Sequence[Service]) -> str:
    """`ipvsadm -Ln`'s layout, for when the ipvsadm binary is not installed."""
    lines = ["IP Virtual Server version (from netlink)",
             "Prot LocalAddress:Port Scheduler Flags",
             "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn"]
    for svc in services:
        vs = svc.vs
        flags = f" persistent {vs.timeout}" if vs.flags & 0x1 else ""
        lines.append(f"{vs.protocol:<4} {vs.address}:{vs.port} {vs.scheduler}{flags}")
        for d in svc.dests:
            lines.append(f"  -> {d.address + ':' + str(d.port):<28}"
                         f"{FWD_NAMES.get(d.forward, '?'):<7} {d.weight:<6} {d.active:<10} "
                         f"{d.inactive}")
    return "\n".join(lines) + "\n"


@off_loop
def list_text(ns: str) -> str:
    """`ipvsadm -Ln` run in the node (or the same from netlink without the binary)."""
    if shutil.which("ipvsadm"):
        with netns.entered(ns):
            proc = subprocess.run(["ipvsadm", "-Ln"], capture_output=True, text=True,
                                  check=False)
        if proc.returncode == 0:
            return proc.stdout
    return format_list(dump(ns))


# ----------------------------------------------------------------- applying a sync


@dataclass(frozen=True)
class NodeLoad:
    """One node's sync: where, what changes, and what earlier syncs left draining."""

    ns: str
    update: IpvsUpdate  # its `iptables` is the restore input to load ("" = none)
    draining: Draining = ()


@dataclass(frozen=True)
class Applied:
    seconds: float
    draining: Draining  # real servers at weight 0, deleted once their connections end


def _run(argv: Sequence[str], stdin: str, ns: str) -> None:
    """Run a tool in the namespace the calling thread is in (the child inherits it)."""
    proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise IpvsError(f"{' '.join(argv[:2])} in {ns} failed (exit {proc.returncode}): "
                        f"{(proc.stderr or proc.stdout).strip()[:2000]}")


def _write_sysctl(key: str, value: str) -> None:
    with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
        f.write(value)


def _links(ns: str, lab: str, update: IpvsUpdate, add: bool) -> None:
    """kube-ipvs0 (on a full sync) and the addresses to add (add=True) or remove."""
    ips = update.addresses_add if add else update.addresses_del
    if not ips and not (add and update.full):
        return
    with Rtnl() as r:
        if add and update.full:
            # Left down, as kube-proxy leaves it: its addresses' local routes exist all
            # the same, and it never answers ARP for them.
            r.link_add(DUMMY_DEVICE, "dummy", exist_ok=True,
                       what=f"ip -n {ns} link add {DUMMY_DEVICE} type dummy")
            # The kernel ignores IFLA_IFALIAS when it creates a link: mark it after.
            r.link_set(ifname=DUMMY_DEVICE, alias=names.owner_mark(lab),
                       what=f"ip -n {ns} link set {DUMMY_DEVICE} alias "
                            f"{names.owner_mark(lab)}")
            r.flush()
        index = r.link_index(DUMMY_DEVICE)
        for ip in ips:
            if add:
                r.addr_add(index, ip, 32, exist_ok=True,
                           what=f"ip -n {ns} addr add {ip}/32 dev {DUMMY_DEVICE}")
            else:
                r.addr_del(index, ip, 32, missing_ok=True,
                           what=f"ip -n {ns} addr del {ip}/32 dev {DUMMY_DEVICE}")
        r.flush()


def _drain_or_delete(h: Any, candidates: Sequence[tuple[VirtualServer, RealServer]]
                     ) -> Draining:
    """Delete each real server without connections; give the others weight 0 and return
    them (kube-proxy's graceful termination: TCP waits for its active connections,
    UDP and SCTP for every connection entry)."""
    by_vs: dict[VirtualServer, list[RealServer]] = {}
    for vs, rs in candidates:
        by_vs.setdefault(vs, []).append(rs)
    left: list[tuple[VirtualServer, RealServer]] = []
    for vs, reals in by_vs.items():
        held = {(d.address, d.port): d for d in _dests(h, vs)}
        for rs in reals:
            d = held.get(rs.key)
            if d is None:
                continue
            busy = d.active if vs.protocol == "TCP" else d.active + d.inactive
            if busy == 0:
                _dest_del(h, vs, rs)
                continue
            if d.weight != 0:
                _dest_set(h, vs, rs, weight=0)
            left.append((vs, rs))
    return tuple(left)


def _ipvs(h: Any, update: IpvsUpdate, draining: Draining) -> Draining:
    for vs in update.vs_add:
        _svc_add(h, vs)
    for vs in update.vs_edit:
        _svc_set(h, vs)
    for vs, rs in update.rs_add:
        _dest_add(h, vs, rs)
    for vs, rs in update.rs_edit:
        _dest_set(h, vs, rs)
    gone = {vs.key for vs in update.vs_del}
    wanted = {(vs.key, rs.key) for vs, rs in (*update.rs_add, *update.rs_edit)}
    candidates = [(vs, rs) for vs, rs in (*draining, *update.rs_del)
                  if vs.key not in gone and (vs.key, rs.key) not in wanted]
    return _drain_or_delete(h, candidates) if candidates else ()


def apply(ns: str, lab: str, load: NodeLoad, iptables_argv: Sequence[str],
          kernel_release: str | None = None) -> Applied:
    """Apply one node's sync (see the module docstring for the order)."""
    t = time.perf_counter()
    upd = load.update
    with netns.entered(ns):
        _links(ns, lab, upd, add=True)
    draining: Draining = ()
    touches_ipvs = (upd.full or upd.vs_add or upd.vs_edit or upd.vs_del or upd.rs_add
                    or upd.rs_edit or upd.rs_del or load.draining)
    if touches_ipvs or upd.full:
        with handle_in(ns) as h:
            if upd.full:  # ip_vs is loaded now (opening the handle loads it): its sysctls
                for key, value in sysctls(kernel_release or os.uname().release):
                    _write_sysctl(key, value)
            if upd.ipset:
                _run(IPSET_RESTORE, upd.ipset, ns)
            draining = _ipvs(h, upd, load.draining)
            if upd.iptables:
                _run(iptables_argv, upd.iptables, ns)
            for vs in upd.vs_del:
                _svc_del(h, vs)
    else:
        with netns.entered(ns):
            if upd.ipset:
                _run(IPSET_RESTORE, upd.ipset, ns)
            if upd.iptables:
                _run(iptables_argv, upd.iptables, ns)
    with netns.entered(ns):
        _links(ns, lab, upd, add=False)
    return Applied(time.perf_counter() - t, draining)


def apply_many(loads: Sequence[NodeLoad], lab: str, iptables_argv: Sequence[str]
               ) -> list[Applied]:
    """Every node's sync at once, as each node's kube-proxy syncs on its own: one thread
    per node, which enters the node's namespace and opens, uses and closes its own
    handle there (pyroute2's loop runs in that thread, never in an asyncio caller's).
    The first failure is raised once every node is done."""
    release = os.uname().release
    results: list[Applied | BaseException | None] = [None] * len(loads)

    def one(i: int, load: NodeLoad) -> None:
        try:
            results[i] = apply(load.ns, lab, load, iptables_argv, release)
        except BaseException as e:  # handed to the caller below
            results[i] = e

    threads = [threading.Thread(target=one, args=(i, load), name=f"labctl-ipvs-{load.ns}")
               for i, load in enumerate(loads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failure = next((r for r in results if isinstance(r, BaseException)), None)
    if failure is not None:
        raise failure
    return [r for r in results if isinstance(r, Applied)]


# ----------------------------------------------------------------- cleanup


@off_loop
def cleanup(ns: str, iptables_binary: str, iptables_restore: Sequence[str]) -> None:
    """kube-proxy --cleanup in IPVS mode: every virtual server, kube-ipvs0, kube-proxy's
    chains (jumps first), then its ipsets (no rule may use a set being destroyed).
    Idempotent: what is already gone is skipped (and without IPVS, there is none)."""
    with contextlib.suppress(IpvsUnavailable), handle_in(ns) as h:
        for svc in _dump(h):
            _svc_del(h, svc.vs)
    with netns.entered(ns), Rtnl() as r:
        r.link_del(DUMMY_DEVICE, missing_ok=True)
        r.flush()
    text, argv = IpvsRuleset.cleanup_payload()
    with netns.entered(ns):
        for args in argv:  # "no such rule / chain" is fine here
            subprocess.run([iptables_binary, "-w", *args], capture_output=True, check=False)
        _run(iptables_restore, text, ns)
        _run(IPSET_RESTORE, IpvsRuleset.ipset_cleanup_payload(), ns)


# ----------------------------------------------------------------- capabilities

PROBE_VIP = "198.51.100.0"  # TEST-NET-2, as kube-proxy's own scheduler probe uses
PROBE_SET_TYPES = ("hash:ip", "hash:ip,port", "hash:ip,port,ip", "hash:ip,port,net",
                   "bitmap:port")


@contextlib.contextmanager
def _throwaway_namespace() -> Iterator[None]:
    """Run the body in a new, nameless network namespace; it vanishes afterwards (the
    calling thread was its only user). Nothing the body makes reaches the host's."""
    home = os.open(netns.thread_ns_path(), os.O_RDONLY | os.O_CLOEXEC)
    try:
        syscalls.unshare(syscalls.CLONE_NEWNET)
        try:
            yield
        finally:
            syscalls.setns(home, syscalls.CLONE_NEWNET)
    finally:
        os.close(home)


def _module_exists(module: str) -> bool:
    """Whether `modprobe` could load `module` (a dry run: changes nothing)."""
    if shutil.which("modprobe") is None:
        return False
    return subprocess.run(["modprobe", "-n", "-q", module], capture_output=True,
                          check=False).returncode == 0


def _modprobe(module: str) -> bool:
    """Load a module, only if it exists."""
    if not _module_exists(module):
        return False
    return subprocess.run(["modprobe", "-q", module], capture_output=True,
                          check=False).returncode == 0


def _probe_ipvs(scheduler: str) -> list[str]:
    try:
        h = _pyroute2().IPVS()
    except Exception:
        if not _modprobe("ip_vs"):
            return ["ip_vs (IPVS: no generic netlink family IPVS, no module ip_vs)"]
        try:
            h = _pyroute2().IPVS()
        except Exception:
            return ["ip_vs (IPVS: the module loads but its netlink family is missing)"]
    try:
        vs = VirtualServer("TCP", PROBE_VIP, 20000, scheduler)
        try:
            h.service("add", service=_service(vs))
        except Exception:
            if not _modprobe(f"ip_vs_{scheduler}"):
                return [f"ip_vs_{scheduler} (the IPVS scheduler {scheduler!r})"]
            try:
                h.service("add", service=_service(vs))
            except Exception as e:
                return [f"ip_vs_{scheduler} (the IPVS scheduler {scheduler!r}: {e})"]
        h.service("del", service=_service(vs))
        return []
    finally:
        h.close()


def _probe_dummy() -> list[str]:
    def attempt() -> bool:
        try:
            with Rtnl() as r:
                r.link_add("lcprobe0", "dummy")
                r.flush()
            return True
        except NetlinkError:
            return False

    if attempt() or (_modprobe("dummy") and attempt()):
        return []
    return ["dummy links (module dummy, for kube-ipvs0)"]


def _probe_ipset() -> list[str]:
    if shutil.which("ipset") is None:
        return ["the ipset tool (Debian package ipset)"]
    missing = []
    for i, kind in enumerate(PROBE_SET_TYPES):
        opts = ["range", "0-65535"] if kind == "bitmap:port" else ["family", "inet"]
        proc = subprocess.run(["ipset", "create", f"LCPROBE-{i}", kind, *opts],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            module = "ip_set_" + kind.replace(":", "_").replace(",", "")
            missing.append(f"ipset type {kind} (module {module})")
    return missing


def _probe_matches(iptables_restore: Sequence[str]) -> list[str]:
    """xt_set, xt_ipvs and xt_physdev: the iptables matches IPVS mode's rules use."""
    if shutil.which(iptables_restore[0]) is None:
        return [f"{iptables_restore[0]} (Debian package iptables)"]
    rules = {"xt_set (iptables -m set)": "-m set --match-set LCPROBE-0 dst",
             "xt_ipvs (iptables -m ipvs)": f"-m ipvs --vaddr {PROBE_VIP}/32",
             "xt_physdev (iptables -m physdev)": "-m physdev ! --physdev-is-in"}
    missing = []
    for what, match in rules.items():
        text = f"*filter\n:LCPROBE - [0:0]\n-A LCPROBE {match} -j RETURN\nCOMMIT\n"
        proc = subprocess.run(list(iptables_restore), input=text, capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            missing.append(what)
    return missing


@off_loop
def probe(scheduler: str, iptables_restore: Sequence[str]) -> list[str]:
    """What IPVS mode needs and this kernel or system lacks ([] = nothing), found in a
    throw-away namespace so the host is left as it was (modules that exist may be
    loaded, as kube-proxy's own checks do)."""
    missing: list[str] = []
    with _throwaway_namespace():
        missing += _probe_ipvs(scheduler)
        missing += _probe_dummy()
        ipset = _probe_ipset()
        missing += ipset
        if not ipset:
            missing += _probe_matches(iptables_restore)
    return missing
