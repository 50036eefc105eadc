"""up / down / clean: rollback, crashes, idempotence, isolation, and an untouched host."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from labctl import names
from labctl.net import inventory
from labctl.testing import host
from labctl.testing.runner import labctl, labctl_argv, leftovers, netns_exec, processes_in
from tests.integration.conftest import write_lab
from tests.integration.manifests import deployment, join, lab, pod


def lab_yaml(name: str, pods: int = 2, prefix: str = "web", command: bool = False) -> str:
    docs = [lab(name, nodes=3), deployment(prefix, pods)]
    if command:
        docs.append(pod("sleeper", command='["sleep", "300"]'))
    return join(*docs)


def pods_of(lab: str) -> list[dict]:
    """The lab's own pods (default namespace; kube-system holds cluster DNS)."""
    return json.loads(labctl("get", "pods", "-o", "json", "--lab", lab).stdout)["items"]


def assert_gone(lab: str) -> None:
    assert leftovers([lab]) == {}, f"{lab} left objects behind"


def test_up_and_down_leave_the_host_exactly_as_it_was(tmp_path: Path) -> None:
    path = write_lab(tmp_path, "it-host", lab_yaml("it-host", 4))
    before = host.snapshot()
    labctl("up", str(path), "-q")
    during = host.snapshot()
    labctl("down", "it-host")
    after = host.snapshot()
    assert host.diff(before, during) == []
    assert host.diff(before, after) == []
    assert_gone("it-host")


def test_two_labs_with_the_same_cidrs_are_isolated(tmp_path: Path) -> None:
    one = write_lab(tmp_path, "it-one", lab_yaml("it-one", 3, prefix="alpha"))
    two = write_lab(tmp_path, "it-two", lab_yaml("it-two", 3, prefix="beta"))
    labctl("up", str(one), "-q")
    try:
        labctl("up", str(two), "-q")
        try:
            a, b = pods_of("it-one"), pods_of("it-two")
            assert {p["status"]["podIP"] for p in a} == {p["status"]["podIP"] for p in b}
            for pod in a:  # every address answers with lab one's own pod
                ip = pod["status"]["podIP"]
                proc = netns_exec(f"lc.it-one.pod.default.{a[0]['metadata']['name']}",
                                  ["curl", "-sS", "-m", "3", f"http://{ip}:8080/"])
                assert "pod=alpha-" in proc.stdout, proc.stdout + proc.stderr
            status = labctl("status").stdout
            assert "it-one" in status and "it-two" in status
            assert labctl("get", "pods", check=False).returncode == 1  # which lab? say so
        finally:
            labctl("down", "it-two")
        assert "it-one" in inventory.lab_namespaces()  # the other lab is untouched
    finally:
        labctl("down", "it-one")
    assert_gone("it-one")
    assert_gone("it-two")


def test_down_is_idempotent_and_up_twice_is_refused(tmp_path: Path) -> None:
    path = write_lab(tmp_path, "it-twice", lab_yaml("it-twice"))
    labctl("up", str(path), "-q")
    again = labctl("up", str(path), check=False)
    assert again.returncode == 1 and "already up" in again.stderr
    assert len(pods_of("it-twice")) == 2  # the first lab still stands
    labctl("down", "it-twice")
    second = labctl("down", "it-twice")
    assert "0 namespaces" in second.stdout
    assert_gone("it-twice")


def test_bad_input_exits_2_and_creates_nothing(tmp_path: Path) -> None:
    path = write_lab(tmp_path, "it-bad", lab_yaml("it-bad").replace("8080", "80800"))
    before = inventory.lab_namespaces()
    proc = labctl("up", str(path), check=False)
    assert proc.returncode == 2
    assert "it-bad.yaml:" in proc.stderr and "containerPort" in proc.stderr
    assert inventory.lab_namespaces() == before
    assert not os.path.exists(names.state_dir("it-bad"))


def _wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def _namespaces_exist(lab: str) -> bool:
    from labctl.net import netns

    return any(n.startswith(f"lc.{lab}.") for n in netns.list_names())


@pytest.mark.parametrize("when", ["namespaces", "agent"])
def test_ctrl_c_during_up_undoes_everything(tmp_path: Path, when: str) -> None:
    lab = f"it-int-{when}"
    path = write_lab(tmp_path, lab, lab_yaml(lab, 150, command=True))
    proc = subprocess.Popen(labctl_argv("up", str(path), "-q"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if when == "namespaces":
        assert _wait_for(lambda: _namespaces_exist(lab))
    else:
        workloads = os.path.join(names.state_dir(lab), "workloads.json")
        assert _wait_for(lambda: os.path.exists(workloads))
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, "up finished before the interrupt; make the lab larger"
    assert "interrupted" in err
    assert_gone(lab)


@pytest.mark.parametrize("delay", [0.0, "namespaces", "agent"])
def test_clean_after_kill_9_of_up_leaves_nothing(tmp_path: Path, delay: object) -> None:
    lab = f"it-kill-{delay}".replace(".", "")
    path = write_lab(tmp_path, lab, lab_yaml(lab, 150, command=True))
    proc = subprocess.Popen(labctl_argv("up", str(path), "-q"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    if delay == "namespaces":
        _wait_for(lambda: _namespaces_exist(lab))
    elif delay == "agent":
        _wait_for(lambda: os.path.exists(os.path.join(names.state_dir(lab), "agent.pid")))
    proc.kill()
    proc.wait(timeout=10)
    inodes = inventory.namespace_inodes(inventory.lab_namespaces().get(lab, []))
    status = labctl("status").stdout
    if _namespaces_exist(lab):
        assert lab in status
    labctl("clean")
    assert_gone(lab)
    assert processes_in(inodes) == []


def test_down_with_the_agent_killed_still_ends_everything(tmp_path: Path) -> None:
    path = write_lab(tmp_path, "it-dead", lab_yaml("it-dead", 2, command=True))
    labctl("up", str(path), "-q")
    owned = inventory.lab_namespaces()["it-dead"]
    inodes = inventory.namespace_inodes(owned)
    sleepers = processes_in(inodes)
    assert sleepers, "the sleeper pod's process should run inside the lab"
    with open(os.path.join(names.state_dir("it-dead"), "agent.pid")) as f:
        os.kill(int(f.read().split()[0]), signal.SIGKILL)
    time.sleep(0.2)
    assert "AGENT-DEAD" in labctl("status").stdout
    pods = labctl("get", "pods", "--lab", "it-dead").stdout.splitlines()[1:]
    assert pods and all(row.split()[2] == "Unknown" for row in pods)
    labctl("down", "it-dead")
    assert_gone("it-dead")
    assert processes_in(inodes) == []


def test_clean_judges_a_lab_again_once_it_holds_its_lock(tmp_path: Path) -> None:
    """`clean` found the lab's agent dead while a command held the lab's lock; by the
    time clean gets the lock the agent runs again: the healthy lab stays."""
    from labctl.agent import control
    from labctl.lab import store

    name = "it-clean-race"
    path = write_lab(tmp_path, name, lab_yaml(name, 1))
    labctl("up", str(path), "-q")
    try:
        sdir = names.state_dir(name)
        with store.locked(name):  # a command busy with the lab, e.g. `agent restart`
            agent = control.agent_pid(sdir)
            assert agent is not None
            os.kill(agent, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while control.agent_pid(sdir) is not None and time.monotonic() < deadline:
                time.sleep(0.05)
            cleaner = subprocess.Popen(labctl_argv("clean"), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
            time.sleep(1.5)  # it judged the lab (AGENT-DEAD) and waits for the lock
            assert cleaner.poll() is None, cleaner.communicate()
            control.start_agent(sdir)  # the busy command brings the agent back
        out, err = cleaner.communicate(timeout=60)
        assert cleaner.returncode == 0, err
        assert name not in out, out
        assert inventory.lab_namespaces().get(name), "clean took the healthy lab down"
        assert " UP " in next(ln for ln in labctl("status").stdout.splitlines()
                              if ln.startswith(name + " "))
    finally:
        labctl("down", name)
    assert_gone(name)


def test_a_kernel_refusal_halfway_undoes_the_namespaces_already_made() -> None:
    """The executor on a plan whose last step the kernel refuses (a real failure)."""
    from dataclasses import replace

    from labctl.cluster.compile import compile_state
    from labctl.model.objects import Lab, NodeSpec, Topology
    from labctl.net.apply import ApplyError, apply_plan
    from labctl.plan.model import Address
    from labctl.plan.render import render

    state = compile_state(Topology(lab=Lab("it-refused", nodes=(NodeSpec("n1"),))))
    plan = render(state)
    bad = Address(plan.namespaces[1].name, "eth9", "10.9.9.9/24")  # no such interface
    with pytest.raises(ApplyError) as exc:
        apply_plan(replace(plan, addresses=(*plan.addresses, bad)))
    assert "eth9" in str(exc.value) or "10.9.9.9" in str(exc.value)
    assert_gone("it-refused")
