"""The built-in echo server: who answered, on which address, and who it saw asking.

A container with no runnable command gets this server on each containerPort, inside
its pod's namespace. Each reply names the pod, namespace, node, pod IP, container, the
local address:port the request arrived on and the client address:port the server saw
— after any NAT the lab's kube-proxy applied, which is what the lessons look at.

* TCP, first bytes like `GET ` (an upper-case method token and a space): HTTP/1.1,
  200, `Content-Type: text/plain`, body of `key=value` lines (+ `path=`), keep-alive
  honoured, so `curl http://10.244.1.2:8080/x` works.
* Other TCP: one reply line per received line, `pod=… client=IP:PORT echo=<line>`.
* UDP: one reply datagram per datagram, same line format.

The protocol classes know nothing of namespaces: the agent opens their sockets inside
the pod's namespace and hands them to the event loop.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import cast

LogFn = Callable[[str], None]

MAX_HEAD = 64 * 1024  # request line + headers
MAX_LINE = 64 * 1024  # raw mode: a longer "line" is answered in pieces
MAX_BODY = 16 * 1024 * 1024
_METHOD = re.compile(rb"[A-Z]*")
_HEAD_END = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True)
class Identity:
    """Who is answering: the pod and container this server stands in for."""

    pod: str
    namespace: str
    node: str
    ip: str
    container: str

    def fields(self, server: str, client: str) -> list[tuple[str, str]]:
        return [("pod", self.pod), ("namespace", self.namespace), ("node", self.node),
                ("ip", self.ip), ("container", self.container),
                ("server", server), ("client", client)]


def hostport(addr: tuple | None) -> str:
    if not addr:
        return "?"
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def line_reply(ident: Identity, server: str, client: str, data: bytes) -> bytes:
    """`pod=… namespace=… node=… ip=… container=… server=… client=… echo=<data>`."""
    fields = ident.fields(server, client)
    fields.append(("echo", data.decode("utf-8", errors="backslashreplace")))
    return (" ".join(f"{k}={v}" for k, v in fields) + "\n").encode()


def http_body(ident: Identity, server: str, client: str, path: str) -> bytes:
    fields = ident.fields(server, client) + [("path", path)]
    return "".join(f"{k}={v}\n" for k, v in fields).encode()


def parse_fields(text: str) -> dict[str, str]:
    """Read a reply back: HTTP body lines or one raw/UDP line (`echo=` takes the rest)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        rest = line
        while rest:
            key, eq, value = rest.partition("=")
            if not eq:
                break
            if key == "echo":
                out[key] = value
                break
            value, _, rest = value.partition(" ")
            out[key] = value
    return out


def sniff(buf: bytes) -> str | None:
    """'http' when the bytes start like a request line, 'raw' when not, None: undecided."""
    n = len(_METHOD.match(buf).group())  # type: ignore[union-attr]
    if n > 20:
        return "raw"
    if n < len(buf):
        return "http" if n and buf[n:n + 1] == b" " else "raw"
    return None


@dataclass
class HttpRequest:
    method: str
    target: str
    version: str
    headers: dict[str, str]

    @property
    def path(self) -> str:
        t = self.target
        if "://" in t:  # absolute-form (a proxy request): keep the path part
            t = "/" + t.split("://", 1)[1].partition("/")[2]
        return t

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if "close" in tokens:
            return False
        return self.version == "HTTP/1.1" or "keep-alive" in tokens


class BadRequest(Exception):
    def __init__(self, status: int, reason: str):
        self.status, self.reason = status, reason
        super().__init__(f"{status} {reason}")


def parse_head(head: bytes) -> HttpRequest:
    lines = head.decode("latin-1").split("\n")
    parts = lines[0].rstrip("\r").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, "Bad Request")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        line = line.rstrip("\r")
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise BadRequest(400, "Bad Request")
        headers[name.lower()] = value.strip()
    return HttpRequest(parts[0], parts[1], parts[2], headers)


def http_response(status: int, reason: str, body: bytes, keep_alive: bool,
                  version: str = "HTTP/1.1", head_only: bool = False) -> bytes:
    headers = [
        f"HTTP/1.1 {status} {reason}",
        f"Date: {formatdate(usegmt=True)}",
        "Server: labctl-echo",
        "Content-Type: text/plain",
        f"Content-Length: {len(body)}",
    ]
    if not keep_alive:
        headers.append("Connection: close")
    elif version == "HTTP/1.0":
        headers.append("Connection: keep-alive")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + (b"" if head_only else body)


class TcpEcho(asyncio.Protocol):
    """One TCP connection: decides HTTP or raw lines from its first bytes."""

    def __init__(self, ident: Identity, log: LogFn, registry: set[TcpEcho] | None = None):
        self.ident = ident
        self.log = log
        self.registry = registry
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.mode: str | None = None
        self.server = self.client = "?"
        self.closing = False
        self.pending: HttpRequest | None = None  # head parsed, body still arriving
        self.body_left = 0

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server = hostport(transport.get_extra_info("sockname"))
        self.client = hostport(transport.get_extra_info("peername"))
        if self.registry is not None:
            self.registry.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.registry is not None:
            self.registry.discard(self)
        self.transport = None

    def pause_writing(self) -> None:  # a client that does not read: stop reading it
        if self.transport:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.mode is None:
            self.mode = sniff(self.buf)
        if self.mode == "http":
            self._http()
        elif self.mode == "raw":
            self._raw(eof=False)

    def eof_received(self) -> bool:
        if self.mode in (None, "raw") and self.buf:
            self.mode = "raw"
            self._raw(eof=True)
        return False  # close our side too (after the write buffer drains)

    # shutdown

    def idle(self) -> bool:
        return not self.buf and self.pending is None

    def shutdown(self) -> None:
        """Stop after the request in progress (if any) has been answered."""
        self.closing = True
        if self.transport and self.idle():
            self.transport.close()

    # raw lines

    def _raw(self, eof: bool) -> None:
        while self.transport:
            i = self.buf.find(b"\n")
            if i < 0:
                if not (eof and self.buf) and len(self.buf) < MAX_LINE:
                    break
                line, self.buf = self.buf[:MAX_LINE], self.buf[MAX_LINE:]
            else:
                line, self.buf = self.buf[:i], self.buf[i + 1:]
            line = line.removesuffix(b"\r")
            self.transport.write(line_reply(self.ident, self.server, self.client, line))
            self.log(f"tcp {self.client} -> {self.server} echo {len(line)} bytes")
        if self.closing and self.transport and self.idle():
            self.transport.close()

    # HTTP

    def _http(self) -> None:
        while self.transport and not self.transport.is_closing():
            if self.pending is None:
                m = _HEAD_END.search(self.buf)
                if not m:
                    if len(self.buf) > MAX_HEAD:
                        self._fail(BadRequest(431, "Request Header Fields Too Large"))
                    return
                head, self.buf = self.buf[:m.start()], self.buf[m.end():]
                try:
                    req = parse_head(head)
                    self.body_left = _body_length(req)
                except BadRequest as e:
                    self._fail(e)
                    return
                self.pending = req
            take = min(self.body_left, len(self.buf))  # the body is read and ignored
            self.buf, self.body_left = self.buf[take:], self.body_left - take
            if self.body_left:
                return
            req, self.pending = self.pending, None
            self._answer(req)
            if self.mode == "http" and self.buf and sniff(self.buf) == "raw":
                self._fail(BadRequest(400, "Bad Request"))
                return

    def _answer(self, req: HttpRequest) -> None:
        assert self.transport
        keep = req.keep_alive and not self.closing
        body = http_body(self.ident, self.server, self.client, req.path)
        self.transport.write(http_response(200, "OK", body, keep, req.version,
                                           head_only=req.method == "HEAD"))
        self.log(f"http {self.client} -> {self.server} \"{req.method} {req.target} "
                 f"{req.version}\" 200")
        if not keep:
            self.buf = b""
            self.transport.close()

    def _fail(self, e: BadRequest) -> None:
        assert self.transport
        body = f"{e.status} {e.reason}\n".encode()
        self.transport.write(http_response(e.status, e.reason, body, keep_alive=False))
        self.log(f"http {self.client} -> {self.server} {e.status} {e.reason}")
        self.buf = b""
        self.pending = None
        self.transport.close()


def _body_length(req: HttpRequest) -> int:
    if "transfer-encoding" in req.headers:
        raise BadRequest(501, "Not Implemented")  # chunked uploads: not for an echo server
    raw = req.headers.get("content-length", "0") or "0"
    if not raw.isdigit() or int(raw) > MAX_BODY:
        raise BadRequest(400, "Bad Request")
    return int(raw)


class UdpEcho(asyncio.DatagramProtocol):
    """Every datagram gets one reply datagram.

    The socket is bound to 0.0.0.0, and asyncio hands over no IP_PKTINFO, so `server=`
    names the pod IP (the only address a pod has besides loopback).
    """

    def __init__(self, ident: Identity, log: LogFn, server_host: str | None = None):
        self.ident = ident
        self.log = log
        self.server_host = server_host
        self.transport: asyncio.DatagramTransport | None = None
        self.server = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        host, port = transport.get_extra_info("sockname")[:2]
        if host in ("0.0.0.0", "::"):
            host = self.server_host or self.ident.ip or host
        self.server = hostport((host, port))

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if not self.transport:
            return
        client = hostport(addr)
        data = data.removesuffix(b"\n").removesuffix(b"\r")
        self.transport.sendto(line_reply(self.ident, self.server, client, data), addr)
        self.log(f"udp {client} -> {self.server} echo {len(data)} bytes")

    def error_received(self, exc: Exception) -> None:
        self.log(f"udp {self.server} error: {exc}")
