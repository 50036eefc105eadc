"""What several commands share: warnings, `-o json` of up/down/apply, `--lab`."""

from __future__ import annotations

from collections.abc import Callable

from labctl.cli.commands import Choice, UsageError, option
from labctl.cli.output import err

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import: every labctl start
if TYPE_CHECKING:
    from typing import Any

lab_option = option("--lab", "lab_name", help="Which lab (default: the only one).")


def print_warnings(diags: list[Any], show_info: bool = False) -> None:
    for d in diags:
        if d.severity == "warning" or show_info:
            err(d.format())


def output_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`-o json` of up, down and apply: their result as one LabReport (cli/report.py)."""
    return option("-o", "--output", "fmt", type=Choice(["json"]),
                  help="Print the result as one JSON object (a LabReport, described "
                       "in docs/architecture.md) instead of the summary.")(fn)


def check_output(fmt: str | None, quiet: bool, **flags: bool) -> None:
    """-o json prints the report and nothing else, so not with --quiet nor with `flags`
    whose output would break the JSON: a usage error (exit 2) before anything is done."""
    clash = (["--quiet"] if quiet else []) + [f"--{name.replace('_', '-')}"
                                              for name, on in flags.items() if on]
    if fmt == "json" and clash:
        raise UsageError(f"-o json cannot be combined with {', '.join(clash)}")
