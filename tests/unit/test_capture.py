"""`labctl capture` without root: target parsing, the tcpdump command line, how a
capture is stopped, and the refusals (the real captures: tests/integration/test_capture.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from labctl import names
from labctl.cli.capture import describe, split_target
from labctl.cli.commands import invoke
from labctl.cli.main import cli
from labctl.cluster.compile import compile_files
from labctl.cluster.state import ClusterState
from labctl.errors import LabctlError, NotFoundError
from labctl.lab import store
from labctl.net import capture

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ClusterState:
    """A fake state root holding lab `quick` (the quickstart as compiled)."""
    monkeypatch.setattr(names, "STATE_ROOT", str(tmp_path / "run"))
    state, _ = compile_files([str(ROOT / "topologies" / "quickstart")], lab_name="quick",
                             addons=True)
    (tmp_path / "run" / "quick").mkdir(parents=True)
    store.save(store.LabRecord(name="quick", files=[], status="up"))
    store.save_state(store.state_dir("quick"), state)
    return state


def test_targets_take_an_optional_interface() -> None:
    assert split_target("client") == ("client", "eth0")
    assert split_target("node1:cni0") == ("node1", "cni0")
    assert split_target("kube-system/coredns-x:any") == ("kube-system/coredns-x", "any")
    for bad in ("node1:", ":eth0"):
        with pytest.raises(LabctlError, match="bad capture target"):
            split_target(bad)


def test_targets_resolve_as_exec_does(quick: ClusterState) -> None:
    assert describe(quick, "node2", "default") == "node node2"
    assert describe(quick, "external", "default") == "the external client"
    assert describe(quick, "client", "default") == "pod default/client"
    coredns = next(p for p in quick.pods if p.namespace == "kube-system")
    assert describe(quick, f"kube-system/{coredns.name}", "default") == f"pod {coredns.key}"
    with pytest.raises(NotFoundError, match='pods "clint" not found.*did you mean client'):
        describe(quick, "clint", "default")


def test_tcpdump_runs_in_the_namespace_numeric_and_unbuffered() -> None:
    assert capture.tcpdump_argv("lc.l.pod.default.web", "eth0", 2, True, ("tcp", "port", "80")) \
        == ["ip", "netns", "exec", "lc.l.pod.default.web", "tcpdump", "-i", "eth0", "-n", "-U",
            "--immediate-mode", "-c", "2", "-w", "-", "tcp", "port", "80"]
    assert capture.tcpdump_argv("lc.l.node.node1", "any", None, False) \
        == ["ip", "netns", "exec", "lc.l.node.node1", "tcpdump", "-i", "any", "-n", "-U",
            "--immediate-mode", "-l"]


SLOW = """\
import signal, sys, time
signal.signal(signal.SIGINT, lambda *_: (print("flushed", flush=True), sys.exit(0)))
print("started", flush=True)
time.sleep(600)
"""


def test_a_timeout_stops_the_capture_with_sigint_so_it_can_flush(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with open(out, "wb") as f:
        result = capture.run([sys.executable, "-c", SLOW], f, timeout=1.0)
    assert result.timed_out and result.returncode == 0
    assert out.read_text().split() == ["started", "flushed"]


def test_ctrl_c_ends_the_capture_cleanly(tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches labctl and tcpdump (one process group): tcpdump
    flushes, labctl waits for it and says how it ended."""
    (tmp_path / "slow.py").write_text(SLOW)
    driver = ("import sys\nfrom labctl.net import capture\n"
              f"r = capture.run([sys.executable, {str(tmp_path / 'slow.py')!r}], None, None)\n"
              "print('result', r.returncode, r.interrupted, flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", driver], stdout=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "started"
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert out.split("\n")[:2] == ["flushed", "result 0 True"]
    assert proc.returncode == 0


def test_the_capture_tools_exit_code_comes_back() -> None:
    result = capture.run([sys.executable, "-c", "raise SystemExit(3)"], None, timeout=60)
    assert (result.returncode, result.timed_out) == (3, False)


def test_without_tcpdump_capture_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capture.shutil, "which", lambda _name: None)
    with pytest.raises(LabctlError, match="install the `tcpdump` package"):
        capture.run(["true"], None, timeout=1)


def test_capture_needs_root(quick: ClusterState, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    result = invoke(cli, ["capture", "client", "-c", "1"])
    assert result.exit_code == 1 and "capture needs root" in result.stderr
    result = invoke(cli, ["capture", "nosuch"])
    assert result.exit_code == 1 and 'pods "nosuch" not found' in result.stderr


def test_capture_help_shows_examples() -> None:
    result = invoke(cli, ["capture", "--help"])
    assert result.exit_code == 0
    assert "labctl capture node2:any -w - | wireshark -k -i -" in result.stdout
