"""The exercises in IPVS mode (06-ipvs and any other with proxyMode ipvs): their checks
pass on the solved lab and fail once broken.yaml is applied — the same test the host
runs for the others (tests/integration/test_check_exercises.py), on a kernel with IPVS."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_check_exercises import (
    EXERCISES,
    lab_down,  # noqa: F401 - the fixture the shared test uses
)
from tests.integration.test_check_exercises import (
    test_exercise_passes_solved_and_fails_broken as solved_and_broken,
)

IPVS = [f for f in EXERCISES
        if "proxyMode: ipvs" in (f / "lab.yaml").read_text()]


def test_an_exercise_runs_in_ipvs_mode() -> None:
    assert IPVS, "no exercise under topologies/ has proxyMode: ipvs"


@pytest.mark.parametrize("folder", IPVS, ids=[f.name for f in IPVS])
def test_ipvs_exercise_passes_solved_and_fails_broken(
        folder: Path, tmp_path: Path, lab_down: list[str]) -> None:  # noqa: F811
    solved_and_broken(folder, tmp_path, lab_down)
