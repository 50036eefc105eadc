"""checks.yaml loading: every error with file:line:column, its field and a hint, all of
them at once; placeholders; the exercises' own check files; the reach matrix."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl.cluster.compile import compile_files
from labctl.errors import UserError
from labctl.exercise import catalog, placeholders, report, spec
from labctl.exercise.run import Cell

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "topologies" / "quickstart"

HEAD = """exercise: quickstart
lab: ex99
tasks:
  - task: 1
    title: one
    checks:
"""
FIRST_CHECK_LINE = HEAD.count("\n") + 1


def errors_of(checks: str, head: str = HEAD) -> list[tuple[int, int, str, str, str]]:
    """(line, col, field, message, hint) of each error for the given check lines."""
    with pytest.raises(UserError) as raised:
        spec.parse(head + checks, "checks.yaml")
    out = []
    for d in raised.value.diagnostics:
        assert d.pos is not None and d.pos.file == "checks.yaml", d.format()
        out.append((d.pos.line, d.pos.col, d.field, d.message, d.hint))
    return out


# (check line, line offset, column, field, message part, hint part)
CASES = [
    ('      - reach: {from: client, to: web, expect: okay}',
     0, 'okay', "tasks[0].checks[0].reach.expect", 'found "okay"', 'did you mean "ok"?'),
    ('      - reach: {from: client, to: web, port: 0}',
     0, '0}', "tasks[0].checks[0].reach.port", "1-65535", "port numbers are 1-65535"),
    ('      - reach: {from: client, to: web, port: "eighty"}',
     0, '"eighty"', "tasks[0].checks[0].reach.port", 'found string "eighty"', "placeholder"),
    ('      - reach: {from: client, to: web, proto: TCP}',
     0, 'TCP', "tasks[0].checks[0].reach.proto", 'found "TCP"', "case-sensitive"),
    ('      - reach: {from: [client, "a/b/c"], to: web}',
     0, '"a/b/c"', "tasks[0].checks[0].reach.from[1]", '"a/b/c" is not a pod reference', "web-*"),
    ('      - reach: {from: "node:", to: web}',
     0, '"node:"', "tasks[0].checks[0].reach.from", '"node:" names no node', "node:node1"),
    ('      - reach: {from: client, to: [web, 5]}',
     0, '5]', "tasks[0].checks[0].reach.to[1]", "found integer 5", "a list of them"),
    ('      - reach: {from: client}',
     0, 'reach', "tasks[0].checks[0].reach", 'missing required field "to"', "target"),
    ('      - reach: {from: client, to: web, count: 2, distinct: 3}',
     0, '3}', "tasks[0].checks[0].reach.distinct", "cannot answer 2", "count"),
    ('      - reach: {from: client, to: web, count: 1000}',
     0, '1000', "tasks[0].checks[0].reach.count", "found 1000", "at most 200"),
    ('      - reach: {from: client, to: web, answeredBy: "web-(["}',
     0, '"web-', "tasks[0].checks[0].reach.answeredBy", "not a valid regular expression", "escape"),
    ('      - reach: {from: client, to: web, wait: 3}',
     0, 'wait', "tasks[0].checks[0].reach.wait", "unknown field", "valid fields here"),
    ('      - reachh: {from: client, to: web}',
     0, 'reachh', "tasks[0].checks[0].reachh", "unknown field", 'did you mean "reach"?'),
    ('      - reach: {from: client, to: web}\n        dns: {name: a, expect: NODATA}',
     0, 'reach', "tasks[0].checks[0]", "exactly one kind, found reach, dns", "its own '- '"),
    ('      - dns: {name: x.default.svc.cluster.local, expect: nxdomain}',
     0, 'nxdomain', "tasks[0].checks[0].dns.expect", 'found "nxdomain"', "capitals: NXDOMAIN"),
    ('      - dns: {name: x, expect: 10.96.0.1}',
     0, '10.96', "tasks[0].checks[0].dns.expect", 'found "10.96.0.1"', 'a list: ["10.96.0.1"]'),
    ('      - dns: {name: x, expect: []}',
     0, '[]}', "tasks[0].checks[0].dns.expect", "empty list", "NODATA"),
    ('      - dns: {name: x, type: MX, expect: NODATA}',
     0, 'MX', "tasks[0].checks[0].dns.type", 'found "MX"', ""),
    ('      - dns: {name: x}',
     0, 'dns', "tasks[0].checks[0].dns", 'missing required field "expect"', "NXDOMAIN"),
    ('      - dns: {name: x, expect: ["${pod:default/web-*.addr}"]}',
     0, '"${pod', "tasks[0].checks[0].dns.expect[0]", "pod has no field 'addr'",
     "${pod:default/web-*.ip}"),
    ('      - dns: {name: x, expect: ["${svc:web.clusterIP}"]}',
     0, '"${svc', "tasks[0].checks[0].dns.expect[0]", "must start with service:, pod:, node:", ""),
    ('      - dns: {name: "${service:web.clusterIP", expect: NODATA}',
     0, '"${service:web.c', "tasks[0].checks[0].dns.name", "never closed", ""),
    ('      - dns: {name: "${service:web*.clusterIP}", expect: NODATA}',
     0, '"${service:web*', "tasks[0].checks[0].dns.name", "only a pod name may end in '*'", ""),
    ('      - rule: {node: node1, pattern: "KUBE-(SVC"}',
     0, '"KUBE', "tasks[0].checks[0].rule.pattern", "missing )", "backslash"),
    ('      - rule: {node: node1, pattern: x, present: "no"}',
     0, '"no"', "tasks[0].checks[0].rule.present", 'expected true or false', ""),
    ('      - rule: {node: node1, pattern: x, mode: ipvsadm}',
     0, 'ipvsadm', "tasks[0].checks[0].rule.mode", 'found "ipvsadm"', 'did you mean "ipvs"?'),
    ('      - endpoints: {service: web}',
     0, 'endpoints', "tasks[0].checks[0].endpoints", "no count to check", "ready: N"),
    ('      - endpoints: {service: web, ready: -1}',
     0, '-1', "tasks[0].checks[0].endpoints.ready", "found -1", ""),
    ('      - command: {in: client, run: 5}',
     0, '5}', "tasks[0].checks[0].command.run", "found integer 5", "sh -c"),
    ('      - command: {in: client, run: "true", exitCode: 300}',
     0, '300', "tasks[0].checks[0].command.exitCode", "found 300", ""),
    ('      - command: {in: client, run: "true", timeout: 99}',
     0, '99', "tasks[0].checks[0].command.timeout", "found 99", "1-30 seconds"),
    ('      - command: {in: "${pod:web-*.ip}", run: "true"}',
     0, '"${pod', "tasks[0].checks[0].command.in", "not given by placeholders", "web-*"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[3].rsplit(".", 1)[-1] + f"-{i}"
                                             for i, c in enumerate(CASES)])
def test_each_error_points_at_its_field(case: tuple[str, int, str, str, str, str]) -> None:
    text, line_offset, marker, field, message, hint = case
    found = errors_of(text + "\n")
    assert len(found) == 1, found
    line, column, got_field, got_message, got_hint = found[0]
    col = text.splitlines()[line_offset].index(marker) + 1
    assert (line, column) == (FIRST_CHECK_LINE + line_offset, col), found[0]
    assert got_field == field
    assert message in got_message
    assert hint in got_hint
    assert got_hint, "every error has a hint"


def test_every_error_is_reported_at_once() -> None:
    checks = ('      - reach: {from: client, to: web, expect: okay}\n'
              '      - dns: {name: x, expect: nxdomain}\n'
              '      - rule: {node: node1}\n')
    found = errors_of(checks)
    assert [f[0] for f in found] == [FIRST_CHECK_LINE, FIRST_CHECK_LINE + 1,
                                     FIRST_CHECK_LINE + 2]


def test_top_level_errors() -> None:
    found = errors_of("", head="exercise: x\nlab: Bad_Lab\ntaks: []\n")
    assert [(f[0], f[1], f[2]) for f in found] == [(1, 1, ""), (2, 6, "lab"), (3, 1, "taks")]
    assert 'missing required field "tasks"' in found[0][3]
    assert 'did you mean "tasks"?' in found[2][4]


def test_duplicate_task_numbers() -> None:
    checks = ("      - endpoints: {service: web, ready: 1}\n"
              "  - task: 1\n    title: again\n    checks:\n"
              "      - endpoints: {service: web, ready: 1}\n")
    (found,) = errors_of(checks)
    assert found[:3] == (FIRST_CHECK_LINE + 1, 11, "tasks[1].task")
    assert "listed twice (first at checks.yaml:4:11)" in found[3]


def test_yaml_syntax_errors_come_from_the_model_loader() -> None:
    (found,) = errors_of("      - reach: {from: client, to: [web}\n")
    assert found[0] == FIRST_CHECK_LINE and "invalid YAML" in found[3]


def test_a_missing_file_is_a_user_error() -> None:
    with pytest.raises(UserError) as raised:
        spec.load("/nonexistent/exercise")
    assert "cannot read" in raised.value.format()


def test_a_valid_file_loads_with_defaults() -> None:
    exercise = spec.parse(HEAD + (
        "      - reach: {from: [client, external, node:node1], to: [web, 10.0.0.1], "
        "port: 80}\n"
        "      - dns: {name: web.default.svc.cluster.local, expect: NXDOMAIN}\n"
        "      - rule: {node: node1, pattern: KUBE-SVC, title: my own title}\n"
        "      - command: {in: client, run: [ip, route], expect: default}\n"
        "      - command: {in: client, run: 'false', exitCode: 1}\n"), "checks.yaml")
    reach, dns, rule, cmd, cmd2 = exercise.tasks[0].checks
    assert reach.spec == spec.Reach(("client", "external", "node:node1"), ("web", "10.0.0.1"),
                                    80)
    assert dns.spec == spec.Dns("", "web.default.svc.cluster.local", "A", ("NXDOMAIN",))
    assert rule.title == "my own title" and rule.spec.present  # type: ignore[union-attr]
    assert cmd.spec.run == ("ip", "route") and cmd.spec.exit_code is None  # type: ignore
    assert cmd2.spec.exit_code == 1  # type: ignore[union-attr]
    assert str(reach.pos) == f"checks.yaml:{FIRST_CHECK_LINE}:9"
    assert exercise.lab == "ex99"


def test_a_folder_name_differing_from_exercise_is_a_warning(tmp_path: Path) -> None:
    folder = tmp_path / "07-something"
    folder.mkdir()
    (folder / "checks.yaml").write_text(HEAD + "      - endpoints: {service: w, ready: 1}\n")
    exercise = spec.load(str(folder))
    (warning,) = exercise.warnings
    assert warning.severity == "warning" and "write exercise: 07-something" in warning.hint


# ---------------------------------------------------------------- placeholders


def test_placeholders_fill_from_a_state() -> None:
    state, _ = compile_files([str(QUICKSTART / "lab.yaml")], addons=True)
    web = next(s for s in state.services if s.key == "default/web")
    web_pods = sorted((p for p in state.pods if p.name.startswith("web-")),
                      key=lambda p: p.name)
    assert placeholders.fill(state, "${service:default/web.clusterIP}:80") == \
        f"{web.cluster_ip}:80"
    assert placeholders.fill(state, "${service:web.clusterIP}", regex=True) == \
        web.cluster_ip.replace(".", r"\.")
    assert placeholders.fill_list(state, ("${pod:default/web-*.ip}", "x")) == \
        [p.ip for p in web_pods] + ["x"]
    assert placeholders.fill(state, "${node:node2.ip}") == state.node("node2").ip
    with pytest.raises(placeholders.Unresolved, match="no nodePort"):
        placeholders.fill(state, "${service:default/web.nodePort}")
    with pytest.raises(placeholders.Unresolved, match="no Service default/gone"):
        placeholders.fill(state, "${service:gone.clusterIP}")
    assert placeholders.find_pod(state, "web-*") == web_pods[0]
    assert placeholders.find_pod(state, "default/client").name == "client"


# ---------------------------------------------------------------- exercises and output


def test_every_exercise_check_file_loads() -> None:
    found = [e for e in catalog.entries(str(ROOT / "topologies")) if e.has_checks]
    assert any(e.name == "quickstart" for e in found)
    for entry in found:
        exercise = spec.load(entry.folder)
        assert exercise.name == entry.name, entry.folder


def test_catalog_finds_by_name_and_prefix() -> None:
    root = str(ROOT / "topologies")
    assert catalog.find("quickstart", root) == str(QUICKSTART)
    assert catalog.find("quick", root) == str(QUICKSTART)
    assert catalog.find(str(QUICKSTART)) == str(QUICKSTART)
    with pytest.raises(UserError, match="no exercise"):
        catalog.find("no-such-exercise", root)


def test_the_matrix_has_clients_as_rows_and_targets_as_columns() -> None:
    cells = (Cell("client", "web", "", "ok", "ok", True),
             Cell("client", "db", "", "ok", "refused", False),
             Cell("node:node1", "web", "", "ok", "ok", True))
    rows = report.matrix(cells)
    assert rows[0].split() == ["from", "\\", "to", "web", "db"]
    assert rows[1].split() == ["client", "ok/ok", "ok/refused", "!"]
    assert rows[2].split() == ["node:node1", "ok/ok", "-"]


def test_dns_replies_keep_srv_and_soa_records() -> None:
    """`labctl check`'s dns checks read SRV answers back (parse_records used to drop them)."""
    from labctl.dns.records import IN, RR, SOA, SRV, Answer
    from labctl.dns.wire import encode_reply, parse_records, question_bytes

    srv = RR("_pg._tcp.db.default.svc.cluster.local.", SRV, 5,
             (0, 33, 5432, "db-0.db.default.svc.cluster.local."))
    soa = RR("cluster.local.", SOA, 5, ("ns.dns.cluster.local.", "hostmaster.cluster.local.",
                                        7, 7200, 1800, 86400, 5))
    question = question_bytes("_pg._tcp.db.default.svc.cluster.local.", SRV, IN)
    wire = encode_reply(1, 0x0100, question, None, Answer(0, (srv, soa)), None)
    assert parse_records(wire).answer == (srv, soa)


def test_a_reach_cell_is_judged_on_every_connection() -> None:
    from labctl.exercise.probes import Outcome
    from labctl.exercise.run import judge

    reach = spec.Reach(("client",), ("web",), 80, count=4, distinct=2, answered_by="^web-")
    ok = [Outcome("ok", "web-a"), Outcome("ok", "web-b"), Outcome("ok", "web-a"),
          Outcome("ok", "web-b")]
    cell = judge(reach, "client", "web", "10.96.0.20:80/tcp", ok, "")
    assert cell.passed and cell.observed == "ok ×4" and cell.pods == ("web-a", "web-b") * 2
    one_pod = [Outcome("ok", "web-a")] * 4
    assert "1 distinct pod(s) answered" in judge(reach, "c", "w", "", one_pod, "").detail
    wrong = ok[:3] + [Outcome("ok", "db-0")]
    cell = judge(reach, "c", "w", "", wrong, "")
    assert not cell.passed and "answered by db-0" in cell.detail
    refused = ok[:3] + [Outcome("refused", detail="connect: connection refused")]
    cell = judge(reach, "c", "w", "", refused, "")
    assert not cell.passed and cell.observed == "ok ×3, refused ×1"
    # the runner stops at the first connection that is not as expected: said so
    cut = judge(reach, "c", "w", "", ok[:1] + [Outcome("refused")], "")
    assert not cut.passed and "stopped after connection 2 of 4: it was not ok" in cut.detail
    timeout = spec.Reach(("client",), ("web",), 81, expect="timeout")
    assert judge(timeout, "c", "w", "", [Outcome("timeout")], "").passed
    assert not judge(timeout, "c", "w", "", [Outcome("refused")], "").passed
