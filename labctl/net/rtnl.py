"""A batching rtnetlink socket: pyroute2's message codecs over one plain netlink socket.

Why not `pyroute2.IPRoute` for the bulk work: each of its calls is a full asyncio round
trip (0.3–0.8 ms), and in 0.9 a handle acts in the namespace of the *thread* that uses
it (reference/anchors.md §5). A plain `AF_NETLINK` socket is bound for life to the
namespace it was opened in, whichever thread uses it, and lets us send a whole batch of
requests in one `send` and read their acknowledgements back in order — the kernel
processes them one after another, exactly as if they were sent singly.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
)
from pyroute2.netlink.rtnl import (
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    RTM_SETLINK,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

NETLINK_ROUTE = 0
_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_ERR = struct.Struct("=i")
CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
CHANGE = NLM_F_REQUEST | NLM_F_ACK


class NetlinkError(OSError):
    """A request the kernel refused; `what` says which request in plain words."""

    def __init__(self, code: int, what: str):
        self.what = what
        super().__init__(code, f"{what}: {os.strerror(code)}")


@dataclass
class Request:
    data: bytes
    what: str  # for errors: "ip link add veth0a000102 ..."


class Rtnl:
    """One rtnetlink socket, bound to the namespace of the thread that opened it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, 0))
        self.seq = 0
        self._done = 0
        self.pending: list[Request] = []

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ batching

    def _queue(self, msg: Any, mtype: int, flags: int, what: str) -> None:
        self.seq += 1
        msg["header"]["type"] = mtype
        msg["header"]["flags"] = flags
        msg["header"]["sequence_number"] = self.seq
        msg.encode()
        self.pending.append(Request(bytes(msg.data), what))

    def flush(self) -> None:
        """Send every queued request and wait for all acknowledgements; raise the first error."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        first = self.seq - len(pending) + 1
        failure: NetlinkError | None = None
        i = 0
        while i < len(pending):  # chunks of ~256 KiB stay well inside the socket buffers
            j, size = i, 0
            while j < len(pending) and size < 1 << 18:
                size += len(pending[j].data)
                j += 1
            self.sock.send(b"".join(r.data for r in pending[i:j]))
            failure = self._read_acks(first, pending, first + j - 1, failure)
            i = j
        if failure:
            raise failure

    def _read_acks(self, first: int, pending: list[Request], last: int,
                   failure: NetlinkError | None) -> NetlinkError | None:
        done = self._done
        while done < last:
            buf = self.sock.recv(1 << 20)
            off = 0
            while off < len(buf):
                length, mtype, _flags, seq, _pid = _HDR.unpack_from(buf, off)
                if mtype == NLMSG_ERROR:
                    (code,) = _ERR.unpack_from(buf, off + _HDR.size)
                    if code and failure is None:
                        failure = NetlinkError(-code, pending[seq - first].what)
                    done = max(done, seq)
                off += (length + 3) & ~3
        self._done = done
        return failure

    # ------------------------------------------------------------ dumps

    def _dump(self, mtype: int, msg: Any) -> list[Any]:
        self.flush()
        self.seq += 1
        msg["header"]["type"] = mtype
        msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
        msg["header"]["sequence_number"] = self.seq
        msg.encode()
        self.sock.send(msg.data)
        out: list[Any] = []
        cls = type(msg)
        while True:
            buf = self.sock.recv(1 << 20)
            off = 0
            while off < len(buf):
                length, rtype, _f, seq, _p = _HDR.unpack_from(buf, off)
                if rtype == NLMSG_DONE:
                    self._done = self.seq
                    return out
                if rtype == NLMSG_ERROR:
                    (code,) = _ERR.unpack_from(buf, off + _HDR.size)
                    raise NetlinkError(-code, "dump")
                reply = cls(buf[off:off + length])
                reply.decode()
                out.append(reply)
                off += (length + 3) & ~3

    def links(self) -> list[Any]:
        msg = ifinfmsg()
        msg["family"] = socket.AF_UNSPEC
        return self._dump(RTM_GETLINK, msg)

    def addrs(self) -> list[Any]:
        msg = ifaddrmsg()
        msg["family"] = socket.AF_UNSPEC
        return self._dump(RTM_GETADDR, msg)

    def routes(self) -> list[Any]:
        msg = rtmsg()
        msg["family"] = socket.AF_UNSPEC
        return self._dump(RTM_GETROUTE, msg)

    # ------------------------------------------------------------ requests (queued)

    def link_add(self, ifname: str, kind: str, *, up: bool = False, alias: str = "",
                 master: int = 0, peer: str = "", peer_ns_fd: int = -1,
                 what: str = "") -> None:
        msg = ifinfmsg()
        msg["family"] = socket.AF_UNSPEC
        if up:
            msg["flags"] = msg["change"] = IFF_UP
        data: list[tuple[str, Any]] = []
        if kind == "veth" and peer:
            peer_attrs: list[tuple[str, Any]] = [("IFLA_IFNAME", peer)]
            if peer_ns_fd >= 0:
                peer_attrs.append(("IFLA_NET_NS_FD", peer_ns_fd))
            data = [("VETH_INFO_PEER", {"attrs": peer_attrs})]
        linkinfo: list[tuple[str, Any]] = [("IFLA_INFO_KIND", kind)]
        if data:
            linkinfo.append(("IFLA_INFO_DATA", {"attrs": data}))
        attrs: list[tuple[str, Any]] = [("IFLA_IFNAME", ifname),
                                        ("IFLA_LINKINFO", {"attrs": linkinfo})]
        if master:
            attrs.append(("IFLA_MASTER", master))
        if alias:
            attrs.append(("IFLA_IFALIAS", alias))
        msg["attrs"] = attrs
        self._queue(msg, RTM_NEWLINK, CREATE, what or f"ip link add {ifname} type {kind}")

    def link_set(self, *, index: int = 0, ifname: str = "", up: bool | None = None,
                 alias: str | None = None, master: int | None = None, what: str = "") -> None:
        msg = ifinfmsg()
        msg["family"] = socket.AF_UNSPEC
        msg["index"] = index
        if up is not None:
            msg["change"] = IFF_UP
            msg["flags"] = IFF_UP if up else 0
        attrs: list[tuple[str, Any]] = []
        if not index:
            attrs.append(("IFLA_IFNAME", ifname))
        if alias is not None:
            attrs.append(("IFLA_IFALIAS", alias))
        if master is not None:
            attrs.append(("IFLA_MASTER", master))
        msg["attrs"] = attrs
        self._queue(msg, RTM_SETLINK, CHANGE, what or f"ip link set {ifname or index}")

    def addr_add(self, index: int, address: str, prefixlen: int, what: str = "") -> None:
        msg = ifaddrmsg()
        msg["family"] = socket.AF_INET
        msg["prefixlen"] = prefixlen
        msg["index"] = index
        msg["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address)]
        self._queue(msg, RTM_NEWADDR, CREATE, what or f"ip addr add {address}/{prefixlen}")

    def route_add(self, dst: str, prefixlen: int, gateway: str = "", oif: int = 0,
                  what: str = "") -> None:
        msg = rtmsg()
        msg["family"] = socket.AF_INET
        msg["dst_len"] = prefixlen
        msg["table"] = 254  # main
        msg["proto"] = 3  # boot, as `ip route add`
        msg["scope"] = 0 if gateway else 253  # universe / link
        msg["type"] = 1  # unicast
        attrs: list[tuple[str, Any]] = [("RTA_TABLE", 254)]
        if prefixlen:
            attrs.append(("RTA_DST", dst))
        if gateway:
            attrs.append(("RTA_GATEWAY", gateway))
        if oif:
            attrs.append(("RTA_OIF", oif))
        msg["attrs"] = attrs
        self._queue(msg, RTM_NEWROUTE, CREATE, what or f"ip route add {dst}/{prefixlen}")

    def link(self, ifname: str) -> Any:
        """One link by name (a targeted get, not a dump of every link)."""
        self.flush()
        msg = ifinfmsg()
        msg["family"] = socket.AF_UNSPEC
        msg["attrs"] = [("IFLA_IFNAME", ifname)]
        self.seq += 1
        msg["header"]["type"] = RTM_GETLINK
        msg["header"]["flags"] = NLM_F_REQUEST
        msg["header"]["sequence_number"] = self.seq
        msg.encode()
        self.sock.send(msg.data)
        buf = self.sock.recv(1 << 16)
        _length, rtype, _f, _seq, _p = _HDR.unpack_from(buf, 0)
        self._done = self.seq
        if rtype == NLMSG_ERROR:
            (code,) = _ERR.unpack_from(buf, _HDR.size)
            raise NetlinkError(-code or errno.ENODEV, f"ip link show {ifname}")
        reply = ifinfmsg(buf)
        reply.decode()
        return reply

    def link_index(self, ifname: str) -> int:
        return int(self.link(ifname)["index"])


def link_names(links: Iterable[Any]) -> list[str]:
    return [link.get_attr("IFLA_IFNAME") for link in links]
