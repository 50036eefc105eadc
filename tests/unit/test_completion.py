"""Shell completion: the scripts, and lab/pod/node names read from the labs' state dirs
(a fake /run/labctl here: no root, no lab)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.shell_completion import BashComplete
from click.testing import CliRunner

from labctl import names
from labctl.cli.completion import attach_completions
from labctl.cli.main import cli
from labctl.cluster.compile import compile_files
from labctl.lab import store

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def state_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state root holding lab `quick` (the quickstart's state) and lab `other`
    (a record only: no state to read names from)."""
    root = tmp_path / "run"
    monkeypatch.setattr(names, "STATE_ROOT", str(root))
    state, _ = compile_files([str(ROOT / "topologies" / "quickstart")], lab_name="quick",
                             addons=True)
    (root / "quick").mkdir(parents=True)
    store.save_state(str(root / "quick"), state)
    (root / "other").mkdir()
    (root / ".locks").mkdir()
    attach_completions(cli)
    return root


def complete(line: str) -> list[str]:
    """What completing after `line` offers (the last word is the incomplete one)."""
    words = line.split(" ")
    comp = BashComplete(cli, {}, "labctl", "_LABCTL_COMPLETE")
    return [c.value for c in comp.get_completions(words[1:-1], words[-1])]


@pytest.mark.parametrize("shell,mark", [("bash", "complete -o nosort -F _labctl_completion labctl"),
                                        ("zsh", "#compdef labctl"),
                                        ("fish", "complete --no-files --command labctl")])
def test_completion_prints_the_shells_script(shell: str, mark: str) -> None:
    result = CliRunner().invoke(cli, ["completion", shell], prog_name="labctl")
    assert result.exit_code == 0, result.output
    assert mark in result.stdout and "_LABCTL_COMPLETE" in result.stdout


def test_completion_refuses_other_shells() -> None:
    result = CliRunner().invoke(cli, ["completion", "tcsh"])
    assert result.exit_code == 2 and "bash" in result.stderr


def test_down_completes_the_labs_that_are_up(state_root: Path) -> None:
    assert complete("labctl down ") == ["other", "quick"]
    assert complete("labctl down q") == ["quick"]
    assert complete("labctl get pods --lab ") == ["other", "quick"]


def test_exec_completes_nodes_external_and_pods(state_root: Path) -> None:
    got = complete("labctl exec --lab quick ")
    assert got[:4] == ["node1", "node2", "node3", "external"]
    assert "client" in got and any(g.startswith("web-") for g in got)
    assert "kube-system/kube-dns" not in got
    assert any(g.startswith("kube-system/coredns-") for g in got)
    assert complete("labctl exec cl") == ["client"]  # no --lab: every lab's pods
    assert complete("labctl exec -n kube-system cored")[0].startswith("coredns-")
    assert complete("labctl exec default/cl") == ["default/client"]


def test_capture_completes_targets_then_interfaces(state_root: Path) -> None:
    assert complete("labctl capture node1:") == ["node1:eth0", "node1:cni0", "node1:any"]
    assert complete("labctl capture client:e") == ["client:eth0"]
    assert "client" in complete("labctl capture ")


def test_pods_and_nodes_for_logs_break_and_rules(state_root: Path) -> None:
    assert complete("labctl logs cl") == ["client"]
    assert complete("labctl break pod cl") == ["client"]
    assert complete("labctl rules node") == ["node1", "node2", "node3"]


def test_graph_completes_files_and_labs(state_root: Path) -> None:
    comp = BashComplete(cli, {}, "labctl", "_LABCTL_COMPLETE")
    items = comp.get_completions(["graph"], "q")
    assert [(c.type, c.value) for c in items] == [("file", "q"), ("plain", "quick")]


def test_nothing_is_offered_without_labs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    monkeypatch.setattr(names, "STATE_ROOT", str(tmp_path / "missing"))
    attach_completions(cli)
    assert complete("labctl down ") == []
    assert complete("labctl exec ") == ["external"]


def test_the_installed_command_completes_through_its_environment_variable(
        state_root: Path) -> None:
    env = {**os.environ, "LABCTL_STATE_ROOT": str(state_root), "_LABCTL_COMPLETE": "bash_complete",
           "COMP_WORDS": "labctl down ", "COMP_CWORD": "2"}
    proc = subprocess.run([sys.executable, "-m", "labctl.cli.main"], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["plain,other", "plain,quick"]


def test_check_completes_exercise_names(state_root: Path) -> None:
    assert complete("labctl check quick") == ["quickstart"]
    assert complete("labctl check --lab qu") == ["quick"]
