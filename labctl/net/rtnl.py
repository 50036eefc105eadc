"""A batching rtnetlink client: the few messages a lab needs, over one plain socket.

Why not `pyroute2.IPRoute` for building labs:
* each of its calls is a full asyncio round trip, and in 0.9 a handle acts in the
  namespace of the *thread* that uses it (reference/anchors.md §5, DANGER). A plain
  `AF_NETLINK` socket is bound for life to the namespace it was opened in, whichever
  thread uses it;
* importing pyroute2 costs ~110 ms per command and its generic codec ~1 ms per pod.

So this module encodes the request shapes labctl sends (link add / set / del, bridge port
options, addr add / del, route add / del, link get) with `struct`, queues them, and sends
each namespace's batch in one `send`; the kernel processes the messages in order, exactly
as if they had been sent singly, and acknowledges each. The first refusal is raised with
the equivalent `ip` command in its text. A request may name errors that count as success
(`missing_ok` on deletions, `exist_ok` on additions: idempotent requests, used when
undoing). pyroute2 remains the library for IPVS.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass

# <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_link.h>, <linux/veth.h>
NETLINK_ROUTE = 0
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NLMSG_ERROR = 2
SO_RCVBUFFORCE = 33  # socket.h: SO_RCVBUF beyond rmem_max, for CAP_NET_ADMIN
CHUNK = 256  # requests sent before their acks are read
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_NEWROUTE, RTM_DELROUTE = 20, 21, 24, 25
IFLA_ADDRESS = 1
IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_IFALIAS, IFLA_GROUP, IFLA_NET_NS_FD = (
    3, 10, 18, 20, 27, 28)
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
VETH_INFO_PEER, IFLA_BRPORT_MODE = 1, 4
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
IFF_UP = 0x1
# the link group links are moved to just before they are deleted together (lab
# namespaces only; no other link there leaves group 0, the default)
DOOMED_GROUP = 0x6C63
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RTN_UNICAST = 254, 3, 0, 253, 1
RT_SCOPE_NOWHERE = 255  # in a route deletion: match any scope

_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg
_ATTR = struct.Struct("=HH")
_ERR = struct.Struct("=i")
CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
CHANGE = NLM_F_REQUEST | NLM_F_ACK
EXISTS = (errno.EEXIST,)
NO_LINK = (errno.ENODEV,)
NO_ADDRESS = (errno.EADDRNOTAVAIL, errno.ENODEV)
NO_ROUTE = (errno.ESRCH,)


def _attr(kind: int, payload: bytes) -> bytes:
    length = _ATTR.size + len(payload)
    return _ATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def _str(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def _ip4(kind: int, address: str) -> bytes:
    return _attr(kind, socket.inet_aton(address))


def _attrs(data: bytes) -> dict[int, bytes]:
    out = {}
    off = 0
    while off + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, off)
        if length < _ATTR.size:
            break
        out[kind & 0x3FFF] = data[off + _ATTR.size:off + length]
        off += (length + 3) & ~3
    return out


def _cstr(raw: bytes | None) -> str | None:
    return None if raw is None else raw.split(b"\0", 1)[0].decode()


class NetlinkError(OSError):
    """A request the kernel refused; `what` says which request in plain words."""

    def __init__(self, code: int, what: str):
        self.what = what
        super().__init__(code, f"{what}: {os.strerror(code)}")


@dataclass(frozen=True)
class Link:
    index: int
    ifname: str
    alias: str | None
    flags: int


class Rtnl:
    """One rtnetlink socket, bound to the namespace of the thread that opened it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        try:  # past net.core.rmem_max (root may): room for a whole chunk's acks
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 22)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, 0))
        self.seq = 0
        self._done = 0  # the last sequence number answered
        # (message, what it means, errors that count as success)
        self.pending: list[tuple[bytes, str, tuple[int, ...]]] = []

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ batching

    def _message(self, mtype: int, flags: int, body: bytes) -> bytes:
        self.seq += 1
        return _HDR.pack(_HDR.size + len(body), mtype, flags, self.seq, 0) + body

    def _queue(self, mtype: int, flags: int, body: bytes, what: str,
               ok: tuple[int, ...] = ()) -> None:
        self.pending.append((self._message(mtype, flags, body), what, ok))

    def discard(self) -> None:
        """Drop the requests queued and not sent yet."""
        self.pending.clear()

    def flush(self) -> None:
        """Send every queued request, wait for all acknowledgements, raise the first error."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        first = self.seq - len(pending) + 1
        failure: NetlinkError | None = None
        i = 0
        while i < len(pending):
            # Chunks stay well inside the socket buffers: at most 256 KiB of requests,
            # and at most CHUNK of them — each ack costs the receive buffer a whole
            # skb (~1 KiB), however small the request (1 000 addresses at once overran it)
            j, size = i, 0
            while j < len(pending) and size < 1 << 18 and j - i < CHUNK:
                size += len(pending[j][0])
                j += 1
            self.sock.send(b"".join(msg for msg, _, _ in pending[i:j]))
            failure = self._read_acks(first, pending, first + j - 1, failure)
            i = j
        if failure:
            raise failure

    def _read_acks(self, first: int, pending: list[tuple[bytes, str, tuple[int, ...]]],
                   last: int, failure: NetlinkError | None) -> NetlinkError | None:
        done = max(self._done, first - 1)
        while done < last:
            buf = self.sock.recv(1 << 20)
            off = 0
            while off < len(buf):
                length, mtype, _flags, seq, _pid = _HDR.unpack_from(buf, off)
                # acks of an earlier batch cut short (an interrupt) are skipped
                if mtype == NLMSG_ERROR and first <= seq <= last:
                    (code,) = _ERR.unpack_from(buf, off + _HDR.size)
                    if code and failure is None:
                        _msg, what, ok = pending[seq - first]
                        if -code not in ok:
                            failure = NetlinkError(-code, what)
                    done = max(done, seq)
                off += (length + 3) & ~3
        self._done = done
        return failure

    # ------------------------------------------------------------ queued requests

    def link_add(self, ifname: str, kind: str, *, up: bool = False, alias: str = "",
                 master: int = 0, peer: str = "", peer_ns_fd: int = -1, address: str = "",
                 what: str = "", exist_ok: bool = False) -> None:
        """RTM_NEWLINK. The kernel ignores an alias given here (IFLA_IFALIAS is applied
        only by a link change): callers mark new links with `link_set(alias=…)`."""
        flags = IFF_UP if up else 0
        info = _str(IFLA_INFO_KIND, kind)
        if kind == "veth" and peer:
            peer_attrs = _str(IFLA_IFNAME, peer)
            if peer_ns_fd >= 0:
                peer_attrs += _u32(IFLA_NET_NS_FD, peer_ns_fd)
            peer_msg = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + peer_attrs
            info += _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer_msg))
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, flags, flags)
        body += _str(IFLA_IFNAME, ifname) + _attr(IFLA_LINKINFO, info)
        if master:
            body += _u32(IFLA_MASTER, master)
        if address:
            body += _attr(IFLA_ADDRESS, bytes(int(x, 16) for x in address.split(":")))
        if alias:
            body += _str(IFLA_IFALIAS, alias)
        self._queue(RTM_NEWLINK, CREATE, body, what or f"ip link add {ifname} type {kind}",
                    EXISTS if exist_ok else ())

    def link_del(self, ifname: str, *, missing_ok: bool = False, what: str = "") -> None:
        """Delete a link by name (a veth: both ends go)."""
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _str(IFLA_IFNAME, ifname)
        self._queue(RTM_DELLINK, CHANGE, body, what or f"ip link del {ifname}",
                    NO_LINK if missing_ok else ())

    def links_del(self, ifnames: list[str], *, missing_ok: bool = False,
                  what: str = "") -> None:
        """Delete several links in one go: each link deleted alone waits for an RCU grace
        period in the kernel (~20 ms), so the links are put in one group (a link set each)
        and the group is deleted by one request (`ip link del group N`)."""
        for ifname in ifnames:
            body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _str(IFLA_IFNAME, ifname)
            body += _u32(IFLA_GROUP, DOOMED_GROUP)
            self._queue(RTM_SETLINK, CHANGE, body, what or f"ip link del {ifname}",
                        NO_LINK if missing_ok else ())
        if ifnames:
            body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _u32(IFLA_GROUP, DOOMED_GROUP)
            # ENODEV here: none of them was left to delete
            self._queue(RTM_DELLINK, CHANGE, body, what or f"ip link del {', '.join(ifnames)}",
                        NO_LINK if missing_ok else ())

    def link_set(self, *, index: int = 0, ifname: str = "", up: bool | None = None,
                 alias: str | None = None, master: int | None = None, what: str = "") -> None:
        change = IFF_UP if up is not None else 0
        flags = IFF_UP if up else 0
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, index, flags, change)
        if not index:
            body += _str(IFLA_IFNAME, ifname)
        if alias is not None:
            body += _str(IFLA_IFALIAS, alias)
        if master is not None:
            body += _u32(IFLA_MASTER, master)
        self._queue(RTM_SETLINK, CHANGE, body, what or f"ip link set {ifname or index}")

    def bridge_port_hairpin(self, ifname: str, on: bool = True, what: str = "") -> None:
        """`ip link set DEV type bridge_slave hairpin on`: let a bridge send a frame back
        out of the port it came in by (a pod reaching itself through its Service)."""
        slave = _attr(IFLA_BRPORT_MODE, bytes([1 if on else 0]))
        info = _str(IFLA_INFO_SLAVE_KIND, "bridge") + _attr(IFLA_INFO_SLAVE_DATA, slave)
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _str(IFLA_IFNAME, ifname)
        body += _attr(IFLA_LINKINFO, info)
        self._queue(RTM_NEWLINK, CHANGE, body, what or f"ip link set {ifname} hairpin on")

    def addr_add(self, index: int, address: str, prefixlen: int, what: str = "",
                 exist_ok: bool = False) -> None:
        body = _IFADDR.pack(socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, index)
        body += _ip4(IFA_LOCAL, address) + _ip4(IFA_ADDRESS, address)
        self._queue(RTM_NEWADDR, CREATE, body, what or f"ip addr add {address}/{prefixlen}",
                    EXISTS if exist_ok else ())

    def addr_del(self, index: int, address: str, prefixlen: int, *, missing_ok: bool = False,
                 what: str = "") -> None:
        body = _IFADDR.pack(socket.AF_INET, prefixlen, 0, 0, index)
        body += _ip4(IFA_LOCAL, address) + _ip4(IFA_ADDRESS, address)
        self._queue(RTM_DELADDR, CHANGE, body, what or f"ip addr del {address}/{prefixlen}",
                    NO_ADDRESS if missing_ok else ())

    def route_add(self, dst: str, prefixlen: int, gateway: str = "", oif: int = 0,
                  what: str = "", exist_ok: bool = False) -> None:
        scope = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
        body = _RTMSG.pack(socket.AF_INET, prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope,
                           RTN_UNICAST, 0)
        body += _u32(RTA_TABLE, RT_TABLE_MAIN)
        if prefixlen:
            body += _ip4(RTA_DST, dst)
        if gateway:
            body += _ip4(RTA_GATEWAY, gateway)
        if oif:
            body += _u32(RTA_OIF, oif)
        self._queue(RTM_NEWROUTE, CREATE, body, what or f"ip route add {dst}/{prefixlen}",
                    EXISTS if exist_ok else ())

    def route_del(self, dst: str, prefixlen: int, gateway: str = "", *,
                  missing_ok: bool = False, what: str = "") -> None:
        """Delete a main-table route by destination (and gateway, when given), whatever
        its scope and protocol, as `ip route del` does."""
        body = _RTMSG.pack(socket.AF_INET, prefixlen, 0, 0, RT_TABLE_MAIN, 0, RT_SCOPE_NOWHERE,
                           0, 0)
        body += _u32(RTA_TABLE, RT_TABLE_MAIN)
        if prefixlen:
            body += _ip4(RTA_DST, dst)
        if gateway:
            body += _ip4(RTA_GATEWAY, gateway)
        self._queue(RTM_DELROUTE, CHANGE, body, what or f"ip route del {dst}/{prefixlen}",
                    NO_ROUTE if missing_ok else ())

    # ------------------------------------------------------------ immediate queries

    def link(self, ifname: str) -> Link:
        """One link by name (a targeted get, not a dump of every link)."""
        self.flush()
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _str(IFLA_IFNAME, ifname)
        self.sock.send(self._message(RTM_GETLINK, NLM_F_REQUEST, body))
        while True:  # skipping acks of an earlier batch cut short (an interrupt)
            buf = self.sock.recv(1 << 16)
            off = 0
            while off < len(buf):
                length, rtype, _f, seq, _p = _HDR.unpack_from(buf, off)
                if seq == self.seq:
                    self._done = self.seq
                    if rtype == NLMSG_ERROR:
                        (code,) = _ERR.unpack_from(buf, off + _HDR.size)
                        raise NetlinkError(-code, f"ip link show {ifname}")
                    return _link(buf[off + _HDR.size:off + length])
                off += (length + 3) & ~3

    def link_index(self, ifname: str) -> int:
        return self.link(ifname).index


def _link(payload: bytes) -> Link:
    _family, _type, index, flags, _change = _IFINFO.unpack_from(payload, 0)
    attrs = _attrs(payload[_IFINFO.size:])
    return Link(index=index, ifname=_cstr(attrs.get(IFLA_IFNAME)) or "",
                alias=_cstr(attrs.get(IFLA_IFALIAS)), flags=flags)
