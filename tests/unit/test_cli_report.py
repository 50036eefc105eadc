"""What up, down and apply print when done (labctl/cli/report.py): the -o json LabReport
(same keys for every command, goldens of its content) and the summary tables; the phase
lines and the progress bar (labctl/cli/progress.py); and every command's --help having
examples. Regenerate the goldens with UPDATE_GOLDEN=1 after checking the difference."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import pytest

from labctl.cli import report
from labctl.cli.commands import invoke
from labctl.cli.main import cli
from labctl.cli.output import timings_text
from labctl.cli.progress import BAR_MIN, PhaseProgress
from labctl.cluster.compile import compile_files
from labctl.cluster.state import ClusterState
from labctl.lab.progress import Timings
from tests.unit.goldens import check_golden

GOLDEN = Path(__file__).parent / "golden" / "report"

LAB = """\
apiVersion: labctl/v1
kind: Lab
metadata: {name: vo-report}
spec:
  nodes: [{name: node1}, {name: node2}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, ports: [{containerPort: 8080, name: http}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: node1
  containers: [{name: shell}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: http, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: front}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 80, targetPort: http, nodePort: 30081}]
"""

KEYS = ["apiVersion", "kind", "command", "lab", "proxyMode", "counts", "timings", "nodes",
        "pods", "services", "dns", "changes"]
UP_MS = {"compile": 38.04, "kernel": 30.0, "files": 2.5, "rules": 41.0, "agent": 91.2}


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> ClusterState:
    path = tmp_path_factory.mktemp("lab") / "lab.yaml"
    path.write_text(LAB)
    st, _ = compile_files([str(path)], addons=True)
    return st


# ------------------------------------------------------------------ -o json


def test_up_report_has_every_key_and_the_lab(state: ClusterState) -> None:
    doc = json.loads(report.to_json(report.lab_report(
        "up", "vo-report", state, report.as_ms({k: v / 1000 for k, v in UP_MS.items()}),
        adopted=False, agentPid=1234)))
    assert list(doc)[:len(KEYS)] == KEYS
    assert doc["apiVersion"] == "labctl/v1" and doc["kind"] == "LabReport"
    assert doc["counts"] == {"nodes": 2, "pods": 5, "services": 4}  # + 2 coredns pods
    assert list(doc["timings"]) == [*UP_MS, "total"]
    assert doc["timings"]["total"] == pytest.approx(sum(UP_MS.values()), abs=0.1)
    web = next(s for s in doc["services"] if s["name"] == "web")
    assert web["type"] == "NodePort" and web["ports"] == [
        {"name": "", "protocol": "TCP", "port": 80, "nodePort": 30080}]
    front = next(s for s in doc["services"] if s["name"] == "front")
    assert front["loadBalancerIP"].startswith("192.168.200.")
    dns = doc["dns"]
    assert dns["service"] == "kube-system/kube-dns" and dns["clusterIP"] == "10.96.0.10"
    assert dns["domain"] == "cluster.local"
    assert sorted(s["node"] for s in dns["servers"]) == ["node1", "node2"]
    assert {p["name"] for p in doc["pods"]} >= {"client"}
    assert doc["changes"] == [] and doc["adopted"] is False and doc["agentPid"] == 1234
    check_golden(GOLDEN / "up.json", report.to_json(doc) + "\n")


def test_down_report_has_the_same_keys_and_nothing_left() -> None:
    doc = report.lab_report("down", "vo-report", None, report.as_ms({"processes": 0.1}),
                            namespacesRemoved=13)
    assert list(doc)[:len(KEYS)] == KEYS
    assert doc["proxyMode"] is None and doc["dns"] is None
    assert doc["counts"] == {"nodes": 0, "pods": 0, "services": 0}
    assert doc["nodes"] == doc["pods"] == doc["services"] == doc["changes"] == []
    assert doc["namespacesRemoved"] == 13
    assert doc["timings"] == {"processes": 100.0, "total": 100.0}


def test_apply_report_lists_object_pod_and_proxy_mode_changes(state: ClusterState) -> None:
    changes = report.apply_changes(
        [("service/web", "configured"), ("deployment/api", "created")],
        {"created": ["default/api-abc-12345"], "terminating": ["default/web-x-y"]},
        ("iptables", "nftables"))
    assert changes == [
        {"object": "service/web", "action": "configured"},
        {"object": "deployment/api", "action": "created"},
        {"object": "pod/api-abc-12345", "namespace": "default", "action": "created"},
        {"object": "pod/web-x-y", "namespace": "default", "action": "terminating"},
        {"object": "proxyMode", "action": "switched", "from": "iptables", "to": "nftables"}]
    # the agent's timings (ms) keep their order, "total" last whatever its place
    doc = report.lab_report("apply", "vo-report", state,
                            {"load": 1.0, "total": 9.0, "compile": 2.0}, changes,
                            dryRun=True, commands=["ip netns add x"], synced={})
    assert list(doc)[:len(KEYS)] == KEYS
    assert list(doc["timings"]) == ["load", "compile", "total"]
    assert doc["changes"] == changes and doc["dryRun"] is True


# ------------------------------------------------------------------ for people


def test_summary_tables(state: ClusterState) -> None:
    text = report.summary(state, report.as_ms({k: v / 1000 for k, v in UP_MS.items()}))
    assert "NODE    INTERNAL-IP   POD-CIDR        PODS" in text
    assert "80:30080/TCP" in text and "53/UDP,53/TCP,9153/TCP" in text
    assert "kube-system/kube-dns 10.96.0.10, zone cluster.local, 2 pods (on " in text
    assert text.endswith("(total 203 ms)")
    check_golden(GOLDEN / "summary.txt", text + "\n")


def test_long_tables_are_cut_with_the_command_that_shows_them_all(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(LAB.replace("replicas: 2", "replicas: 30"))
    big, _ = compile_files([str(path)], addons=True)
    text = report.summary(big, {"total": 1.0})
    pod_rows = [line for line in text.splitlines() if line.startswith(("default ", "kube-"))
                and ("web-" in line or "client" in line or "coredns" in line)
                and "10.244." in line]
    assert len(pod_rows) == report.ROWS
    assert f"… {len(big.pods) - report.ROWS} more pods: labctl get pods -A -o wide" in text


def test_timings_text() -> None:
    assert timings_text({"compile": 38.4, "kernel": 30.0, "total": 68.4}) == \
        "compile 38 ms, kernel 30 ms (total 68 ms)"
    assert timings_text({"a": 1.0, "b": 2.0}) == "a 1 ms, b 2 ms (total 3 ms)"


# ------------------------------------------------------------------ progress


def test_phase_lines_carry_their_duration_and_the_work_counted() -> None:
    out = io.StringIO()
    progress = PhaseProgress(lines=True, bar=False, stream=out)
    timings = Timings(progress)
    timings["compile"] = 0.0412
    progress("namespaces", 13, 13)
    timings["kernel"] = 0.0509
    assert out.getvalue() == ("  compile         41.2 ms\n"
                              "  kernel          50.9 ms  (13 namespaces)\n")
    assert dict(timings) == {"compile": 0.0412, "kernel": 0.0509}


def test_a_bar_only_when_asked_and_only_for_long_phases() -> None:
    out = io.StringIO()
    progress = PhaseProgress(lines=False, bar=True, stream=out)
    progress("namespaces", 1, BAR_MIN - 1)  # too short for a bar
    assert out.getvalue() == ""
    progress("namespaces", 500, 1000)
    assert out.getvalue() == "\r  namespaces [###############...............] 500/1000"
    progress.phase_done("kernel", 1.0)
    assert out.getvalue().endswith("\r\033[K")  # the bar is wiped, no line printed
    quiet = io.StringIO()
    no_bar = PhaseProgress(lines=True, bar=False, stream=quiet)
    no_bar("namespaces", 500, 1000)
    no_bar.phase_done("kernel", 1.0)
    assert quiet.getvalue() == "  kernel        1000.0 ms  (1000 namespaces)\n"


def test_no_bar_when_stdout_is_not_a_terminal() -> None:
    # pytest captures stdout: not a terminal, so the default is no bar
    assert PhaseProgress().bar is False


# ------------------------------------------------------------------ --help


COMMANDS = [path for path, _ in cli.walk("labctl")]


def test_every_command_loads() -> None:
    for name in cli.names():
        assert cli.get(name) is not None, f"labctl {name} does not load"


@pytest.mark.parametrize("path", COMMANDS)
def test_every_help_has_examples(path: str) -> None:
    res = invoke(cli, [*path.split()[1:], "--help"])
    assert res.exit_code == 0, res.output
    assert "Example" in res.stdout, f"`{path} --help` shows no example"
    assert res.stdout.startswith(f"usage: {path}")


def test_json_and_quiet_together_is_a_usage_error() -> None:
    res = invoke(cli, ["down", "vo-none", "-o", "json", "-q"])
    assert res.exit_code == 2
    assert "-o json cannot be combined with --quiet" in res.output
    res = invoke(cli, ["up", "--dry-run", "-o", "json", "."])
    assert res.exit_code == 2 and "--dry-run" in res.output


def test_the_module_doc_lists_the_keys() -> None:
    doc = textwrap.dedent(report.__doc__ or "")
    for key in KEYS:
        assert key in doc
