"""checks.yaml → a validated `Exercise` (pure: no lab, no root).

The file is read with the model's YAML-with-positions loader and walked with its schema
walker, so every problem is a `Diagnostic` with file:line:column, the field path and a
hint, and all of them are raised together in one `UserError` (exit 2) before any check
runs. The fields that take several shapes (`from`/`to`: a string or a list, `dns.expect`:
a list or NXDOMAIN/NODATA, `command.run`: a string or argv) are checked here on the YAML
nodes themselves, so their errors point at the item that is wrong.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from labctl.errors import Diagnostic, Pos, UserError
from labctl.exercise import placeholders
from labctl.model.checks import LAB_NAME, Problem, int_range, one_of
from labctl.model.report import Reporter
from labctl.model.schema import (
    BOOLEAN,
    OPAQUE,
    STRING,
    ListOf,
    Scalar,
    Struct,
    Walker,
    describe,
)
from labctl.model.yamlpos import YMap, YNode, YScalar, YSeq, parse_yaml

CHECKS_FILE = "checks.yaml"
KINDS = ("reach", "dns", "rule", "endpoints", "command")
EXPECT_REACH = ("ok", "refused", "timeout", "unreachable")
DNS_TYPES = ("A", "AAAA", "SRV", "PTR", "CNAME", "TXT", "NS", "SOA")
DNS_RCODES = ("NXDOMAIN", "NODATA")
MODES = ("iptables", "nftables", "ipvs", "userspace")
MAX_COUNT = 200
FORMAT_HINT = "the checks.yaml format: topologies/README.md"


def _positive(what: str, high: int, hint: str = "") -> Scalar:
    return Scalar("integer", (int_range(1, high, what, hint),))


_TITLE = {"title": STRING}
REACH = Struct({
    "from": OPAQUE, "to": OPAQUE, "port": Scalar("int-or-string"),
    "proto": Scalar("string", (one_of("tcp", "udp"),)),
    "expect": Scalar("string", (one_of(*EXPECT_REACH),)),
    "answeredBy": STRING, "count": _positive("a count", MAX_COUNT, "at most 200 connections"),
    "distinct": _positive("a number of pods", MAX_COUNT),
    "timeout": _positive("seconds", 10, "connections are bounded: 1-10 seconds"), **_TITLE,
}, {"from": "the client(s): a pod, NS/POD, a prefix like web-*, external or node:NAME",
    "to": "the target(s): a Service, a pod, node:NAME, a DNS name or an IP"})
DNS = Struct({
    "from": STRING, "name": STRING,
    "type": Scalar("string", (one_of(*DNS_TYPES, hint="the record types the cluster DNS "
                                      "serves"),)), "expect": OPAQUE, **_TITLE,
}, {"name": "the name to ask, e.g. web.default.svc.cluster.local",
    "expect": "a list of answers, or NXDOMAIN, or NODATA"})
RULE = Struct({
    "node": STRING, "pattern": STRING, "present": BOOLEAN,
    "mode": Scalar("string", (one_of(*MODES),)), "service": STRING, **_TITLE,
}, {"node": "the node whose rules are read, e.g. node1",
    "pattern": "a regular expression matched against each line of the rules"})
_COUNT = Scalar("integer", (int_range(0, 100000, "a count", "a count is 0 or more"),))
ENDPOINTS = Struct({"service": STRING, "ready": _COUNT, "serving": _COUNT,
                    "terminating": _COUNT, **_TITLE},
                   {"service": "the Service, NAME or NS/NAME"})
COMMAND = Struct({
    "in": STRING, "run": OPAQUE, "expect": STRING, "absent": STRING,
    "exitCode": Scalar("integer", (int_range(0, 255, "an exit code", "exit codes are "
                                             "0-255"),)),
    "timeout": _positive("seconds", 30, "commands are bounded: 1-30 seconds"), **_TITLE,
}, {"in": "where to run: a pod, NS/POD, web-*, external or node:NAME",
    "run": 'the command: a string for sh -c, or a list ["argv", "..."]'})
CHECK = Struct({"reach": REACH, "dns": DNS, "rule": RULE, "endpoints": ENDPOINTS,
                "command": COMMAND})
TASK = Struct({"task": _positive("a task number", 999), "title": STRING,
               "checks": ListOf(CHECK, 1, "add at least one check: - reach: {...}")},
              {"task": "the README's task number, e.g. task: 1",
               "title": "what the task is about, in one line",
               "checks": "the task's checks"})
TOP = Struct({"exercise": STRING, "lab": Scalar("string", (LAB_NAME,)),
              "tasks": ListOf(TASK, 1, "add at least one task")},
             {"exercise": "the exercise's folder name, e.g. exercise: 04-clusterip-iptables",
              "lab": "the lab's name (metadata.name of its kind: Lab), e.g. lab: ex04",
              "tasks": "the tasks, each with its checks"})


# ---------------------------------------------------------------- the loaded file


@dataclass(frozen=True)
class Reach:
    clients: tuple[str, ...]
    targets: tuple[str, ...]
    port: int | str | None  # str: a placeholder
    proto: str = "tcp"
    expect: str = "ok"
    answered_by: str = ""
    count: int = 1
    distinct: int = 0
    timeout: float = 2.0


@dataclass(frozen=True)
class Dns:
    client: str  # "": the lab's first pod outside kube-system
    name: str
    qtype: str
    expect: tuple[str, ...]  # answers, or ("NXDOMAIN",) / ("NODATA",)


@dataclass(frozen=True)
class Rule:
    node: str
    pattern: str
    present: bool = True
    mode: str = ""
    service: str = ""


@dataclass(frozen=True)
class Endpoints:
    service: str
    counts: tuple[tuple[str, int], ...]  # ("ready", 3), ...


@dataclass(frozen=True)
class Command:
    where: str
    run: str | tuple[str, ...]
    expect: str = ""
    absent: str = ""
    exit_code: int | None = 0
    timeout: float = 5.0


Spec = Reach | Dns | Rule | Endpoints | Command


@dataclass(frozen=True)
class Check:
    kind: str
    spec: Spec
    title: str  # as written, or a summary made from the spec
    pos: Pos


@dataclass(frozen=True)
class Task:
    number: int
    title: str
    checks: tuple[Check, ...]


@dataclass(frozen=True)
class Exercise:
    name: str  # `exercise:`
    lab: str  # `lab:`
    tasks: tuple[Task, ...]
    file: str
    warnings: tuple[Diagnostic, ...] = ()

    @property
    def folder(self) -> str:
        return os.path.dirname(self.file)


# ---------------------------------------------------------------- loading


def checks_file(path: str) -> str:
    """A folder → its checks.yaml; a file as it is."""
    return os.path.join(path, CHECKS_FILE) if os.path.isdir(path) else path


def load(path: str) -> Exercise:
    """The exercise a checks.yaml (or its folder) describes; one UserError with every
    problem otherwise."""
    file = checks_file(path)
    shown = os.path.relpath(file)
    if shown.startswith(".."):
        shown = os.path.abspath(file)
    try:
        with open(file, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise UserError(Diagnostic("error", None, "", f"cannot read {shown}: "
                                   f"{exc.strerror or exc}",
                                   "give an exercise folder holding checks.yaml")) from None
    return parse(text, shown)


def parse(text: str, file: str) -> Exercise:
    docs, diags = parse_yaml(text, file)
    report = Reporter()
    report.diagnostics += diags
    if not docs and not diags:
        report.error(Pos(file, 1, 1), "", "", "the file is empty",
                     "start with exercise:, lab: and tasks:")
    if len(docs) > 1:
        report.error(_pos(docs[1]), "", "", "checks.yaml holds one document, found "
                     f"{len(docs)}", "remove the '---' lines")
    exercise = _Builder(file, report).build(docs[0]) if docs else None
    errors = [d for d in report.diagnostics if d.severity == "error"]
    if errors or exercise is None:
        raise UserError([d if d.hint else d._replace(hint=FORMAT_HINT)
                         for d in report.sorted([file])])
    return exercise


def _pos(node: YNode) -> Pos:
    return node.pos


class _Builder:
    def __init__(self, file: str, report: Reporter):
        self.file = file
        self.report = report
        self.walker = Walker("checks", "", TOP, report)
        self.root: YNode | None = None

    def error(self, path: str, message: str, hint: str = "", pos: Pos | None = None) -> None:
        self.report.error(pos or self.where(path), "", path, message, hint)

    def where(self, path: str) -> Pos:
        return self.walker.where.get(path) or (self.root.pos if self.root else
                                               Pos(self.file, 1, 1))

    def build(self, root: YNode) -> Exercise | None:
        self.root = root
        data = self.walker.walk(root, TOP, "", root.pos)
        if not isinstance(data, dict) or "tasks" not in data:
            return None
        tasks: list[Task] = []
        seen: dict[int, str] = {}
        for t_index, task in enumerate(data["tasks"]):
            path = f"tasks[{t_index}]"
            if not isinstance(task, dict) or not {"task", "title", "checks"} <= task.keys():
                continue
            number = task["task"]
            if number in seen:
                self.error(f"{path}.task", f"task {number} is listed twice (first at "
                           f"{seen[number]})", "number the tasks as the README does, once each")
            seen.setdefault(number, str(self.where(f"{path}.task")))
            checks = [c for i, raw in enumerate(task["checks"])
                      if (c := self.check(f"{path}.checks[{i}]", raw)) is not None]
            tasks.append(Task(number, task["title"], tuple(checks)))
        if self.report.has_errors:
            return None
        exercise = Exercise(data["exercise"], data["lab"], tuple(tasks), self.file)
        folder = os.path.basename(os.path.dirname(os.path.abspath(self.file)))
        if folder != exercise.name:
            self.report.warning(self.where("exercise"), "", "exercise",
                                f'"{exercise.name}" is not the folder\'s name "{folder}"',
                                f"write exercise: {folder}")
            return Exercise(exercise.name, exercise.lab, exercise.tasks, self.file,
                            tuple(d for d in self.report.diagnostics
                                  if d.severity == "warning"))
        return exercise

    # ------------------------------------------------------------ one check

    def check(self, path: str, raw: object) -> Check | None:
        if not isinstance(raw, dict):
            return None
        pos = self.where(path)
        node = self.node_at(path)
        if not raw and isinstance(node, YMap) and node.entries:
            return None  # its unknown kind is reported already
        if len(raw) != 1:
            written = ", ".join(raw) or "none"
            self.error(path, f"a check has exactly one kind, found {written}",
                       f"start each check with its own '- ': one of {', '.join(KINDS)}",
                       pos)
            return None
        kind, body = next(iter(raw.items()))
        sub = f"{path}.{kind}"
        if not isinstance(body, dict):
            return None
        before = len(self.report.diagnostics)
        spec = getattr(self, kind)(sub, body)
        if spec is None or len(self.report.diagnostics) > before:
            return None
        return Check(kind, spec, body.get("title") or summary(spec), self.where(path))

    def reach(self, path: str, body: dict[str, object]) -> Reach | None:
        clients = self.names(f"{path}.from", clients=True)
        targets = self.names(f"{path}.to", clients=False)
        port = body.get("port")
        if isinstance(port, int) and not 1 <= port <= 65535:
            self.error(f"{path}.port", f"expected a port number in 1-65535, found {port}",
                       "port numbers are 1-65535")
        elif isinstance(port, str):
            self.placeholder_text(f"{path}.port", port, hint_empty=(
                'a port is a number, or a placeholder like "${service:default/web.nodePort}"'))
        for field in ("answeredBy",):
            if field in body:
                self.regex(f"{path}.{field}", str(body[field]))
        count, distinct = int(body.get("count", 1)), int(body.get("distinct", 0))
        if distinct > count:
            self.error(f"{path}.distinct", f"distinct: {distinct} pods cannot answer "
                       f"{count} connection(s)", f"add count: {max(distinct, 10)}")
        if clients is None or targets is None:
            return None
        return Reach(clients, targets, port, str(body.get("proto", "tcp")),
                     str(body.get("expect", "ok")), str(body.get("answeredBy", "")),
                     count, distinct, float(body.get("timeout", 2)))

    def dns(self, path: str, body: dict[str, object]) -> Dns | None:
        client = str(body.get("from", ""))
        if client:
            self.client(f"{path}.from", client)
        name = str(body.get("name", ""))
        self.placeholder_text(f"{path}.name", name)
        expect = self.dns_expect(f"{path}.expect")
        if expect is None:
            return None
        return Dns(client, name, str(body.get("type", "A")), expect)

    def rule(self, path: str, body: dict[str, object]) -> Rule | None:
        self.regex(f"{path}.pattern", str(body.get("pattern", "")))
        return Rule(str(body.get("node", "")), str(body.get("pattern", "")),
                    bool(body.get("present", True)), str(body.get("mode", "")),
                    str(body.get("service", "")))

    def endpoints(self, path: str, body: dict[str, object]) -> Endpoints | None:
        counts = tuple((k, int(v)) for k, v in body.items()  # type: ignore[call-overload]
                       if k in ("ready", "serving", "terminating"))
        if not counts:
            self.error(path, "no count to check", "add ready: N (or serving: N, "
                       "terminating: N)")
            return None
        return Endpoints(str(body.get("service", "")), counts)

    def command(self, path: str, body: dict[str, object]) -> Command | None:
        self.client(f"{path}.in", str(body.get("in", "")))
        run = self.run_field(f"{path}.run")
        for field in ("expect", "absent"):
            if field in body:
                self.regex(f"{path}.{field}", str(body[field]))
        code = body.get("exitCode")
        if code is None and not ({"expect", "absent"} & body.keys()):
            code = 0
        if run is None:
            return None
        return Command(str(body.get("in", "")), run, str(body.get("expect", "")),
                       str(body.get("absent", "")), code,  # type: ignore[arg-type]
                       float(body.get("timeout", 5)))  # type: ignore[arg-type]

    # ------------------------------------------------------------ fields

    def node_at(self, path: str) -> YNode | None:
        node = self.root
        for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
            if node is None:
                return None
            if part.startswith("["):
                index = int(part[1:-1])
                node = node.items[index] if isinstance(node, YSeq) and \
                    index < len(node.items) else None
            else:
                node = node.get(part) if isinstance(node, YMap) else None
        return node

    def strings(self, path: str, what: str) -> list[tuple[str, Pos, str]] | None:
        """A string or a list of strings, with each one's position and field path."""
        node = self.node_at(path)
        if node is None:
            return None
        items = node.items if isinstance(node, YSeq) else (node,)
        out = []
        for index, item in enumerate(items):
            sub = f"{path}[{index}]" if isinstance(node, YSeq) else path
            if not isinstance(item, YScalar) or not isinstance(item.value, str) or \
                    not item.value:
                self.error(sub, f"expected {what}, found {describe(item)}",
                           'write a name, or a list of them: ["a", "b"]', item.pos)
                continue
            out.append((item.value, item.pos, sub))
        if isinstance(node, YSeq) and not node.items:
            self.error(path, "expected at least one item, found an empty list",
                       "name at least one", node.pos)
        return out

    def names(self, path: str, clients: bool) -> tuple[str, ...] | None:
        what = "a client (pod, external or node:NAME)" if clients else "a target"
        items = self.strings(path, what)
        if items is None:
            return None
        for value, pos, sub in items:
            if clients:
                self.client(sub, value, pos)
            else:
                self.placeholder_text(sub, value, pos=pos)
        return tuple(v for v, _, _ in items)

    def client(self, path: str, value: str, pos: Pos | None = None) -> None:
        problem = client_problem(value)
        if problem:
            self.error(path, problem.message, problem.hint, pos)

    def placeholder_text(self, path: str, text: str, pos: Pos | None = None,
                         hint_empty: str = "") -> None:
        for problem in placeholders.problems(text):
            self.error(path, problem, f"placeholders look like {placeholders.EXAMPLE}", pos)
        if hint_empty and not placeholders.PLACEHOLDER.search(text):
            self.error(path, f'expected a port number, found string "{text}"', hint_empty,
                       pos)

    def regex(self, path: str, text: str) -> None:
        self.placeholder_text(path, text)
        try:
            re.compile(placeholders.PLACEHOLDER.sub("x", text))
        except re.error as exc:
            self.error(path, f"not a valid regular expression: {exc}",
                       "regexes are Python's (re.search); escape special characters "
                       "with a backslash, e.g. \\. \\( \\[ \\*")

    def dns_expect(self, path: str) -> tuple[str, ...] | None:
        node = self.node_at(path)
        if node is None:
            return None
        if isinstance(node, YScalar) and isinstance(node.value, str):
            if node.value in DNS_RCODES:
                return (node.value,)
            if node.value.upper() in DNS_RCODES:
                self.error(path, f'expected NXDOMAIN or NODATA, found "{node.value}"',
                           f"write it in capitals: {node.value.upper()}", node.pos)
                return None
            self.error(path, f'expected a list of answers, NXDOMAIN or NODATA, found '
                       f'"{node.value}"', f'write a list: ["{node.value}"]', node.pos)
            return None
        if isinstance(node, YSeq) and not node.items:
            self.error(path, "expected answers, found an empty list",
                       "write NODATA for a name with no records of this type", node.pos)
            return None
        items = self.strings(path, "an answer")
        if items is None:
            return None
        for value, pos, sub in items:
            self.placeholder_text(sub, value, pos)
        return tuple(v for v, _, _ in items)

    def run_field(self, path: str) -> str | tuple[str, ...] | None:
        node = self.node_at(path)
        if isinstance(node, YScalar) and isinstance(node.value, str) and node.value.strip():
            self.placeholder_text(path, node.value, node.pos)
            return node.value
        if isinstance(node, YSeq) and node.items and all(
                isinstance(i, YScalar) and i.value is not None and
                not isinstance(i.value, bool) for i in node.items):
            argv = tuple(str(i.value) for i in node.items)  # type: ignore[union-attr]
            for item in argv:
                self.placeholder_text(path, item)
            return argv
        if node is not None:
            self.error(path, f"expected a command, found {describe(node)}",
                       'write run: "cat /etc/resolv.conf" (sh -c) or run: ["ip", "route"]',
                       node.pos)
        return None


def client_problem(value: str) -> Problem | None:
    """Why `value` cannot name a client (a pod, external, node:NAME), or None."""
    if value == "external" or (value.startswith("node:") and len(value) > 5):
        return None
    if value.startswith("node:"):
        return Problem('"node:" names no node', "write node:NAME, e.g. node:node1")
    if "${" in value:
        return Problem(f'"{value}": clients are named, not given by placeholders',
                       "write the pod's name (web-* for a Deployment's pods)")
    namespace, _, name = value.rpartition("/")
    if value.count("/") > 1 or not name or "*" in name[:-1] or "*" in namespace:
        return Problem(f'"{value}" is not a pod reference',
                       "write NAME, NS/NAME or a prefix ending in '*' (web-*)")
    return None


def summary(spec: Spec) -> str:
    """A one-line description of a check, when it has no title."""
    if isinstance(spec, Reach):
        port = f":{spec.port}" if spec.port is not None else ""
        return (f"reach {', '.join(spec.clients)} → {', '.join(spec.targets)}{port}/"
                f"{spec.proto} {spec.expect}")
    if isinstance(spec, Dns):
        return f"dns {spec.name} {spec.qtype}" + (f" from {spec.client}" if spec.client else "")
    if isinstance(spec, Rule):
        return f"rule on {spec.node}: /{spec.pattern}/" + ("" if spec.present else " absent")
    if isinstance(spec, Endpoints):
        counts = ", ".join(f"{k} {v}" for k, v in spec.counts)
        return f"endpoints of {spec.service}: {counts}"
    run = spec.run if isinstance(spec.run, str) else " ".join(spec.run)
    return f"command in {spec.where}: {run}"
