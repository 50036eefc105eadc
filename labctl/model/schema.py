"""A tiny schema language for the Kubernetes API subset, and the walk that applies it.

`walk` checks a positioned YAML tree against a schema and returns plain Python data
(dicts, lists, scalars) holding only well-typed values. On the way it records the
position of every field it reads, reports unknown fields (with "did you mean" hints),
wrong types, failed value checks and missing required fields, and notes the fields
labctl accepts but ignores.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from labctl.errors import Pos
from labctl.model.checks import Check, did_you_mean
from labctl.model.report import Reporter
from labctl.model.yamlpos import YMap, YNode, YScalar, YSeq

_INDEX = re.compile(r"\[\d+\]")

ScalarType = Literal["string", "integer", "boolean", "int-or-string"]


@dataclass(frozen=True)
class Scalar:
    type: ScalarType
    checks: tuple[Check, ...] = ()


@dataclass(frozen=True)
class ListOf:
    item: Schema
    min_items: int = 0
    empty_hint: str = ""


@dataclass(frozen=True)
class MapOf:
    """A string → string map (labels, annotations, selectors)."""

    key_check: Check | None = None
    value_check: Check | None = None


@dataclass(frozen=True)
class Struct:
    fields: Mapping[str, Schema]
    required: Mapping[str, str] = field(default_factory=dict)  # field -> hint


@dataclass(frozen=True)
class Ignored:
    """A real API field labctl accepts and does not use (reported as info)."""


@dataclass(frozen=True)
class Noted:
    """A field that is kept (for display) but has no effect on the lab (reported as info)."""

    schema: Schema


@dataclass(frozen=True)
class Opaque:
    """Kept as written, unchecked (env valueFrom)."""


Schema = Scalar | ListOf | MapOf | Struct | Ignored | Noted | Opaque

IGNORED = Ignored()
OPAQUE = Opaque()
STRING = Scalar("string")
INTEGER = Scalar("integer")
BOOLEAN = Scalar("boolean")


def struct(modeled: Mapping[str, Schema], ignored: str = "",
           required: Mapping[str, str] | None = None) -> Struct:
    """A struct from its modeled fields and the names of the API fields labctl ignores."""
    fields = dict(modeled)
    fields.update((name, IGNORED) for name in ignored.split())
    return Struct(fields, dict(required or {}))


class _Bad:
    """Marks a value that was written but unusable (already reported)."""


BAD = _Bad()


@dataclass
class Walker:
    """Walks one object; `where` collects the positions of the fields it read."""

    kind: str
    label: str  # "Service default/web"
    root: Struct  # the kind's schema, to find where a misplaced field belongs
    report: Reporter
    where: dict[str, Pos] = field(default_factory=dict)

    def walk(self, node: YNode, schema: Schema, path: str, anchor: Pos) -> object:
        """Plain data for `node`, or BAD. `anchor` is where to point for the whole value
        (its key, or the node itself for list items)."""
        if isinstance(schema, Noted):
            self.report.ignored(self.kind, self.label, path, anchor)
            schema = schema.schema
        if isinstance(schema, Opaque):
            return plain(node)
        if isinstance(schema, Scalar):
            return self.scalar(node, schema, path)
        if isinstance(schema, MapOf):
            return self.string_map(node, schema, path, anchor)
        if isinstance(schema, ListOf):
            return self.list(node, schema, path, anchor)
        assert isinstance(schema, Struct)
        return self.struct(node, schema, path, anchor)

    def struct(self, node: YNode, schema: Struct, path: str, anchor: Pos) -> object:
        if not isinstance(node, YMap):
            return self.wrong_type(node, "a mapping", path, anchor)
        out: dict[str, object] = {}
        for entry in node.entries:
            sub = join(path, entry.key)
            value = entry.value
            written = not (isinstance(value, YScalar) and value.value is None)
            self.where[sub] = value.pos if isinstance(value, YScalar) and written \
                else entry.key_pos
            child = schema.fields.get(entry.key)
            if child is None:
                self.unknown_field(entry.key, entry.key_pos, schema, path)
            elif isinstance(child, Ignored):
                self.report.ignored(self.kind, self.label, sub, entry.key_pos)
            elif written:
                result = self.walk(value, child, sub, entry.key_pos)
                out[entry.key] = result
        for name, hint in schema.required.items():
            if name not in out:
                self.report.error(anchor, self.label, path, f'missing required field "{name}"',
                                  hint)
        return {k: v for k, v in out.items() if v is not BAD}

    def list(self, node: YNode, schema: ListOf, path: str, anchor: Pos) -> object:
        if not isinstance(node, YSeq):
            return self.wrong_type(node, "a list", path, anchor)
        items = []
        for index, item in enumerate(node.items):
            sub = f"{path}[{index}]"
            self.where[sub] = item.pos
            if isinstance(item, YScalar) and item.value is None:
                self.report.error(item.pos, self.label, sub, "expected a list item, found "
                                  "nothing", "remove the empty '-' line")
                continue
            value = self.walk(item, schema.item, sub, item.pos)
            if value is not BAD:
                items.append(value)
        if len(node.items) < schema.min_items:
            self.report.error(anchor, self.label, path,
                              "expected at least one item, found an empty list",
                              schema.empty_hint)
        return items

    def string_map(self, node: YNode, schema: MapOf, path: str, anchor: Pos) -> object:
        if not isinstance(node, YMap):
            return self.wrong_type(node, "a mapping of strings", path, anchor)
        out: dict[str, str] = {}
        for entry in node.entries:
            sub = f"{path}[{entry.key}]"
            value = entry.value
            self.where[sub] = value.pos if isinstance(value, YScalar) else entry.key_pos
            if schema.key_check and (problem := schema.key_check(entry.key)):
                self.report.error(entry.key_pos, self.label, sub, problem.message, problem.hint)
            if isinstance(value, YScalar) and value.value is None:
                text = ""  # `key:` with nothing is "" in Kubernetes' JSON
            elif isinstance(value, YScalar) and isinstance(value.value, str):
                text = value.value
            else:
                self.wrong_type(value, "a string", sub, entry.key_pos)
                continue
            if schema.value_check and (problem := schema.value_check(text)):
                self.report.error(value.pos, self.label, sub, problem.message, problem.hint)
            out[entry.key] = text
        return out

    def scalar(self, node: YNode, schema: Scalar, path: str) -> object:
        value = node.value if isinstance(node, YScalar) else None
        ok = {
            "string": isinstance(value, str),
            "integer": isinstance(value, int) and not isinstance(value, bool),
            "boolean": isinstance(value, bool),
            "int-or-string": isinstance(value, str | int) and not isinstance(value, bool),
        }[schema.type]
        if not ok:
            expected = {"string": "a string", "integer": "an integer",
                        "boolean": "true or false",
                        "int-or-string": "a port number or a port name"}[schema.type]
            return self.wrong_type(node, expected, path, node.pos)
        for check in schema.checks:
            problem = check(value)
            if problem:
                self.report.error(node.pos, self.label, path, problem.message, problem.hint)
                break
        return value

    def wrong_type(self, node: YNode, expected: str, path: str, anchor: Pos) -> _Bad:
        pos = node.pos if isinstance(node, YScalar) else anchor
        self.report.error(pos, self.label, path, f"expected {expected}, found {describe(node)}",
                          type_hint(node, expected, path))
        return BAD

    def unknown_field(self, key: str, pos: Pos, schema: Struct, path: str) -> None:
        self.report.error(pos, self.label, join(path, key), "unknown field",
                          self.unknown_field_hint(key, schema, path))

    def unknown_field_hint(self, key: str, schema: Struct, path: str) -> str:
        names = sorted(schema.fields)
        hint = did_you_mean(key, names)
        if hint:
            return hint
        homes = sorted(field_homes(self.root, key), key=lambda home: _distance(home, path))
        if homes:
            places = " or ".join(home or "the top level" for home in homes[:2])
            here = _template(path) or "the top level"
            return f'"{key}" is a field of {places}, not of {here}; check its indentation'

        if len(names) <= 12 or self.kind == "Lab":
            return "valid fields here: " + ", ".join(names)
        explain = ".".join([self.kind.lower(), *filter(None, [_explain(path)])])
        return f"see `kubectl explain {explain}` for the valid fields"


# ---------------------------------------------------------------- helpers


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def plain(node: YNode) -> object:
    """A Y node as plain Python data."""
    if isinstance(node, YScalar):
        return node.value
    if isinstance(node, YSeq):
        return [plain(item) for item in node.items]
    return {entry.key: plain(entry.value) for entry in node.entries}


def describe(node: YNode) -> str:
    """How a found value is named in messages: 'string "eighty"', 'a list', …"""
    if isinstance(node, YMap):
        return "a mapping"
    if isinstance(node, YSeq):
        return "a list"
    value = node.value
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"boolean {node.text}"
    if isinstance(value, int):
        return f"integer {node.text}"
    if isinstance(value, float):
        return f"number {node.text}"
    text = value if len(value) <= 40 else value[:37] + "..."
    return f'string "{text}"'


def type_hint(node: YNode, expected: str, path: str) -> str:
    key = path.rsplit(".", 1)[-1].split("[", 1)[0]
    if isinstance(node, YMap):
        if expected == "a list":
            return f"start each item of {key} with '- '"
        return "write a single value here, not indented 'key: value' lines"
    if isinstance(node, YSeq):
        if expected.startswith("a mapping"):
            return f"write the fields of {key} as 'key: value' lines without '- '"
        return "write a single value here, not a list"
    value = node.value
    if expected.startswith("a mapping"):
        if isinstance(value, str) and value.count("=") == 1:
            k, v = (part.strip() for part in value.split("="))
            return f"write {key}: {{{k}: {v}}}, or one 'key: value' line per entry"
        return f"write one 'key: value' line per entry, indented under {key}:"
    if expected == "a list":
        return f"write one '- item' line per entry under {key}:, or [a, b] on one line"
    if expected == "a string":
        if isinstance(value, bool):
            return f'YAML reads {node.text} as a boolean; quote it: "{node.text}"'
        return f'quote it: "{node.text}"'
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return f"remove the quotes: {key}: {value.strip()}"
    if isinstance(value, str) and value in ("true", "false"):
        return f"remove the quotes: {key}: {value}"
    if expected == "an integer" and isinstance(value, str) and "port" in key.lower():
        return "write the port number; a port's name goes in its name: field"
    if expected == "an integer":
        return "write a whole number without quotes"
    return ""


def field_homes(schema: Schema, key: str, path: str = "") -> list[str]:
    """Every place in `schema` (as "spec.template.spec.containers[*]") holding field `key`."""
    if isinstance(schema, Noted):
        schema = schema.schema
    if isinstance(schema, ListOf):
        return field_homes(schema.item, key, path + "[*]")
    if not isinstance(schema, Struct):
        return []
    homes = [path] if key in schema.fields and not isinstance(schema.fields[key], Ignored) \
        else []
    for name, child in schema.fields.items():
        homes += field_homes(child, key, join(path, name))
    return homes


def _template(path: str) -> str:
    return _INDEX.sub("[*]", path)


def _explain(path: str) -> str:
    return _INDEX.sub("", path)


def _distance(home: str, path: str) -> tuple[int, int]:
    """Closer homes first: the longest shared prefix with where the field was found."""
    here = _template(path).split(".")
    there = home.split(".") if home else []
    shared = 0
    for a, b in zip(here, there, strict=False):
        if a != b:
            break
        shared += 1
    return (-shared, len(there))
