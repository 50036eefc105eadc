"""Golden tests of labctl's error messages: the exact text users see for bad input.

Each case is tests/unit/golden/errors/NAME.yaml (or a folder NAME/) with the expected
`UserError.format()` output in NAME.txt. Regenerate with

    UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_model_errors.py

and read every changed .txt before committing: these messages are the product.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labctl.errors import UserError
from labctl.model.load import load_topology

GOLDEN = Path(__file__).parent / "golden" / "errors"
CASES = sorted(p.name.removesuffix(".yaml") for p in GOLDEN.iterdir()
               if p.suffix == ".yaml" or p.is_dir())


@pytest.mark.parametrize("case", CASES)
def test_error_messages(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Run from the golden folder so messages show the path as given: "case.yaml:3:5".
    monkeypatch.chdir(GOLDEN)
    source = case if (GOLDEN / case).is_dir() else f"{case}.yaml"
    with pytest.raises(UserError) as raised:
        load_topology([source])
    text = raised.value.format() + "\n"
    golden = GOLDEN / f"{case}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden.name}; run with UPDATE_GOLDEN=1"
    assert text == golden.read_text()


def test_enough_cases() -> None:
    assert len(CASES) >= 35


def test_every_golden_has_an_input() -> None:
    outputs = {p.stem for p in GOLDEN.glob("*.txt")}
    assert outputs == set(CASES)


def test_several_errors_are_reported_together() -> None:
    text = (GOLDEN / "many_errors.txt").read_text()
    assert text.count(": error: ") >= 4
    assert text.rstrip().endswith("errors")


def test_user_error_exit_code() -> None:
    with pytest.raises(UserError) as raised:
        load_topology([str(GOLDEN / "not_a_mapping.yaml")])
    assert raised.value.exit_code == 2


def test_warnings_do_not_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("lab.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n"
        "spec:\n  selector: {app: web}\n  ports: [{port: 80}]\n")
    topology, warnings = load_topology(["lab.yaml"])
    assert [s.meta.name for s in topology.services] == ["web"]
    assert [(w.severity, str(w.pos), w.field) for w in warnings] == [
        ("warning", "lab.yaml:5:3", "Service default/web: spec.selector")]
    assert "selects no Pod" in warnings[0].message
