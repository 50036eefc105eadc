"""What `up` and `down` show while they work (on stderr, so stdout keeps the result):
a line per phase as it ends, with its duration and the work counted in it, and — for a
long lab, on a terminal — a progress bar of the namespaces being created.

    compile        41.2 ms
    kernel       2210.7 ms  (1005 namespaces)
    files          80.3 ms
"""

from __future__ import annotations

import sys
from typing import TextIO

BAR_MIN = 100  # counted items below which a phase is too short for a bar
BAR_WIDTH = 30


def on_terminal() -> bool:
    """A bar only when a person watches: stdout and stderr both a terminal (not piped,
    not captured, not `-o json | jq`)."""
    return sys.stdout.isatty() and sys.stderr.isatty()


class PhaseProgress:
    """A labctl.lab.progress.Progress that draws. `lines`: print each phase's line;
    `bar`: draw the bar (default: when on a terminal)."""

    def __init__(self, lines: bool = True, bar: bool | None = None,
                 stream: TextIO | None = None) -> None:
        self.lines = lines
        self.bar = on_terminal() if bar is None else bar
        self.stream = sys.stderr if stream is None else stream
        self.counted: dict[str, int] = {}  # work counted since the last phase ended
        self.drawn = False

    def __call__(self, phase: str, done: int, total: int) -> None:
        self.counted[phase] = total
        if not self.bar or total < BAR_MIN:
            return
        filled = BAR_WIDTH * done // total
        self.stream.write(f"\r  {phase} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
                          f"{done}/{total}")
        self.stream.flush()
        self.drawn = True

    def phase_done(self, phase: str, seconds: float) -> None:
        if self.drawn:
            self.stream.write("\r\033[K")  # the bar's line, cleared for the phase line
            self.drawn = False
        work = ", ".join(f"{total} {name}" for name, total in self.counted.items())
        self.counted.clear()
        if self.lines:
            self.stream.write(f"  {phase:<10} {seconds * 1000:9.1f} ms"
                              + (f"  ({work})" if work else "") + "\n")
            self.stream.flush()
