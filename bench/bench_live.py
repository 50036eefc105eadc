"""make bench-live: how fast a living lab reacts — readiness, rolling restarts, apply.

Three targets from issue 5, measured in one run on this machine (benchmarks, not timed
tests: figures and ratios are printed, the exit code does not depend on them):

 (a) From a readiness failure being observed to every node's rules excluding that
     endpoint, at 100 Services (3 nodes; 99 Services over 4 Deployments of 3 pods with
     readinessProbe periodSeconds 1, failureThreshold 1, and `web` for (b)). Per trial:
     `labctl break pod X --readiness --wait`; the agent's events give the observation
     (Unhealthy) and the moment every node's load had returned (EndpointChanged, written
     after the last node's RulesSynced); then iptables-save / nft list ruleset in every
     node namespace must show no rule leading to the pod's address; `labctl heal pod X
     --wait`, and the rules must lead to it again before the next trial. 20 trials in iptables mode
     and, after `labctl proxy-mode nftables`, 20 in nftables mode. Target ≤ 200 ms (p90).
     Then where the time goes: a few more trials per mode with the agent's resyncs under
     cProfile (an agent started with a profiler adopts the lab, then a normal one again).
 (b) Zero lost requests during a rolling restart: a client process inside a pod's
     namespace (`labctl exec client -- python ...`) makes sequential HTTP/1.0 requests,
     one new connection each, to the `web` Service's ClusterIP while each of its 3 pods
     in turn is deleted gracefully (`labctl delete pod`) and its replacement waited for
     until ready. At least 1 000 requests; every one must succeed. Prints failures and
     p50/p99 latency.
 (c) `labctl apply` of a one-Service change (a Service created, its port changed, it
     deleted) to a 100-pod lab, in iptables and in nftables mode: the library call
     (labctl.lab.lifecycle.apply: the round trip to the agent, which compiles, converges
     every node and replies) and the whole CLI process, wall time, target ≤ 100 ms
     (median); the agent's own account of each apply's phases (load, compile, record,
     converge: kernel / rules / state) and the CLI's floor (Python's start, imports).

Lab names start with `bench-`; every lab is taken down at the end, whatever happens. All
traffic goes to addresses inside the labs' own namespaces.

    python bench/bench_live.py [--trials 20] [--modes iptables,nftables]
                               [--requests 1000] [--rounds 4] [--only a,b,c]
                               [--apply-modes iptables,nftables]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import pstats
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from labctl.agent import control  # noqa: E402
from labctl.agent.events import Event, read  # noqa: E402
from labctl.agent.paths import StatePaths  # noqa: E402
from labctl.lab import lifecycle, store  # noqa: E402
from labctl.net import netfilter  # noqa: E402
from labctl.proxy import sync  # noqa: E402
from tests.integration import manifests  # noqa: E402

LABCTL = [sys.executable, "-m", "labctl.cli.main"]
LAB = "bench-live"  # (a) and (b)
APPLY_LAB = "bench-live-apply"  # (c)
SERVICES = 100  # user Services in LAB (the lab also has kubernetes and kube-dns)
APPS = 4  # Deployments of 3 the Services select (app0 is the one broken in (a))
READINESS_TARGET_MS = 200.0
APPLY_TARGET_MS = 100.0
ROLL_REPLICAS = 3
PROFILED_TRIALS = 4  # readiness trials with the agent under cProfile (not in the figures)


# ---------------------------------------------------------------- manifests

def probed_deployment(name: str, replicas: int) -> str:
    """A Deployment whose pods answer a readiness probe every second (1 failure: not
    ready), as in the issue's target; the built-in echo server answers /healthz."""
    return (f"apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n"
            f"  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n"
            f"  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n"
            f"      containers:\n      - name: {name}\n"
            f"        ports: [{{containerPort: 8080}}]\n"
            f"        readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}, "
            f"periodSeconds: 1, failureThreshold: 1}}\n")


def live_lab() -> str:
    docs = [manifests.lab(LAB, nodes=3)]
    docs += [probed_deployment(f"app{i}", 3) for i in range(APPS)]
    docs.append(probed_deployment("web", ROLL_REPLICAS))
    docs += [manifests.service(f"svc-{i}", f"app{i % APPS}", 80, 8080)
             for i in range(SERVICES - 1)]
    docs.append(manifests.service("web", "web", 80, 8080))
    docs.append(manifests.pod("client"))
    return manifests.join(*docs)


def apply_lab(variant: str, mode: str = "iptables") -> str:
    """100 pods (4 Deployments of 25) behind 8 Services; `variant` is the one-Service
    change: "base", "added" (svc-extra created) or "changed" (its port changed)."""
    docs = [manifests.lab(APPLY_LAB, nodes=3, proxyMode=mode)]
    docs += [manifests.deployment(f"web{i}", 25) for i in range(4)]
    docs += [manifests.service(f"svc-{i}", f"web{i % 4}", 80, 8080) for i in range(8)]
    if variant != "base":
        docs.append(manifests.service("svc-extra", "web0", 80 if variant == "added" else 81,
                                      8080))
    return manifests.join(*docs)


# ---------------------------------------------------------------- helpers

def run(argv: list[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)
    if check and proc.returncode:
        raise SystemExit(f"`{' '.join(argv[2:] if argv[:2] == LABCTL[:2] else argv)}` "
                         f"failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc


def labctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([*LABCTL, *args], check=check)


def down(lab: str) -> None:
    labctl("down", lab, "-q", check=False)


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(p * len(s)) - 1))]


def dist(values: list[float]) -> str:
    if not values:
        return "-"
    return (f"min {min(values):6.1f}  p50 {pct(values, 0.5):6.1f}  p90 {pct(values, 0.9):6.1f}"
            f"  max {max(values):6.1f}")


def clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"


def events_path(lab: str) -> str:
    return StatePaths(store.state_dir(lab)).events


def events_offset(lab: str) -> int:
    try:
        return os.path.getsize(events_path(lab))
    except FileNotFoundError:
        return 0


def wait_events(lab: str, offset: int, done: Callable[[list[Event]], bool],
                timeout: float = 15.0) -> list[Event]:
    """Events from `offset` on, once `done` says they contain what is awaited."""
    deadline = time.monotonic() + timeout
    found: list[Event] = []
    while True:
        new, offset = read(events_path(lab), offset)
        found += new
        if done(found):
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{lab}: awaited events not seen within {timeout:g}s; got "
                               + "; ".join(f"{e.reason} {e.object}" for e in found[-8:]))
        time.sleep(0.02)


def pod_states(lab: str) -> dict[str, dict[str, Any]]:
    return control.pod_states(store.state_dir(lab)) or {}


def wait_ready(lab: str, keys: list[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = pod_states(lab)
        if all(states.get(k, {}).get("ready") for k in keys):
            return
        time.sleep(0.05)
    raise SystemExit(f"{lab}: pods not ready after {timeout:g}s: {keys}")


# ---------------------------------------------------------------- rules, read back

def node_rules(lab: str, node: str, mode: str) -> str:
    """The node's ruleset, read back with the real tool inside its namespace."""
    ns = f"lc.{lab}.node.{node}"
    if mode == "iptables":
        backend = sync.iptables_backend(store.state_of(lab))
        argv = [netfilter.iptables_binary(backend, "iptables-save")]
    else:
        argv = ["nft", "list", "ruleset"]
    return run(["ip", "netns", "exec", ns, *argv]).stdout


def leads_to(rules: str, mode: str, ip: str) -> bool:
    """Whether any rule can send a packet to `ip`: a chain that DNATs to it (or, in
    nftables mode, is named for it) and that some other rule jumps or goes to. Stale
    chains, flushed or left unreferenced as kube-proxy leaves them, do not count."""
    targets: set[str] = set()
    if mode == "iptables":
        jumps = set()
        for line in rules.splitlines():
            if not line.startswith("-A "):
                continue
            parts = line.split()
            if f"--to-destination {ip}:" in line:
                targets.add(parts[1])
            if "-j" in parts:
                jumps.add(parts[parts.index("-j") + 1])
        return bool(targets & jumps)
    chain = ""
    body: list[str] = []
    for line in rules.splitlines():
        s = line.strip()
        m = re.match(r"chain (\S+) \{", s)
        if m:
            chain = m.group(1)
            if f"__{ip}/" in chain:
                targets.add(chain)
            continue
        if f"dnat to {ip}:" in s or f"dnat ip to {ip}:" in s:
            targets.add(chain)
        body.append(s)
    text = "\n".join(body)
    return any(re.search(rf"(jump|goto) {re.escape(t)}(\W|$)", text) for t in targets)


def nodes_leading_to(lab: str, mode: str, ip: str) -> list[str]:
    return [n.name for n in store.state_of(lab).nodes if leads_to(node_rules(lab, n.name, mode),
                                                                  mode, ip)]


def check_namespaces(lab: str) -> None:
    listed = set(run(["ip", "netns", "list"]).stdout.split())
    missing = [f"lc.{lab}.node.{n.name}" for n in store.state_of(lab).nodes
               if f"lc.{lab}.node.{n.name}" not in listed]
    if missing:
        raise SystemExit(f"node namespaces missing from `ip netns list`: {missing}")


# ---------------------------------------------------------------- (a) readiness

def settle(lab: str, notes: list[str]) -> None:
    """Every pod ready, and the rules lead to every ready pod. A lab just up may hold
    endpoints the agent knows are ready but never synced (see the note printed): one
    break/heal of a pod makes the agent resync every node in full."""
    keys = [k for k in pod_states(lab) if not k.startswith("kube-system/")]
    wait_ready(lab, keys)
    mode = store.state_of(lab).lab.proxy_mode
    pods = [p for p in store.state_of(lab).pods if p.name.startswith(("app", "web"))]
    rules = node_rules(lab, "node1", mode)
    missing = [p.name for p in pods if not leads_to(rules, mode, p.ip)]
    if not missing:
        return
    time.sleep(2.0)  # a resync in flight? look again
    rules = node_rules(lab, "node1", mode)
    missing = [p.name for p in pods if not leads_to(rules, mode, p.ip)]
    if not missing:
        return
    notes.append(f"BUG (agent): after `labctl up`, {len(missing)} of {len(pods)} pods were "
                 f"Ready (labctl get pods) but no node's rules led to them (no resync "
                 f"after the first probe successes); a break/heal was needed to sync them")
    print(f"  ! {len(missing)} ready pods missing from node1's rules; break/heal to resync",
          flush=True)
    victim = pods[0]
    labctl("break", "pod", victim.name, "--readiness", "--wait", "--lab", lab)
    labctl("heal", "pod", victim.name, "--wait", "--lab", lab)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rules = node_rules(lab, "node1", mode)
        if all(leads_to(rules, mode, p.ip) for p in pods):
            return
        time.sleep(0.2)
    raise SystemExit("rules still miss ready pods after a break/heal")


SYNCED = re.compile(r"synced in ([\d.]+) ms \((\d+) lines")


def readiness_trial(lab: str, pod: Any, mode: str) -> dict[str, Any]:
    """One break → excluded → heal → included cycle of pod (a PodState)."""
    key = pod.key
    offset = events_offset(lab)
    t_break = time.time()
    labctl("break", "pod", pod.name, "--readiness", "--wait", "--lab", lab)

    def excluded(evs: list[Event]) -> bool:
        return any(e.reason == "EndpointChanged" and f"endpoint {pod.name} is not ready"
                   in e.message for e in evs)

    evs = wait_events(lab, offset, excluded)
    observed = next(e for e in evs if e.reason == "Unhealthy" and e.object == f"pod/{key}")
    after = [e for e in evs if e.time >= observed.time]
    changed = next(e for e in after if e.reason == "EndpointChanged"
                   and f"endpoint {pod.name} is not ready" in e.message)
    synced = [e for e in after if e.reason == "RulesSynced" and e.time <= changed.time]
    per_node = {e.object.partition("/")[2]: float(m.group(1)) for e in synced
                if (m := SYNCED.search(e.message))}
    lines = max((int(m.group(2)) for e in synced if (m := SYNCED.search(e.message))),
                default=0)
    still = nodes_leading_to(lab, mode, pod.ip)
    # heal; the next trial starts once the rules lead to the pod again on every node
    offset = events_offset(lab)
    labctl("heal", "pod", pod.name, "--wait", "--lab", lab)
    wait_events(lab, offset, lambda evs: any(
        e.reason == "EndpointChanged" and f"endpoint {pod.name} is ready" in e.message
        for e in evs))
    back = nodes_leading_to(lab, mode, pod.ip)
    if len(back) != len(per_node):
        later, _ = read(events_path(lab), offset)
        print(f"  ! after heal the rules lead to {pod.name} on {len(back)} of "
              f"{len(per_node)} nodes; its events since the heal: "
              + "; ".join(f"{clock(e.time)} {e.reason} {e.message[:60]}" for e in later
                          if e.object == f"pod/{key}"), flush=True)
    return {"ms": (changed.time - observed.time) * 1000,
            "probe_ms": (observed.time - t_break) * 1000,
            "node_ms": per_node, "lines": lines, "nodes": len(per_node),
            "still": still, "back": len(back), "pod": pod.name}


def bench_readiness(lab: str, mode: str, trials: int, notes: list[str]) -> dict[str, Any]:
    if store.state_of(lab).lab.proxy_mode != mode:
        t = time.perf_counter()
        labctl("proxy-mode", mode, "--lab", lab)
        print(f"  switched to {mode} in {time.perf_counter() - t:.2f}s", flush=True)
    settle(lab, notes)
    state = store.state_of(lab)
    victims = [p for p in state.pods if p.name.startswith("app0-")]
    nodes = len(state.nodes)
    services = sum(1 for s in state.services)
    for p in victims:  # the positive control: every node leads to every victim now
        if len(nodes_leading_to(lab, mode, p.ip)) != nodes:
            raise SystemExit(f"{mode}: the rules do not lead to ready pod {p.name}")
    print(f"  {mode}: {services} Services, {nodes} nodes; breaking the 3 pods of app0 in "
          f"turn (each is an endpoint of {SERVICES // APPS} Services)", flush=True)
    readiness_trial(lab, victims[-1], mode)  # warm-up, not counted
    rows = []
    for i in range(trials):
        r = readiness_trial(lab, victims[i % len(victims)], mode)
        rows.append(r)
        nodes_text = " ".join(f"{n}={ms:5.1f}" for n, ms in sorted(r["node_ms"].items()))
        print(f"  {mode} trial {i + 1:2}: observed→all nodes {r['ms']:6.1f} ms  "
              f"(per node render+load ms: {nodes_text}; {r['lines']} lines each)  "
              f"break→observed {r['probe_ms']:5.0f} ms  rules lead to it: "
              f"{','.join(r['still']) or 'no node'}", flush=True)
    return {"mode": mode, "rows": rows, "services": services, "profile": [],
            "profiled": []}


def profile_readiness(lab: str, result: dict[str, Any], notes: list[str]) -> None:
    """Where a readiness resync's time goes: a few more trials with the agent's resyncs
    under cProfile (not in the figures). The profiled agent adopts the lab, and so does
    the normal one started after it (see the note on agent restarts), so this runs after
    every other measurement on the lab."""
    mode = result["mode"]
    if store.state_of(lab).lab.proxy_mode != mode:
        labctl("proxy-mode", mode, "--lab", lab)
    settle(lab, notes)
    victims = [p for p in store.state_of(lab).pods if p.name.startswith("app0-")]
    print(f"  {mode}: {PROFILED_TRIALS} trials with the agent's resyncs under cProfile",
          flush=True)
    jumps_before = kube_services_jumps(lab, mode)
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        prof = os.path.join(tmp, "resync.prof")
        profiled: list[float] = []
        profiled_agent(lab, "resync", prof, lambda: readiness_trial(lab, victims[0], mode),
                       lambda: profiled.extend(readiness_trial(lab, victims[i % 3], mode)["ms"]
                                               for i in range(PROFILED_TRIALS)))
        result["profile"] = resync_breakdown(prof)
        result["profiled"] = profiled
    jumps = kube_services_jumps(lab, mode)
    if jumps > jumps_before:
        notes.append(f"BUG (agent adoption): two agent restarts (the profiled agent, then a "
                     f"normal one) took node1 from {jumps_before} to {jumps} jump rules to "
                     f"KUBE-SERVICES in PREROUTING/OUTPUT: an adopting agent's full load "
                     f"inserts kube-proxy's jump rules again (`labctl agent restart` does the "
                     f"same); a later `labctl proxy-mode nftables` then fails "
                     f"(iptables-nft-restore: CHAIN_DEL failed (Device or resource busy): "
                     f"chain KUBE-SERVICES)")


def kube_services_jumps(lab: str, mode: str) -> int:
    """Rules in node1's PREROUTING and OUTPUT chains that jump to KUBE-SERVICES."""
    if mode != "iptables":
        return 0
    return sum(1 for line in node_rules(lab, "node1", mode).splitlines()
               if line.startswith(("-A PREROUTING", "-A OUTPUT"))
               and line.endswith("-j KUBE-SERVICES"))


# ---------------------------------------------------------------- (b) rolling restart

CLIENT = r'''
import json, socket, sys, threading, time
ip, port, least, cap_s, cap_n = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
                                 float(sys.argv[4]), int(sys.argv[5]))
stop = threading.Event()
def watch():
    sys.stdin.read()  # EOF: the roll is over
    stop.set()
threading.Thread(target=watch, daemon=True).start()
request = f"GET /roll HTTP/1.0\r\nHost: {ip}\r\n\r\n".encode()
lat, fails, slow, pods, n = [], [], [], {}, 0
end = time.monotonic() + cap_s
print("started", flush=True)
while n < cap_n and time.monotonic() < end and not (stop.is_set() and n >= least):
    n += 1
    t = time.perf_counter()
    try:
        with socket.create_connection((ip, port), timeout=2) as s:
            s.settimeout(5)
            s.sendall(request)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n")[0]:
            raise ValueError(f"bad reply {head[:60]!r}")
        pod = next((ln[4:] for ln in body.decode().splitlines() if ln.startswith("pod=")), "")
        if not pod:
            raise ValueError("no pod= in the reply")
        lat.append(time.perf_counter() - t)
        pods[pod] = pods.get(pod, 0) + 1
        if lat[-1] > 0.1:
            slow.append([round(time.time() - lat[-1], 3), round(lat[-1] * 1000, 1), pod])
    except (OSError, ValueError) as e:
        fails.append([round(time.time(), 3), f"{type(e).__name__}: {e}"])
print(json.dumps({"requests": n, "latencies": lat, "failures": fails, "pods": pods,
                  "slow": slow}), flush=True)
'''


def bench_roll(lab: str, least: int, notes: list[str]) -> dict[str, Any]:
    if store.state_of(lab).lab.proxy_mode != "iptables":
        labctl("proxy-mode", "iptables", "--lab", lab)
    settle(lab, notes)
    state = store.state_of(lab)
    vip = next(s.cluster_ip for s in state.services
               if s.service.meta.name == "web" and s.service.meta.namespace == "default")
    olds = sorted(p.name for p in state.pods if p.name.startswith("web-") and not p.terminating)
    client = subprocess.Popen(
        [*LABCTL, "exec", "client", "--lab", lab, "--", sys.executable, "-c", CLIENT, vip,
         "80", str(least), "300", "200000"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    steps = []
    try:
        if client.stdout is None or client.stdout.readline().strip() != "started":
            err = client.stderr.read() if client.stderr else ""
            raise SystemExit(f"the client did not start: {err}")
        time.sleep(0.3)  # some requests before the roll
        t_roll = time.perf_counter()
        for name in olds:
            t = time.perf_counter()
            out = labctl("delete", "pod", name, "--lab", lab).stdout
            deleted = time.perf_counter() - t
            m = re.search(r"replaced by pod/(\S+)", out)
            if not m:
                raise SystemExit(f"`labctl delete pod {name}` named no replacement:\n{out}")
            new = m.group(1)
            wait_ready(lab, [f"default/{new}"])
            steps.append((name, new, deleted, time.perf_counter() - t))
            print(f"  deleted {name} in {deleted:.2f}s; {new} ready "
                  f"{time.perf_counter() - t - deleted:.2f}s later", flush=True)
        roll_s = time.perf_counter() - t_roll
        time.sleep(0.3)  # and some after it
        out, err = client.communicate(input="", timeout=330)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    try:
        result = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise SystemExit(f"the client printed no result (exit {client.returncode}):\n"
                         f"{out[-500:]}{err[-500:]}") from None
    result["roll_s"] = roll_s
    result["steps"] = steps
    result["events"] = [(e.time, e.reason, e.object) for e in read(events_path(lab))[0]]
    result["olds"] = olds
    return result


# ---------------------------------------------------------------- (c) apply

CYCLE = ("added", "changed", "base")  # each apply changes one Service


def top_functions(stats: pstats.Stats, n: int, exclude: tuple[str, ...] = ()) -> list[str]:
    """The n functions with the most own time (tottime): where the CPU goes."""
    out = []
    items = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)  # type: ignore[attr-defined]
    for (path, line, func), (_cc, nc, tt, ct, _callers) in items:
        where = (f"{os.path.relpath(path) if path.startswith('/') else path}:{line}({func})"
                 if path != "~" else func)
        if any(x in where for x in exclude):
            continue
        out.append(f"    {tt * 1000:8.1f} ms own {ct * 1000:8.1f} ms cum {nc:>7}x  {where}")
        if len(out) >= n:
            break
    return out


def cum_ms(stats: pstats.Stats, calls: int, *names: str) -> float:
    """Cumulative ms per call of the functions whose 'file:func' ends with one of names."""
    total = 0.0
    for (path, _line, func), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if any(f"{path}:{func}".endswith(n) for n in names):
            total += ct
    return total * 1000 / calls


AGENT_PROFILER = """
import atexit, cProfile, os, sys
from labctl.agent import controller, ops
out, which = sys.argv[1], sys.argv[2]
loop_profile, thread_profile = cProfile.Profile(), cProfile.Profile()
def on():
    return os.path.exists(out + ".on")  # off while warming up (first-use imports, caches)
def wrap(real):
    async def profiled(*args, **kw):
        if not on():
            return await real(*args, **kw)
        loop_profile.enable()
        try:
            return await real(*args, **kw)
        finally:
            loop_profile.disable()
    return profiled
real_converge = controller.converge
def converge(*args, **kw):  # the agent runs it in a worker thread (asyncio.to_thread)
    if not on():
        return real_converge(*args, **kw)
    thread_profile.enable()
    try:
        return real_converge(*args, **kw)
    finally:
        thread_profile.disable()
controller.converge = converge
if which == "apply":
    ops.HANDLERS["apply"] = wrap(ops.HANDLERS["apply"])
else:
    controller.Agent._resync_soon = wrap(controller.Agent._resync_soon)
atexit.register(lambda: (loop_profile.dump_stats(out),
                         thread_profile.dump_stats(out + ".thread")))
sys.exit(controller.main(sys.argv[-1]))
"""


def agent_stats(path: str) -> pstats.Stats:
    """The profiled agent's two profiles as one: its loop and its converge thread."""
    stats = pstats.Stats(path, stream=io.StringIO())
    if os.path.exists(path + ".thread"):
        stats.add(path + ".thread")
    return stats


def profiled_agent(lab: str, which: str, out: str, warm_up: Callable[[], None],
                   work: Callable[[], None]) -> None:
    """Run `work` against an agent with cProfile around its `apply` requests (which =
    "apply") or its readiness resyncs (Agent._resync_soon): stop the lab's agent,
    start such a one (it adopts the running lab), run `warm_up` unprofiled and `work`
    profiled, stop it (SIGTERM: it writes `out`), and start a normal agent again.
    While a profiled coroutine awaits, other tasks of the agent's loop that run are in
    the profile too; the rule loads' processes are not (the wait for them is)."""
    sdir = store.state_dir(lab)
    control.stop_role(sdir, "agent")
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    offset = events_offset(lab)
    with open(StatePaths(sdir, "agent").logfile, "ab") as log:
        # "-m labctl.agent STATE_DIR" in the command line: control knows it as the agent
        proc = subprocess.Popen([sys.executable, "-c", AGENT_PROFILER, out, which,
                                 "-m", "labctl.agent", sdir], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True, cwd="/",
                                env=env)
    try:
        deadline = time.monotonic() + 60
        while control.agent_pid(sdir) != proc.pid or not os.path.exists(
                StatePaths(sdir, "agent").socket):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the profiled agent did not start (see its log)")
            time.sleep(0.05)
        wait_events(lab, offset, lambda evs: any(e.reason == "Adopted" for e in evs), 60)
        time.sleep(1.0)
        warm_up()
        open(out + ".on", "w").close()
        work()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out + ".on")
        lifecycle.restart_agent(lab)


def calls(stats: pstats.Stats, name: str) -> int:
    return sum(v[1] for (path, _l, func), v in stats.stats.items()  # type: ignore[attr-defined]
               if f"{path}:{func}".endswith(name))


def resync_breakdown(path: str) -> list[str]:
    """ms per readiness resync in the profiled agent (break and heal alike)."""
    stats = agent_stats(path)
    n = calls(stats, "lab/converge.py:converge")
    if not n:
        return ["    (no resync in the profile)"]
    parts = [
        ("Agent._resync_soon in the loop (lock, compare, resync; without the waits)",
         ("agent/controller.py:_resync_soon",)),
        ("  readiness + with_readiness (the EndpointSlices)",
         ("agent/controller.py:readiness", "cluster/compile.py:with_readiness")),
        ("  converge (in a worker thread, awaited)", ("lab/converge.py:converge",)),
        ("    sync_nodes", ("proxy/sync.py:sync_nodes",)),
        ("      render_sync (every node, one after another)", ("proxy/sync.py:render_sync",)),
        ("      Loads.wait (the nodes' loads, started as each was rendered)",
         ("net/netfilter.py:wait",)),
        ("    save_state (pickle)", ("lab/store.py:save_state",)),
        ("  _endpoint_changes", ("agent/controller.py:_endpoint_changes",)),
        ("  events (RulesSynced, EndpointChanged)", ("agent/controller.py:event",)),
        ("  save_live (after the events)", ("agent/controller.py:save_live",)),
    ]
    out = [f"    {cum_ms(stats, n, *names):8.1f} ms  {label}" for label, names in parts]
    out.append(f"    top functions by own time ({n} resyncs):")
    out += top_functions(stats, 10, exclude=("'poll' of", "cProfile"))
    return out


def bench_apply(mode: str, rounds: int) -> dict[str, Any]:
    """`rounds` cycles of three one-Service applies (created, port changed, deleted) to a
    100-pod lab in `mode`: the library call (what `labctl apply` does once started) and
    the whole CLI process, with the agent's own account of each apply's phases."""
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        files = {}
        for variant in ("base", *CYCLE[:2]):
            files[variant] = os.path.join(tmp, f"{APPLY_LAB}-{variant}.yaml")
            with open(files[variant], "w") as f:
                f.write(apply_lab(variant, mode))
        down(APPLY_LAB)
        labctl("up", files["base"], "-q")
        try:
            state = store.state_of(APPLY_LAB)
            print(f"  {mode}: {len(state.pods)} pods, {len(state.services)} Services",
                  flush=True)
            wait_ready(APPLY_LAB, [p.key for p in state.pods])
            for variant in CYCLE:  # warm-up: the agent's first applies fill its caches
                lifecycle.apply(APPLY_LAB, [files[variant]])
            lib: dict[str, list[float]] = {v: [] for v in CYCLE}
            cli: dict[str, list[float]] = {v: [] for v in CYCLE}
            phases: list[dict[str, float]] = []
            for _ in range(rounds):
                for variant in CYCLE:
                    time.sleep(0.3)  # the previous apply's DNS reload is done
                    t = time.perf_counter()
                    result = lifecycle.apply(APPLY_LAB, [files[variant]])
                    lib[variant].append((time.perf_counter() - t) * 1000)
                    if len(result.changes) != 1:
                        raise SystemExit(f"expected a one-Service change: {result.changes}")
                    phases.append(result.timings)
            # the console script users run (python -m would add runpy's start)
            script = os.path.join(os.path.dirname(sys.executable), "labctl")
            command = [script] if os.path.exists(script) else LABCTL
            for _ in range(rounds):
                for variant in CYCLE:
                    time.sleep(0.3)
                    t = time.perf_counter()
                    run([*command, "apply", "-f", files[variant], "--lab", APPLY_LAB])
                    cli[variant].append((time.perf_counter() - t) * 1000)
            floors = {}
            for label, argv in (("python -c pass", [sys.executable, "-c", "pass"]),
                                ("labctl apply --help", [*command, "apply", "--help"])):
                runs = []
                for _ in range(7):
                    t = time.perf_counter()
                    run(argv)
                    runs.append((time.perf_counter() - t) * 1000)
                floors[label] = statistics.median(runs)
        finally:
            down(APPLY_LAB)
    return {"mode": mode, "lib": lib, "cli": cli, "phases": phases, "floors": floors}


# ---------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--modes", default="iptables,nftables")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=4, help="cycles of 3 applies in (c)")
    parser.add_argument("--only", default="a,b,c")
    parser.add_argument("--apply-modes", default="iptables,nftables",
                        help="the proxy modes (c) runs in")
    args = parser.parse_args()
    only = set(args.only.split(","))
    if os.geteuid() != 0:
        print("bench-live needs root (it brings labs up)", file=sys.stderr)
        return 1
    print(f"{os.cpu_count()} CPUs; load average at the start "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (other work on this machine "
          "shows in every figure)", flush=True)
    if "c" in only:
        # The CLI's start as a user gets it: `pip install` byte-compiles the package. An
        # editable checkout under PYTHONDONTWRITEBYTECODE would compile every module on
        # every run instead.
        import compileall

        compileall.compile_dir(os.path.dirname(os.path.dirname(control.__file__)), quiet=1)
    notes: list[str] = []
    readiness: list[dict[str, Any]] = []
    roll: dict[str, Any] | None = None
    applied: list[dict[str, Any]] = []
    down(LAB)
    down(APPLY_LAB)
    try:
        if only & {"a", "b"}:
            with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
                path = os.path.join(tmp, f"{LAB}.yaml")
                with open(path, "w") as f:
                    f.write(live_lab())
                t = time.perf_counter()
                labctl("up", path, "-q")
                print(f"== {LAB} up in {time.perf_counter() - t:.2f}s", flush=True)
                check_namespaces(LAB)
                modes = args.modes.split(",")
                if "a" in only:
                    print("== (a) readiness failure observed → every node's rules exclude it")
                    readiness.append(bench_readiness(LAB, modes[0], args.trials, notes))
                if "b" in only:
                    print(f"== (b) rolling restart of deployment/web under ≥ {args.requests} "
                          "sequential requests")
                    roll = bench_roll(LAB, args.requests, notes)
                if "a" in only:
                    for mode in modes[1:]:
                        readiness.append(bench_readiness(LAB, mode, args.trials, notes))
                    print("== (a) where the time goes")
                    for result in reversed(readiness):  # the current mode first
                        profile_readiness(LAB, result, notes)
                down(LAB)
        if "c" in only:
            print("== (c) labctl apply of a one-Service change to a 100-pod lab")
            for mode in args.apply_modes.split(","):
                applied.append(bench_apply(mode, args.rounds))
    finally:
        down(LAB)
        down(APPLY_LAB)
    report(readiness, roll, applied, notes, args)
    return 0  # like the other benches: a table to read, not a test


def report(readiness: list[dict[str, Any]], roll: dict[str, Any] | None,
           applied: list[dict[str, Any]], notes: list[str], args: argparse.Namespace) -> None:
    verdicts = []
    print()
    if readiness:
        print(f"(a) readiness failure observed (event Unhealthy) → every node loaded "
              f"(event EndpointChanged), ms, {args.trials} trials")
        print(f"{'mode':10} {'Services':>8}  {'distribution (ms)':<48} {'slowest node':>12} "
              f"{'rest':>6}  rules checked")
        for r in readiness:
            rows = r["rows"]
            total = [x["ms"] for x in rows]
            slowest = [max(x["node_ms"].values(), default=0.0) for x in rows]
            rest = [t - s for t, s in zip(total, slowest, strict=True)]
            leaks = sum(1 for x in rows if x["still"])
            unhealed = sum(1 for x in rows if x["back"] != x["nodes"])
            print(f"{r['mode']:10} {r['services']:>8}  {dist(total):<48} "
                  f"{statistics.median(slowest):>9.1f} p50 {statistics.median(rest):>5.1f}"
                  f"  {'excluded on every node' if not leaks else f'{leaks} trials NOT excluded'}"
                  f"{'' if not unhealed else f', {unhealed} not restored'}")
            print(f"{'':10} {'':>8}  break → observed (probe period, not in the target): "
                  f"{dist([x['probe_ms'] for x in rows])}")
            over = sum(1 for t in total if t > READINESS_TARGET_MS)
            ok = pct(total, 0.9) <= READINESS_TARGET_MS and not leaks
            verdicts.append((f"(a) readiness → rules, {r['mode']}: p90 {pct(total, 0.9):.1f} "
                             f"ms, max {max(total):.1f} ms, {over}/{len(total)} trials over "
                             f"{READINESS_TARGET_MS:.0f} ms; endpoint excluded on every node "
                             f"in {len(rows) - leaks}/{len(rows)}", ok))
        print("  slowest node = the largest render+load of one node (RulesSynced); rest = "
              "the agent's own work around it (derive EndpointSlices, events, state files)")
        for r in readiness:
            if not r["profile"]:
                continue
            print(f"  where a {r['mode']} readiness resync's time goes (cProfile of the agent's "
                  f"resyncs, ms per resync; {len(r['profiled'])} trials while profiled: "
                  f"{dist(r['profiled'])}):")
            for line in r["profile"]:
                print(line)
        print()
    if roll is not None:
        lat = sorted(x * 1000 for x in roll["latencies"])
        fails = roll["failures"]
        served = roll["pods"]
        new_pods = [s[1] for s in roll["steps"]]
        print(f"(b) rolling restart: {roll['requests']} sequential requests, roll of "
              f"{len(roll['steps'])} pods in {roll['roll_s']:.2f}s")
        print(f"    failures {len(fails)}   latency p50 {pct(lat, 0.5):.2f} ms  p99 "
              f"{pct(lat, 0.99):.2f} ms  max {max(lat):.2f} ms")
        print("    answered by: " + ", ".join(f"{p} {n}" for p, n in sorted(served.items())))
        for t, err in fails[:10]:
            print(f"    failed at {clock(t)}: {err}")
        slow = roll.get("slow", [])
        if slow:
            print(f"    {len(slow)} requests took > 100 ms; the slowest, with the agent's last "
                  "event before each started:")
        for t, ms, pod in sorted(slow, key=lambda x: -x[1])[:5]:
            before = [e for e in roll["events"] if e[0] <= t]
            last = f"{before[-1][1]} {before[-1][2]} at {clock(before[-1][0])}" if before else "-"
            print(f"      {clock(t)} {ms:7.1f} ms  answered by {pod}; last event: {last}")
        ok = not fails and roll["requests"] >= args.requests and all(
            p in served for p in new_pods)
        verdicts.append((f"(b) zero lost requests: {roll['requests'] - len(fails)}/"
                         f"{roll['requests']} succeeded ({len(fails)} failures), p50 "
                         f"{pct(lat, 0.5):.2f} ms, p99 {pct(lat, 0.99):.2f} ms", ok))
        print()
    if applied:
        print(f"(c) labctl apply of a one-Service change to a 100-pod lab, ms ({args.rounds} "
              "rounds of: svc-extra created, its port changed, deleted)")
        print(f"{'mode':9} {'':26} {'created':>9} {'changed':>9} {'deleted':>9}   all:")
        for a in applied:
            lib, cli = a["lib"], a["cli"]
            for label, d in (("library call (lifecycle.apply)", lib),
                             ("CLI process (`labctl apply`)", cli)):
                every = [x for v in CYCLE for x in d[v]]
                print(f"{a['mode']:9} {label:26} "
                      + " ".join(f"{statistics.median(d[v]):>9.1f}" for v in CYCLE)
                      + f"   {dist(every)}")
            keys = list(dict.fromkeys(k for p in a["phases"] for k in p))
            print(f"{'':9} the agent's phases, median: " + ", ".join(
                f"{k} {statistics.median(p.get(k, 0.0) for p in a['phases']):.1f}"
                for k in keys))
            print(f"{'':9} the CLI's floor: " + ", ".join(
                f"{k} {v:.0f} ms" for k, v in a["floors"].items()))
            lib_all = [x for v in CYCLE for x in lib[v]]
            cli_all = [x for v in CYCLE for x in cli[v]]
            lib_med, cli_med = statistics.median(lib_all), statistics.median(cli_all)
            verdicts.append((f"(c) {a['mode']}: apply, library call: median {lib_med:.1f} ms,"
                             f" max {max(lib_all):.1f} ms", lib_med <= APPLY_TARGET_MS))
            verdicts.append((f"(c) {a['mode']}: apply, CLI process: median {cli_med:.1f} ms, "
                             f"max {max(cli_all):.1f} ms", cli_med <= APPLY_TARGET_MS))
        print()
    for note in dict.fromkeys(notes):
        print(f"note: {note}")
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"Targets: (a) ≤ {READINESS_TARGET_MS:.0f} ms at p90 and excluded on every node; "
          f"(b) 0 failures in ≥ {args.requests} requests; (c) ≤ {APPLY_TARGET_MS:.0f} ms "
          "median wall.")
    for text, ok in verdicts:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")


if __name__ == "__main__":
    sys.exit(main())
