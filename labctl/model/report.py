"""Collecting diagnostics while loading: errors, warnings, and ignored-field notes."""

from __future__ import annotations

import re

from labctl.errors import Diagnostic, Pos, Severity

IGNORED_MESSAGE = "ignored: labctl does not model this field"
_INDEX = re.compile(r"\[\d+\]")


def subject(label: str, path: str) -> str:
    """The `field` of a diagnostic: "Service default/web: spec.ports[0].port"."""
    if label and path:
        return f"{label}: {path}"
    return label or path


class Reporter:
    """Collects diagnostics from every stage so all of them are reported together."""

    def __init__(self) -> None:
        self.diagnostics: list[Diagnostic] = []
        self._ignored: set[tuple[str, str]] = set()

    def add(self, severity: Severity, pos: Pos | None, label: str, path: str, message: str,
            hint: str = "") -> None:
        self.diagnostics.append(Diagnostic(severity, pos, subject(label, path), message, hint))

    def error(self, pos: Pos | None, label: str, path: str, message: str,
              hint: str = "") -> None:
        self.add("error", pos, label, path, message, hint)

    def warning(self, pos: Pos | None, label: str, path: str, message: str,
                hint: str = "") -> None:
        self.add("warning", pos, label, path, message, hint)

    def ignored(self, kind: str, label: str, path: str, pos: Pos) -> None:
        # Once per kind and field (indices dropped): 50 replicas of one template, or ten
        # Deployments with images, make one note each, not fifty.
        key = (kind, _INDEX.sub("[*]", path))
        if key not in self._ignored:
            self._ignored.add(key)
            self.add("info", pos, label, path, IGNORED_MESSAGE)

    @property
    def has_errors(self) -> bool:
        return any(d.severity == "error" for d in self.diagnostics)

    def sorted(self, file_order: list[str]) -> list[Diagnostic]:
        """Diagnostics by file (in the order files were read), line, column.

        Diagnostics without a position (unreadable paths, the lab name) come first.
        """
        rank = {name: index for index, name in enumerate(file_order)}

        def key(d: Diagnostic) -> tuple[int, int, str, int, int]:
            if d.pos is None:
                return (0, 0, "", 0, 0)
            return (1, rank.get(d.pos.file, len(rank)), d.pos.file, d.pos.line, d.pos.col)

        return sorted(self.diagnostics, key=key)


def object_label(kind: str, name: str, namespace: str | None = None) -> str:
    """How diagnostics name an object: "Service default/web", "Namespace shop"."""
    shown = name or "(no name)"
    return f"{kind} {namespace}/{shown}" if namespace is not None else f"{kind} {shown}"
