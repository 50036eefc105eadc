"""An exercise folder (lab.yaml, checks.yaml, broken.yaml) loads as its lab alone; the
broken variant loads when named."""

from __future__ import annotations

from pathlib import Path

from labctl.model.load import load_topology

ROOT = Path(__file__).resolve().parents[2]
EXERCISE = ROOT / "topologies" / "09-headless-statefulset"


def test_the_folder_is_its_lab_yaml() -> None:
    from_folder, _ = load_topology([str(EXERCISE)])
    from_file, _ = load_topology([str(EXERCISE / "lab.yaml")])
    assert [Path(f).name for f in from_folder.files] == ["lab.yaml"]
    assert from_folder.lab.name == "ex09"
    assert from_folder.services == from_file.services


def test_broken_yaml_loads_when_named() -> None:
    broken, _ = load_topology([str(EXERCISE / "broken.yaml")])
    assert [Path(f).name for f in broken.files] == ["broken.yaml"]
    assert broken.lab.name == "ex09"


def test_a_lab_keeps_a_copy_of_the_same_files() -> None:
    """`up` copies what the loader reads: the agent recompiles from that copy."""
    from labctl.lab.store import expand_files

    assert expand_files([str(EXERCISE)]) == [str(EXERCISE / "lab.yaml")]
