"""The pod host against real namespaces: echo over TCP/HTTP/UDP, a real process, stop, clean.

Throw-away namespaces (a client plus three pods) are joined by veth pairs from
10.250.<n>.0/24; everything is made and deleted here, and nothing touches the host's
own network.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import pytest

from labctl.agent import control, procfs
from labctl.errors import LabctlError
from labctl.kubelet.echo import parse_fields
from labctl.net import netns

pytestmark = pytest.mark.root

if os.geteuid() != 0:
    pytest.skip("needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) to create network namespaces",
                allow_module_level=True)
if not shutil.which("ip"):
    pytest.skip("needs iproute2's `ip` (ip netns exec)", allow_module_level=True)

TAG = uuid.uuid4().hex[:6]
CLIENT = f"lctest-{TAG}-client"
PODS = {n: f"lctest-{TAG}-pod{n}" for n in (1, 2, 3)}
PR_SET_CHILD_SUBREAPER = 36


def pod_ip(n: int) -> str:
    return f"10.250.{n}.2"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def namespaces():
    netns.ensure_run_dir()
    made: list[str] = []
    try:
        for name in [CLIENT, *PODS.values()]:
            with netns.created(name):
                pass
            made.append(name)
            ip("-n", name, "link", "set", "lo", "up")
        for n, pod in PODS.items():
            ip("-n", CLIENT, "link", "add", f"c{n}", "type", "veth",
               "peer", "name", "eth0", "netns", pod)
            ip("-n", CLIENT, "addr", "add", f"10.250.{n}.1/24", "dev", f"c{n}")
            ip("-n", CLIENT, "link", "set", f"c{n}", "up")
            ip("-n", pod, "addr", "add", f"{pod_ip(n)}/24", "dev", "eth0")
            ip("-n", pod, "link", "set", "eth0", "up")
        yield
    finally:
        for name in made:
            netns.delete(name)
        left = [n for n in netns.list_names() if n.startswith(f"lctest-{TAG}-")]
        assert not left, f"namespaces left behind: {left}"


@pytest.fixture(scope="module")
def state_dir():
    d = tempfile.mkdtemp(prefix="lcagent-")
    try:
        yield d
    finally:
        pids = procfs.read_pids(os.path.join(d, "pids"))
        control.stop_agent(d, timeout=5, netns_names=list(PODS.values()))
        shutil.rmtree(d, ignore_errors=True)
        assert not [p for p in pids if procfs.alive(p)]


def pod(n: int, name: str, containers: list[dict], ns: str | None = None) -> dict:
    return {"namespace": "default", "name": name, "node": f"node{n}", "ip": pod_ip(n),
            "netns": ns or PODS[n], "containers": containers}


WORKLOADS = {
    "lab": "agenttest",
    "pods": [
        pod(1, "web-1", [{"name": "web", "command": [], "args": [],
                          "env": [{"name": "A", "value": "1"}],
                          "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                                    {"name": "dns", "port": 5353, "protocol": "UDP"}]}]),
        pod(2, "web-2", [{"name": "web", "ports": [{"port": 8080}]},
                         {"name": "side"},  # no ports: no listener
                         {"name": "fake", "command": ["no-such-program-labctl"],
                          "ports": [{"port": 9090, "protocol": "TCP"}]}]),
        pod(3, "py", [{"name": "http", "command": ["python3", "-m", "http.server", "8081"],
                       "env": [{"name": "GREETING", "value": "hi"},
                               {"name": "FROM_REF", "valueFrom": {"fieldRef": {}}}],
                       "ports": [{"port": 8081}]},
                      {"name": "crash", "command": ["sh", "-c", "echo boom; exit 3"]}]),
    ],
}


def write_workloads(d: str, data: dict) -> None:
    with open(os.path.join(d, "workloads.json"), "w") as f:
        json.dump(data, f)


@pytest.fixture(scope="module")
def agent(namespaces, state_dir):
    write_workloads(state_dir, WORKLOADS)
    pid = control.start_podhost(state_dir, timeout=30)
    yield pid


def connect(ns: str, kind: int, addr: tuple[str, int]) -> socket.socket:
    with netns.entered(ns):
        s = socket.socket(socket.AF_INET, kind)
    s.settimeout(5)
    s.connect(addr)
    return s


def recv_until(s: socket.socket, marker: bytes, count: int = 1) -> bytes:
    data = b""
    while data.count(marker) < count:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def client_run(*argv: str, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", CLIENT, *argv], capture_output=True,
                          text=True, timeout=timeout)


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def wait_for(pred, timeout: float = 10.0, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    return pred()


def test_agent_is_ready_and_reports_status(agent, state_dir):
    assert control.podhost_pid(state_dir) == agent
    st = control.request(state_dir, {"op": "status"}, role="podhost")
    assert st["ok"] is True and st["pid"] == agent
    assert st["pods"] == 3
    assert st["listeners"] == 4  # web-1 8080/TCP + 5353/UDP, web-2 8080, web-2 fake 9090
    assert st["processes"] >= 1
    assert control.request(state_dir, {"op": "nope"}, role="podhost")["ok"] is False
    assert os.listdir(f"/proc/{agent}/task") == [str(agent)]  # one thread serves it all


def test_http_echo_with_curl(agent):
    r = client_run("curl", "-sS", "--max-time", "5", f"http://{pod_ip(1)}:8080/x/y?z=1")
    assert r.returncode == 0, r.stderr
    f = parse_fields(r.stdout)
    assert f["pod"] == "web-1" and f["namespace"] == "default" and f["node"] == "node1"
    assert f["ip"] == pod_ip(1) and f["container"] == "web"
    assert f["server"] == f"{pod_ip(1)}:8080"
    assert f["client"].startswith("10.250.1.1:")
    assert f["path"] == "/x/y?z=1"


def test_http_keep_alive(agent):
    s = connect(CLIENT, socket.SOCK_STREAM, (pod_ip(2), 8080))
    with s:
        req = f"GET /a HTTP/1.1\r\nHost: {pod_ip(2)}\r\n\r\n".encode()
        s.sendall(req + req.replace(b"/a", b"/b"))
        data = recv_until(s, b"path=", 2)
        assert data.count(b"HTTP/1.1 200 OK") == 2
        assert b"Content-Type: text/plain\r\n" in data
        assert b"pod=web-2\n" in data and b"path=/a\n" in data and b"path=/b\n" in data
        s.sendall(b"GET /c HTTP/1.1\r\nConnection: close\r\n\r\n")
        data = recv_until(s, b"\x00")  # until the server closes
        assert b"Connection: close" in data and b"path=/c" in data


def test_raw_tcp_line_echo(agent):
    s = connect(CLIENT, socket.SOCK_STREAM, (pod_ip(1), 8080))
    with s:
        s.sendall(b"hello world\nsecond\n")
        lines = recv_until(s, b"\n", 2).decode().splitlines()
        local = "{}:{}".format(*s.getsockname())
    first, second = (parse_fields(line) for line in lines)
    assert first["echo"] == "hello world" and second["echo"] == "second"
    assert first["pod"] == "web-1" and first["ip"] == pod_ip(1)
    assert first["client"] == local


def test_builtin_server_for_missing_program(agent):
    s = connect(CLIENT, socket.SOCK_STREAM, (pod_ip(2), 9090))
    with s:
        s.sendall(b"ping\n")
        f = parse_fields(recv_until(s, b"\n").decode())
    assert f["container"] == "fake" and f["echo"] == "ping"


def test_udp_echo(agent):
    s = connect(CLIENT, socket.SOCK_DGRAM, (pod_ip(1), 5353))
    with s:
        s.send(b"dgram one")
        f = parse_fields(s.recv(65536).decode())
        local = "{}:{}".format(*s.getsockname())
    assert f["echo"] == "dgram one" and f["client"] == local
    assert f["pod"] == "web-1" and f["server"] == f"{pod_ip(1)}:5353"
    # only the declared protocol is served: no UDP on the TCP port
    s = connect(CLIENT, socket.SOCK_DGRAM, (pod_ip(1), 8080))
    with s, pytest.raises(OSError):
        s.settimeout(0.5)
        s.send(b"x")
        s.recv(100)


def test_requests_are_logged(agent, state_dir):
    path = control.log_path(state_dir, "default", "web-1", "web")
    text = wait_for(lambda: "udp " in read(path) and read(path))
    assert "http 10.250.1.1:" in text and "udp 10.250.1.1:" in text


def test_real_process_serves_in_its_namespace(agent, state_dir):
    r = wait_for(lambda: (x := client_run("curl", "-sS", "--max-time", "2",
                                          f"http://{pod_ip(3)}:8081/")).returncode == 0
                 and x, timeout=20, step=0.3)
    assert r, "python3 -m http.server never answered"
    assert "Directory listing" in r.stdout
    log = control.log_path(state_dir, "default", "py", "http")
    assert wait_for(lambda: '"GET / HTTP/1.1" 200' in read(log))
    pids = procfs.read_pids(os.path.join(state_dir, "pids"))
    assert pids
    pod3 = procfs.named_ns_ids([PODS[3]])
    assert any(procfs.net_ns(p) in pod3 for p in pids)
    env = _environ(next(p for p in pids if "http.server" in " ".join(procfs.cmdline(p))))
    assert env["HOSTNAME"] == "py" and env["GREETING"] == "hi" and "FROM_REF" not in env


def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        items = f.read().decode().split("\0")
    return dict(i.split("=", 1) for i in items if "=" in i)


def test_crashing_process_is_restarted_with_backoff(agent, state_dir):
    log = control.log_path(state_dir, "default", "py", "crash")
    text = wait_for(lambda: read(log).count("exit code 3") >= 2 and read(log), timeout=15)
    assert text, read(log)
    assert "boom" in text and "restarting in 1s" in text and "restarting in 2s" in text


def test_stop_agent_ends_agent_and_processes(agent, state_dir):
    pids = procfs.read_pids(os.path.join(state_dir, "pids"))
    idle = connect(CLIENT, socket.SOCK_STREAM, (pod_ip(1), 8080))
    idle.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert b"200 OK" in recv_until(idle, b"path=")
    assert control.stop_agent(state_dir, timeout=10) is True
    with idle:
        assert idle.recv(100) == b""  # the kept-alive connection was closed, not cut
    assert not procfs.alive(agent)
    assert not [p for p in pids if procfs.alive(p)]
    assert control.podhost_pid(state_dir) is None
    for f in ("podhost.pid", "podhost.sock", "pids"):
        assert not os.path.exists(os.path.join(state_dir, f))
    assert control.stop_agent(state_dir) is False  # idempotent
    with pytest.raises(LabctlError, match="no pod host is running"):
        control.request(state_dir, {"op": "status"}, role="podhost")


@contextlib.contextmanager
def subreaper():
    """Orphans re-parent to this process (so we can reap them) instead of to PID 1."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def test_kill_lab_processes_after_agent_sigkill(namespaces, state_dir):
    only_py = {"lab": "agenttest", "pods": [dict(WORKLOADS["pods"][2],
                                                  containers=WORKLOADS["pods"][2]["containers"][:1])]}
    write_workloads(state_dir, only_py)
    with subreaper():
        pid = control.start_podhost(state_dir, timeout=30)
        workers = procfs.read_pids(os.path.join(state_dir, "pids"))
        assert len(workers) == 1
        os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: not procfs.alive(pid), timeout=5)
        assert control.podhost_pid(state_dir) is None
        orphan = workers[0]
        assert procfs.alive(orphan), "the workload should outlive a SIGKILLed agent"
        killed = control.kill_lab_processes([PODS[1], PODS[2], PODS[3]])
        assert orphan in killed
        assert os.getpid() not in killed
        assert wait_for(lambda: not procfs.alive(orphan), timeout=5)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(orphan, 0)
    assert control.kill_lab_processes([PODS[3]]) == []
    assert control.stop_agent(state_dir) is False
    assert not os.path.exists(os.path.join(state_dir, "podhost.pid"))


def test_stop_agent_ends_leftover_pids_after_sigkill(namespaces, state_dir):
    only_py = {"lab": "agenttest", "pods": [dict(WORKLOADS["pods"][2],
                                                  containers=WORKLOADS["pods"][2]["containers"][:1])]}
    write_workloads(state_dir, only_py)
    with subreaper():
        pid = control.start_podhost(state_dir, timeout=30)
        workers = procfs.read_pids(os.path.join(state_dir, "pids"))
        os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: not procfs.alive(pid), timeout=5)
        assert control.stop_agent(state_dir) is False  # no agent, but its leftovers end
        assert not [p for p in workers if procfs.alive(p)]
        for p in workers:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(p, 0)


def test_bad_netns_fails_clearly_and_leaves_nothing(namespaces, state_dir):
    bad = f"lctest-{TAG}-missing"
    write_workloads(state_dir, {"lab": "agenttest", "pods": [
        pod(3, "py", WORKLOADS["pods"][2]["containers"]),
        pod(1, "ghost", [{"name": "c", "ports": [{"port": 80}]}], ns=bad)]})
    with pytest.raises(LabctlError, match=f"not found.*{bad}.*default/ghost"):
        control.start_podhost(state_dir, timeout=30)
    assert control.podhost_pid(state_dir) is None
    mine = [p for p in procfs.all_pids()
            if state_dir in procfs.cmdline(p) and procfs.alive(p)]
    assert not mine
    assert not os.path.exists(os.path.join(state_dir, "podhost.pid"))
    assert not procfs.pids_in(procfs.named_ns_ids(list(PODS.values())))


def test_start_timeout_leaves_nothing(namespaces, state_dir):
    write_workloads(state_dir, WORKLOADS)
    with pytest.raises(LabctlError, match="did not report ready within"):
        control.start_podhost(state_dir, timeout=0.05)
    assert control.podhost_pid(state_dir) is None
    assert not [p for p in procfs.all_pids()
                if state_dir in procfs.cmdline(p) and procfs.alive(p)]
    assert not procfs.pids_in(procfs.named_ns_ids(list(PODS.values())))
