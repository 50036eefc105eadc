"""`labctl apply`: bring a running lab to new manifests."""

from __future__ import annotations

import sys

import click

from labctl.cli.common import CONTEXT, check_output, handle_errors, output_option
from labctl.cli.output import err, timings_text


@click.command(context_settings=CONTEXT)
@click.option("-f", "--filename", "files", multiple=True, required=True,
              type=click.Path(exists=True), help="The lab's manifests (files or folders).")
@click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
@click.option("--lab", "lab_name", help="Which lab (default: the only one).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@output_option
@handle_errors
def apply(files: tuple[str, ...], dry_run: bool, lab_name: str | None, quiet: bool,
          fmt: str | None) -> None:
    """Apply changed manifests to a running lab, like kubectl apply.

    Everything can change: Services (ports, selectors, types), EndpointSlices, Pods,
    Deployments and StatefulSets (replicas, templates), and spec.proxyMode. The agent
    compiles the files — keeping what `labctl scale` and `labctl delete` did since —
    and converges the lab the way `up` builds it: new pods get namespaces, addresses and
    containers, removed or replaced pods terminate gracefully (endpoints first, then
    SIGTERM), every node gets kube-proxy's partial sync and DNS answers at once. Invalid
    files change nothing. Running pods keep the environment they started with, as with
    a kubelet: a Service created now is in DNS but not in their env vars.

    \b
    Examples:
      labctl apply -f topologies/quickstart --dry-run
      labctl apply -f lab.yaml
      labctl apply -f lab.yaml -o json | jq '.changes'
    """
    from labctl.lab import remote, store

    check_output(fmt, quiet)
    lab = store.pick_lab(lab_name)
    try:
        result = remote.apply(lab, files, dry_run)
    except remote.AppliedUserError as e:
        err(e.text)
        sys.exit(e.exit_code)
    if quiet:
        return
    for text in result.warnings:
        err(text)
    if fmt == "json":
        from labctl.cli import report

        click.echo(report.to_json(report.lab_report(
            "apply", lab, store.state_of(lab), result.timings,
            report.apply_changes(result.changes, result.pods, result.proxy_mode),
            dryRun=dry_run, commands=result.commands, synced=result.synced)))
        return
    if not result.changes and not result.proxy_mode:
        click.echo("no changes")
        return
    suffix = " (dry run)" if dry_run else ""
    for obj, verb in result.changes:
        click.echo(f"{obj} {verb}{suffix}")
    for key in result.pods.get("created", []):
        click.echo(f"  pod/{key.partition('/')[2]} to be created{suffix}" if dry_run
                   else f"  pod/{key.partition('/')[2]} created")
    for key in result.pods.get("terminating", []):
        click.echo(f"  pod/{key.partition('/')[2]} to terminate{suffix}" if dry_run
                   else f"  pod/{key.partition('/')[2]} terminating")
    if result.proxy_mode:
        old, new = result.proxy_mode
        click.echo(f"proxy mode {old} → {new}{suffix}")
    if dry_run and result.commands:
        click.echo("kernel changes:")
        for line in result.commands:
            click.echo(f"  {line}")
    if result.synced:
        click.echo("rules resynced: " + ", ".join(f"{n} {ms} ms"
                                                 for n, ms in result.synced.items()))
    if result.timings:
        click.echo(f"timings: {timings_text(result.timings)}")
