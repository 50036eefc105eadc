"""Shell completion: the scripts, and lab/pod/node names read from the labs' state dirs
(a fake /run/labctl here: no root, no lab)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from labctl import names
from labctl.cli.commands import invoke
from labctl.cli.completion import candidates
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
    return root


def complete(line: str) -> list[str]:
    """What completing after `line` offers (the last word is the incomplete one)."""
    words = line.split(" ")
    return [c.value for c in candidates(cli, words[1:-1], words[-1])]


@pytest.mark.parametrize("shell,mark", [("bash", "complete -o nosort -F _labctl_completion labctl"),
                                        ("zsh", "#compdef labctl"),
                                        ("fish", "complete --no-files --command labctl")])
def test_completion_prints_the_shells_script(shell: str, mark: str) -> None:
    result = invoke(cli, ["completion", shell])
    assert result.exit_code == 0, result.output
    assert mark in result.stdout and "labctl __complete" in result.stdout


def test_completion_refuses_other_shells() -> None:
    result = invoke(cli, ["completion", "tcsh"])
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
    items = candidates(cli, ["graph"], "q")
    assert [(c.type, c.value) for c in items] == [("file", "q"), ("plain", "quick")]


def test_nothing_is_offered_without_labs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    monkeypatch.setattr(names, "STATE_ROOT", str(tmp_path / "missing"))
    assert complete("labctl down ") == []
    assert complete("labctl exec ") == ["external"]


def test_the_installed_command_answers_the_scripts(state_root: Path) -> None:
    env = {**os.environ, "LABCTL_STATE_ROOT": str(state_root)}
    proc = subprocess.run([sys.executable, "-m", "labctl.cli.main", "__complete", "down", ""],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["plain\tother\tlab", "plain\tquick\tlab"]


@pytest.fixture
def shell_env(state_root: Path, tmp_path: Path) -> dict[str, str]:
    """An environment whose `labctl` on PATH runs this checkout, over `state_root`."""
    shim = tmp_path / "bin" / "labctl"
    shim.parent.mkdir()
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m labctl.cli.main \"$@\"\n")
    shim.chmod(0o755)
    return {**os.environ, "LABCTL_STATE_ROOT": str(state_root),
            "PATH": f"{shim.parent}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}


def run_shell(argv: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_bash_completes_through_the_script(shell_env: dict[str, str]) -> None:
    """The bash script, sourced in a real bash, fills COMPREPLY from `labctl __complete`;
    a file argument hands over to bash's own file completion."""
    script = invoke(cli, ["completion", "bash"]).stdout
    probe = (script + 'COMP_WORDS=(labctl get pods --lab q); COMP_CWORD=4; '
             '_labctl_completion; printf "%s\\n" "${COMPREPLY[@]}"; '
             'COMP_WORDS=(labctl ap); COMP_CWORD=1; _labctl_completion; '
             'printf "%s\\n" "${COMPREPLY[@]}"; '
             'COMP_WORDS=(labctl up to); COMP_CWORD=2; _labctl_completion; '
             'echo "files:${#COMPREPLY[@]}"')
    out = run_shell(["bash", "-c", probe], shell_env)
    assert out.split() == ["quick", "apply", "files:0"]


@pytest.mark.skipif(shutil.which("fish") is None,
                    reason="needs the fish shell (scripts/install-deps.sh installs it)")
def test_fish_completes_through_the_script(shell_env: dict[str, str], tmp_path: Path
                                           ) -> None:
    """fish asked as a user's Tab asks: `complete -C` prints value and description."""
    script = tmp_path / "labctl.fish"
    script.write_text(invoke(cli, ["completion", "fish"]).stdout)
    out = run_shell(["fish", "--no-config", "-c",
                     f"source {script}; complete -C 'labctl down q'; "
                     "complete -C 'labctl get pods -o w'; complete -C 'labctl ap'"],
                    shell_env)
    lines = out.splitlines()
    assert "quick\tlab" in lines and "wide" in lines
    assert any(line.startswith("apply\tApply changed manifests") for line in lines)


@pytest.mark.skipif(shutil.which("zsh") is None,
                    reason="needs the zsh shell (scripts/install-deps.sh installs it)")
def test_zsh_script_hands_candidates_to_the_completion_system(
        shell_env: dict[str, str], tmp_path: Path) -> None:
    """The zsh script with the completion system's builtins stood in for (they only
    work inside a Tab): described candidates go to _describe, plain ones to compadd,
    files to _files."""
    script = tmp_path / "_labctl"
    script.write_text(invoke(cli, ["completion", "zsh"]).stdout)
    assert run_shell(["zsh", "-n", str(script)], shell_env) == ""
    probe = ("compdef() { :; }\n"
             "_describe() { print -l -- \"described: ${(@P)${@[-1]}}\"; }\n"
             "compadd() { print -l -- \"plain: ${(@P)${@[-1]}}\"; }\n"
             "_files() { print -- files; }\n"
             f"source {script}\n"
             "words=(labctl down q); CURRENT=3; _labctl\n"
             "words=(labctl get pods -o w); CURRENT=5; _labctl\n"
             "words=(labctl up to); CURRENT=3; _labctl\n")
    out = run_shell(["zsh", "-f", "-c", probe], shell_env)
    assert out.splitlines() == ["described: quick:lab", "plain: wide", "files"]


def test_options_and_choices_complete(state_root: Path) -> None:
    assert complete("labctl get ") [:3] == ["pods", "pod", "po"]
    assert complete("labctl get pods -o ") == ["wide", "json", "yaml"]
    assert "--all-namespaces" in complete("labctl get pods --a")
    assert complete("labctl delete pod x --no-") == ["--no-wait"]
    assert complete("labctl proxy r") == ["render"]
    assert complete("labctl exec web-0 -- ") == []  # the command's words: the shell's


def test_check_completes_exercise_names(state_root: Path) -> None:
    assert complete("labctl check quick") == ["quickstart"]
    assert complete("labctl check --lab qu") == ["quick"]
