"""`labctl check`: run an exercise's checks against its running lab."""

from __future__ import annotations

import os
import sys

from labctl.cli.commands import Choice, argument, command, option
from labctl.cli.common import print_warnings
from labctl.cli.output import table
from labctl.errors import LabctlError, NotFoundError


@command()
@argument("exercise", required=False)
@option("--lab", "lab_name", help="Run against this lab instead of the one "
        "checks.yaml names (e.g. a second copy of the exercise).")
@option("-o", "--output", "fmt", type=Choice(["text", "json"]), default="text",
        show_default=True, help="json: the labctl.check/v1 schema, for graders.")
@option("--list", "list_", is_flag=True,
        help="List the exercises under topologies/ with their titles.")
def check(exercise: str | None, lab_name: str | None, fmt: str, list_: bool) -> None:
    """Run an exercise's checks (its checks.yaml) against the running lab and show, per
    task, what passed and what failed (expected vs observed), with a reachability matrix
    (clients × targets) for each reach check.

    EXERCISE is a folder (topologies/04-clusterip-iptables), a folder name under
    topologies/, or its beginning (04). Without it: the exercise whose checks.yaml
    names a running lab. Exit code 0 when every check passes, 1 when one fails (or the
    lab is not up), 2 when the check file is wrong (every error with file:line:column;
    nothing is run) or EXERCISE names none.
    The format of checks.yaml: topologies/README.md.

    \b
    Examples:
      labctl check --list
      labctl up topologies/quickstart && labctl check
      labctl check 04 -o json
      labctl check ./my-exercise --lab ex04-copy
    """
    from labctl.exercise import catalog, spec

    if list_:
        _list(catalog.entries())
        return
    folder = catalog.find(exercise) if exercise else catalog.for_lab(_labs())
    loaded = spec.load(folder)
    print_warnings(list(loaded.warnings))
    if os.geteuid() != 0:
        raise LabctlError("labctl check enters the lab's network namespaces: run it as root "
                          "(sudo labctl check)")
    from labctl.exercise import report, run
    from labctl.lab import lifecycle, store

    try:
        lab = lifecycle.pick_lab(lab_name or loaded.lab)
    except NotFoundError as exc:
        raise NotFoundError(f"{exc}; bring the exercise's lab up first: labctl up "
                            f"{os.path.join(loaded.folder, 'lab.yaml')}") from None
    result = run.run(loaded, store.state_of(lab), store.state_dir(lab))
    print(report.json_text(result) if fmt == "json" else report.text(result))
    sys.exit(0 if result.passed else 1)


def _labs() -> list[str]:
    from labctl.lab import store

    return store.known_labs()


def _list(entries: list) -> None:  # type: ignore[type-arg]
    if not entries:
        print("no exercises found")
        return
    rows = [[e.name, "yes" if e.has_checks else "no", e.title or "-"] for e in entries]
    print(table(["EXERCISE", "CHECKS", "TITLE"], rows))
    print(f"folders: {os.path.dirname(entries[0].folder)}")
