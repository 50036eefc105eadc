"""Loading a lab: YAML files or folders → a validated, typed `Topology`.

    topology, warnings = load_topology(["lab.yaml"])

Every problem in every file is collected; if any is an error, one `UserError` carries
them all (errors and warnings, sorted by file, line and column). Otherwise the warnings
and the "ignored field" notes (severity info) are returned with the topology.

Each object's `source.where` maps field paths to positions: `spec.ports[0].targetPort`,
`metadata.labels[app.kubernetes.io/name]` (map entries in brackets). A scalar's position
is its value's; a mapping's or list's is its key's, so errors point where users look.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from labctl.errors import Diagnostic, Pos, UserError
from labctl.model import build
from labctl.model.apifields import KIND_ADVICE, KINDS, Kind
from labctl.model.checks import LAB_NAME, did_you_mean
from labctl.model.manifest_files import folder_manifests
from labctl.model.objects import (
    Deployment,
    EndpointSlice,
    Namespace,
    Pod,
    Service,
    Source,
    StatefulSet,
    Topology,
)
from labctl.model.report import Reporter, object_label
from labctl.model.schema import Walker, describe
from labctl.model.validate import validate
from labctl.model.yamlpos import YMap, YNode, YScalar, YSeq, parse_yaml

SUPPORTED = ", ".join(KINDS)


@dataclass
class _LabDoc:
    data: dict[str, object]
    source: Source


@dataclass
class _Collected:
    """Everything read so far, in input order."""

    labs: list[_LabDoc] = field(default_factory=list)
    objects: dict[str, list[object]] = field(default_factory=dict)
    complete: bool = True  # False once a file or document could not be read


def load_topology(paths: Sequence[str], lab_name: str | None = None,
                  ) -> tuple[Topology, list[Diagnostic]]:
    """Read, type and validate a lab. Raises UserError listing every error found."""
    report = Reporter()
    files = expand_paths(paths, report)
    collected = _Collected(complete=not report.has_errors)
    for file in files:
        read_file(file, report, collected)
    name = choose_lab_name(collected, lab_name, paths, report)
    topology = assemble(collected, name, files)
    validate(topology, report, collected.complete)
    diagnostics = report.sorted(files)
    if report.has_errors:
        # Notes about ignored fields would bury the errors; `labctl validate` lists them
        # once the input loads.
        raise UserError([d for d in diagnostics if d.severity != "info"])
    return topology, diagnostics


# ---------------------------------------------------------------- files


def expand_paths(paths: Sequence[str], report: Reporter) -> list[str]:
    """Files to read, as given: folders contribute their *.yaml / *.yml, sorted, except
    an exercise's checks.yaml and broken.yaml."""
    if not paths:
        report.error(None, "", "", "no input: give a lab file or folder")
    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            found = folder_manifests(path)
            if not found:
                report.error(None, "", "", f"folder {path} holds no .yaml or .yml files",
                             "put the lab's manifests in files ending in .yaml")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            report.error(None, "", "", f"{path}: no such file or folder")
    unique: dict[str, str] = {}
    for file in files:  # the same file given twice is read once
        unique.setdefault(os.path.realpath(file), file)
    return list(unique.values())


def read_file(file: str, report: Reporter, out: _Collected) -> None:
    try:
        with open(file, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        report.error(None, "", "", f"{file}: cannot read: {exc.strerror}")
        out.complete = False
        return
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        report.error(Pos(file, line, 1), "", "", "not UTF-8 text",
                     "save the file as UTF-8")
        out.complete = False
        return
    docs, problems = parse_yaml(text, file)
    report.diagnostics += problems
    if problems:
        out.complete = False
    for doc in docs:
        read_document(doc, report, out)


# ---------------------------------------------------------------- documents


def read_document(node: YNode, report: Reporter, out: _Collected) -> None:
    if not isinstance(node, YMap):
        hint = ("to list several objects, separate documents with --- or use kind: List "
                "with items:" if isinstance(node, YSeq) else
                "a document is one object: apiVersion, kind, metadata and spec")
        report.error(node.pos, "", "", f"expected a Kubernetes object (a mapping), found "
                     f"{describe(node)}", hint)
        out.complete = False
        return
    kind = read_kind(node, report)
    if kind is None:
        out.complete = False
        return
    check_api_version(node, kind, report)
    label = peek_label(node, kind)
    walker = Walker(kind.name, label, kind.schema, report)
    data = walker.walk(node, kind.schema, "", node.pos)
    assert isinstance(data, dict)
    source = Source(node.pos, MappingProxyType(walker.where))
    if kind.name == "List":
        items = node.get("items")
        for item in items.items if isinstance(items, YSeq) else ():
            read_document(item, report, out)
    elif kind.name == "Lab":
        if out.labs:
            first = out.labs[0].source.pos
            report.error(node.pos, label, "", f"a second kind: Lab document (the first is at "
                         f"{first})", "a lab has one Lab document: merge them")
        out.labs.append(_LabDoc(data, source))
    else:
        out.objects.setdefault(kind.name, []).append(build.BUILDERS[kind.name](data, source))


def read_kind(node: YMap, report: Reporter) -> Kind | None:
    value = node.get("kind")
    if value is None or (isinstance(value, YScalar) and value.value is None):
        report.error(node.pos, "", "kind", "missing required field \"kind\"",
                     f"add kind: with one of {SUPPORTED}")
        return None
    if not (isinstance(value, YScalar) and isinstance(value.value, str)):
        report.error(value.pos, "", "kind", f"expected a kind name, found {describe(value)}",
                     f"kind is one of {SUPPORTED}")
        return None
    kind = KINDS.get(value.value)
    if kind is None:
        hint = KIND_ADVICE.get(value.value) or did_you_mean(value.value, list(KINDS))
        supported = f"labctl supports {SUPPORTED}"
        report.error(value.pos, "", "kind", f'unsupported kind "{value.value}"',
                     f"{hint} ({supported})" if hint else supported)
    return kind


def check_api_version(node: YMap, kind: Kind, report: Reporter) -> None:
    value = node.get("apiVersion")
    expected = kind.api_version
    label = peek_label(node, kind)
    if value is None or (isinstance(value, YScalar) and value.value is None):
        report.error(node.pos, label, "apiVersion", 'missing required field "apiVersion"',
                     f"add apiVersion: {expected}")
    elif not (isinstance(value, YScalar) and value.value == expected):
        found = f'"{value.value}"' if isinstance(value, YScalar) and \
            isinstance(value.value, str) else describe(value)
        report.error(value.pos, label, "apiVersion",
                     f"expected {expected} for kind {kind.name}, found {found}",
                     f"set apiVersion: {expected}")


def peek_label(node: YMap, kind: Kind) -> str:
    """The object's name for diagnostics, read before the walk checks metadata."""
    metadata = node.get("metadata")

    def text(key: str) -> str:
        value = metadata.get(key) if isinstance(metadata, YMap) else None
        return value.text if isinstance(value, YScalar) and value.value is not None else ""

    if kind.name == "List":
        return "List"
    namespace = (text("namespace") or "default") if kind.namespaced else None
    return object_label(kind.name, text("name"), namespace)


# ---------------------------------------------------------------- the lab


def choose_lab_name(collected: _Collected, lab_name: str | None, paths: Sequence[str],
                    report: Reporter) -> str:
    """The `lab_name` argument (a running lab's own name, or `up --name`), else
    metadata.name of the Lab, else the input's name. metadata.name is checked either way."""
    lab = collected.labs[0] if collected.labs else None
    written = lab.data.get("metadata", {}) if lab else {}
    name = written.get("name") if isinstance(written, dict) else None
    if isinstance(name, str) and (problem := LAB_NAME(name)):
        report.error(lab.source.at("metadata.name") if lab else None,
                     object_label("Lab", name), "metadata.name", problem.message,
                     problem.hint)
    if lab_name:
        if problem := LAB_NAME(lab_name):
            report.error(None, "", "lab name", problem.message, problem.hint)
        return lab_name
    if isinstance(name, str):
        return name
    origin = paths[0] if paths else "lab"
    stem = os.path.basename(os.path.abspath(origin))
    if not os.path.isdir(origin):
        stem = os.path.splitext(stem)[0]
    derived = re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-")
    if problem := LAB_NAME(derived):
        report.error(None, "", "lab name",
                     f'cannot name the lab after "{origin}": {problem.message}',
                     "set metadata.name in a Lab document (apiVersion: labctl/v1, kind: Lab)")
    return derived


def assemble(collected: _Collected, name: str, files: list[str]) -> Topology:
    lab = collected.labs[0] if collected.labs else None
    objects = collected.objects

    def of(kind: str, cls: type) -> tuple:
        found = tuple(objects.get(kind, ()))
        assert all(isinstance(o, cls) for o in found)
        return found

    return Topology(
        lab=build.lab(lab.data if lab else {}, name, lab.source if lab else Source()),
        namespaces=of("Namespace", Namespace),
        pods=of("Pod", Pod),
        deployments=of("Deployment", Deployment),
        statefulsets=of("StatefulSet", StatefulSet),
        services=of("Service", Service),
        endpoint_slices=of("EndpointSlice", EndpointSlice),
        files=tuple(files),
    )

