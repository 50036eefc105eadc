"""Finding exercises: the folders under topologies/ that hold a checks.yaml, their
titles (the first heading of their README.md), and which one a name means."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from labctl.errors import NotFoundError, UserError
from labctl.exercise import spec

ENV = "LABCTL_TOPOLOGIES"


def topologies_dir() -> str:
    """$LABCTL_TOPOLOGIES, else topologies/ beside the labctl package (a source checkout),
    else ./topologies."""
    if os.environ.get(ENV):
        return os.environ[ENV]
    beside = Path(__file__).resolve().parents[2] / "topologies"
    return str(beside) if beside.is_dir() else os.path.abspath("topologies")


@dataclass(frozen=True)
class Entry:
    name: str  # the folder's name
    folder: str
    title: str
    has_checks: bool


def title_of(folder: str) -> str:
    """The first Markdown heading of the folder's README.md ("" when there is none)."""
    try:
        with open(os.path.join(folder, "README.md"), encoding="utf-8") as f:
            for line in f:
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    except OSError:
        pass
    return ""


def entries(root: str | None = None) -> list[Entry]:
    """Every exercise folder (one holding a lab.yaml or a checks.yaml), by name."""
    root = root or topologies_dir()
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    out = []
    for name in names:
        folder = os.path.join(root, name)
        has_checks = os.path.isfile(os.path.join(folder, spec.CHECKS_FILE))
        if os.path.isdir(folder) and (has_checks or
                                      os.path.isfile(os.path.join(folder, "lab.yaml"))):
            out.append(Entry(name, folder, title_of(folder), has_checks))
    return out


def find(name: str, root: str | None = None) -> str:
    """The folder EXERCISE means: a path, a folder name under topologies/, or the unique
    beginning of one (`04`)."""
    if os.path.exists(name) and (os.path.isfile(name) or
                                 os.path.isfile(spec.checks_file(name))):
        return name
    known = [e for e in entries(root) if e.has_checks]
    exact = [e for e in known if e.name == name]
    matches = exact or [e for e in known if e.name.startswith(name)]
    if len(matches) == 1:
        return matches[0].folder
    names = ", ".join(e.name for e in known) or "none"
    if matches:
        raise UserError(f"exercise {name!r} could mean "
                        f"{', '.join(e.name for e in matches)}", "name one of them")
    raise UserError(f"no exercise {name!r}: neither a folder holding checks.yaml nor an "
                    f"exercise under {root or topologies_dir()}",
                    f"exercises with checks: {names} (labctl check --list)")


def for_lab(labs: list[str], root: str | None = None) -> str:
    """The folder of the exercise whose checks.yaml names one of the running `labs`."""
    found = []
    for entry in entries(root):
        if not entry.has_checks:
            continue
        try:
            exercise = spec.load(entry.folder)
        except Exception:  # noqa: BLE001 - a broken file elsewhere is not this lab's
            continue
        if exercise.lab in labs:
            found.append(entry.folder)
    if len(found) == 1:
        return found[0]
    if not labs:
        raise NotFoundError("no lab is up; start an exercise: labctl up topologies/<exercise>")
    if not found:
        raise UserError(f"no exercise's checks.yaml names the running lab(s) "
                        f"{', '.join(labs)}", "name the exercise: labctl check EXERCISE "
                        "[--lab LAB]")
    raise UserError(f"several exercises' labs are up ({', '.join(found)})",
                    "name the exercise: labctl check EXERCISE")
