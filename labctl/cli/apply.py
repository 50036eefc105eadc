"""`labctl apply`: bring a running lab to new manifests."""

from __future__ import annotations

import sys

from labctl.cli.commands import PathArg, command, option
from labctl.cli.common import check_output, lab_option, output_option
from labctl.cli.output import err, timings_text


@command()
@option("-f", "--filename", "files", multiple=True, required=True,
        type=PathArg(), help="The lab's manifests (files or folders).")
@option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
@lab_option
@option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@output_option
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
    from labctl.lab import registry, remote

    check_output(fmt, quiet)
    lab = registry.pick_lab(lab_name)
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
        from labctl.lab import store

        print(report.to_json(report.lab_report(
            "apply", lab, store.state_of(lab), result.timings,
            report.apply_changes(result.changes, result.pods, result.proxy_mode),
            dryRun=dry_run, commands=result.commands, synced=result.synced,
            rollouts=result.rollouts)))
        return
    if not result.changes and not result.proxy_mode:
        print("no changes")
        return
    suffix = " (dry run)" if dry_run else ""
    for obj, verb in result.changes:
        print(f"{obj} {verb}{suffix}")
    for key in result.pods.get("created", []):
        print(f"  pod/{key.partition('/')[2]} to be created{suffix}" if dry_run
                   else f"  pod/{key.partition('/')[2]} created")
    for key in result.pods.get("terminating", []):
        print(f"  pod/{key.partition('/')[2]} to terminate{suffix}" if dry_run
                   else f"  pod/{key.partition('/')[2]} terminating")
    for line in result.rollouts:
        print(line + suffix)
    if result.proxy_mode:
        old, new = result.proxy_mode
        print(f"proxy mode {old} → {new}{suffix}")
    if dry_run and result.commands:
        print("kernel changes:")
        for line in result.commands:
            print(f"  {line}")
    if result.synced:
        print("rules resynced: " + ", ".join(f"{n} {ms} ms"
                                                 for n, ms in result.synced.items()))
    if result.timings:
        print(f"timings: {timings_text(result.timings)}")
