"""`labctl apply`: bring a running lab to new manifests."""

from __future__ import annotations

import click

from labctl.cli.common import CONTEXT, handle_errors


@click.command(context_settings=CONTEXT)
@click.option("-f", "--filename", "files", multiple=True, required=True,
              type=click.Path(exists=True), help="The lab's manifests (files or folders).")
@click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
@click.option("--lab", "lab_name", help="Which lab (default: the only one).")
@handle_errors
def apply(files: tuple[str, ...], dry_run: bool, lab_name: str | None) -> None:
    """Apply changed manifests to a running lab, like kubectl apply.

    Services (new, changed, deleted; ports, selectors, types) and EndpointSlices are
    applied through the agent: every node gets kube-proxy's partial sync and DNS answers
    at once. Running pods keep the environment they started with, as with a kubelet —
    a Service created now is in DNS but not in their env vars. Pod and workload changes
    are refused for now (down and up again).

    \b
    Example:  labctl apply -f topologies/quickstart --dry-run
    """
    from labctl.lab import lifecycle

    lab = lifecycle.pick_lab(lab_name)
    result = lifecycle.apply(lab, files, dry_run)
    if not result.changes:
        click.echo("no changes")
        return
    suffix = " (dry run)" if dry_run else ""
    for obj, verb in result.changes:
        click.echo(f"{obj} {verb}{suffix}")
    if result.synced:
        click.echo("rules resynced: " + ", ".join(f"{n} {ms} ms"
                                                 for n, ms in result.synced.items()))
