"""Output helpers: kubectl-style tables, ages, JSON/YAML lists (progress: cli/progress.py)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import: every labctl start
if TYPE_CHECKING:
    from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(map(str, headers))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def age(since: float) -> str:
    secs = max(0, int(time.time() - since))
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m"
    if secs < 172800:
        return f"{secs // 3600}h"
    return f"{secs // 86400}d"


def as_list(items: list[dict[str, Any]], fmt: str) -> str:
    doc = {"apiVersion": "v1", "kind": "List", "items": items}
    if fmt == "json":
        return json.dumps(doc, indent=2)
    import yaml

    return yaml.safe_dump(doc, sort_keys=False)


def timings_text(timings_ms: Mapping[str, float]) -> str:
    """"compile 38 ms, kernel 30 ms (total 68 ms)" from phase → milliseconds."""
    parts = [f"{k} {v:.0f} ms" for k, v in timings_ms.items() if k != "total"]
    total = timings_ms.get("total", sum(timings_ms.values()))
    return ", ".join(parts) + f" (total {total:.0f} ms)"


def err(text: str) -> None:
    sys.stderr.write(text + "\n")

