"""A lab's name: `up --name` (and a running lab's own name) wins over metadata.name."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl.errors import UserError
from labctl.lab.lifecycle import prepare

LAB = """\
apiVersion: labctl/v1
kind: Lab
metadata: {name: written}
---
apiVersion: v1
kind: Pod
metadata: {name: a}
spec: {containers: [{name: c}]}
"""


def test_the_given_name_wins_over_metadata_name(tmp_path: Path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(LAB)
    assert prepare([str(path)])[0].lab.name == "written"
    state, plan, _ = prepare([str(path)], "other")
    assert state.lab.name == "other"
    assert all(".other." in ns.name for ns in plan.namespaces)


def test_an_invalid_given_name_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(LAB)
    with pytest.raises(UserError, match="lab name.*DNS-1123"):
        prepare([str(path)], "Bad_Name")
