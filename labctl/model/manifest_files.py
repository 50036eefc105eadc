"""Which files of a folder are a lab's manifests (light: no YAML, no model imports)."""

from __future__ import annotations

import os

YAML_SUFFIXES = (".yaml", ".yml")
# An exercise folder (topologies/NN-…) keeps its check file and its broken variant of
# the lab beside lab.yaml: reading the folder reads the lab only (name them to use them).
NOT_MANIFESTS = ("checks.yaml", "broken.yaml")


def folder_manifests(folder: str) -> list[str]:
    """The folder's *.yaml / *.yml files, sorted, without an exercise's companions."""
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder))
            if n.endswith(YAML_SUFFIXES) and n not in NOT_MANIFESTS
            and os.path.isfile(os.path.join(folder, n))]
