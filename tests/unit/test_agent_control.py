"""Control-side behaviour that needs no agent: failing fast, idempotence, /proc checks."""

from __future__ import annotations

import os
import socket

import pytest

from labctl.agent import control, procfs
from labctl.errors import LabctlError


def test_request_without_socket_fails_fast(tmp_path):
    with pytest.raises(LabctlError, match="no agent is running"):
        control.request(str(tmp_path), {"op": "status"})


def test_request_to_dead_socket_fails_fast(tmp_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(tmp_path / "agent.sock"))
    s.close()  # the file stays, nobody listens: what a SIGKILLed agent leaves
    with pytest.raises(LabctlError, match="is not running"):  # refused, not waited out
        control.request(str(tmp_path), {"op": "status"})


def test_request_to_a_silent_agent_times_out(tmp_path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(tmp_path / "agent.sock"))
        s.listen()
        with pytest.raises(LabctlError, match="did not answer within 0.2s"):
            control.request(str(tmp_path), {"op": "status"}, timeout=0.2)


def test_agent_pid_checks_the_command_line(tmp_path):
    assert control.agent_pid(str(tmp_path)) is None
    (tmp_path / "agent.pid").write_text(f"{os.getpid()}\n")  # alive, but not an agent
    assert control.agent_pid(str(tmp_path)) is None
    (tmp_path / "agent.pid").write_text("garbage")
    assert control.agent_pid(str(tmp_path)) is None


def test_stop_agent_without_agent_is_a_no_op(tmp_path):
    (tmp_path / "agent.pid").write_text(f"{os.getpid()}\n")
    (tmp_path / "pids").write_text(f"{os.getpid()}\n1\n")  # not in any lab namespace
    assert control.stop_agent(str(tmp_path), netns_names=[]) is False
    assert control.stop_agent(str(tmp_path)) is False
    assert not (tmp_path / "agent.pid").exists()


def test_kill_lab_processes_with_no_namespaces_kills_nothing():
    assert control.kill_lab_processes([]) == []
    assert control.kill_lab_processes(["lc-no-such-namespace-for-sure"]) == []


def test_start_agent_needs_a_state_dir(tmp_path):
    with pytest.raises(LabctlError, match="does not exist"):
        control.start_agent(str(tmp_path / "nope"))


def test_procfs_about_ourselves():
    me = os.getpid()
    assert procfs.alive(me) and procfs.state(me) in ("R", "S")
    assert procfs.cmdline(me)
    assert procfs.net_ns(me) is not None
    assert procfs.state(2**22 + 1) is None and not procfs.alive(2**22 + 1)


def test_pid_registry(tmp_path):
    reg = procfs.PidRegistry(str(tmp_path / "pids"))
    reg.add(10)
    reg.add(5)
    assert procfs.read_pids(reg.path) == [5, 10]
    reg.discard(10)
    reg.discard(99)
    assert procfs.read_pids(reg.path) == [5]
    reg.remove()
    assert procfs.read_pids(reg.path) == []
