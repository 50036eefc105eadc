"""The command layer (labctl/cli/commands.py): how argv becomes a call, what a usage
error looks like, and that starting `labctl apply` stays light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from labctl.cli.commands import (
    Choice,
    IntRange,
    PathArg,
    UsageError,
    argument,
    group,
    invoke,
    option,
)
from labctl.cli.main import cli
from labctl.errors import NotFoundError

ROOT = Path(__file__).resolve().parents[2]
seen: dict[str, object] = {}


@group("demo", version_of="labctl")
def demo() -> None:
    """A demo group.

    \b
    Example:
      demo run x
    """


@demo.command()
@argument("target")
@argument("words", nargs=-1, rest=True)
@option("-n", "--count", type=IntRange(1, 5), default=1, show_default=True)
@option("--mode", type=Choice(["a", "b"]))
@option("--wait/--no-wait", default=True)
@option("--loud", "level", flag_value="loud")
@option("--soft", "level", flag_value="soft")
@option("-f", "--file", "files", multiple=True, type=PathArg())
def run(target: str, words: tuple[str, ...], count: int, mode: str | None, wait: bool,
        level: str | None, files: tuple[str, ...]) -> None:
    """Run TARGET."""
    seen.update(target=target, words=words, count=count, mode=mode, wait=wait,
                level=level, files=files)


@demo.command()
@argument("what")
def fail(what: str) -> None:
    """Fail as told."""
    if what == "usage":
        raise UsageError("that will not do")
    raise NotFoundError("no such thing")


def test_arguments_and_options_become_the_functions_parameters() -> None:
    seen.clear()
    res = invoke(demo, ["run", "-n", "3", "t", "--no-wait", "--soft", "-f", __file__,
                        "-f", __file__])
    assert res.exit_code == 0, res.output
    assert seen == {"target": "t", "words": (), "count": 3, "mode": None, "wait": False,
                    "level": "soft", "files": (__file__, __file__)}


def test_rest_takes_unknown_options_and_everything_after_dashes() -> None:
    seen.clear()
    assert invoke(demo, ["run", "pod", "ip", "-4", "addr"]).exit_code == 0
    assert seen["words"] == ("ip", "-4", "addr")
    assert invoke(demo, ["run", "pod", "--mode", "a", "--", "ls", "--mode"]).exit_code == 0
    assert seen["words"] == ("ls", "--mode") and seen["mode"] == "a"


@pytest.mark.parametrize(("args", "message"), [
    (["run", "t", "-n", "9"], "9 must be ≤ 5"),
    (["run", "t", "-n", "x"], "'x' is not an integer"),
    (["run", "t", "--mode", "c"], "invalid choice: 'c'"),
    (["run", "t", "-f", "/no/such/file"], "no such file or folder: '/no/such/file'"),
    (["run"], "required: target"),
    (["fail", "x", "--bogus=1"], "unrecognized arguments: --bogus=1"),
    (["fail", "usage"], "that will not do"),
])
def test_usage_errors_exit_2_with_the_usage_and_a_hint(args: list[str], message: str
                                                       ) -> None:
    res = invoke(demo, args)
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith(f"usage: labctl {args[0]}")
    assert "error: " in res.stderr and message.lower() in res.stderr.lower()
    assert f"hint: `labctl {args[0]} --help`" in res.stderr


def test_labctl_errors_print_plainly_with_their_exit_code() -> None:
    res = invoke(demo, ["fail", "missing"])
    assert res.exit_code == 1 and res.stderr == "error: no such thing\n"


def test_groups_list_their_commands_and_suggest_a_near_name() -> None:
    res = invoke(demo, ["--help"])
    assert res.exit_code == 0
    assert "run" in res.stdout and "Fail as told." in res.stdout and "Example:" in res.stdout
    res = invoke(demo, ["rnu"])
    assert res.exit_code == 2 and "did you mean 'run'?" in res.stderr
    assert invoke(demo, []).exit_code == 2  # no command: the help, as a usage error
    assert invoke(demo, ["--version"]).stdout.startswith("labctl, version ")


def test_help_keeps_the_examples_as_written() -> None:
    res = invoke(cli, ["exec", "--help"])
    assert "\n  labctl exec web-0 -- ip addr\n" in res.stdout
    assert "\b" not in res.stdout
    assert "-n, --namespace NAMESPACE" in res.stdout


def test_starting_labctl_apply_imports_no_heavy_module() -> None:
    """What `labctl apply` loads before it asks the agent: no CLI framework, no
    dataclasses (with inspect), no typing, no pickle, no model code — each costs every run
    milliseconds of the 100 ms budget."""
    code = ("import sys; import labctl.cli.main, labctl.cli.apply, labctl.lab.remote, "
            "labctl.agent.control; "
            "print(' '.join(m for m in ('click', 'dataclasses', 'inspect', 'pickle', "
            "'typing', 'yaml', 'labctl.model', 'labctl.lab.store', 'labctl.cluster') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True, timeout=60).stdout.strip()
    assert out == ""
