"""YAML text → small trees of nodes that remember where they were written.

PyYAML's composer gives nodes with marks but no values; we turn them into immutable
`YScalar` / `YMap` / `YSeq` trees with 1-based positions so the rest of the loader never
touches PyYAML. Things the YAML spec tolerates but Kubernetes rejects (duplicate keys)
are reported here, and PyYAML's syntax errors are translated into messages with hints.

A file is split at its `---` lines and each piece is parsed on its own: PyYAML stops at
the first syntax error, and splitting lets us report one error per broken document and
still load the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from labctl.errors import Diagnostic, Pos

Scalar = str | int | float | bool | None

_TAG = "tag:yaml.org,2002:"
_MERGE_TAG = _TAG + "merge"
_DOC_START = re.compile(r"---(\s|$)")
_PREAMBLE = re.compile(r"\s*(#.*|%.*)?$")  # blank, comment or directive lines


@dataclass(frozen=True)
class YScalar:
    value: Scalar
    text: str  # the value as written, for hints ("quote it: "1"")
    pos: Pos


@dataclass(frozen=True)
class YEntry:
    key: str
    key_pos: Pos
    value: YNode


@dataclass(frozen=True)
class YMap:
    entries: tuple[YEntry, ...]
    pos: Pos

    def get(self, key: str) -> YNode | None:
        for entry in self.entries:
            if entry.key == key:
                return entry.value
        return None


@dataclass(frozen=True)
class YSeq:
    items: tuple[YNode, ...]
    pos: Pos


YNode = YScalar | YMap | YSeq


class _Fail(Exception):
    """A problem that makes the whole document unusable (reported, then skipped)."""

    def __init__(self, diagnostic: Diagnostic):
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


_FAST_LOADER = getattr(yaml, "CSafeLoader", None)


def _compose(chunk: str) -> list[yaml.Node]:
    """The document's nodes: libyaml's composer when present (≈10× faster, the same
    marks), the pure-Python one otherwise and for every input libyaml refuses — so a
    syntax error is always reported in the pure-Python parser's words."""
    if _FAST_LOADER is not None:
        try:
            return list(yaml.compose_all(chunk, Loader=_FAST_LOADER))
        except Exception:  # noqa: BLE001 - re-read below for the exact diagnostic
            pass
    return list(yaml.compose_all(chunk, Loader=yaml.SafeLoader))


def parse_yaml(text: str, file: str) -> tuple[list[YNode], list[Diagnostic]]:
    """All non-empty documents of `text`, and the problems found while reading them."""
    docs: list[YNode] = []
    diags: list[Diagnostic] = []
    for first_line, chunk in _split_documents(text):
        try:
            nodes = _compose(chunk)
        except yaml.MarkedYAMLError as exc:
            diags.append(_syntax_error(exc, file, first_line, chunk))
            continue
        except yaml.reader.ReaderError as exc:  # a character YAML does not allow
            before = chunk[: exc.position]
            pos = Pos(file, first_line + before.count("\n") + 1,
                      len(before) - (before.rfind("\n") + 1) + 1)
            diags.append(Diagnostic("error", pos, "", f"invalid YAML: character "
                                    f"U+{exc.character:04X} is not allowed",
                                    "remove the control character"))
            continue
        except RecursionError:
            pos = Pos(file, first_line + 1, 1)
            diags.append(Diagnostic("error", pos, "", "invalid YAML: nested too deeply"))
            continue
        for node in nodes:
            converter = _Converter(file, first_line, diags)
            try:
                doc = converter.convert(node)
            except _Fail as fail:
                diags.append(fail.diagnostic)
                continue
            if not (isinstance(doc, YScalar) and doc.value is None):  # empty document
                docs.append(doc)
    return docs, diags


def _split_documents(text: str) -> list[tuple[int, str]]:
    """(0-based first line, text) of each `---`-separated piece of `text`.

    The YAML spec forbids a `---` at column 0 inside any scalar, so this split never cuts
    a value in two. Pieces holding only comments or directives stay with the next piece.
    """
    lines = text.splitlines(keepends=True)
    pieces: list[tuple[int, list[str]]] = [(0, [])]
    for number, line in enumerate(lines):
        start, current = pieces[-1]
        if _DOC_START.match(line) and not all(_PREAMBLE.match(x) for x in current):
            pieces.append((number, [line]))
        else:
            current.append(line)
    return [(start, "".join(piece)) for start, piece in pieces]


class _Converter:
    """PyYAML nodes of one document → Y nodes (aliases resolved once, merges applied)."""

    def __init__(self, file: str, line_offset: int, diags: list[Diagnostic]):
        self.file = file
        self.line_offset = line_offset
        self.diags = diags
        self.done: dict[int, YNode] = {}
        self.active: set[int] = set()
        self.scalars = SafeConstructor()

    def pos(self, node: Node) -> Pos:
        mark = node.start_mark
        return Pos(self.file, mark.line + self.line_offset + 1, mark.column + 1)

    def convert(self, node: Node) -> YNode:
        # Aliases share PyYAML nodes; converting each once keeps "billion laughs" cheap.
        key = id(node)
        if key in self.done:
            return self.done[key]
        if key in self.active:
            raise _Fail(Diagnostic("error", self.pos(node), "",
                                   "invalid YAML: an alias refers to a node that contains it",
                                   "Kubernetes objects cannot be recursive; remove the alias"))
        self.active.add(key)
        if isinstance(node, ScalarNode):
            result: YNode = self.scalar(node)
        elif isinstance(node, SequenceNode):
            result = YSeq(tuple(self.convert(item) for item in node.value), self.pos(node))
        else:
            assert isinstance(node, MappingNode)
            result = self.mapping(node)
        self.active.discard(key)
        self.done[key] = result
        return result

    def scalar(self, node: ScalarNode) -> YScalar:
        tag = node.tag
        value: Scalar
        if tag == _TAG + "null":
            value = None
        elif tag == _TAG + "bool":
            value = self.scalars.construct_yaml_bool(node)
        elif tag == _TAG + "int":
            value = self.scalars.construct_yaml_int(node)
        elif tag == _TAG + "float":
            value = self.scalars.construct_yaml_float(node)
        elif tag in (_TAG + "str", _TAG + "timestamp"):
            value = node.value  # Kubernetes keeps timestamps as strings
        else:
            raise _Fail(Diagnostic(
                "error", self.pos(node), "", f"unsupported YAML tag {tag}",
                "Kubernetes manifests use plain YAML values; remove the tag"))
        return YScalar(value, node.value, self.pos(node))

    def mapping(self, node: MappingNode) -> YMap:
        entries: dict[str, YEntry] = {}
        merged: list[YEntry] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merged.extend(self.merge_source(value_node))
                continue
            if not isinstance(key_node, ScalarNode):
                raise _Fail(Diagnostic("error", self.pos(key_node), "",
                                       "invalid key: mapping keys must be plain strings",
                                       "remove the '?' complex key"))
            key, key_pos = key_node.value, self.pos(key_node)
            value = self.convert(value_node)
            if key in entries:
                first = entries[key].key_pos
                self.diags.append(Diagnostic(
                    "error", key_pos, "", f'duplicate key "{key}" (first at line {first.line})',
                    "a mapping may hold each key once; Kubernetes rejects duplicates: "
                    "merge the two or delete one"))
                continue
            entries[key] = YEntry(key, key_pos, value)
        # Keys written explicitly win over merged ones (YAML merge-key semantics).
        for entry in merged:
            entries.setdefault(entry.key, entry)
        return YMap(tuple(entries.values()), self.pos(node))

    def merge_source(self, node: Node) -> list[YEntry]:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        entries: list[YEntry] = []
        for source in sources:
            converted = self.convert(source)
            if not isinstance(converted, YMap):
                raise _Fail(Diagnostic("error", self.pos(source), "",
                                       "invalid YAML: '<<' must merge a mapping",
                                       "write '<<: *anchor' where the anchor is a mapping"))
            entries.extend(converted.entries)
        return entries


# ---------------------------------------------------------------- syntax errors


def _syntax_error(exc: yaml.MarkedYAMLError, file: str, offset: int, chunk: str) -> Diagnostic:
    problem = exc.problem or str(exc)
    mark = exc.problem_mark or exc.context_mark
    context = exc.context_mark

    def at(m: yaml.Mark | None) -> Pos:
        return Pos(file, (m.line if m else 0) + offset + 1, (m.column if m else 0) + 1)

    def opened() -> str:
        return f"line {context.line + offset + 1} column {context.column + 1}" if context else ""

    if "'\\t'" in problem and mark is not None:
        line = chunk.splitlines()[mark.line] if mark.line < len(chunk.splitlines()) else ""
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        where = "in indentation" if mark.column < len(indent) else "where YAML needs a space"
        return Diagnostic("error", at(mark), "", f"invalid YAML: tab character {where}",
                          "YAML indents with spaces only; replace the tab with spaces")
    if problem.startswith("mapping values are not allowed"):
        return Diagnostic(
            "error", at(mark), "", "invalid YAML: unexpected ':' (mapping values are not "
            "allowed here)",
            "check this line's indentation against the line above (a key may be missing "
            "its ':'); quote values that contain ': '")
    if problem.startswith("expected <block end>"):
        return Diagnostic(
            "error", at(mark), "", "invalid YAML: this line's indentation does not match the "
            "block it is in",
            f"indent it like the other entries of the block that starts at {opened()}")
    if problem.startswith("could not find expected ':'"):
        return Diagnostic("error", at(context or mark), "", "invalid YAML: a key has no ':'",
                          "write 'key: value', or indent a continued value further")
    if "end of stream" in problem and exc.context and "quoted" in exc.context:
        return Diagnostic("error", at(context), "", "invalid YAML: unclosed quote",
                          "close the quoted string that starts here")
    if exc.context and "flow" in exc.context:
        bracket, closer = ("[", "]") if "sequence" in exc.context else ("{", "}")
        if "<stream end>" in problem:
            return Diagnostic("error", at(context), "", f"invalid YAML: this {bracket} is "
                              "never closed", f"add the closing {closer}")
        return Diagnostic("error", at(mark), "", f"invalid YAML: {problem}",
                          f"close the {bracket} opened at {opened()}")
    if exc.context and "duplicate anchor" in exc.context:
        return Diagnostic("error", at(mark), "", f"invalid YAML: {exc.context.split(';')[0]} "
                          f"(first at {opened()})", "give each anchor its own name")
    if "alias" in problem:
        return Diagnostic("error", at(mark), "", f"invalid YAML: {problem}",
                          "define each anchor (&name) once, before any alias (*name) to it")
    detail = f" ({exc.context})" if exc.context else ""
    return Diagnostic("error", at(mark), "", f"invalid YAML: {problem}{detail}",
                      "check the YAML syntax at this position")
