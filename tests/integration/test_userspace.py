"""kube-proxy's userspace mode (deprecated), what only it does, with real traffic: a
proxy process per node behind iptables portals, each Service port sent to its proxy
port, cluster DNS through the proxy, exact round robin, and the one thing it did that
iptables mode does not: a connection to a dead endpoint is retried on the next one. The
same lab is switched to iptables mode and back, so both modes face the same dead pod in
one run. The behaviours every mode shares (ClusterIP, NodePort, LoadBalancer,
externalIPs, UDP, affinity, no endpoints, …) are in test_services.py, which runs over
userspace mode too.

One lab for the module; tests that break something put it back. Every wait polls a
condition under a timeout that is only a hang guard; request counts are bounded."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from labctl import names
from labctl.proxy import base, userspace
from labctl.proxy.userspace_daemon import request
from labctl.testing.runner import labctl, netns_exec
from labctl.testing.traffic import connect_error, http_get, socket_in, spread
from tests.integration.conftest import write_lab
from tests.integration.manifests import deployment, join, lab, pod, service
from tests.integration.service_lab import Lab as ServiceLab

LAB = "it-userspace"
GOLDEN = Path(__file__).parents[1] / "unit" / "golden" / "proxy" / "userspace"
HANG_GUARD = 30.0
T = TypeVar("T")

MANIFEST = join(
    lab(LAB, proxyMode="userspace"), deployment("web", 3, port_name="http"),
    deployment("flaky", 2),
    # Ready (its process runs, no probe says otherwise) but nothing listens on 8080: the
    # endpoint refuses every connection, as a pod whose server died would.
    pod("flaky-dead", command='[sleep, "3600"]', node="node2", port=8080, app="flaky"),
    pod("client", node="node1", port=7000),
    service("web", "web", 80, "http"),
    service("web-np", "web", 80, 8080, node_port=30080, port_name="", type="NodePort"),
    service("empty", "nothing-has-this-label", 80, 8080, port_name=""),
    service("flaky", "flaky", 80, 8080, port_name=""))


def eventually(what: str, check: Callable[[], T], timeout: float = HANG_GUARD) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Lab(ServiceLab):
    """The Service tests' view of a lab, plus the proxy processes' own."""

    def __init__(self, name: str, path: Path) -> None:
        super().__init__(name, "userspace")
        self.path = path
        self.state_dir = names.state_dir(name)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return labctl(*args, "--lab", self.name, check=check)

    @property
    def client(self) -> str:
        return self.ns("client")

    def of(self, app: str) -> set[str]:
        return {n for n, p in self.pods.items()
                if p["metadata"].get("labels", {}).get("app") == app}

    def ip(self, pod: str) -> str:
        return self.pods[pod]["status"]["podIP"]

    def proxy(self, node: str) -> dict[str, Any]:
        return request(self.state_dir, node, {"op": "status"})

    def proxy_port(self, node: str, service: str) -> dict[str, Any]:
        return next(p for p in self.proxy(node)["ports"] if p["service"] == service)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    path = write_lab(tmp_path_factory.mktemp(LAB), LAB, MANIFEST)
    labctl("up", str(path), "-q")
    try:
        yield Lab(LAB, path)
    finally:
        labctl("down", LAB)


def _flaky_requests(lab: Lab, count: int) -> tuple[list[str], list[int], list[float]]:
    """`count` new connections to the flaky Service: who answered, errnos, durations."""
    answered, errors, took = [], [], []
    for _ in range(count):
        t = time.perf_counter()
        try:
            answered.append(http_get(lab.client, lab.vip("flaky"), 80, timeout=5.0).pod)
        except OSError as e:
            errors.append(e.errno or -1)
        took.append(time.perf_counter() - t)
    return answered, errors, took


# ------------------------------------------------------------------ the mode's parts


def test_one_proxy_per_node_in_the_node_namespace(lab: Lab) -> None:
    for node in lab.nodes:
        status = lab.proxy(node)
        pid = status["pid"]
        want = os.stat(f"/run/netns/{lab.node_ns(node)}")
        have = os.stat(f"/proc/{pid}/ns/net")
        assert (want.st_dev, want.st_ino) == (have.st_dev, have.st_ino)
        with open(f"/proc/{pid}/cmdline") as f:
            assert "labctl.proxy.userspace_daemon" in f.read()
        assert "*:30080/TCP" in status["claims"]  # the NodePort held open
        with open(os.path.join(lab.state_dir, "pids")) as f:  # the pod host's, by PID
            assert str(pid) in f.read().split()


def test_rules_send_each_service_port_to_its_proxy_port(lab: Lab) -> None:
    from labctl.lab import store

    state = store.state_of(LAB)
    for node in lab.nodes:
        rs = userspace.render(base.input_for_node(state, node))
        port = rs.proxy_port("default/web:http")
        assert lab.proxy_port(node, "default/web:http")["proxyPort"] == port
        saved = lab.run("rules", node).stdout
        assert (f"-A KUBE-PORTALS-CONTAINER -d {lab.vip('web')}/32 -p tcp -m comment "
                f'--comment "default/web:http" -m tcp --dport 80 -j REDIRECT --to-ports '
                f"{port}") in saved
        assert (f"-A KUBE-PORTALS-HOST -d {lab.vip('web')}/32 -p tcp -m comment --comment "
                f'"default/web:http" -m tcp --dport 80 -j DNAT --to-destination '
                f"{lab.nodes[node]}:{port}") in saved
        assert "-j KUBE-PORTALS-CONTAINER" in saved and "KUBE-NODEPORT-NON-LOCAL" in saved
        assert "KUBE-SERVICES" not in saved  # no iptables-mode rules
        assert f"0.0.0.0:{port}/TCP default/web:http" in saved  # the proxy's own view
    # Offline, from the file alone: the same proxy port (a hash of the port's name).
    rendered = labctl("proxy", "render", "--mode", "userspace", "--node-name", "node1",
                      "--node-ip", lab.nodes["node1"], str(lab.path)).stdout
    port = lab.proxy_port("node1", "default/web:http")["proxyPort"]
    assert f":{port}/TCP default/web:http -> " in rendered
    assert "--comment default/web:http -p tcp -m tcp --dport 80" in rendered
    assert f"-j REDIRECT --to-ports {port}" in rendered


def test_cluster_dns_through_the_proxy(lab: Lab) -> None:
    # kube-dns itself is a Service: UDP and TCP queries go through the proxy too.
    out = netns_exec(lab.client, ["getent", "hosts", "web"]).stdout
    assert out.split()[0] == lab.vip("web")
    assert lab.proxy_port("node1", "kube-system/kube-dns:dns")["connections"] >= 1


def test_round_robin_serves_each_endpoint_in_turn(lab: Lab) -> None:
    counts = spread(lab.client, lab.vip("web"), 80, 3 * 7)
    assert set(counts) == lab.of("web")
    assert set(counts.values()) == {7}  # exact turns, not iptables mode's dice


# ------------------------------------------------------------------ the point of it


def test_a_refusing_endpoint_is_retried_and_iptables_mode_does_not(lab: Lab) -> None:
    ok_pods = lab.of("flaky") - {"flaky-dead"}
    dead = f"{lab.ip('flaky-dead')}:8080"
    assert dead in lab.proxy_port("node1", "default/flaky")["endpoints"]

    answered, errors, _ = _flaky_requests(lab, 30)
    assert not errors and len(answered) == 30  # every request answered ...
    assert set(answered) == ok_pods  # ... by the live endpoints only
    status = lab.proxy_port("node1", "default/flaky")
    assert status["failedConnects"].get(dead, 0) >= 5 and status["retried"] >= 5

    out = lab.run("proxy-mode", "iptables").stdout
    assert "from userspace to iptables" in out
    assert not any("userspace_daemon" in line for line in _processes())
    answered, errors, _ = _flaky_requests(lab, 30)
    assert errors and set(errors) == {errno.ECONNREFUSED}  # some went to the dead pod
    assert answered and set(answered) <= ok_pods
    code, took = connect_error(lab.client, lab.vip("empty"), 80)
    assert code == errno.ECONNREFUSED and took < 1.0  # iptables mode: REJECT at once

    assert "from iptables to userspace" in lab.run("proxy-mode", "userspace").stdout
    answered, errors, _ = _flaky_requests(lab, 15)
    assert not errors and set(answered) == ok_pods
    saved = lab.run("rules", "node1").stdout
    assert "KUBE-SVC-" not in saved and "KUBE-PORTALS-CONTAINER" in saved


def test_an_endpoint_that_does_not_answer_costs_a_250ms_timeout(lab: Lab) -> None:
    victim = sorted(lab.of("flaky") - {"flaky-dead"})[0]
    drop = ["iptables", "-w", "INPUT", "-p", "tcp", "--dport", "8080", "-j", "DROP"]
    assert netns_exec(lab.ns(victim), [*drop[:2], "-A", *drop[2:]]).returncode == 0
    try:
        answered, errors, took = _flaky_requests(lab, 12)
        assert not errors and victim not in answered
        slow = [t for t in took if t >= 0.25]
        assert slow and max(took) < 2.0  # waited for one connect timeout, then moved on
    finally:
        netns_exec(lab.ns(victim), [*drop[:2], "-D", *drop[2:]])


# ------------------------------------------------------------------ living with it


def test_endpoint_changes_keep_established_connections(lab: Lab) -> None:
    s = socket_in(lab.client)
    s.settimeout(5.0)
    with s:
        s.connect((lab.vip("web"), 80))
        s.sendall(b"one\n")
        pinned = _line(s)["pod"]
        # Take the pinned pod out of the endpoints: its established connection stays.
        lab.run("break", "pod", pinned, "--readiness", "--wait")
        try:
            eps = lab.proxy_port("node1", "default/web:http")["endpoints"]
            assert f"{lab.ip(pinned)}:8080" not in eps and len(eps) == 2
            assert pinned not in spread(lab.client, lab.vip("web"), 80, 8)
            s.sendall(b"two\n")
            assert _line(s)["pod"] == pinned
        finally:
            lab.run("heal", "pod", pinned, "--wait")
    assert pinned in spread(lab.client, lab.vip("web"), 80, 6)


def test_a_killed_proxy_is_restarted_and_an_agent_restart_adds_no_rules(lab: Lab) -> None:
    before = lab.proxy("node2")["pid"]
    os.kill(before, signal.SIGKILL)

    def serving() -> bool:
        try:
            return lab.proxy("node2")["pid"] != before
        except Exception:  # noqa: BLE001 - not back yet
            return False

    eventually("the pod host to restart kube-proxy on node2", serving)
    other = next(n for n in lab.of("web") if lab.pods[n]["spec"]["nodeName"] == "node2")
    assert http_get(lab.ns(other), lab.vip("web"), 80).pod in lab.of("web")

    lab.run("agent", "restart")
    saved = lab.run("rules", "node1").stdout
    assert saved.count("-j KUBE-PORTALS-CONTAINER") == 1  # ensured, not inserted again
    assert http_get(lab.client, lab.vip("web"), 80).pod in lab.of("web")


# ------------------------------------------------------------------ the rules alone


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_every_golden_loads_and_cleans_up(backend: str) -> None:
    """The userspace goldens through the real iptables-restore of each backend, with
    the jumps ensured twice (no duplicates), then kube-proxy --cleanup: nothing left."""
    from labctl.net import netfilter
    from tests.unit.test_proxy_iptables import golden_input

    if shutil.which(netfilter.iptables_binary(backend, "iptables-restore")) is None:
        pytest.skip(f"needs the {backend} iptables backend")
    scratch = f"it-us-gold-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", scratch], check=True)
    try:
        for case in sorted(p.stem for p in GOLDEN.glob("*.txt")):
            rs = userspace.render(golden_input(case))
            golden = (GOLDEN / f"{case}.txt").read_text()
            netfilter.restore_iptables(scratch, golden, backend)  # the `#` lines too
            for _ in range(2):
                netfilter.iptables_commands(scratch, rs.jump_rules(), backend)
            saved = netfilter.iptables_save(scratch, backend)
            assert saved.count("-j KUBE-PORTALS-CONTAINER") == 1, case
            assert len([ln for ln in saved.splitlines() if ln.startswith("-A KUBE-")]) \
                == len(rs.rules), case
            cleanup, argv = rs.cleanup_payload()
            netfilter.iptables_commands(scratch, argv, backend, ensure=False)
            netfilter.restore_iptables(scratch, cleanup, backend)
            assert "KUBE-" not in netfilter.iptables_save(scratch, backend), case
    finally:
        subprocess.run(["ip", "netns", "del", scratch], check=False)


def _line(s: socket.socket) -> dict[str, str]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return dict(w.split("=", 1) for w in data.decode().split() if "=" in w)


def _processes() -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    out.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return [line for line in out if f"/{LAB} " in line or line.endswith(f"/{LAB}")]
