"""Phases: where a request's wall time went, for the agent's log and the CLI's -o json."""

from __future__ import annotations

import time
from collections.abc import Mapping


class Phases:
    """Marks the end of each phase; `ms` maps phase → milliseconds (and "total")."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.ms: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        """End `phase` now (the time since the previous mark)."""
        now = time.perf_counter()
        self.ms[phase] = round(self.ms.get(phase, 0.0) + (now - self.last) * 1000, 1)
        self.ms["total"] = round((now - self.start) * 1000, 1)
        self.last = now

    def add(self, within: str, parts: Mapping[str, float]) -> None:
        """Record the parts (seconds) of a phase measured elsewhere as `within.part`."""
        for name, seconds in parts.items():
            self.ms[f"{within}.{name}"] = round(seconds * 1000, 1)

    def summary(self) -> str:
        return ", ".join(f"{k} {v:g} ms" for k, v in self.ms.items() if k != "total") + \
            f" (total {self.ms.get('total', 0.0):g} ms)"
