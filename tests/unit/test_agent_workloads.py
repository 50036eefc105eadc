"""workloads.json parsing and the choice between a real process and the echo server."""

from __future__ import annotations

import json

import pytest

from labctl.agent import workloads
from labctl.agent.paths import StatePaths, log_path
from labctl.errors import LabctlError

SAMPLE = {"lab": "demo", "pods": [
    {"namespace": "default", "name": "web-abc", "node": "node1", "ip": "10.244.1.2",
     "netns": "lc.demo.pod.default.web-abc",
     "containers": [{"name": "web", "command": [], "args": [],
                     "env": [{"name": "A", "value": "1"},
                             {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "x"}}},
                             {"name": "C", "value": ""}],
                     "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                               {"containerPort": 53, "protocol": "udp"}]}]}]}


def test_parse_sample():
    w = workloads.parse(SAMPLE)
    assert w.lab == "demo"
    (pod,) = w.pods
    assert pod.key == "default/web-abc" and pod.restart_policy == "Always"
    (c,) = pod.containers
    assert c.env == (("A", "1"), ("C", ""))  # valueFrom is not ours to resolve
    assert [str(p) for p in c.ports] == ["8080/TCP", "53/UDP"]
    assert c.program is None
    assert w.netns_names == ["lc.demo.pod.default.web-abc"]


def test_load_from_file(tmp_path):
    path = tmp_path / "workloads.json"
    path.write_text(json.dumps(SAMPLE))
    assert workloads.load(str(path)).pods[0].name == "web-abc"
    with pytest.raises(LabctlError, match="not found"):
        workloads.load(str(tmp_path / "missing.json"))
    path.write_text("{not json")
    with pytest.raises(LabctlError, match="cannot read"):
        workloads.load(str(path))


def test_errors_are_collected_with_their_path():
    bad = {"lab": "demo", "pods": [
        {"namespace": "default", "name": "p", "netns": "x", "restartPolicy": "Sometimes",
         "containers": [{"name": "c", "ports": [{"port": 0}, {"port": 80, "protocol": "ICMP"}],
                         "command": "not-a-list"}]},
        {"name": "q"}]}
    with pytest.raises(LabctlError) as e:
        workloads.parse(bad)
    text = str(e.value)
    for where in ("pods[0].restartPolicy", "pods[0].containers[0].ports[0].port",
                  "pods[0].containers[0].ports[1].protocol",
                  "pods[0].containers[0].command", "pods[1].namespace", "pods[1].netns"):
        assert where in text


def test_program_is_command_or_first_arg():
    c = workloads.Container("c", command=("python3", "-m"), args=("x",))
    assert c.program == "python3" and c.argv == ("python3", "-m", "x")
    assert workloads.Container("c", args=("sh", "-c", "true")).program == "sh"
    assert workloads.Container("c").program is None


def test_resolve_program_on_path(tmp_path):
    exe = tmp_path / "tool"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    plain = tmp_path / "data"
    plain.write_text("")
    assert workloads.resolve_program("tool", str(tmp_path)) == str(exe)
    assert workloads.resolve_program("tool", "/nonexistent") is None
    assert workloads.resolve_program(str(exe)) == str(exe)
    assert workloads.resolve_program(str(plain)) is None
    assert workloads.resolve_program("no-such-program-labctl") is None
    assert workloads.resolve_program(None) is None


def test_state_paths():
    p = StatePaths("/run/labctl/demo", "agent")
    assert p.pidfile == "/run/labctl/demo/agent.pid"
    assert p.socket == "/run/labctl/demo/agent.sock"
    h = StatePaths("/run/labctl/demo", "podhost")
    assert h.pidfile == "/run/labctl/demo/podhost.pid"
    assert h.socket == "/run/labctl/demo/podhost.sock"
    assert h.logfile == "/run/labctl/demo/podhost.log"
    assert p.pids == h.pids == "/run/labctl/demo/pids"
    assert p.events == "/run/labctl/demo/events.log"
    assert log_path("/run/labctl/demo", "default", "web-abc", "web") == \
        "/run/labctl/demo/logs/default_web-abc_web.log"
