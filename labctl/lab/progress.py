"""How a long lab operation (`up`, `down`) tells whoever shows it how it goes: work
counted within a phase ("namespaces 500/1005"), and each phase's end with its duration.
The library only reports; the CLI (labctl/cli/progress.py) decides what to draw."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, phase: str, done: int, total: int) -> None:
        """`done` of `total` items of `phase` are done."""

    def phase_done(self, phase: str, seconds: float) -> None:
        """`phase` has ended after `seconds`."""


class Timings(dict[str, float]):
    """Phase → seconds, in the order the phases ran; recording a phase also reports its
    end to `progress`, so code that times its phases needs no second call to report."""

    def __init__(self, progress: Progress | None = None) -> None:
        super().__init__()
        self._progress = progress

    def __setitem__(self, phase: str, seconds: float) -> None:
        super().__setitem__(phase, seconds)
        if self._progress is not None:
            self._progress.phase_done(phase, seconds)
