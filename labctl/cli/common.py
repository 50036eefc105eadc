"""What every command shares: click settings, error handling, warnings."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from labctl.cli.output import err
from labctl.errors import LabctlError, UserError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print labctl's errors plainly (no traceback) and exit with their code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            err(exc.format())
            sys.exit(exc.exit_code)
        except LabctlError as exc:
            err(f"error: {exc}")
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            err("interrupted")
            sys.exit(130)

    return wrapper


def print_warnings(diags: list[Any], show_info: bool = False) -> None:
    for d in diags:
        if d.severity == "warning" or show_info:
            err(d.format())




def output_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`-o json` of up, down and apply: their result as one LabReport (cli/report.py)."""
    return click.option("-o", "--output", "fmt", type=click.Choice(["json"]),
                        help="Print the result as one JSON object (a LabReport, described "
                             "in docs/architecture.md) instead of the summary.")(fn)


def check_output(fmt: str | None, quiet: bool, **flags: bool) -> None:
    """-o json prints the report and nothing else, so not with --quiet nor with `flags`
    whose output would break the JSON: a usage error (exit 2) before anything is done."""
    clash = (["--quiet"] if quiet else []) + [f"--{name.replace('_', '-')}"
                                              for name, on in flags.items() if on]
    if fmt == "json" and clash:
        raise click.UsageError(f"-o json cannot be combined with {', '.join(clash)}")
