"""Running an exercise's checks against a running lab.

The lab's ClusterState (as its agent last saved it: pods, addresses, EndpointSlices
with readiness) fills the placeholders and names the namespaces; the probes themselves
are real traffic, real DNS questions, the node's rules read back from the kernel and
real commands. Checks run in file order, concurrently where that is safe: consecutive
reach / dns / rule / endpoints checks (and every cell of a reach matrix) run at once,
while a `command` check waits for everything before it and is waited for by everything
after it — so `conntrack -L` sees the connections a reach check made just before.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from labctl.cluster.state import ClusterState, ServiceState
from labctl.errors import LabctlError
from labctl.exercise import placeholders, probes
from labctl.exercise.placeholders import Unresolved, find_pod, split_ref
from labctl.exercise.spec import Check, Command, Dns, Endpoints, Exercise, Reach, Rule, Task

WORKERS = 16
DNS_TIMEOUT = 2.0


@dataclass(frozen=True)
class Cell:
    """One client × target of a reach check."""

    client: str
    target: str
    address: str  # ip:port/proto probed ("" when it could not be resolved)
    expected: str
    observed: str
    passed: bool
    pods: tuple[str, ...] = ()  # who answered, per connection
    detail: str = ""


@dataclass(frozen=True)
class Result:
    check: Check
    passed: bool
    expected: str
    observed: str
    detail: str = ""
    cells: tuple[Cell, ...] = ()


@dataclass
class TaskResult:
    task: Task
    results: list[Result] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)


@dataclass
class RunResult:
    exercise: Exercise
    lab: str
    tasks: list[TaskResult]
    seconds: float

    @property
    def results(self) -> list[Result]:
        return [r for t in self.tasks for r in t.results]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)


def run(exercise: Exercise, state: ClusterState, state_dir: str) -> RunResult:
    start = time.monotonic()
    checker = _Checker(state, state_dir)
    pending: list[tuple[TaskResult, Check, Callable[[], Result]]] = []
    tasks = [TaskResult(t) for t in exercise.tasks]
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="check") as pool:
        batch: list[Future[object]] = []
        for task_result in tasks:
            for check in task_result.task.checks:
                if check.kind == "command":
                    _wait(batch)
                    batch = [pool.submit(checker.command, check)]
                    pending.append((task_result, check, batch[0].result))  # type: ignore
                    _wait(batch)
                    batch = []
                    continue
                collect, futures = checker.submit(pool, check)
                batch += futures
                pending.append((task_result, check, collect))
        _wait(batch)
        for task_result, check, collect in pending:
            try:
                task_result.results.append(collect())
            except Unresolved as exc:
                task_result.results.append(Result(check, False, "", "unresolved", str(exc)))
    return RunResult(exercise, state.lab.name, tasks, time.monotonic() - start)


def _wait(futures: list[Future[object]]) -> None:
    for future in futures:
        future.exception()


class _Checker:
    def __init__(self, state: ClusterState, state_dir: str):
        self.state = state
        self.state_dir = state_dir
        dns = next((s for s in state.services if s.key == "kube-system/kube-dns"), None)
        self.cluster_dns = dns.cluster_ip if dns else ""

    def submit(self, pool: ThreadPoolExecutor, check: Check
               ) -> tuple[Callable[[], Result], list[Future[object]]]:
        """Start a check; (how to collect its result, the futures it waits for)."""
        if isinstance(check.spec, Reach):
            jobs = [pool.submit(self.cell, check.spec, client, target)
                    for client in check.spec.clients
                    for target in self.expand_targets(check.spec)]
            return (lambda: self.reach_result(check, [j.result() for j in jobs]),
                    jobs)  # type: ignore[list-item]
        job = getattr(self, check.kind)
        future = pool.submit(self.guard, job, check)
        return future.result, [future]  # type: ignore[list-item]

    def guard(self, job: Callable[[Check], Result], check: Check) -> Result:
        try:
            return job(check)
        except (Unresolved, LabctlError) as exc:
            return Result(check, False, "", "error", str(exc))
        except OSError as exc:  # a namespace that went away meanwhile
            return Result(check, False, "", "error", f"{exc.strerror or exc}: "
                          f"{exc.filename or ''}".rstrip(": "))

    # ------------------------------------------------------------ where things are

    def client_netns(self, client: str) -> tuple[str, str | None]:
        """(network namespace, the pod's netns for its resolv.conf or None)."""
        if client == "external":
            return self.state.external_netns, None
        if client.startswith("node:"):
            return self.node(client[5:]).netns, None
        pod = find_pod(self.state, client)
        return pod.netns, pod.netns

    def node(self, name: str):  # noqa: ANN201 - NodeState
        try:
            return self.state.node(name)
        except KeyError:
            raise Unresolved(f"no node {name!r} in the lab (nodes: "
                             f"{', '.join(n.name for n in self.state.nodes)})") from None

    def service(self, ref: str) -> ServiceState | None:
        namespace, name = split_ref(ref)
        return next((s for s in self.state.services
                     if (s.namespace, s.name) == (namespace, name)), None)

    # ------------------------------------------------------------ reach

    def expand_targets(self, reach: Reach) -> list[str]:
        out: list[str] = []
        for target in reach.targets:
            try:
                out += placeholders.fill_list(self.state, (target,))
            except Unresolved as exc:
                out.append(f"!{target}!{exc}")  # reported by its cells
        return out

    def cell(self, reach: Reach, client: str, target: str) -> Cell:
        expected = reach.expect
        if target.startswith("!"):
            _, written, why = target.split("!", 2)
            return Cell(client, written, "", expected, "error", False, detail=why)
        try:
            ns, pod_ns = self.client_netns(client)
            ip, port, how = self.address(reach, target, ns, pod_ns)
            probe = probes.tcp if reach.proto == "tcp" else probes.udp
            outcomes = []
            for _ in range(reach.count):
                outcomes.append(probe(ns, ip, port, reach.timeout))
                if outcomes[-1].result != expected:
                    break  # the cell has failed: the rest would only cost time (a refused
                    # connect can wait out the kernel's ICMP rate limit, ~1 s each)
        except Unresolved as exc:
            return Cell(client, target, "", expected, "error", False, detail=str(exc))
        except OSError as exc:  # the client's namespace went away (a pod replaced)
            return Cell(client, target, "", expected, "error", False,
                        detail=f"cannot probe from {client}: {exc.strerror or exc} "
                               "(was the pod replaced meanwhile? run the check again)")
        address = f"{ip}:{port}/{reach.proto}"
        return judge(reach, client, target, address, outcomes, how)

    def address(self, reach: Reach, target: str, ns: str, pod_ns: str | None
                ) -> tuple[str, int, str]:
        """(ip, port, how the target was found)."""
        port = self.port(reach)
        try:
            ipaddress.IPv4Address(target)
            return target, self.need_port(port, target), ""
        except ValueError:
            pass
        if target.startswith("node:"):
            return self.node(target[5:]).ip, self.need_port(port, target), ""
        if "*" in target:
            pod = find_pod(self.state, target)
            return pod.ip, self.need_port(port, target), ""
        svc = self.service(target)
        if svc is not None:
            if svc.cluster_ip in ("", "None"):
                raise Unresolved(f"Service {svc.key} has no ClusterIP (headless or "
                                 "ExternalName): reach its DNS name or its pods")
            if port is None:
                port = _first_port(svc, reach.proto)
            return svc.cluster_ip, port, f"ClusterIP of {svc.key}"
        if placeholders.find_pods(self.state, target):
            return find_pod(self.state, target).ip, self.need_port(port, target), ""
        if "." not in target:
            raise Unresolved(f"no Service or pod named {target!r} in the lab")
        resolver = probes.resolver_of(pod_ns, self.cluster_dns)
        ip, how = probes.lookup_address(ns, resolver, target, DNS_TIMEOUT)
        if not ip:
            raise Unresolved(f"DNS: {how}")
        if port is None:  # a Service's name: its first port, as for the Service itself
            svc = next((s for s in self.state.services if s.cluster_ip == ip), None)
            port = _first_port(svc, reach.proto) if svc else None
        return ip, self.need_port(port, target), how

    def port(self, reach: Reach) -> int | None:
        if isinstance(reach.port, str):
            text = placeholders.fill(self.state, reach.port)
            if not text.isdigit():
                raise Unresolved(f"port {reach.port!r} is {text!r}, not a number")
            return int(text)
        return reach.port

    @staticmethod
    def need_port(port: int | None, target: str) -> int:
        if port is None:
            raise Unresolved(f"{target}: give port: (only a Service has a default port)")
        return port

    def reach_result(self, check: Check, cells: list[Cell]) -> Result:
        spec = check.spec
        assert isinstance(spec, Reach)
        expected = spec.expect
        if spec.answered_by:
            expected += f", answered by /{spec.answered_by}/"
        if spec.distinct:
            expected += f", ≥{spec.distinct} distinct pods"
        if spec.count > 1:
            expected += f" (each of {spec.count} connections)"
        good = sum(c.passed for c in cells)
        detail = "; ".join(f"{c.client} → {c.target}: {c.observed}"
                           + (f" ({c.detail})" if c.detail else "")
                           for c in cells if not c.passed)
        return Result(check, good == len(cells), expected,
                      f"{good}/{len(cells)} as expected", detail, tuple(cells))

    # ------------------------------------------------------------ dns

    def dns(self, check: Check) -> Result:
        spec = check.spec
        assert isinstance(spec, Dns)
        client = spec.client or next((p.key for p in self.state.pods
                                      if p.namespace != "kube-system"), "")
        if not client:
            raise Unresolved("the lab has no pod outside kube-system to ask from")
        ns, pod_ns = self.client_netns(client)
        resolver = probes.resolver_of(pod_ns, self.cluster_dns)
        if not resolver.nameservers:
            raise Unresolved(f"{client} has no nameserver")
        name = placeholders.fill(self.state, spec.name)
        reply = probes.ask(ns, resolver.nameservers[0], name, spec.qtype, DNS_TIMEOUT)
        if spec.expect in (("NXDOMAIN",), ("NODATA",)):
            expected = spec.expect[0]
            passed = reply.shown == expected
        else:
            want = sorted(_norm(a) for a in placeholders.fill_list(self.state, spec.expect))
            expected = ", ".join(want)
            passed = reply.rcode == "NOERROR" and sorted(map(_norm, reply.answers)) == want
        return Result(check, passed, expected, reply.shown,
                      f"asked {resolver.nameservers[0]} from {client}: {name} {spec.qtype}")

    # ------------------------------------------------------------ rule

    def rule(self, check: Check) -> Result:
        from labctl.cli.rules_view import node_rules

        spec = check.spec
        assert isinstance(spec, Rule)
        mode = self.state.lab.proxy_mode
        expected = ("a line matching" if spec.present else "no line matching") + \
            f" /{spec.pattern}/"
        self.node(spec.node)
        if spec.mode and spec.mode != mode:
            return Result(check, False, expected, f"the lab runs kube-proxy in {mode} mode",
                          f"this check is about {spec.mode} mode: "
                          f"labctl proxy-mode {spec.mode}")
        text = node_rules(self.state, spec.node, spec.service or None)
        pattern = re.compile(placeholders.fill(self.state, spec.pattern, regex=True))
        found = [line for line in text.splitlines() if pattern.search(line)]
        observed = f"{len(found)} matching line(s)" if found else "no line matches"
        detail = found[0] if found else \
            f"labctl rules {spec.node}" + (f" --service {spec.service}" if spec.service else "")
        return Result(check, bool(found) == spec.present, expected, observed, detail)

    # ------------------------------------------------------------ endpoints

    def endpoints(self, check: Check) -> Result:
        spec = check.spec
        assert isinstance(spec, Endpoints)
        namespace, name = split_ref(spec.service)
        expected = ", ".join(f"{k} {v}" for k, v in spec.counts)
        if self.service(spec.service) is None:
            return Result(check, False, expected, f"no Service {namespace}/{name}")
        seen: dict[str, dict[str, bool]] = {}
        for es in self.state.endpoint_slices:
            if es.meta.namespace != namespace or es.service_name != name:
                continue
            for ep in es.endpoints:
                c = ep.conditions
                ready = c.ready is not False
                seen.setdefault(ep.addresses[0] if ep.addresses else "", {
                    "ready": ready, "serving": c.serving if c.serving is not None else ready,
                    "terminating": bool(c.terminating)})
        counts = {k: sum(v[k] for v in seen.values())
                  for k in ("ready", "serving", "terminating")}
        observed = ", ".join(f"{k} {counts[k]}" for k, _ in spec.counts)
        passed = all(counts[k] == v for k, v in spec.counts)
        return Result(check, passed, expected, observed,
                      f"{len(seen)} endpoint(s) of {namespace}/{name}: labctl get endpoints")

    # ------------------------------------------------------------ command

    def command(self, check: Check) -> Result:
        return self.guard(self._command, check)

    def _command(self, check: Check) -> Result:
        from labctl.cli.targets import container_environment

        spec = check.spec
        assert isinstance(spec, Command)
        env = None
        if spec.where == "external" or spec.where.startswith("node:"):
            ns = self.client_netns(spec.where)[0]
        else:
            pod = find_pod(self.state, spec.where)
            ns = pod.netns
            env = container_environment(self.state, pod, pod.spec.containers[0],
                                        self.state_dir)
        if isinstance(spec.run, str):
            argv = ["sh", "-c", placeholders.fill(self.state, spec.run)]
        else:
            argv = [placeholders.fill(self.state, a) for a in spec.run]
        expected = _command_expectation(spec)
        try:
            proc = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True,
                                  text=True, timeout=spec.timeout, env=env, check=False)
        except subprocess.TimeoutExpired:
            return Result(check, False, expected, f"still running after {spec.timeout:g} s")
        except OSError as exc:
            return Result(check, False, expected, f"cannot run: {exc.strerror or exc}")
        problems = []
        if spec.exit_code is not None and proc.returncode != spec.exit_code:
            problems.append(f"exit code {proc.returncode}")
        if spec.expect and not re.search(
                placeholders.fill(self.state, spec.expect, regex=True), proc.stdout,
                re.MULTILINE):
            problems.append(f"stdout does not match /{spec.expect}/")
        if spec.absent and (m := re.search(placeholders.fill(self.state, spec.absent,
                                                             regex=True),
                                           proc.stdout, re.MULTILINE)):
            problems.append(f"stdout has {m.group(0)!r}")
        lines = (proc.stdout or proc.stderr).strip().splitlines()
        shown = lines[0][:100] + (f" (+{len(lines) - 1} lines)" if len(lines) > 1 else "") \
            if lines else "(no output)"
        observed = "; ".join(problems) if problems else f"exit {proc.returncode}"
        return Result(check, not problems, expected, observed, shown)


def _first_port(svc: ServiceState, proto: str) -> int:
    """The Service's first port of protocol `proto` (a reach check's default port)."""
    ports = [p.port for p in svc.ports if p.protocol.lower() == proto]
    if not ports:
        raise Unresolved(f"Service {svc.key} has no {proto.upper()} port: give port:")
    return ports[0]


def _command_expectation(spec: Command) -> str:
    parts = []
    if spec.exit_code is not None:
        parts.append(f"exit {spec.exit_code}")
    if spec.expect:
        parts.append(f"stdout matches /{spec.expect}/")
    if spec.absent:
        parts.append(f"stdout without /{spec.absent}/")
    return ", ".join(parts)


def _norm(answer: str) -> str:
    return answer.rstrip(".").lower()


def judge(reach: Reach, client: str, target: str, address: str,
          outcomes: list[probes.Outcome], how: str) -> Cell:
    """Whether a cell's connections met the reach check's expectations."""
    results = Counter(o.result for o in outcomes)
    pods = tuple(o.pod for o in outcomes)
    problems = []
    if set(results) != {reach.expect}:
        problems.append("")
    if reach.expect == "ok" and reach.answered_by:
        wrong = sorted({p or "(no pod= in the reply)" for p in pods
                        if not re.search(reach.answered_by, p)})
        if wrong:
            problems.append(f"answered by {', '.join(wrong)}")
    answered = Counter(p for p in pods if p)
    if reach.distinct and len(answered) < reach.distinct:
        problems.append(f"{len(answered)} distinct pod(s) answered")
    observed = ", ".join(f"{k} ×{v}" if len(outcomes) > 1 else k
                         for k, v in results.most_common())
    notes = [d for d in dict.fromkeys(o.detail for o in outcomes if o.detail)]
    if answered:
        notes.insert(0, "answered by " + ", ".join(
            f"{p} ×{n}" if len(outcomes) > 1 else p for p, n in answered.most_common()))
    if how:
        notes.insert(0, how)
    if len(outcomes) < reach.count:
        notes.append(f"stopped after connection {len(outcomes)} of {reach.count}: it was "
                     f"not {reach.expect}")
    notes += [p for p in problems if p]
    return Cell(client, target, address, reach.expect, observed, not problems, pods,
                "; ".join(notes))
