"""The probe executors against real servers in real namespaces.

Two namespaces joined by a veth, as a node and its pod: servers listen in the pod
namespace, httpGet and tcpSocket connect from the node namespace (from the host they
could not reach the pod at all), exec runs in the pod namespace. A second veth pair
whose far end has no address stands in for an address that drops packets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from labctl.kubelet import probes
from labctl.kubelet.probes import (
    READINESS,
    ContainerProber,
    Result,
    Target,
    errored,
    failure,
    success,
)
from labctl.model.objects import Probe
from labctl.net import netns

if os.geteuid() != 0:
    pytest.skip("needs root to create network namespaces", allow_module_level=True)
if not shutil.which("ip"):
    pytest.skip("needs iproute2's `ip` (ip netns exec)", allow_module_level=True)

TAG = uuid.uuid4().hex[:6]
NODE = f"lc.it-probe-{TAG}-node"
POD = f"lc.it-probe-{TAG}-pod"
NODE_IP, POD_IP = "10.251.0.1", "10.251.0.2"
SILENT = "10.251.9.2"  # on-link from the node; its packets reach nobody
HTTP, HTTPS, HANG, CLOSED = 8080, 8443, 9000, 8099
SHORT = 0.3  # probe timeout in these tests (seconds)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture(scope="module", autouse=True)
def namespaces() -> Iterator[None]:
    netns.ensure_run_dir()
    made: list[str] = []
    try:
        for name in (NODE, POD):
            with netns.created(name):
                pass
            made.append(name)
            ip("-n", name, "link", "set", "lo", "up")
        ip("-n", NODE, "link", "add", "vpod", "type", "veth", "peer", "name", "eth0",
           "netns", POD)
        ip("-n", NODE, "addr", "add", f"{NODE_IP}/24", "dev", "vpod")
        ip("-n", NODE, "link", "set", "vpod", "up")
        ip("-n", POD, "addr", "add", f"{POD_IP}/24", "dev", "eth0")
        ip("-n", POD, "link", "set", "eth0", "up")
        ip("-n", NODE, "link", "add", "vsilent", "type", "veth", "peer", "name", "vsink")
        ip("-n", NODE, "addr", "add", "10.251.9.1/24", "dev", "vsilent")
        ip("-n", NODE, "link", "set", "vsilent", "up")
        ip("-n", NODE, "link", "set", "vsink", "up")
        # A permanent neighbour: packets go out and vanish, nothing ever fails fast.
        ip("-n", NODE, "neigh", "add", SILENT, "lladdr", "02:00:00:00:00:01", "dev",
           "vsilent", "nud", "permanent")
        yield
    finally:
        for name in made:
            netns.delete(name)
        left = [n for n in netns.list_names() if n.startswith(f"lc.it-probe-{TAG}")]
        assert not left, f"namespaces left behind: {left}"


TARGET = Target(node_netns=NODE, pod_netns=POD, pod_ip=POD_IP, ports={"http": HTTP})


def http_probe(path: str = "/ok", port: int | str = "http", **kw: object) -> Probe:
    return Probe(kind="httpGet", port=port, path=path, **kw)  # type: ignore[arg-type]


def run(coro_fn: Callable[[], object]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), 20))  # a hang guard


# ---------------------------------------------------------------- servers in the pod


class PodServer:
    """A small HTTP server inside the pod namespace; records what it was sent."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, list[str]]] = []  # (peer IP, request head lines)
        self.status = {"/ok": 200, "/fail": 503, "/redirect": 302, "/big": 200}

    async def handle(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readexactly(4)
            if head != b"GET ":  # e.g. a TLS hello: answer as an HTTP server would
                writer.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                return
            head += await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")[:-2]
            self.requests.append((writer.get_extra_info("peername")[0], lines))
            path = lines[0].split(" ")[1]
            if path == "/close":
                return
            if path == "/slowbody":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
                await writer.drain()
                await asyncio.sleep(10)
                return
            code = self.status.get(path, 404)
            body = b"x" * (1 << 20) if path == "/big" else b"fine\n"
            writer.write(f"HTTP/1.1 {code} Whatever\r\nContent-Length: {len(body)}\r\n"
                         "Location: /ok\r\n\r\n".encode() + body)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts and never answers."""
    try:
        await asyncio.sleep(30)
    finally:
        writer.close()


def pod_socket(port: int) -> socket.socket:
    with netns.entered(POD):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(16)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def servers(tls: ssl.SSLContext | None = None) -> AsyncIterator[PodServer]:
    app = PodServer()
    started = [await asyncio.start_server(app.handle, sock=pod_socket(HTTP)),
               await asyncio.start_server(hang, sock=pod_socket(HANG))]
    if tls is not None:
        started.append(await asyncio.start_server(app.handle, sock=pod_socket(HTTPS),
                                                  ssl=tls))
    try:
        yield app
    finally:
        for server in started:
            server.close()
        # Handlers still sleeping (hang, slowbody) are cancelled with the loop.


# ---------------------------------------------------------------- httpGet


def test_http_success_from_the_node_with_the_kubelets_headers() -> None:
    async def main() -> None:
        async with servers() as app:
            probe = http_probe(http_headers=(("x-probe", "1"),))
            assert await probes.http_get(probe, TARGET, SHORT) == success()
            peer, lines = app.requests[-1]
            assert peer == NODE_IP  # the connection came from the node namespace
            assert lines == ["GET /ok HTTP/1.1", f"Host: {POD_IP}:{HTTP}",
                             "User-Agent: kube-probe/1.31", "Accept: */*", "X-Probe: 1",
                             "Connection: close"]

    run(main)


def test_http_status_decides() -> None:
    async def main() -> None:
        async with servers():
            assert await probes.http_get(http_probe("/fail"), TARGET, SHORT) == \
                failure("HTTP probe failed with statuscode: 503")
            assert await probes.http_get(http_probe("/nothing"), TARGET, SHORT) == \
                failure("HTTP probe failed with statuscode: 404")
            assert (await probes.http_get(http_probe("/redirect"), TARGET, SHORT)).ok
            assert (await probes.http_get(http_probe("/big"), TARGET, SHORT)).ok

    run(main)


def test_http_connection_refused() -> None:
    async def main() -> None:
        outcome = await probes.http_get(http_probe("/healthz", CLOSED), TARGET, SHORT)
        assert outcome == failure(
            f'Get "http://{POD_IP}:{CLOSED}/healthz": dial tcp {POD_IP}:{CLOSED}: '
            "connect: connection refused")

    run(main)


def test_http_timeouts() -> None:
    async def main() -> None:
        async with servers():
            outcome = await probes.http_get(http_probe("/healthz", HANG), TARGET, SHORT)
            assert outcome == failure(
                f'Get "http://{POD_IP}:{HANG}/healthz": context deadline exceeded '
                "(Client.Timeout exceeded while awaiting headers)")
            outcome = await probes.http_get(http_probe("/", 80, host=SILENT), TARGET, SHORT)
            assert outcome == failure(
                f'Get "http://{SILENT}:80/": dial tcp {SILENT}:80: i/o timeout '
                "(Client.Timeout exceeded while awaiting headers)")
            # A body that never ends: the kubelet's prober error, discarded.
            outcome = await probes.http_get(http_probe("/slowbody"), TARGET, SHORT)
            assert outcome.result is Result.UNKNOWN
            assert "while reading body" in outcome.message

    run(main)


def test_http_connection_closed_without_answer() -> None:
    async def main() -> None:
        async with servers():
            assert await probes.http_get(http_probe("/close"), TARGET, SHORT) == \
                failure(f'Get "http://{POD_IP}:{HTTP}/close": EOF')

    run(main)


def test_http_unknown_port_name_is_a_prober_error() -> None:
    async def main() -> None:
        assert await probes.http_get(http_probe("/", "metrics"), TARGET, SHORT) == \
            errored('no container port named "metrics"')

    run(main)


def test_missing_node_namespace_is_a_prober_error() -> None:
    async def main() -> None:
        gone = Target(node_netns=f"lc.it-probe-{TAG}-gone", pod_netns=POD, pod_ip=POD_IP)
        outcome = await probes.tcp_socket(Probe(kind="tcpSocket", port=HTTP), gone, SHORT)
        assert outcome.result is Result.UNKNOWN and "cannot enter" in outcome.message

    run(main)


@pytest.fixture(scope="module")
def tls_context() -> Iterator[ssl.SSLContext]:
    if not shutil.which("openssl"):
        pytest.skip("needs openssl to make a test certificate")
    with tempfile.TemporaryDirectory(prefix="lc-probe-tls-") as tmp:
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=web"],
                       check=True, capture_output=True)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        yield ctx


def test_https_skips_certificate_checks(tls_context: ssl.SSLContext) -> None:
    async def main() -> None:
        async with servers(tls_context) as app:
            probe = http_probe("/ok", HTTPS, scheme="HTTPS")
            assert await probes.http_get(probe, TARGET, 2.0) == success()  # self-signed
            assert app.requests[-1][1][0] == "GET /ok HTTP/1.1"
            plain = http_probe("/ok", HTTP, scheme="HTTPS")
            assert await probes.http_get(plain, TARGET, 2.0) == failure(
                f'Get "https://{POD_IP}:{HTTP}/ok": http: server gave HTTP response to '
                "HTTPS client")

    run(main)


# ---------------------------------------------------------------- tcpSocket


def test_tcp_socket() -> None:
    async def main() -> None:
        async with servers():
            assert await probes.tcp_socket(Probe(kind="tcpSocket", port="http"), TARGET,
                                           SHORT) == success()
            assert await probes.tcp_socket(Probe(kind="tcpSocket", port=CLOSED), TARGET,
                                           SHORT) == failure(
                f"dial tcp {POD_IP}:{CLOSED}: connect: connection refused")
            assert await probes.tcp_socket(Probe(kind="tcpSocket", port=80, host=SILENT),
                                           TARGET, SHORT) == failure(
                f"dial tcp {SILENT}:80: i/o timeout")

    run(main)


# ---------------------------------------------------------------- exec


def exec_probe(*command: str) -> Probe:
    return Probe(kind="exec", command=command)


def test_exec_exit_status_and_output() -> None:
    async def main() -> None:
        in_pod = f"ip -o addr show eth0 | grep -q {POD_IP}"  # runs in the pod namespace
        assert await probes.exec_probe(exec_probe("sh", "-c", in_pod), TARGET, 5) == \
            success()
        assert await probes.exec_probe(exec_probe("sh", "-c", "echo ok"), TARGET, 5) == \
            success("ok")
        assert await probes.exec_probe(exec_probe("sh", "-c", "echo not ready; exit 1"),
                                       TARGET, 5) == failure("not ready")
        assert await probes.exec_probe(exec_probe("false"), TARGET, 5) == \
            failure("command 'false' exited with 1")

    run(main)


def test_exec_environment() -> None:
    async def main() -> None:
        target = Target(node_netns=NODE, pod_netns=POD, pod_ip=POD_IP,
                        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                             "GREETING": "hi"})
        probe = exec_probe("sh", "-c", 'test "$GREETING" = hi')
        assert await probes.exec_probe(probe, target, 5) == success()

    run(main)


def test_exec_timeout_kills_the_process() -> None:
    async def main() -> None:
        seen: list[int] = []
        reaped: list[int] = []
        target = Target(node_netns=NODE, pod_netns=POD, pod_ip=POD_IP,
                        on_spawn=seen.append, on_reap=reaped.append)
        outcome = await probes.exec_probe(exec_probe("sleep", "30"), target, SHORT)
        assert outcome == failure('command "sleep 30" timed out')
        assert seen == reaped and len(seen) == 1
        with pytest.raises(ProcessLookupError):
            os.kill(seen[0], 0)

    run(main)


def test_exec_does_not_wait_for_children_holding_the_output() -> None:
    async def main() -> None:
        # The background sleep keeps the output pipe open after sh exits.
        outcome = await probes.exec_probe(exec_probe("sh", "-c", "sleep 30 & echo $!"),
                                          TARGET, 5)
        assert outcome.ok
        with contextlib.suppress(ProcessLookupError):  # clean up the orphan
            os.kill(int(outcome.message), signal.SIGKILL)

    run(main)


# ---------------------------------------------------------------- the prober


def test_prober_end_to_end() -> None:
    async def main() -> None:
        async with servers() as app:
            changes: list[tuple[bool, str]] = []
            prober = ContainerProber(
                "web", TARGET,
                readiness=http_probe("/ok", period_seconds=1, timeout_seconds=2),
                on_ready=lambda ok, msg: changes.append((ok, msg)), time_unit=0.05)
            prober.start()
            try:
                async with asyncio.timeout(10):
                    while not prober.ready:
                        await asyncio.sleep(0.01)
                    app.status["/ok"] = 500
                    while prober.ready:
                        await asyncio.sleep(0.01)
                    prober.force(READINESS, "broken on purpose")
                    app.status["/ok"] = 200
                    await asyncio.sleep(0.3)
                    assert not prober.ready  # the fault wins over a healthy container
                    prober.clear()
                    while not prober.ready:
                        await asyncio.sleep(0.01)
            finally:
                await prober.stop()
            assert changes[:2] == [
                (True, "Readiness probe succeeded"),
                (False, "Readiness probe failed: HTTP probe failed with statuscode: 500")]
            assert changes[-1] == (True, "Readiness probe succeeded")

    run(main)
