"""A living lab: probes, readiness, restarts, delete/scale, the agent's death and
adoption, serialised applies, `down` without an agent, and a zero-loss rolling restart.

Everything is checked with real traffic from a client pod, the rules the nodes' kernels
hold (`labctl rules`) and cluster DNS answers. Requests are bounded in count; every wait
polls a condition under a timeout that is only a hang guard.

Labs: one per proxy mode for readiness and the rolling restart (`moded`), one shared
lab where each test works on its own objects so that the order does not matter
(`shared`), and throw-away labs for the concurrent applies and `down` without an agent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from labctl import names
from labctl.agent.control import pod_states
from labctl.net import inventory
from labctl.testing.runner import labctl, labctl_argv, netns_exec, processes_in
from labctl.testing.traffic import connect_error, http_get, spread
from tests.integration.conftest import write_lab
from tests.integration.manifests import join, lab, pod, service

T = TypeVar("T")
HANG_GUARD = 30.0  # seconds: only so that a broken lab fails instead of hanging


# ------------------------------------------------------------------ manifests


def probed_deployment(name: str, replicas: int) -> str:
    """A Deployment whose pods are Ready only while GET /ready answers (every second,
    one failure is enough)."""
    return (f"apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n"
            f"  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n"
            f"  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n"
            f"      containers:\n        - name: {name}\n"
            f"          ports: [{{name: http, containerPort: 8080}}]\n"
            f"          readinessProbe:\n"
            f"            httpGet: {{path: /ready, port: http}}\n"
            f"            periodSeconds: 1\n            failureThreshold: 1\n")


def live_pod(name: str) -> str:
    """A bare pod with a liveness probe (every second, one failure restarts it)."""
    return (f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {name}}}}}\n"
            f"spec:\n  containers:\n    - name: app\n"
            f"      ports: [{{containerPort: 8080}}]\n"
            f"      livenessProbe:\n        httpGet: {{path: /healthz, port: 8080}}\n"
            f"        periodSeconds: 1\n        failureThreshold: 1\n")


def server_pod(name: str, node: str = "") -> str:
    where = f"  nodeName: {node}\n" if node else ""
    return (f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {name}}}}}\n"
            f"spec:\n{where}  containers: [{{name: c, ports: [{{containerPort: 8080}}]}}]\n")


def plain_deployment(name: str, replicas: int, node: str = "") -> str:
    where = f"      nodeName: {node}\n" if node else ""
    return (f"apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n"
            f"  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n"
            f"  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n{where}"
            f"      containers: [{{name: {name}, ports: [{{containerPort: 8080}}]}}]\n")


def statefulset(name: str, replicas: int) -> str:
    return (f"apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: {name}}}\nspec:\n"
            f"  serviceName: {name}\n  replicas: {replicas}\n"
            f"  selector: {{matchLabels: {{app: {name}}}}}\n"
            f"  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n"
            f"      containers: [{{name: {name}, ports: [{{containerPort: 8080}}]}}]\n")


def client(node: str = "node1") -> str:
    return (f"apiVersion: v1\nkind: Pod\nmetadata: {{name: client}}\n"
            f"spec:\n  nodeName: {node}\n  containers: [{{name: c}}]\n")


# ------------------------------------------------------------------ helpers


def eventually(what: str, check: Callable[[], T], timeout: float = HANG_GUARD) -> T:
    """Poll `check` until it returns something true; fail (not hang) after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout:g}s for {what} "
                                 f"(last: {got!r})")
        time.sleep(0.1)


@dataclass(frozen=True)
class PodRow:
    name: str
    ready: str
    status: str
    restarts: int
    ip: str
    node: str


class Lab:
    def __init__(self, name: str, path: Path):
        self.name, self.path = name, path
        self._vips: dict[str, str] = {}

    def run(self, *args: str, check: bool = True, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
        return labctl(*args, "--lab", self.name, check=check, timeout=timeout)

    def pods(self) -> dict[str, PodRow]:
        """`labctl get pods -o wide`, parsed (the default namespace)."""
        lines = self.run("get", "pods", "-o", "wide").stdout.splitlines()
        assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP",
                                    "NODE"], lines[0]
        out = {}
        for line in lines[1:]:
            name, ready, status, restarts, _age, ip, node = line.split()
            out[name] = PodRow(name, ready, status, int(restarts), ip, node)
        return out

    def of(self, app: str) -> dict[str, PodRow]:
        return {n: p for n, p in self.pods().items() if n.startswith(f"{app}-")}

    def states(self) -> dict[str, dict[str, Any]]:
        return pod_states(names.state_dir(self.name), timeout=5.0) or {}

    def ready(self, *pods: str) -> bool:
        """Every pod Ready, and every node's rules and DNS synced with it."""
        states = self.states()
        return all(states.get(f"default/{p}", {}).get("ready")
                   and states.get(f"default/{p}", {}).get("endpointsReady") for p in pods)

    def wait_ready(self, *pods: str) -> None:
        try:
            eventually(f"pods {', '.join(pods)} ready in {self.name}",
                       lambda: self.ready(*pods))
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.explain(pods)}") from None

    def explain(self, pods: tuple[str, ...]) -> str:
        """What the agent says of these pods, and their events: for failure messages."""
        if not any(line.split()[:1] == [self.name]
                   for line in labctl("status").stdout.splitlines()):
            return f"lab {self.name} is gone (taken down by another test run?)"
        states = self.states()
        lines = [f"{k}: {v}" for k, v in states.items() if k.split("/")[1] in pods]
        lines += [line for line in self.events().splitlines() if any(p in line for p in pods)]
        return "\n".join(lines)

    def ns(self, pod_name: str) -> str:
        return names.pod_ns(self.name, "default", pod_name)

    @property
    def client(self) -> str:
        return self.ns("client")

    def vip(self, svc: str) -> str:
        if svc not in self._vips:
            items = json.loads(self.run("get", "svc", "-o", "json").stdout)["items"]
            self._vips.update((s["metadata"]["name"], s["spec"]["clusterIP"]) for s in items)
        return self._vips[svc]

    def dig(self, name: str) -> set[str]:
        proc = netns_exec(self.client, ["dig", "+short", "+time=2", "+tries=2",
                                        f"{name}.default.svc.cluster.local"], timeout=20)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return set(proc.stdout.split())

    def rules(self, node: str, svc: str) -> str:
        return self.run("rules", node, "--service", f"default/{svc}").stdout

    def events(self) -> str:
        return self.run("events").stdout

    def agent_pid(self) -> int:
        with open(os.path.join(names.state_dir(self.name), "agent.pid")) as f:
            return int(f.read())

    def podhost_pid(self) -> int:
        with open(os.path.join(names.state_dir(self.name), "podhost.pid")) as f:
            return int(f.read())


def settled(pods: dict[str, PodRow]) -> dict[str, PodRow] | None:
    """The pods, once none is terminating."""
    return None if any(p.status == "Terminating" for p in pods.values()) else pods


def up(tmp: Path, name: str, body: str) -> Lab:
    path = write_lab(tmp, name, body)
    labctl("up", str(path), "-q")
    return Lab(name, path)


def status_of(name: str) -> str:
    for line in labctl("status").stdout.splitlines():
        if line.split()[:1] == [name]:
            return line.split()[1]
    raise AssertionError(f"lab {name} is not in `labctl status`")


def kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    eventually(f"pid {pid} gone", lambda: not _alive(pid), timeout=10)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


# ------------------------------------------------------------------ labs

MODES = ["iptables", "nftables"]


@pytest.fixture(scope="module", params=MODES)
def moded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Lab]:
    """Per proxy mode: `web` (3 pods, readiness probe) behind a ClusterIP and a headless
    Service, `roll` (3 pods, readiness probe) behind a ClusterIP, a client on node1."""
    mode = request.param
    name = f"it-live-{mode[:3]}"
    body = join(lab(name, nodes=2, proxyMode=mode),
                probed_deployment("web", 3), service("web", "web", 80, "http"),
                service("web-headless", "web", 8080, 8080, clusterIP="None"),
                probed_deployment("roll", 3), service("roll", "roll", 80, "http"),
                client())
    lab_ = up(tmp_path_factory.mktemp(name), name, body)
    try:
        lab_.wait_ready(*lab_.of("web"), *lab_.of("roll"))
        yield lab_
    finally:
        labctl("down", name)


SHARED = "it-live"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One lab (iptables) for the tests that each use their own objects in it."""
    body = join(lab(SHARED, nodes=2),
                client(),
                live_pod("lively"),                                       # liveness
                server_pod("crashy"),                                     # crash
                plain_deployment("del", 2), service("del", "del", 80, 8080),  # delete
                statefulset("db", 2), server_pod("lonely"),
                plain_deployment("sc", 2), service("sc", "sc", 80, 8080),     # scale
                plain_deployment("steady", 2), service("steady", "steady", 80, 8080),
                plain_deployment("later", 1),                             # agent restart
                plain_deployment("reuse", 1, node="node1"))               # address reuse
    lab_ = up(tmp_path_factory.mktemp(SHARED), SHARED, body)
    try:
        lab_.wait_ready(*lab_.pods())
        yield lab_
    finally:
        labctl("down", SHARED)


# ------------------------------------------------------------------ 1. readiness


def test_readiness_failure_takes_the_endpoint_out_of_rules_dns_and_traffic(moded: Lab
                                                                          ) -> None:
    web = moded.of("web")
    assert len(web) == 3
    victim, *others = sorted(web)
    vip = moded.vip("web")
    ip_of = {n: web[n].ip for n in web}
    nodes = sorted({p.node for p in moded.pods().values()})

    out = moded.run("break", "pod", victim, "--readiness", "--wait").stdout
    assert f"pod/{victim} is not ready" in out
    try:
        rows = moded.pods()
        assert rows[victim].ready == "0/1" and rows[victim].status == "Running"
        assert all(rows[o].ready == "1/1" for o in others)
        for node in nodes:
            rules = moded.rules(node, "web")
            assert f"{ip_of[victim]}:8080" not in rules, f"{node} still sends to {victim}"
            assert all(f"{ip_of[o]}:8080" in rules for o in others), rules
        assert moded.dig("web-headless") == {ip_of[o] for o in others}
        answered = spread(moded.client, vip, 80, 40)
        assert set(answered) <= set(others), answered  # (2/3)^40 to miss it if present
        endpoints = moded.run("get", "endpoints").stdout
        assert ip_of[victim] not in next(line for line in endpoints.splitlines()
                                         if line.startswith("web "))
        events = moded.events()
        assert f"pod/default/{victim}" in events and "Readiness probe failed" in events
        assert f"endpoint {victim} is not ready" in events
    finally:
        out = moded.run("heal", "pod", victim, "--wait").stdout
    assert f"pod/{victim} is ready" in out
    for node in nodes:
        assert all(f"{ip}:8080" in moded.rules(node, "web") for ip in ip_of.values())
    assert moded.dig("web-headless") == set(ip_of.values())
    answered = spread(moded.client, vip, 80, 60)
    assert set(answered) == set(web), answered  # the healed pod answers again
    assert f"endpoint {victim} is ready" in moded.events()


# ------------------------------------------------------------------ 9. rolling restart

ROLL_CLIENT = r"""
import json, os, socket, sys, time
vip, started, stop = sys.argv[1], sys.argv[2], sys.argv[3]
least, most = int(sys.argv[4]), int(sys.argv[5])
ok, failures, pods = 0, [], {}
while ok + len(failures) < most and not (ok + len(failures) >= least and os.path.exists(stop)):
    try:
        with socket.create_connection((vip, 80), timeout=2) as s:
            s.settimeout(2)
            s.sendall(b"GET / HTTP/1.0\r\nHost: roll\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200 "):
            raise OSError(f"bad reply {head[:40]!r}")
        pod = dict(w.split("=", 1) for w in body.decode().split() if "=" in w)["pod"]
        pods[pod] = pods.get(pod, 0) + 1
        ok += 1
        if ok == 1:
            open(started, "w").close()
    except (OSError, KeyError, ValueError) as e:
        failures.append(f"{time.time():.3f} {e!r}")
    time.sleep(0.001)  # a steady stream, without starving the lab on a small machine
print(json.dumps({"ok": ok, "failures": failures, "pods": pods}))
"""


def roll_traffic(lab_: Lab, tmp_path: Path, vip: str) -> tuple[subprocess.Popen[str], Path]:
    """ROLL_CLIENT running against `vip` from the client pod, once it has an answer."""
    started, stop = tmp_path / "started", tmp_path / "stop"
    loop = subprocess.Popen(
        labctl_argv("exec", "client", "--lab", lab_.name, "--", sys.executable, "-c",
                    ROLL_CLIENT, vip, str(started), str(stop), "300", "50000"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    eventually("the client's first answer", lambda: started.exists() or loop.poll() is not None)
    assert loop.poll() is None, loop.communicate()
    return loop, stop


def roll_result(loop: subprocess.Popen[str], stop: Path) -> dict[str, Any]:
    stop.touch()
    try:
        stdout, stderr = loop.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        loop.kill()
        stdout, stderr = loop.communicate()
    assert loop.returncode == 0, stderr
    return json.loads(stdout)


def test_rolling_restart_under_traffic_loses_no_request(moded: Lab, tmp_path: Path) -> None:
    old = sorted(moded.of("roll"))
    assert len(old) == 3
    moded.wait_ready(*old)
    loop, stop = roll_traffic(moded, tmp_path, moded.vip("roll"))  # under way before
    try:
        new: list[str] = []
        for name in old:
            out = moded.run("delete", "pod", name).stdout
            assert f'pod "{name}" deleted' in out
            added = [n for n in moded.of("roll") if n not in old and n not in new]
            assert len(added) == 1, (out, added)
            new += added
            moded.wait_ready(*added)
            assert loop.poll() is None, "the client stopped before the roll was done"
    finally:
        result = roll_result(loop, stop)
    assert result["failures"] == [], (result["failures"][:5], moded.events())
    assert result["ok"] >= 300
    assert set(moded.of("roll")) == set(new) and not set(new) & set(old)
    # the traffic spanned the roll: every old pod answered, and the new ones too
    assert set(old) <= set(result["pods"]) and set(new) & set(result["pods"]), result["pods"]


def with_template(body: str, app: str, version: str, strategy: str = "") -> str:
    """`body` with Deployment `app`'s pod template labelled v=`version` (a new template,
    hence a rollout) and, if given, its spec.strategy."""
    body = body.replace(f"    metadata: {{labels: {{app: {app}}}}}",
                        f"    metadata: {{labels: {{app: {app}, v: '{version}'}}}}")
    if strategy:
        body = body.replace(f"  selector: {{matchLabels: {{app: {app}}}}}",
                            f"  strategy: {strategy}\n  selector: {{matchLabels: {{app: {app}}}}}")
    return body


@pytest.fixture
def rolling(tmp_path: Path) -> Iterator[Lab]:
    """`web` (3 pods, readiness probe) behind a ClusterIP, and a client."""
    name = "it-live-roll"
    lab_ = up(tmp_path, name, join(lab(name, nodes=2), probed_deployment("web", 3),
                                   service("web", "web", 80, "http"), client()))
    try:
        lab_.wait_ready(*lab_.of("web"))
        yield lab_
    finally:
        labctl("down", name)


def watch_rollout(lab_: Lab, old: set[str], until_done: Callable[[], bool]
                  ) -> list[dict[str, PodRow]]:
    """`labctl get pods` every ~50 ms until the rollout is done: the samples."""
    samples = []
    deadline = time.monotonic() + HANG_GUARD
    while time.monotonic() < deadline:
        samples.append(lab_.of("web"))
        if until_done():
            return samples
        time.sleep(0.05)
    raise AssertionError(f"the rollout did not finish: {samples[-1]}\n{lab_.events()}")


def test_a_new_template_rolls_out_under_traffic_losing_no_request(rolling: Lab,
                                                                   tmp_path: Path) -> None:
    """RollingUpdate with kube's defaults (maxSurge 25% → 1, maxUnavailable 25% → 0 of 3):
    one new pod at a time, an old one goes only once a new one is ready, so 3 stay ready
    and at most 4 run; a client sees no failure."""
    old = set(rolling.of("web"))
    v2 = tmp_path / "v2.yaml"
    v2.write_text(with_template(rolling.path.read_text(), "web", "2"))
    dry = rolling.run("apply", "-f", str(v2), "--dry-run").stdout
    assert dry.count("to be created (dry run)") == 1, dry  # the first step: one surge pod
    loop, stop = roll_traffic(rolling, tmp_path, rolling.vip("web"))
    try:
        out = rolling.run("apply", "-f", str(v2)).stdout
        assert "deployment.apps/web configured" in out and out.count(" created") == 1, out
        sets = rolling.run("get", "rs").stdout  # at once: the old ReplicaSet and the new
        assert len(sets.splitlines()) == 3, sets
        samples = watch_rollout(rolling, old, lambda: "RolloutComplete" in rolling.events())
    finally:
        result = roll_result(loop, stop)
    assert result["failures"] == [], (result["failures"][:5], rolling.events())
    for pods in samples:
        running = [p for p in pods.values() if p.status != "Terminating"]
        assert len(running) <= 4, pods  # replicas + maxSurge
        assert sum(p.ready == "1/1" for p in running) >= 3, pods  # replicas - maxUnavailable
    final = eventually("the old pods gone", lambda: settled(rolling.of("web")))
    assert len(final) == 3 and not set(final) & old
    rows = [ln.split() for ln in rolling.run("get", "rs").stdout.splitlines()[1:]]
    new_hash = next(iter(final)).rsplit("-", 2)[1]
    assert [r[:4] for r in rows] == [[f"web-{new_hash}", "3", "3", "3"]], rows
    deploy = rolling.run("get", "deploy").stdout.splitlines()
    assert deploy[1].split()[:4] == ["web", "3/3", "3", "3"], deploy
    events = rolling.events()
    assert "Scaled up replica set web-" in events and "RolloutComplete" in events
    assert set(old) <= set(result["pods"]) and set(final) & set(result["pods"])


def test_recreate_stops_every_old_pod_before_the_new_ones_start(rolling: Lab,
                                                                tmp_path: Path) -> None:
    old = set(rolling.of("web"))
    v3 = tmp_path / "v3.yaml"
    v3.write_text(with_template(rolling.path.read_text(), "web", "3", "{type: Recreate}"))
    out = rolling.run("apply", "-f", str(v3)).stdout
    assert out.count(" terminating") == 3 and " created" not in out, out
    samples = watch_rollout(rolling, old, lambda: "RolloutComplete" in rolling.events())
    for pods in samples:  # never an old pod running beside a new one
        assert not (set(pods) - old and any(pods[n].status != "Terminating"
                                            for n in set(pods) & old)), pods
    def all_new_and_ready() -> dict[str, PodRow] | None:
        pods = rolling.of("web")
        fine = len(pods) == 3 and not set(pods) & old and \
            all(r.ready == "1/1" for r in pods.values())
        return pods if fine else None

    eventually("three new pods ready", all_new_and_ready)
    events = rolling.events()
    assert events.index("RolloutStarted") < events.index("Scaled up replica set")


def test_min_ready_seconds_spaces_the_rollout(rolling: Lab, tmp_path: Path) -> None:
    """minReadySeconds 2: an old pod goes only once the new one before it has been ready
    for 2 s (no probe result changes meanwhile: the agent looks again at every relist)."""
    v5 = tmp_path / "v5.yaml"
    body = with_template(rolling.path.read_text(), "web", "5")
    v5.write_text(body.replace("  replicas: 3\n", "  replicas: 3\n  minReadySeconds: 2\n"))
    rolling.run("apply", "-f", str(v5))
    eventually("the rollout complete", lambda: "RolloutComplete" in rolling.events() or None)
    ready: dict[str, float] = {}
    downs: list[float] = []
    for line in rolling.events().splitlines()[1:]:
        clock, _kind, reason, obj, *_ = line.split()
        h, m, s = clock.split(":")
        t = int(h) * 3600 + int(m) * 60 + float(s)
        if reason == "Ready" and obj.startswith("pod/default/web-"):
            ready[obj] = t
        elif reason == "ScalingReplicaSet" and "Scaled down" in line:
            downs.append(t)
    assert len(downs) == 3, rolling.events()
    new_ready = sorted(t for t in ready.values() if t > downs[0] - 10)
    for down in downs:  # each old pod went ≥ 2 s after the last new pod became ready
        latest = max(t for t in new_ready if t < down)
        assert down - latest >= 1.9, (down, new_ready)


def test_a_deployment_removed_mid_rollout_takes_its_old_pods_along(rolling: Lab,
                                                                   tmp_path: Path) -> None:
    """minReadySeconds 30 holds the rollout after its first new pod; an apply of another
    change leaves it as it is; then the manifests lose the Deployment: the old pods it
    kept go too, nothing is left running."""
    slow = tmp_path / "slow.yaml"
    body = with_template(rolling.path.read_text(), "web", "4")
    slow.write_text(body.replace("  replicas: 3\n", "  replicas: 3\n  minReadySeconds: 30\n"))
    rolling.run("apply", "-f", str(slow))
    eventually("the first new pod ready", lambda: len(
        [p for p in rolling.of("web").values() if p.ready == "1/1"]) == 4 or None)
    time.sleep(1.0)
    assert len(rolling.of("web")) == 4  # held: the new pod is not available for 30 s
    more = tmp_path / "more.yaml"
    more.write_text(slow.read_text() + "---\n" + service("more", "web", 81, "http"))
    out = rolling.run("apply", "-f", str(more)).stdout
    assert "service/more created" in out and "terminating" not in out, out
    pods = rolling.of("web")
    assert len(pods) == 4 and all(p.status == "Running" for p in pods.values()), pods
    gone = tmp_path / "gone.yaml"
    gone.write_text("---\n".join(d for d in rolling.path.read_text().split("---\n")
                                   if "kind: Deployment" not in d))
    out = rolling.run("apply", "-f", str(gone)).stdout
    assert "deployment.apps/web deleted" in out and out.count(" terminating") == 4, out
    eventually("every web pod gone", lambda: not rolling.of("web") or None)


# ------------------------------------------------------------------ 2. liveness


def test_liveness_failure_restarts_the_container(shared: Lab) -> None:
    before = shared.pods()["lively"].restarts
    shared.run("break", "pod", "lively", "--liveness")
    try:
        eventually("lively restarted", lambda: shared.pods()["lively"].restarts > before)
        events = shared.events()
        assert "pod/default/lively" in events
        assert "Killing" in events and "failed liveness probe, will be restarted" in events
        assert "container app started again" in events
    finally:
        shared.run("heal", "pod", "lively", "--wait")
    row = shared.pods()["lively"]
    assert row.ready == "1/1" and row.status == "Running" and row.restarts > before
    assert http_get(shared.client, row.ip, 8080).pod == "lively"


# ------------------------------------------------------------------ 3. crash


def test_crash_gives_crashloopbackoff_and_heal_brings_it_back(shared: Lab) -> None:
    start = shared.pods()["crashy"].restarts
    shared.run("break", "pod", "crashy", "--crash")
    try:
        row = eventually("crashy in CrashLoopBackOff after 2 restarts", lambda: (
            r if (r := shared.pods()["crashy"]).status == "CrashLoopBackOff"
            and r.restarts >= start + 2 else None))
        assert row.ready == "0/1"
        assert "back-off restarting failed container c" in shared.events()
        # -o json as the kubelet reports it: the container waits, with its last exit
        pod = next(p for p in json.loads(shared.run("get", "pods", "-o", "json").stdout)[
            "items"] if p["metadata"]["name"] == "crashy")
        (c,) = pod["status"]["containerStatuses"]
        assert c["ready"] is False and c["restartCount"] >= start + 2
        assert c["state"] == {"waiting": {"reason": "CrashLoopBackOff"}}
        assert c["lastState"]["terminated"]["exitCode"] != 0
        ready = {x["type"]: x["status"] for x in pod["status"]["conditions"]}
        assert ready["Ready"] == "False" and ready["ContainersReady"] == "False"
    finally:
        shared.run("heal", "pod", "crashy", "--wait")
    row = shared.pods()["crashy"]
    assert row.status == "Running" and row.ready == "1/1"
    assert http_get(shared.client, row.ip, 8080).pod == "crashy"
    pod = next(p for p in json.loads(shared.run("get", "pods", "-o", "json").stdout)[
        "items"] if p["metadata"]["name"] == "crashy")
    assert "running" in pod["status"]["containerStatuses"][0]["state"]
    assert {x["type"]: x["status"] for x in pod["status"]["conditions"]}["Ready"] == "True"


# ------------------------------------------------------------------ 4. delete


def test_deleted_pods_follow_their_controller(shared: Lab) -> None:
    vip = shared.vip("del")
    before = shared.of("del")
    assert len(before) == 2
    gone, kept = sorted(before)
    out = shared.run("delete", "pod", gone).stdout
    assert f'pod "{gone}" deleted' in out
    now = shared.of("del")
    assert gone not in now and kept in now and len(now) == 2
    (new,) = set(now) - {kept}
    assert f"replaced by pod/{new}" in out
    assert now[new].ip != before[gone].ip
    shared.wait_ready(new)
    endpoints = next(line for line in shared.run("get", "endpoints").stdout.splitlines()
                     if line.startswith("del "))
    assert now[new].ip in endpoints and before[gone].ip not in endpoints
    assert set(spread(shared.client, vip, 80, 40)) == {kept, new}

    # a StatefulSet's pod comes back under its name
    db1 = shared.pods()["db-1"]
    out = shared.run("delete", "pod", "db-1").stdout
    assert 'pod "db-1" deleted' in out
    shared.wait_ready("db-1")
    assert shared.pods()["db-1"].status == "Running"
    assert http_get(shared.client, shared.pods()["db-1"].ip, 8080).pod == "db-1"
    assert db1.node == shared.pods()["db-1"].node

    # a bare pod stays gone: no pod, no namespace, nothing answers its address
    lonely = shared.pods()["lonely"]
    shared.run("delete", "pod", "lonely")
    assert "lonely" not in shared.pods()
    assert shared.ns("lonely") not in inventory.lab_namespaces().get(SHARED, [])
    code, _ = connect_error(shared.client, lonely.ip, 8080, timeout=1.0)
    assert code != 0

    # a missing pod: NotFound, exit 1, nothing changes
    pods = shared.pods()
    proc = shared.run("delete", "pod", "missing", check=False)
    assert proc.returncode == 1, proc
    assert 'Error from server (NotFound): pods "missing" not found' in proc.stderr
    assert shared.pods().keys() == pods.keys()


def test_a_new_pod_on_a_deleted_pods_address_is_reachable_at_once(shared: Lab) -> None:
    """Replacements on one node soon take a deleted pod's address. The client (same
    bridge) has just talked to the old pod, so its neighbour entry for that address is
    fresh and points at the old pod's MAC: only the new pod's gratuitous ARP (what the
    CNI bridge plugin sends) lets the very next request reach it."""
    talked: dict[str, str] = {}  # address → the pod the client last reached there
    for _ in range(4):
        ((name, row),) = shared.of("reuse").items()
        assert row.node == "node1"
        answer = http_get(shared.client, row.ip, 8080, timeout=3.0).pod
        assert answer == name, f"{row.ip} answered as {answer}, not {name}"
        if row.ip in talked:
            break  # a new pod on a reused address answered at once
        talked[row.ip] = name
        shared.run("delete", "pod", name)
    else:
        raise AssertionError(f"no replacement reused an address in 4 deletions: {talked}; "
                             "this test needs another way to reuse one")


# ------------------------------------------------------------------ 5. scale


def test_scale_up_and_down_and_bad_requests(shared: Lab) -> None:
    vip = shared.vip("sc")
    first = shared.of("sc")
    assert len(first) == 2
    out = shared.run("scale", "deployment/sc", "--replicas", "4").stdout
    assert "deployment.apps/sc scaled" in out
    four = shared.of("sc")
    assert len(four) == 4 and set(first) <= set(four)
    shared.wait_ready(*four)
    assert set(spread(shared.client, vip, 80, 80)) == set(four)  # 4·(3/4)^80 to miss one

    shared.run("scale", "deployment/sc", "--replicas", "1")
    one = eventually("sc down to one pod", lambda: (p if len(p := shared.of("sc")) == 1
                                                   else None))
    (last,) = one
    assert set(spread(shared.client, vip, 80, 20)) == {last}

    proc = shared.run("scale", "deployment/nope", "--replicas", "2", check=False)
    assert proc.returncode == 1 and 'deployments.apps "nope" not found' in proc.stderr
    proc = shared.run("scale", "deployment/sc", "--replicas", "-1", check=False)
    assert proc.returncode == 2 and "--replicas" in proc.stderr
    assert set(shared.of("sc")) == {last}  # both left the lab alone


# ------------------------------------------------------------------ 6. agent killed


def test_killed_agent_loses_no_traffic_and_is_adopted(shared: Lab) -> None:
    vip = shared.vip("steady")
    before = {n: p.ip for n, p in shared.pods().items()}
    node_ns = f"lc.{SHARED}.node.node1"

    def jumps() -> list[str]:  # kube-proxy's jump rules, each must exist once
        save = netns_exec(node_ns, ["iptables-save", "-t", "nat"]).stdout
        return sorted(line for line in save.splitlines()
                      if line.startswith("-A ") and "-j KUBE-" in line
                      and line.split()[1] in ("PREROUTING", "OUTPUT", "POSTROUTING"))

    jumps_before = jumps()
    assert jumps_before
    podhost = shared.podhost_pid()
    old = shared.agent_pid()
    kill9(old)

    assert status_of(SHARED) == "AGENT-DEAD"
    answered = spread(shared.client, vip, 80, 50)  # each a new connection: all answered
    assert sum(answered.values()) == 50 and set(answered) == set(shared.of("steady"))
    assert shared.dig("steady") == {vip}
    proc = shared.run("scale", "deployment/steady", "--replicas", "3", check=False,
                      timeout=20)
    assert proc.returncode == 1 and "no running agent" in proc.stderr

    out = labctl("up", str(shared.path)).stdout
    assert "adopted" in out
    new = shared.agent_pid()
    assert new != old and shared.podhost_pid() == podhost
    assert status_of(SHARED) == "UP"
    assert {n: p.ip for n, p in shared.pods().items()} == before  # nothing rebuilt
    assert "Adopted" in shared.events()
    assert jumps() == jumps_before  # the full resync did not insert them again

    # the new agent runs the lab: a change goes through it, traffic follows
    shared.run("scale", "deployment/later", "--replicas", "2")
    later = shared.of("later")
    assert len(later) == 2
    shared.wait_ready(*later)
    assert set(spread(shared.client, vip, 80, 20)) == set(shared.of("steady"))
    for name, row in later.items():
        assert http_get(shared.client, row.ip, 8080).pod == name


# ------------------------------------------------------------------ 7. concurrent applies


def test_concurrent_applies_are_serialised(tmp_path: Path) -> None:
    name = "it-live-conc"
    base = join(lab(name), client(), plain_deployment("app", 1))
    files = {}
    for tag, replicas in (("a", 1), ("b", 2)):
        files[tag] = tmp_path / f"{tag}.yaml"
        files[tag].write_text(join(base, plain_deployment(f"x{tag}", replicas),
                                   service(f"s{tag}", f"x{tag}", 80, 8080)))
    conc = up(tmp_path, name, base)
    try:
        procs = {tag: subprocess.Popen(labctl_argv("apply", "-f", str(path), "--lab", name),
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
                 for tag, path in files.items()}
        outs = {tag: p.communicate(timeout=120) for tag, p in procs.items()}
        for tag, p in procs.items():
            assert p.returncode == 0, outs[tag]
        # one ran after the other: the second removed what the first created
        second = [t for t, (out, _) in outs.items()
                  if f"service/s{'b' if t == 'a' else 'a'} deleted" in out]
        assert len(second) == 1, outs
        winner = second[0]
        loser = "b" if winner == "a" else "a"
        for tag in (winner, loser):
            assert f"service/s{tag} created" in outs[tag][0], outs[tag]

        # the final state is the winner's, whole: its pods and Service, none of the other
        # (once the pods the second apply removed have terminated)
        pods = eventually("no pod terminating", lambda: settled(conc.pods()))
        conc.wait_ready(*pods)
        assert len([n for n in pods if n.startswith(f"x{winner}-")]) == \
            (1 if winner == "a" else 2)
        assert not [n for n in pods if n.startswith(f"x{loser}-")]
        svcs = conc.run("get", "svc").stdout
        assert f"s{winner} " in svcs and f"s{loser} " not in svcs
        assert conc.dig(f"s{loser}") == set()
        vip = conc.vip(f"s{winner}")
        assert conc.dig(f"s{winner}") == {vip}
        assert set(spread(conc.client, vip, 80, 20)) <= \
            {n for n in pods if n.startswith(f"x{winner}-")}
        assert "no changes" in conc.run("apply", "-f", str(files[winner])).stdout
    finally:
        labctl("down", name)


# ------------------------------------------------------------------ 8. down, agent dead


def test_down_cleans_everything_with_the_agent_and_pod_host_dead(tmp_path: Path) -> None:
    name = "it-live-dead"
    dead = up(tmp_path, name, join(lab(name), plain_deployment("web", 1),
                                   pod("sleeper", command="[sleep, '600']")))
    try:
        namespaces = inventory.lab_namespaces()[name]
        inodes = inventory.namespace_inodes(namespaces)
        sleepers = eventually("the sleeper's process", lambda: processes_in(inodes))
        kill9(dead.agent_pid())
        kill9(dead.podhost_pid())
        assert processes_in(inodes) == sleepers  # the orphaned workload runs on
        assert status_of(name) == "AGENT-DEAD"
    finally:
        labctl("down", name)
    assert not inventory.lab_namespaces().get(name)
    assert not [n for n in netns_names() if n.startswith(f"lc.{name}.")]
    assert not [p for p in sleepers if _alive(p)]
    assert not os.path.exists(names.state_dir(name))
    assert name not in labctl("status").stdout


def netns_names() -> list[str]:
    return [line.split()[0] for line in
            subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           check=True).stdout.splitlines() if line.strip()]


def test_a_never_ready_pod_terminates_not_serving(tmp_path: Path) -> None:
    """EndpointSlice conditions of a terminating pod keep its readiness: one whose
    readiness probe never passed is terminating and not serving (upstream: serving is
    the pod's Ready condition), and a ready one is terminating and serving."""
    name = "it-live-term"
    # a server that ignores SIGTERM: the pod stays terminating for its grace period
    never = ("apiVersion: v1\nkind: Pod\nmetadata: {name: never, labels: {app: t}}\nspec:\n"
             "  terminationGracePeriodSeconds: 30\n  containers:\n"
             "    - name: c\n      ports: [{containerPort: 8080}]\n"
             "      command: [sh, -c, \"trap '' TERM; exec python3 -m http.server 8080\"]\n"
             "      readinessProbe: {tcpSocket: {port: 9999}, periodSeconds: 1}\n")
    fine = never.replace("name: never", "name: fine").replace("port: 9999", "port: 8080")
    path = write_lab(tmp_path, name, join(lab(name), never, fine, service("t", "t", 80, 8080)))
    labctl("up", str(path), "-q")
    try:
        def conditions() -> dict[str, dict[str, bool]]:
            items = json.loads(labctl("get", "endpointslices", "-o", "json", "--lab",
                                      name).stdout)["items"]
            return {ep["targetRef"]["name"]: ep["conditions"] for s in items
                    if s["metadata"]["labels"].get("kubernetes.io/service-name") == "t"
                    for ep in s.get("endpoints", [])}

        eventually("fine ready", lambda: conditions().get("fine", {}).get("ready"))
        assert conditions()["never"]["ready"] is False
        for pod_name in ("never", "fine"):
            labctl("delete", "pod", pod_name, "--no-wait", "--lab", name)
        now = conditions()
        assert now["never"] == {"ready": False, "serving": False, "terminating": True}, now
        assert now["fine"] == {"ready": False, "serving": True, "terminating": True}, now
    finally:
        labctl("down", name)
