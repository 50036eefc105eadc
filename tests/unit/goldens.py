"""Golden files: a test's output compared with a file kept in tests/unit/golden/.
Run with UPDATE_GOLDEN=1 to (re)write them, then check the difference by hand."""

from __future__ import annotations

import os
from pathlib import Path


def check_golden(golden: Path, text: str) -> None:
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden}; run with UPDATE_GOLDEN=1"
    assert text == golden.read_text()
