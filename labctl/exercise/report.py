"""A run's results as text for a learner (per task, expected vs observed, the reach
matrices) or as JSON for graders (schema `labctl.check/v1`, documented in
topologies/README.md)."""

from __future__ import annotations

import json
from typing import Any

from labctl.cli.output import table
from labctl.exercise.run import Cell, Result, RunResult

SCHEMA = "labctl.check/v1"


def to_json(run: RunResult) -> dict[str, Any]:
    results = run.results
    return {
        "schema": SCHEMA,
        "exercise": run.exercise.name,
        "lab": run.lab,
        "file": run.exercise.file,
        "passed": run.passed,
        "counts": {"checks": len(results), "passed": sum(r.passed for r in results),
                   "failed": sum(not r.passed for r in results)},
        "seconds": round(run.seconds, 3),
        "tasks": [{"task": t.task.number, "title": t.task.title, "passed": t.passed,
                   "checks": [_check(r) for r in t.results]} for t in run.tasks],
    }


def _check(r: Result) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": r.check.kind, "title": r.check.title,
                           "source": str(r.check.pos), "passed": r.passed,
                           "expected": r.expected, "observed": r.observed,
                           "detail": r.detail}
    if r.check.kind == "reach":
        out["cells"] = [{"from": c.client, "to": c.target, "address": c.address,
                         "expected": c.expected, "observed": c.observed,
                         "passed": c.passed, "answeredBy": list(c.pods),
                         "detail": c.detail} for c in r.cells]
    return out


def json_text(run: RunResult) -> str:
    return json.dumps(to_json(run), indent=2, ensure_ascii=False)


def text(run: RunResult) -> str:
    lines = [f"exercise {run.exercise.name} on lab {run.lab}"]
    for t in run.tasks:
        lines += ["", f"Task {t.task.number}: {t.task.title}  "
                      f"[{'PASS' if t.passed else 'FAIL'}]"]
        for r in t.results:
            lines += _result_lines(r)
    results = run.results
    good = sum(r.passed for r in results)
    failed = [str(t.task.number) for t in run.tasks if not t.passed]
    lines += ["", f"{good}/{len(results)} checks passed"
              + (f"; failed: task {', '.join(failed)}" if failed else "")
              + f" ({run.seconds:.1f} s)"]
    return "\n".join(lines)


def _result_lines(r: Result) -> list[str]:
    mark = "PASS" if r.passed else "FAIL"
    lines = [f"  {mark}  {r.check.title}"]
    if r.check.kind == "reach":
        lines += ["        " + row for row in matrix(r.cells)]
        if not r.passed:
            lines += [f"        expected: {r.expected}"]
            lines += [f"        {c.client} → {c.target}: {c.observed}"
                      + (f" — {c.detail}" if c.detail else "")
                      for c in r.cells if not c.passed]
        return lines
    if not r.passed:
        lines += [f"        expected: {r.expected}", f"        observed: {r.observed}"]
        if r.detail:
            lines.append(f"        {r.detail}")
    return lines


def matrix(cells: tuple[Cell, ...]) -> list[str]:
    """Rows clients, columns targets, cells expected/observed ('!' marks a failure)."""
    clients = list(dict.fromkeys(c.client for c in cells))
    targets = list(dict.fromkeys(c.target for c in cells))
    by = {(c.client, c.target): c for c in cells}
    rows = []
    for client in clients:
        row = [client]
        for target in targets:
            c = by.get((client, target))
            row.append("-" if c is None else
                       f"{c.expected}/{c.observed}" + ("" if c.passed else " !"))
        rows.append(row)
    return table(["from \\ to", *targets], rows).splitlines()
