"""The kubelet's prober: startup, liveness and readiness probes of one container.

Follows kubernetes/kubernetes pkg/kubelet/prober (worker.go, prober_manager.go,
prober.go) and pkg/probe/{http,tcp,exec}:

* Initial results: readiness *failure* until a probe succeeds, liveness *success*,
  startup *unknown*. Until the startup probe succeeds the container is not "started":
  liveness and readiness are not probed and the container is not ready. A container
  without a startup probe is started at once; without a readiness probe it is ready
  once started. When startup succeeds, readiness is probed at once (the kubelet's
  manual trigger), liveness too.
* No probe before initialDelaySeconds from the container's start, then one every
  periodSeconds. A result counts when it repeats: successThreshold successes in a row
  set success, failureThreshold failures in a row set failure. A probe that errors
  (e.g. an unknown named port, a body that never ends) is discarded, as the kubelet
  discards a prober error.
* Liveness or startup failure: "Container X failed liveness probe, will be restarted";
  that probe holds until a new container starts, and the container stops being ready.
* A new container (restart) starts every probe from its initial result.
* httpGet: GET from the *node* (the kubelet's namespace) to host (default the pod IP)
  with `Host`, `User-Agent: kube-probe/1.31`, `Accept: */*` and the probe's headers;
  success for 200 <= status < 400; at most 10 KiB of body is read. HTTPS is TLS
  without certificate checks. tcpSocket: a connect from the node. exec: the command in
  the pod's namespace (`ip netns exec`), success on exit 0, killed on timeout.
  Messages are the kubelet's (Go's net/http errors).

Differences, on purpose: the first probe comes initialDelaySeconds after the container
started (the kubelet's ticker adds up to one period of phase); redirects are not
followed (a 3xx is a success); $(VAR) in exec commands is not expanded; gRPC probes
are not run: a gRPC probe counts as not set (validation warns).

Teaching faults: `force(kind, reason)` makes readiness or liveness fail with `reason`
without asking the container until `clear()`. A container without that probe behaves
as if it had the default one (period `implicit_period`, failureThreshold 3).

Layers: `ProbeTracker` (one probe type) and `ContainerProbes` (one container) are pure
and take the time as an argument; `http_get`, `tcp_socket`, `exec_probe` run one probe;
`ContainerProber` runs a container's probes on the asyncio loop and reports through
callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import json
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

from labctl.model.objects import Probe
from labctl.net import netns

log = logging.getLogger(__name__)

STARTUP, LIVENESS, READINESS = "startup", "liveness", "readiness"
PROBE_TYPES = (STARTUP, LIVENESS, READINESS)
FORCEABLE = (READINESS, LIVENESS)
HANDLERS = ("httpGet", "tcpSocket", "exec")  # what labctl runs (not grpc)

USER_AGENT = "kube-probe/1.31"
MAX_OUTPUT = 10 * 1024  # body / command output kept, as the kubelet's maxRespBodyLength
MAX_HEAD = 64 * 1024  # status line and headers
DEFAULT_PERIOD = 10.0  # the implicit probe of a forced fault: the API's defaults
DEFAULT_FAILURE_THRESHOLD = 3
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

NO_PORTS: Mapping[str, int] = MappingProxyType({})


class Result(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    UNKNOWN = "unknown"  # startup's initial result; a probe that errored


INITIAL = {READINESS: Result.FAILURE, LIVENESS: Result.SUCCESS, STARTUP: Result.UNKNOWN}


@dataclass(frozen=True)
class Outcome:
    """One probe run: SUCCESS, FAILURE, or UNKNOWN (errored: the result is discarded)."""

    result: Result
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.result is Result.SUCCESS


def success(message: str = "") -> Outcome:
    return Outcome(Result.SUCCESS, message)


def failure(message: str) -> Outcome:
    return Outcome(Result.FAILURE, message)


def errored(message: str) -> Outcome:
    return Outcome(Result.UNKNOWN, message)


def describe(kind: str, outcome: Outcome) -> str:
    """The kubelet's event text for a probe that did not succeed."""
    verb = "errored" if outcome.result is Result.UNKNOWN else "failed"
    return f"{kind.capitalize()} probe {verb}: {outcome.message}"


# What ContainerProbes reports. READY / NOT_READY: the container's readiness changed;
# STARTED: the startup probe succeeded; RESTART: liveness or startup failed.
READY, NOT_READY, STARTED, RESTART = "ready", "not-ready", "started", "restart"


@dataclass(frozen=True)
class Change:
    what: str  # READY | NOT_READY | STARTED | RESTART
    message: str = ""


def usable(probe: Probe | None) -> bool:
    """A probe labctl runs; others (gRPC) count as not set."""
    return probe is not None and probe.kind in HANDLERS


# ---------------------------------------------------------------- pure state


class ProbeTracker:
    """One probe type of one container: the kubelet's probe worker without its goroutine.

    Times are seconds on any monotonic clock, passed in.
    """

    def __init__(self, kind: str, probe: Probe, *, implicit: bool = False,
                 period: float | None = None):
        if kind not in PROBE_TYPES:
            raise ValueError(f"unknown probe type {kind!r}")
        self.kind = kind
        self.probe = probe
        self.implicit = implicit  # stands in for a probe the container lacks (forced fault)
        self.period = float(probe.period_seconds if period is None else period)
        self.delay = float(probe.initial_delay_seconds)
        self.success_threshold = max(1, probe.success_threshold)
        self.failure_threshold = max(1, probe.failure_threshold)
        self.result = INITIAL[kind]
        self.last: Result | None = None  # the last probe's result
        self.run = 0  # how many times in a row it came
        self.on_hold = False  # failed liveness/startup: wait for a new container
        self.next_at: float | None = None  # None: the container is not running

    def reset(self, now: float) -> None:
        """A new container started at `now`."""
        self.result = INITIAL[self.kind]
        self.last = None
        self.run = 0
        self.on_hold = False
        self.next_at = now + self.delay

    def take(self, now: float) -> bool:
        """True when a probe is due at `now`; the next one is then a period later."""
        if self.on_hold or self.next_at is None or now < self.next_at:
            return False
        self.next_at += self.period
        if self.next_at <= now:  # late (a slow probe): the kubelet's ticker drops ticks
            self.next_at = now + self.period
        return True

    def record(self, result: Result) -> Result | None:
        """Count one probe's result. Returns the result it sets when that changes the
        probe's result, or a liveness/startup failure (restart); None otherwise."""
        if result is Result.UNKNOWN:
            return None
        if result is self.last:
            self.run += 1
        else:
            self.last, self.run = result, 1
        threshold = self.success_threshold if result is Result.SUCCESS \
            else self.failure_threshold
        if self.run < threshold:
            return None
        previous, self.result = self.result, result
        if result is Result.FAILURE and self.kind in (LIVENESS, STARTUP):
            self.on_hold = True
            self.run = 0
            return result
        return result if result is not previous else None


class ContainerProbes:
    """The probes of one container and what they decide: started, ready, restart.

    Pure: every method takes `now`. Call `start(now)` when the container (re)starts,
    `due(now)` for the probe types to run now, `record(kind, outcome, now)` with each
    outcome; the returned Changes say what happened.
    """

    def __init__(self, container: str, *, readiness: Probe | None = None,
                 liveness: Probe | None = None, startup: Probe | None = None,
                 implicit_period: float = DEFAULT_PERIOD):
        self.container = container
        self.implicit_period = implicit_period
        self.trackers: dict[str, ProbeTracker] = {}
        for kind, probe in ((STARTUP, startup), (LIVENESS, liveness),
                            (READINESS, readiness)):
            if probe is not None and usable(probe):
                self.trackers[kind] = ProbeTracker(kind, probe)
        self.forced: dict[str, str] = {}
        self.running = False
        self.started = False
        self.started_at: float | None = None
        self.generation = 0  # bumped at each start: outcomes of older probes are dropped
        self._ready: bool | None = None  # last reported; None before the first start

    @property
    def ready(self) -> bool:
        if not (self.running and self.started):
            return False
        tracker = self.trackers.get(READINESS)
        return tracker is None or tracker.result is Result.SUCCESS

    def _ready_change(self, message: str) -> list[Change]:
        now_ready, before = self.ready, self._ready
        self._ready = now_ready
        if before is None or before == now_ready:
            return []
        return [Change(READY if now_ready else NOT_READY, message)]

    def start(self, now: float, was_ready: bool = False) -> list[Change]:
        """The container started (or started again). `was_ready`: it was already running
        and ready (an agent taking over a running lab): it counts as started and stays
        ready until its readiness probe fails."""
        self.generation += 1
        self.running = True
        self.started_at = now
        for tracker in self.trackers.values():
            tracker.reset(now)
        self.started = was_ready or STARTUP not in self.trackers
        if was_ready and READINESS in self.trackers:
            self.trackers[READINESS].result = Result.SUCCESS
        return self._ready_change("container started" if self.ready else
                                  "container started, not ready yet")

    def exited(self, message: str = "container is not running") -> list[Change]:
        """The container stopped (crashed, or killed for a restart): no probes, not ready."""
        self.running = False
        for tracker in self.trackers.values():
            tracker.next_at = None
        return self._ready_change(message)

    def due(self, now: float) -> list[str]:
        """The probe types to run at `now` (startup before the container has started,
        liveness and readiness after)."""
        if not self.running:
            return []
        kinds = []
        for kind in PROBE_TYPES:
            tracker = self.trackers.get(kind)
            if tracker is None or (kind == STARTUP) == self.started:
                continue
            if tracker.take(now):
                kinds.append(kind)
        return kinds

    def next_wakeup(self) -> float | None:
        """When the next probe may be due (None: nothing to wait for)."""
        if not self.running:
            return None
        times = [t.next_at for kind, t in self.trackers.items()
                 if t.next_at is not None and not t.on_hold
                 and (kind == STARTUP) != self.started]
        return min(times, default=None)

    def canned(self, kind: str) -> Outcome | None:
        """The outcome of a probe that does not ask the container: a forced fault fails,
        an implicit probe without a fault succeeds."""
        reason = self.forced.get(kind)
        if reason is not None:
            return failure(reason)
        tracker = self.trackers.get(kind)
        if tracker is not None and tracker.implicit:
            return success()
        return None

    def record(self, kind: str, outcome: Outcome, now: float,
               generation: int | None = None) -> list[Change]:
        """One probe's outcome. `generation` (of the probe's start) drops outcomes that
        belong to a container that has since been replaced."""
        tracker = self.trackers.get(kind)
        if tracker is None or not self.running or tracker.on_hold or \
                (generation is not None and generation != self.generation):
            return []
        outcome = self.canned(kind) or outcome
        result = tracker.record(outcome.result)
        changes: list[Change] = []
        if result is None:
            pass
        elif kind == STARTUP and result is Result.SUCCESS:
            self.started = True
            for other in self.trackers.values():
                if other.kind != STARTUP and other.next_at is not None:
                    other.next_at = max(other.next_at, now)
            changes.append(Change(STARTED, "Startup probe succeeded"))
            changes += self._ready_change("Startup probe succeeded")
        elif result is Result.FAILURE and kind in (LIVENESS, STARTUP):
            reason = f"Container {self.container} failed {kind} probe, will be restarted"
            changes += self.exited(reason)
            changes.append(Change(RESTART, reason))
        elif kind == READINESS:
            changes += self._ready_change(describe(kind, outcome) if not outcome.ok
                                          else "Readiness probe succeeded")
        if tracker.implicit and kind not in self.forced and outcome.ok:
            del self.trackers[kind]  # a cleared fault's stand-in: done once it succeeded
            changes += self._ready_change("Readiness probe succeeded")
        return changes

    def force(self, kind: str, reason: str, now: float) -> list[Change]:
        """Make `kind` (readiness | liveness) fail with `reason` until `clear`."""
        if kind not in FORCEABLE:
            raise ValueError(f"cannot force a {kind!r} fault: expected one of "
                             f"{', '.join(FORCEABLE)}")
        self.forced[kind] = reason or f"{kind} fault"
        if kind not in self.trackers:
            tracker = ProbeTracker(kind, Probe(kind=""), implicit=True,
                                   period=self.implicit_period)
            tracker.failure_threshold = DEFAULT_FAILURE_THRESHOLD
            # It stands in for a probe that was passing: the container's state holds.
            tracker.result = Result.SUCCESS if kind == LIVENESS or self.ready \
                else Result.FAILURE
            tracker.next_at = now + tracker.period if self.running else None
            self.trackers[kind] = tracker
        return []

    def clear(self, kind: str | None, now: float) -> list[Change]:
        """End forced faults (`kind`, or all). The next probe asks the container again;
        an implicit readiness probe stays until it has succeeded once."""
        for k in [kind] if kind else list(self.forced):
            self.forced.pop(k, None)
            tracker = self.trackers.get(k)
            if tracker is not None and tracker.implicit and k == LIVENESS:
                del self.trackers[k]
        return []


# ---------------------------------------------------------------- executors


@dataclass(frozen=True)
class Target:
    """Where a container's probes go.

    `node_netns` is the namespace of the pod's node: httpGet and tcpSocket connect from
    there, as the kubelet does. `pod_netns` is where exec runs. `ports` maps the
    container's port names to their containerPort. `env` is exec's environment (None:
    PATH only). `on_spawn` / `on_reap` see the PID of every exec probe process.
    """

    node_netns: str
    pod_netns: str
    pod_ip: str
    ports: Mapping[str, int] = field(default_factory=lambda: NO_PORTS)
    env: Mapping[str, str] | None = None
    ip_cmd: str = "ip"
    on_spawn: Callable[[int], None] | None = field(default=None, compare=False)
    on_reap: Callable[[int], None] | None = field(default=None, compare=False)


class ProbeError(Exception):
    """A probe that cannot be run as written (the kubelet's prober error)."""


def resolve_port(port: int | str | None, ports: Mapping[str, int]) -> int:
    """A probe's port: a number, or a container port name (then, as the kubelet tries
    last, a number written as a string)."""
    if isinstance(port, str):
        if port in ports:
            number = ports[port]
        elif port.isdigit():
            number = int(port)
        else:
            raise ProbeError(f'no container port named "{port}"')
    elif isinstance(port, int) and not isinstance(port, bool):
        number = port
    else:
        raise ProbeError("the probe has no port")
    if not 0 < number < 65536:
        raise ProbeError(f"invalid port number: {number}")
    return number


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _address(host: str) -> str:
    """An IP literal to connect to ("localhost" is the node's loopback)."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        raise ProbeError(f"lookup {host}: labctl probes connect to IP addresses only "
                         "(write an IP in host, or leave it out for the pod IP)") from None


def _errno_text(exc: OSError) -> str:
    """Go's wording of a socket error: lower case, e.g. "connection refused"."""
    text = os.strerror(exc.errno) if exc.errno else str(exc)
    return text[:1].lower() + text[1:]


async def _connect(ns: str, host: str, port: int) -> socket.socket:
    """A TCP connection made from namespace `ns` (the socket stays bound to it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with netns.entered(ns):
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def tcp_socket(probe: Probe, target: Target, timeout: float | None = None) -> Outcome:
    """tcpSocket: can a connection be opened from the node? (pkg/probe/tcp)."""
    timeout = float(probe.timeout_seconds if timeout is None else timeout)
    try:
        port = resolve_port(probe.port, target.ports)
        host = _address(probe.host or target.pod_ip)
    except ProbeError as e:
        return errored(str(e))
    where = f"dial tcp {join_host_port(host, port)}"
    try:
        async with asyncio.timeout(timeout):
            sock = await _connect(target.node_netns, host, port)
    except TimeoutError:
        return failure(f"{where}: i/o timeout")
    except OSError as e:
        if e.filename:  # the namespace, not the connection
            return errored(f"cannot enter {target.node_netns}: {e.strerror}")
        return failure(f"{where}: connect: {_errno_text(e)}")
    sock.close()
    return success()


_tls: ssl.SSLContext | None = None


def _tls_context() -> ssl.SSLContext:
    """TLS that accepts any certificate: the kubelet's InsecureSkipVerify."""
    global _tls
    if _tls is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        _tls = ctx
    return _tls


TOKEN_CHARS = "!#$%&'*+-.^_`|~"


def canonical_header(name: str) -> str:
    """Go's CanonicalMIMEHeaderKey: "x-request-id" -> "X-Request-Id"."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def http_request(probe: Probe, host: str, port: int) -> tuple[str, bytes]:
    """The probe's URL and request bytes (pkg/probe/http request.go, with Go's
    transport adding `Connection: close`: the kubelet disables keep-alives)."""
    scheme = (probe.scheme or "HTTP").lower()
    path = probe.path or "/"
    if not path.startswith("/"):
        path = "/" + path
    target = quote(path, safe="/?&=:;@!$'()*+,~%-._")
    hostport = join_host_port(host, port)
    url = f"{scheme}://{hostport}{target}"
    headers: dict[str, list[str]] = {}
    for name, value in probe.http_headers:
        if not name or not all(c.isascii() and (c.isalnum() or c in TOKEN_CHARS)
                               for c in name):
            raise ProbeError(f'Get "{url}": net/http: invalid header field name "{name}"')
        if any(c in value for c in "\r\n\0"):
            raise ProbeError(f'Get "{url}": net/http: invalid header field value for '
                             f'"{name}"')
        headers.setdefault(canonical_header(name), []).append(value)
    host_header = headers.pop("Host", [hostport])[0] or hostport
    agent = headers.pop("User-Agent", [USER_AGENT])[0]
    accept = headers.pop("Accept", ["*/*"])
    lines = [f"GET {target} HTTP/1.1", f"Host: {host_header}"]
    if agent:
        lines.append(f"User-Agent: {agent}")
    if accept != [""]:  # an Accept header written empty removes it
        lines += [f"Accept: {v}" for v in accept]
    for key in sorted(headers):
        if key.lower() != "connection":
            lines += [f"{key}: {v}" for v in headers[key]]
    lines.append("Connection: close")
    return url, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


class _Malformed(Exception):
    pass


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """Status code and headers (lower-case names) of the final response."""
    while True:
        size = 0
        lines: list[str] = []
        while True:
            try:
                raw = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as e:
                raise EOFError("unexpected EOF" if lines or e.partial else "EOF") from None
            except asyncio.LimitOverrunError:
                raise _Malformed("server response headers exceeded the limit") from None
            size += len(raw)
            if size > MAX_HEAD:
                raise _Malformed("server response headers exceeded the limit")
            line = raw.decode("latin-1").rstrip("\r\n")
            if not line and lines:
                break
            lines.append(line)
        status = lines[0]
        parts = status.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise _Malformed(f"net/http: HTTP/1.x transport connection broken: "
                             f'malformed HTTP response "{status}"')
        if len(parts[1]) != 3 or not parts[1].isdigit():
            raise _Malformed(f'net/http: HTTP/1.x transport connection broken: '
                             f'malformed HTTP status code "{parts[1]}"')
        code = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if 100 <= code < 200 and code != 101:
            continue  # informational: the real response follows
        return code, headers


async def _read_body(reader: asyncio.StreamReader, code: int,
                     headers: dict[str, str]) -> bytes:
    """Up to MAX_OUTPUT bytes of the body (more is left unread, as the kubelet does)."""
    if code in (204, 304) or 100 <= code < 200:
        return b""
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    length: int | None = None
    if not chunked and headers.get("content-length", "").isdigit():
        length = int(headers["content-length"])
    want = MAX_OUTPUT if length is None else min(length, MAX_OUTPUT)
    body = bytearray()
    while len(body) < want:
        data = await reader.read(want - len(body))
        if not data:
            if length is not None:
                raise EOFError("unexpected EOF")
            break
        body += data
        if chunked and body.endswith(b"0\r\n\r\n"):
            break
    return bytes(body)


async def http_get(probe: Probe, target: Target, timeout: float | None = None) -> Outcome:
    """httpGet from the node: success for 200 <= status < 400 (pkg/probe/http)."""
    timeout = float(probe.timeout_seconds if timeout is None else timeout)
    try:
        port = resolve_port(probe.port, target.ports)
    except ProbeError as e:
        return errored(str(e))
    host = probe.host or target.pod_ip
    try:
        url, request = http_request(probe, host, port)
    except ProbeError as e:
        return failure(str(e))
    try:
        address = _address(host)
    except ProbeError as e:
        return failure(f'Get "{url}": dial tcp: {e}')
    tls = (probe.scheme or "HTTP").upper() == "HTTPS"
    dial = f"dial tcp {join_host_port(address, port)}"
    phase = "dial"
    writer: asyncio.StreamWriter | None = None
    sock: socket.socket | None = None
    try:
        async with asyncio.timeout(timeout):
            sock = await _connect(target.node_netns, address, port)
            phase = "headers"
            reader, writer = await asyncio.open_connection(
                sock=sock, ssl=_tls_context() if tls else None,
                server_hostname=(probe.host or target.pod_ip) if tls else None,
                limit=MAX_HEAD)
            writer.write(request)
            await writer.drain()
            code, headers = await _read_head(reader)
            phase = "body"
            await _read_body(reader, code, headers)
    except TimeoutError:
        if phase == "dial":
            return failure(f'Get "{url}": {dial}: i/o timeout '
                           "(Client.Timeout exceeded while awaiting headers)")
        if phase == "headers":
            return failure(f'Get "{url}": context deadline exceeded '
                           "(Client.Timeout exceeded while awaiting headers)")
        return errored("context deadline exceeded "
                       "(Client.Timeout or context cancellation while reading body)")
    except EOFError as e:
        return failure(f'Get "{url}": {e}') if phase == "headers" else errored(str(e))
    except _Malformed as e:
        return failure(f'Get "{url}": {e}')
    except ssl.SSLError as e:
        if "WRONG_VERSION_NUMBER" in str(e) or "record layer failure" in str(e):
            return failure(f'Get "{url}": http: server gave HTTP response to HTTPS client')
        return failure(f'Get "{url}": remote error: tls: {e.reason or e}')
    except OSError as e:
        if e.filename:
            return errored(f"cannot enter {target.node_netns}: {e.strerror}")
        if phase == "dial":
            return failure(f'Get "{url}": {dial}: connect: {_errno_text(e)}')
        local = ""
        if sock is not None:
            with contextlib.suppress(OSError):
                name = sock.getsockname()
                local = join_host_port(name[0], name[1]) + "->"
        text = f"read tcp {local}{join_host_port(address, port)}: read: {_errno_text(e)}"
        return failure(f'Get "{url}": {text}') if phase == "headers" else errored(text)
    finally:
        if writer is not None:
            writer.transport.abort()
        elif sock is not None:
            sock.close()
    if 200 <= code < 400:
        return success()
    return failure(f"HTTP probe failed with statuscode: {code}")


def _go_quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


async def exec_probe(probe: Probe, target: Target, timeout: float | None = None) -> Outcome:
    """exec: `ip netns exec <pod netns> <command…>`; success on exit 0; killed (the
    process we started, only) after the timeout. The output (stdout and stderr, at most
    10 KiB) is the message."""
    timeout = float(probe.timeout_seconds if timeout is None else timeout)
    command = list(probe.command)
    if not command:
        return errored("exec probe has no command")
    shown = " ".join(command)
    argv = [target.ip_cmd, "netns", "exec", target.pod_netns, *command]
    env = dict(target.env) if target.env is not None else {"PATH": DEFAULT_PATH}
    loop = asyncio.get_running_loop()
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    output = bytearray()

    def drain() -> None:
        # Non-blocking reads of what is there; never waits for EOF (a child the command
        # left behind may hold the pipe open).
        while True:
            try:
                data = os.read(rfd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(rfd)
                return
            output.extend(data[:max(0, MAX_OUTPUT - len(output))])

    proc: asyncio.subprocess.Process | None = None
    try:
        os.set_blocking(rfd, False)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=wfd,
                stderr=asyncio.subprocess.STDOUT, env=env, cwd="/")
        except OSError as e:
            return errored(f"cannot run {argv[0]}: {e.strerror or e}")
        finally:
            os.close(wfd)
        if target.on_spawn is not None:
            target.on_spawn(proc.pid)
        loop.add_reader(rfd, drain)
        try:
            async with asyncio.timeout(timeout):
                code = await proc.wait()
        except TimeoutError:
            return failure(f"command {_go_quote(shown)} timed out")
        drain()
        text = output.decode("utf-8", "replace").strip()
        if code == 0:
            return success(text)
        return failure(text or f"command '{shown}' exited with {code}")
    finally:
        if proc is not None:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await asyncio.shield(proc.wait())
            if target.on_reap is not None:
                target.on_reap(proc.pid)
        loop.remove_reader(rfd)
        os.close(rfd)


async def run_probe(probe: Probe, target: Target, timeout: float | None = None) -> Outcome:
    """Run one probe of any kind."""
    if probe.kind == "httpGet":
        return await http_get(probe, target, timeout)
    if probe.kind == "tcpSocket":
        return await tcp_socket(probe, target, timeout)
    if probe.kind == "exec":
        return await exec_probe(probe, target, timeout)
    if probe.kind == "grpc":
        return errored("labctl does not run gRPC probes")
    return errored(f"unknown probe handler {probe.kind!r}")


def probe_document(probe: Probe) -> dict[str, Any]:
    """A probe as the API writes it (for workloads.json); `model.build.probe` reads it
    back to an equal Probe."""
    handler: dict[str, Any] = {}
    if probe.kind == "exec":
        handler["command"] = list(probe.command)
    else:
        handler["port"] = probe.port
    if probe.kind == "httpGet":
        handler["path"] = probe.path
        handler["scheme"] = probe.scheme
        if probe.http_headers:
            handler["httpHeaders"] = [{"name": n, "value": v} for n, v in probe.http_headers]
    if probe.kind in ("httpGet", "tcpSocket") and probe.host:
        handler["host"] = probe.host
    return {
        probe.kind: handler,
        "initialDelaySeconds": probe.initial_delay_seconds,
        "periodSeconds": probe.period_seconds,
        "timeoutSeconds": probe.timeout_seconds,
        "successThreshold": probe.success_threshold,
        "failureThreshold": probe.failure_threshold,
    }


# ---------------------------------------------------------------- the prober

Executor = Callable[[Probe, Target, float], Awaitable[Outcome]]


def _ignore(*_: object) -> None:
    return None


class ContainerProber:
    """Runs one container's probes on the running asyncio loop.

    `start()` once the container runs; read `ready` then (callbacks report changes
    after that). `on_ready(ready, message)` when the container's readiness changes;
    `on_restart(reason)` when liveness or startup failed — restart the container, then
    call `restarted()`. Call `exited()` when the container stops on its own (not
    ready, no probes) and `restarted()` when it runs again. `on_result(kind, outcome)`
    sees every probe's outcome. `time_unit` is the length of a probe second in real
    seconds (tests shrink it); `implicit_period` is in probe seconds.
    """

    def __init__(self, container: str, target: Target, *, readiness: Probe | None = None,
                 liveness: Probe | None = None, startup: Probe | None = None,
                 on_ready: Callable[[bool, str], None] = _ignore,
                 on_restart: Callable[[str], None] = _ignore,
                 on_result: Callable[[str, Outcome], None] = _ignore,
                 implicit_period: float = DEFAULT_PERIOD, time_unit: float = 1.0,
                 execute: Executor = run_probe):
        self.target = target
        self.state = ContainerProbes(container, readiness=readiness, liveness=liveness,
                                     startup=startup, implicit_period=implicit_period)
        self.on_ready = on_ready
        self.on_restart = on_restart
        self.on_result = on_result
        self.time_unit = time_unit
        self.execute = execute
        self._task: asyncio.Task[None] | None = None
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._stopping = False

    # what the agent reads

    @property
    def ready(self) -> bool:
        return self.state.ready

    @property
    def started(self) -> bool:
        return self.state.started

    @property
    def forced(self) -> dict[str, str]:
        return dict(self.state.forced)

    # what the agent calls

    def start(self, was_ready: bool = False) -> None:
        """The container runs: begin probing (call from the loop's thread). `was_ready`:
        it already ran and was ready (see ContainerProbes.start)."""
        if self._task is not None:
            raise RuntimeError("prober already started")
        self.state.start(self._now(), was_ready)
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"probes {self.state.container}")

    def restarted(self) -> None:
        """A new container runs in place of the old one: probes start over."""
        self._apply(self.state.start(self._now()))

    def exited(self, message: str = "container is not running") -> None:
        self._apply(self.state.exited(message))

    def force(self, kind: str, reason: str) -> None:
        """Make readiness or liveness fail with `reason`, without asking the container."""
        self._apply(self.state.force(kind, reason, self._now()))

    def clear(self, kind: str | None = None) -> None:
        """End forced faults (`kind`, or all)."""
        self._apply(self.state.clear(kind, self._now()))

    async def stop(self) -> None:
        """Stop probing (an exec probe's process is killed)."""
        self._stopping = True
        self._wake.set()
        tasks = [t for t in (self._task, *self._inflight.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        self._inflight.clear()

    # inside

    def _now(self) -> float:
        return asyncio.get_running_loop().time() / self.time_unit

    def _apply(self, changes: list[Change]) -> None:
        for change in changes:
            try:
                if change.what in (READY, NOT_READY):
                    self.on_ready(change.what == READY, change.message)
                elif change.what == RESTART:
                    self.on_restart(change.message)
            except Exception:  # noqa: BLE001 - a callback's bug must not stop the probes
                log.exception("probe callback failed for %s", self.state.container)
        self._wake.set()

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            for kind in self.state.due(self._now()):
                if kind not in self._inflight:
                    self._inflight[kind] = asyncio.create_task(
                        self._probe(kind, self.state.generation),
                        name=f"{kind} probe {self.state.container}")
            wake_at = self.state.next_wakeup()
            delay = None if wake_at is None else \
                max(0.0, (wake_at - self._now()) * self.time_unit)
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that
            # comes with the wake-up, and stop() would wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _probe(self, kind: str, generation: int) -> None:
        try:
            outcome = self.state.canned(kind)
            tracker = self.state.trackers.get(kind)
            if outcome is None and tracker is not None:
                probe = tracker.probe
                try:
                    outcome = await self.execute(probe, self.target,
                                                 probe.timeout_seconds * self.time_unit)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - a prober error: discarded
                    log.exception("%s probe of %s", kind, self.state.container)
                    outcome = errored(f"{type(e).__name__}: {e}")
        finally:
            self._inflight.pop(kind, None)
        if outcome is None:
            return
        try:
            self.on_result(kind, outcome)
        except Exception:  # noqa: BLE001
            log.exception("probe callback failed for %s", self.state.container)
        self._apply(self.state.record(kind, outcome, self._now(), generation))

