"""User-facing diagnostics: every error names file:line:column, the field, and a hint.

User errors are collected (never first-only) and raised together as one `UserError`;
the CLI prints them and exits 2. Missing kernel features are `CapabilityError`s,
raised before anything is created.
"""

from __future__ import annotations

from collections import namedtuple

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import (every labctl start)
if TYPE_CHECKING:
    from typing import Literal

    Severity = Literal["error", "warning", "info"]
else:
    Severity = str  # the type checker's view above; at run time only a name

EXIT_USER_ERROR = 2

# Pos and Diagnostic are named tuples (immutable, ordered, hashable) rather than
# dataclasses: every CLI command imports this module, and dataclasses' import (with
# inspect's) would cost each `labctl` start some 8 ms.


class Pos(namedtuple("Pos", "file line col")):
    """A place in a user's file (1-based line and column)."""

    __slots__ = ()
    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class Diagnostic(namedtuple("Diagnostic", "severity pos field message hint", defaults=("",))):
    """One finding: severity, where (None: no place in a file), the field path (e.g.
    "Service default/web: spec.ports[0].port"), what is wrong, and a hint."""

    __slots__ = ()
    severity: Severity
    pos: Pos | None
    field: str
    message: str
    hint: str

    def format(self) -> str:
        where = f"{self.pos}: " if self.pos else ""
        field = f"{self.field}: " if self.field else ""
        text = f"{where}{self.severity}: {field}{self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class LabctlError(Exception):
    """Base of labctl's own errors (anything else escaping is a bug)."""

    exit_code = 1


class UserError(LabctlError):
    """Bad input: one or more diagnostics, exit code 2, nothing created."""

    exit_code = EXIT_USER_ERROR

    def __init__(self, diagnostics: list[Diagnostic] | Diagnostic | str, hint: str = ""):
        if isinstance(diagnostics, str):
            diagnostics = [Diagnostic("error", None, "", diagnostics, hint)]
        elif isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics = list(diagnostics)
        super().__init__(self.format())

    def format(self) -> str:
        errors = [d for d in self.diagnostics if d.severity == "error"]
        lines = [d.format() for d in self.diagnostics]
        if len(errors) > 1:
            lines.append(f"{len(errors)} errors")
        return "\n".join(lines)


class CapabilityError(LabctlError):
    """The kernel or the system lacks something the lab needs (checked before creating)."""

    exit_code = 3


class NotFoundError(LabctlError):
    """A named lab, pod or object does not exist (kubectl exits 1 for these)."""

    exit_code = 1
