"""The kernel side of `labctl trace`: nftables tracing inside lab namespaces.

For one probe, each namespace it may cross gets a temporary table
`inet labctl-trace-<pid>` whose chains, on the prerouting and output hooks at priority
-350 (before raw, conntrack and NAT), set `meta nftrace` on packets of the probe's flow —
matched by the source port (or ICMP id) labctl chose, in both directions, so NAT does not
hide them. The kernel then reports every base chain and rule those packets meet, in
nftables' own tables and in iptables-nft's alike, to `nft monitor trace`, run once per
namespace. Everything happens inside lab namespaces (the host's ruleset is never
touched) and is removed again — tables and monitor processes — on success, error or
Ctrl-C; a table left by a labctl that was killed is removed by the next trace.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field

from labctl.errors import CapabilityError, LabctlError
from labctl.net import netfilter, netns
from labctl.trace.walk import Flow

TABLE_PREFIX = "labctl-trace-"
PRIORITY = -350  # after defragmentation (-400), before raw (-300), conntrack and NAT
NFNLGRP_NFTRACE = 9  # the netlink group `nft monitor trace` joins
READY_WAIT = 10.0  # seconds a monitor may take to subscribe (a loaded machine)
QUIET = 0.3  # seconds without a new event after which a monitor is done
SETTLE_LIMIT = 5.0  # seconds after the probe at most
CT_PRIORITY = -199  # just after conntrack (-200), before mangle and NAT
CT_LABEL = 121  # the conntrack label the probe's connection gets in each namespace
# (`conntrack -L --label` wants names from connlabel.conf, so entries are found by tuple)
MARK_PORT = 9  # the end-of-trace marker: a datagram to 127.0.0.1:9 (discard) in each namespace


def table_name(pid: int | None = None) -> str:
    return f"{TABLE_PREFIX}{os.getpid() if pid is None else pid}"


def table_payload(table: str, flow: Flow, labels: bool = True) -> str:
    """The `nft -f` input of the trace table (made fresh: an old one is replaced).

    Before conntrack (-350): the probe's packets by DSCP (kept through NAT), port or
    echo id, and the end marker. After it (-199): the request labels its connection
    (a conntrack label no kube-proxy rule reads), and packets of a labelled connection
    are traced — the reply where a masquerade gave the flow a port labctl cannot know.
    `labels=False` (a pod, where nothing NATs) leaves conntrack off in that namespace.
    """
    if flow.protocol == "icmp":
        matches = [f"icmp type {{ echo-request, echo-reply }} icmp id {flow.port}"]
    else:
        matches = [f"{flow.protocol} sport {flow.port}", f"{flow.protocol} dport {flow.port}"]
    matches.append(f"ip dscp {flow.dscp_text}")
    rules = "".join(f"\t\t{m} meta nftrace set 1\n" for m in matches)
    marker = f"\t\tip daddr 127.0.0.1 udp dport {MARK_PORT} meta nftrace set 1\n"
    labelling = (f"\t\tip dscp {flow.dscp_text} ct label set {CT_LABEL}\n"
                 f"\t\tct label {CT_LABEL} meta nftrace set 1\n")
    parts = [("pre", "prerouting", PRIORITY, rules), ("out", "output", PRIORITY, rules + marker)]
    if labels:
        parts += [("ctpre", "prerouting", CT_PRIORITY, labelling),
                  ("ctout", "output", CT_PRIORITY, labelling)]
    chains = "".join(
        f"\tchain {chain} {{\n\t\ttype filter hook {hook} priority {prio}; policy accept;\n"
        f"{body}\t}}\n" for chain, hook, prio, body in parts)
    return (f"table inet {table}\ndelete table inet {table}\n"
            f"table inet {table} {{\n{chains}}}\n")


def stale_tables(listing: str) -> list[str]:
    """Trace tables in `nft list tables` output whose labctl process is gone."""
    from labctl.agent.procfs import alive

    out = []
    for m in re.finditer(rf"^table inet ({re.escape(TABLE_PREFIX)}(\d+))$", listing, re.M):
        if not alive(int(m.group(2))):
            out.append(m.group(1))
    return out


def install(namespaces: Sequence[str], table: str, flow: Flow,
            unlabelled: Collection[str] = ()) -> list[str]:
    """Add the trace table to each namespace (removing dead traces' tables first; the
    `unlabelled` ones get no conntrack chains); returns the namespaces that got it."""
    done: list[str] = []
    try:
        for ns in namespaces:
            payload = table_payload(table, flow, labels=ns not in unlabelled)
            _check_lab_namespace(ns)
            listing = netfilter.run_in(ns, ["nft", "list", "tables", "inet"], check=False)
            stale = "".join(f"delete table inet {t}\n" for t in stale_tables(listing.stdout))
            done.append(ns)
            netfilter.run_in(ns, ["nft", "-f", "-"], stdin=stale + payload)
    except BaseException:
        remove(done, table)
        raise
    return done


def remove(namespaces: Sequence[str], table: str) -> None:
    """Delete the trace table wherever it is (a namespace already gone is fine)."""
    for ns in namespaces:
        if netns.exists(ns):
            netfilter.run_in(ns, ["nft", "delete", "table", "inet", table], check=False)


def _check_lab_namespace(ns: str) -> None:
    if not ns or not netns.exists(ns):
        raise LabctlError(f"namespace {ns!r} does not exist (is the lab up?)")


def tables_in(ns: str) -> list[str]:
    """The trace tables a namespace holds (tests: nothing may be left)."""
    text = netfilter.run_in(ns, ["nft", "list", "tables", "inet"], check=False).stdout
    return re.findall(rf"^table inet ({re.escape(TABLE_PREFIX)}\d+)$", text, re.M)


# ------------------------------------------------------------------ monitors


def monitor_argv() -> list[str]:
    """`nft -a monitor trace`, under `setpriv --pdeathsig KILL` (util-linux) when there
    is one: a monitor must not outlive labctl, kill -9 included."""
    argv = ["nft", "-a", "monitor", "trace"]
    if shutil.which("setpriv"):
        return ["setpriv", "--pdeathsig", "KILL", *argv]
    return argv


@dataclass
class Monitor:
    """`nft -a monitor trace` running in one namespace; its lines read by a thread."""

    ns: str
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    last: float = field(default_factory=time.monotonic)
    reader: threading.Thread | None = None

    @classmethod
    def start(cls, ns: str) -> Monitor:
        with netns.entered(ns):
            proc = subprocess.Popen(monitor_argv(), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        mon = cls(ns, proc)
        mon.reader = threading.Thread(target=mon._read, name=f"nftrace {ns}", daemon=True)
        mon.reader.start()
        return mon

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            self.last = time.monotonic()

    def marked(self) -> bool:
        """Whether the end marker (settle) has been printed."""
        mark = f" udp dport {MARK_PORT} "
        return any("packet:" in line and mark in line and "ip daddr 127.0.0.1 " in line
                   for line in reversed(self.lines))

    def subscribed(self) -> bool:
        """Whether nft has joined the trace group (its netlink socket, seen in
        /proc/PID/net/netlink, has the group's bit): events sent after that reach it."""
        pid = self.proc.pid
        inodes = set()
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
            with open(f"/proc/{pid}/net/netlink") as f:
                rows = [line.split() for line in f.readlines()[1:]]
        except OSError:
            return False
        bit = 1 << (NFNLGRP_NFTRACE - 1)
        return any(len(r) >= 10 and r[1] == "12" and r[9] in inodes and int(r[3], 16) & bit
                   for r in rows)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.reader is not None:
            self.reader.join(timeout=2)


def wait_subscribed(monitors: Sequence[Monitor], limit: float = READY_WAIT) -> None:
    deadline = time.monotonic() + limit
    waiting = list(monitors)
    while waiting:
        for mon in list(waiting):
            if mon.proc.poll() is not None:
                mon.stop()
                raise LabctlError(f"nft monitor trace in {mon.ns} ended at once: "
                                  f"{''.join(mon.lines).strip()[:500]}")
            if mon.subscribed():
                waiting.remove(mon)
        if waiting and time.monotonic() > deadline:
            raise LabctlError(f"nft monitor trace did not start within {limit:g} s in "
                              + ", ".join(m.ns for m in waiting))
        if waiting:
            time.sleep(0.02)


def settle(monitors: Sequence[Monitor], limit: float = SETTLE_LIMIT) -> None:
    """Wait until every monitor has printed all it was sent before now: a marker datagram
    (to 127.0.0.1:9 inside its namespace, traced by the table's last rule) comes after
    the probe's events in the monitor's netlink queue, so once it is printed they are too.
    A monitor that never prints it is given up on after `limit` seconds, when it has
    also been quiet for QUIET."""
    for mon in monitors:
        send_marker(mon.ns)
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if all(mon.marked() for mon in monitors):
            return
        time.sleep(0.02)
    while any(time.monotonic() - m.last < QUIET for m in monitors) and \
            time.monotonic() - start < 2 * limit:
        time.sleep(0.05)


def send_marker(ns: str) -> None:
    with netns.entered(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.sendto(b"", ("127.0.0.1", MARK_PORT))


@contextlib.contextmanager
def tracing(namespaces: Sequence[str], flow: Flow,
            unlabelled: Collection[str] = ()) -> Iterator[list[Monitor]]:
    """Trace tables and monitors in `namespaces` for the body; always removed after."""
    check_tools()
    table = table_name()
    monitors: list[Monitor] = []
    installed: list[str] = []
    try:
        installed = install(namespaces, table, flow, unlabelled)
        for ns in namespaces:
            monitors.append(Monitor.start(ns))
        wait_subscribed(monitors)
        yield monitors
    finally:
        with _sigint_deferred():
            for mon in monitors:
                mon.stop()
            remove(installed, table)


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Let cleanup finish when Ctrl-C is pressed again meanwhile; re-raise it after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hit: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: hit.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if hit:
        raise KeyboardInterrupt


def check_tools() -> None:
    if shutil.which("nft") is None:
        raise CapabilityError("trace needs nft (the nftables package: apt-get install "
                              "nftables; scripts/install-deps.sh does)")


# ------------------------------------------------------------------ the probe


@dataclass(frozen=True)
class Outcome:
    """What the probe's socket saw."""

    result: str  # connected | answered | refused | reset | unreachable | no-answer | error
    detail: str  # in words
    seconds: float
    reply: str = ""  # a UDP or ICMP reply's first bytes, as text


@dataclass
class Probe:
    """A socket opened inside the source pod's namespace, bound before the trace starts
    so its source port (or ICMP echo id) is known to the trace rules."""

    sock: socket.socket
    protocol: str
    src_ip: str
    port: int  # source port, or ICMP echo id

    @classmethod
    def open(cls, ns: str, src_ip: str, protocol: str) -> Probe:
        kind = {"tcp": (socket.SOCK_STREAM, 0), "udp": (socket.SOCK_DGRAM, 0),
                "icmp": (socket.SOCK_RAW, socket.IPPROTO_ICMP)}[protocol]
        with netns.entered(ns):
            sock = socket.socket(socket.AF_INET, *kind)
        try:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, Flow(protocol, 0).dscp << 2)
            if protocol == "icmp":
                return cls(sock, protocol, src_ip, random.randint(1024, 65535))
            sock.bind((src_ip, 0))
            return cls(sock, protocol, src_ip, sock.getsockname()[1])
        except BaseException:
            sock.close()
            raise

    @property
    def flow(self) -> Flow:
        return Flow(self.protocol, self.port)

    def send(self, ip: str, port: int, timeout: float,
             payload: bytes = b"labctl trace\n") -> Outcome:
        """Send the probe (a UDP datagram carries `payload`) and wait for its answer."""
        self.sock.settimeout(timeout)
        start = time.perf_counter()
        try:
            if self.protocol == "tcp":
                self.sock.connect((ip, port))
                return Outcome("connected", "TCP handshake completed", _since(start))
            if self.protocol == "udp":
                self.sock.connect((ip, port))
                self.sock.send(payload)
                data = self.sock.recv(512)
                text = " ".join(data.decode(errors="replace").split())
                shown = text if text.isprintable() else f"{len(data)} bytes"
                return Outcome("answered", "a datagram came back", _since(start), shown)
            return self._ping(ip, timeout, start)
        except TimeoutError:
            return Outcome("no-answer", f"nothing came back within {timeout:g} s",
                           _since(start))
        except OSError as exc:
            if exc.errno == errno.ECONNREFUSED:
                what = ("an ICMP port unreachable or a TCP reset" if self.protocol == "tcp"
                        else "an ICMP port unreachable")
                return Outcome("refused", f"connection refused ({what})", _since(start))
            if exc.errno == errno.ECONNRESET:
                return Outcome("reset", "connection reset (accepted, then reset: a proxy "
                               "with no endpoint does that)", _since(start))
            if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
                return Outcome("unreachable", exc.strerror or "unreachable", _since(start))
            return Outcome("error", f"{exc.strerror or exc} (errno {exc.errno})",
                           _since(start))

    def _ping(self, ip: str, timeout: float, start: float) -> Outcome:
        header = struct.pack("!BBHHH", 8, 0, 0, self.port, 1)
        payload = b"labctl trace"
        packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), self.port, 1) + payload
        self.sock.sendto(packet, (ip, 0))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                break
            data, (peer, _) = self.sock.recvfrom(2048)
            ihl = (data[0] & 0x0F) * 4
            kind, _code, _sum, ident = struct.unpack("!BBHH", data[ihl:ihl + 6])
            if kind == 0 and ident == self.port:
                return Outcome("answered", f"echo reply from {peer}", _since(start))
            if kind == 3 and len(data) >= ihl + 8 + 28:  # an error quoting our echo
                inner = data[ihl + 8:]
                inner_ihl = (inner[0] & 0x0F) * 4
                if struct.unpack("!H", inner[inner_ihl + 4:inner_ihl + 6])[0] == self.port:
                    return Outcome("unreachable", f"ICMP destination unreachable from {peer}",
                                   _since(start))
        return Outcome("no-answer", f"nothing came back within {timeout:g} s", _since(start))

    def close(self) -> None:
        self.sock.close()


def _since(start: float) -> float:
    return time.perf_counter() - start


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


# ------------------------------------------------------------------ what else the kernel knows


def conntrack_entries(ns: str, protocol: str) -> list[str]:
    """`conntrack -L` lines of one protocol in a namespace (empty without conntrack);
    the walk picks the probe's own by the tuple its request had there."""
    if shutil.which("conntrack") is None:
        return []
    proc = netfilter.run_in(ns, ["conntrack", "-L", "-p", protocol], check=False)
    return [line for line in proc.stdout.splitlines() if "src=" in line]


def route_get(ns: str, dst: str, src: str = "", iif: str = "") -> dict[str, object]:
    """`ip route get` in a namespace (the kernel's own lookup; {} when it fails)."""
    argv = ["ip", "-j", "route", "get", dst]
    if src:
        argv += ["from", src]
    if iif:
        argv += ["iif", iif]
    proc = netfilter.run_in(ns, argv, check=False)
    try:
        routes = json.loads(proc.stdout or "[]")
    except ValueError:
        return {}
    return routes[0] if routes else {}


def ruleset(ns: str) -> tuple[dict[str, object], str]:
    """The namespace's ruleset as `nft -j list ruleset` and as `iptables-nft-save`
    (the latter quotes iptables-nft rules the way iptables shows them)."""
    proc = netfilter.run_in(ns, ["nft", "-j", "list", "ruleset"], check=False)
    try:
        doc = json.loads(proc.stdout or "{}")
    except ValueError:
        doc = {}
    tool = netfilter.iptables_binary("nft", "iptables-save")
    save = netfilter.run_in(ns, [tool], check=False).stdout if shutil.which(tool) else ""
    return doc, save
