"""Commands that change a running lab through its agent: `break`, `heal`, `events`."""

from __future__ import annotations

import json
import os
import time

import click

from labctl.cli.common import CONTEXT, handle_errors
from labctl.cli.output import table
from labctl.errors import LabctlError, NotFoundError


def _set_ready(lab_name: str | None, pod: str, namespace: str, ready: bool,
               reason: str) -> None:
    from labctl.agent.control import request
    from labctl.cli.targets import find_pod
    from labctl.lab import lifecycle, store

    lab = lifecycle.pick_lab(lab_name)
    with store.locked(lab):
        found = find_pod(store.state_of(lab), pod, namespace)
        reply = request(store.state_dir(lab), {"op": "set-ready", "pod": found.key,
                                               "ready": ready, "reason": reason},
                        timeout=30.0)
    if not reply.get("ok"):
        if reply.get("notfound"):
            raise NotFoundError(reply.get("error", "not found"))
        raise LabctlError(reply.get("error", "the agent refused"))
    if not reply.get("changed"):
        click.echo(f"pod {found.key} was already {'ready' if ready else 'not ready'}")
        return
    synced = ", ".join(f"{n} {ms} ms" for n, ms in reply.get("synced", {}).items())
    click.echo(f"pod {found.key} is now {'ready' if ready else 'not ready'}; "
               f"rules resynced ({synced or 'no rules to sync'}), DNS updated")


@click.command(name="break", context_settings=CONTEXT)
@click.argument("kind", type=click.Choice(["pod"]))
@click.argument("name")
@click.option("--readiness", is_flag=True, required=True,
              help="Make the pod fail its readiness: it leaves every Service's endpoints.")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("--lab", "lab_name", help="Which lab (default: the only one).")
@handle_errors
def break_(kind: str, name: str, readiness: bool, namespace: str, lab_name: str | None) -> None:
    """Make a pod fail, to watch the cluster react.

    With --readiness the pod keeps running but is no longer ready: the EndpointSlice
    controller drops it, kube-proxy's rules on every node stop sending it traffic and
    headless DNS names stop listing it. `labctl heal pod NAME` undoes it.

    \b
    Example:  labctl break pod web-0 --readiness && labctl rules node1 --service default/web
    """
    _set_ready(lab_name, name, namespace, False, "readiness probe failed (labctl break)")


@click.command(context_settings=CONTEXT)
@click.argument("kind", type=click.Choice(["pod"]))
@click.argument("name")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("--lab", "lab_name", help="Which lab (default: the only one).")
@handle_errors
def heal(kind: str, name: str, namespace: str, lab_name: str | None) -> None:
    """Undo `labctl break`: the pod is ready again and back in its Services."""
    _set_ready(lab_name, name, namespace, True, "readiness probe succeeded (labctl heal)")


@click.command(context_settings=CONTEXT)
@click.option("--lab", "lab_name", help="Which lab (default: the only one).")
@handle_errors
def events(lab_name: str | None) -> None:
    """Show the lab's events (readiness changes, rule syncs), oldest first."""
    from labctl.agent.live import EVENTS_FILE
    from labctl.lab import lifecycle, store

    lab = lifecycle.pick_lab(lab_name)
    path = os.path.join(store.state_dir(lab), EVENTS_FILE)
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                e = json.loads(line)
                rows.append([time.strftime("%H:%M:%S", time.localtime(e["time"])), e["type"],
                             e["reason"], e["object"], e["message"]])
    except FileNotFoundError:
        pass
    if not rows:
        click.echo("No events.")
        return
    click.echo(table(["TIME", "TYPE", "REASON", "OBJECT", "MESSAGE"], rows))
