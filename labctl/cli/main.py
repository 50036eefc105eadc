"""labctl — build a real Kubernetes Service network on this host.

Every command is thin: it parses, calls labctl's library, and formats the result.
"""

from __future__ import annotations

import os
import sys

from labctl.cli.commands import Choice, PathArg, argument, group, option
from labctl.cli.common import check_output, lab_option, output_option, print_warnings
from labctl.cli.output import age, err, table, timings_text
from labctl.errors import LabctlError

# Commands kept in their own modules, imported only when used (`labctl apply` should
# not pay for `labctl graph`'s imports): name → "module:attribute".
LAZY = {
    "agent": "labctl.cli.live:agent", "apply": "labctl.cli.apply:apply",
    "break": "labctl.cli.live:break_", "capture": "labctl.cli.capture:capture",
    "check": "labctl.cli.check:check",
    "completion": "labctl.cli.completion:completion", "delete": "labctl.cli.live:delete",
    "dns": "labctl.cli.dns:dns", "env": "labctl.cli.env:env",
    "events": "labctl.cli.live:events", "graph": "labctl.cli.graph:graph",
    "heal": "labctl.cli.live:heal", "proxy": "labctl.cli.proxy:proxy",
    "proxy-mode": "labctl.cli.proxy:proxy_mode", "rules": "labctl.cli.proxy:rules",
    "scale": "labctl.cli.live:scale", "trace": "labctl.cli.trace:trace",
}


@group("labctl", lazy=LAZY, version_of="labctl")
def cli() -> None:
    """Build a real Kubernetes Service network on this host from ordinary manifests.

    Every pod is a network namespace, every node a routed namespace with a bridge;
    the kernel forwards every packet, so ip, tcpdump and conntrack show the real thing.

    \b
    Examples (a typical session, as root):
      labctl validate topologies/quickstart
      labctl up topologies/quickstart
      labctl get pods -o wide
      labctl exec <pod> -- curl -s http://<other-pod-ip>:8080/
      labctl down
    """


# ------------------------------------------------------------------ offline commands


@cli.command()
@argument("files", nargs=-1, required=True, type=PathArg())
def validate(files: tuple[str, ...]) -> None:
    """Check FILES (YAML files or folders) without building anything.

    Reports every error at once (file:line:column, field, hint; exit 2), warnings,
    and the fields labctl accepts but does not model.

    \b
    Example:  labctl validate topologies/quickstart
    """
    from labctl.lab.lifecycle import prepare

    state, plan, warnings = prepare(files)
    print_warnings(warnings, show_info=True)
    print(f"ok: lab {state.lab.name!r}: {len(state.nodes)} nodes, {len(state.pods)} pods, "
               f"{len(state.services)} services, proxy mode {state.lab.proxy_mode}")


@cli.command()
@argument("files", nargs=-1, required=True, type=PathArg())
def plan(files: tuple[str, ...]) -> None:
    """Print the lab FILES describe as the equivalent shell commands (no root needed):
    ip and sysctl for the network, then iptables-restore / nft input for each node.

    \b
    Example:  labctl plan topologies/quickstart | less
    """
    print_plan(files)


def print_plan(files: tuple[str, ...], name: str | None = None) -> None:
    """The lab as a shell script: ip/sysctl commands, then each node's ruleset load."""
    from labctl.lab.lifecycle import prepare
    from labctl.plan.commands import commands
    from labctl.proxy.sync import load_commands

    state, the_plan, warnings = prepare(files, name)
    print_warnings(warnings)
    print("\n".join(commands(the_plan)))
    print("# kube-proxy: each node's first ruleset load")
    print("\n".join(load_commands(state)))


# ------------------------------------------------------------------ lifecycle


@cli.command()
@argument("files", nargs=-1, required=True, type=PathArg())
@option("--dry-run", is_flag=True, help="Print the plan as commands; create nothing.")
@option("--tour", is_flag=True, help="After building, show the pods and a cross-node "
        "request.")
@option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@output_option
@option("--name", help="Name the lab NAME instead of its metadata.name (a second "
        "copy of the same files, or a test's own lab).")
def up(files: tuple[str, ...], dry_run: bool, tour: bool, quiet: bool, fmt: str | None,
       name: str | None) -> None:
    """Build the lab FILES describe and start its agent.

    On any failure (or Ctrl-C) everything made so far is removed again. While it works,
    each phase is shown on stderr as it ends, with its duration (a progress bar for long
    labs on a terminal); at the end, a summary: nodes, pods, Services with their
    ClusterIPs and NodePorts, cluster DNS, the proxy mode and the timings.

    \b
    Examples:
      labctl up topologies/quickstart
      labctl up lab.yaml --dry-run
      labctl up topologies/quickstart --name qs2
      labctl up topologies/quickstart -o json | jq '.services[] | {name, clusterIP}'
    """
    from labctl.cli import report
    from labctl.cli.progress import PhaseProgress
    from labctl.lab import lifecycle

    check_output(fmt, quiet, dry_run=dry_run, tour=tour)
    if dry_run:
        print_plan(files, name)
        return
    progress = PhaseProgress(lines=not quiet and fmt is None, bar=False if quiet else None)
    result = lifecycle.up(files, progress, name=name)
    if quiet:
        return
    print_warnings(result.warnings)
    st, ms = result.state, report.as_ms(result.timings)
    if fmt == "json":
        print(report.to_json(report.lab_report(
            "up", st.lab.name, st, ms, adopted=result.adopted, agentPid=result.agent_pid)))
        return
    if result.adopted:
        print(f"lab {st.lab.name!r} was up but its agent had died: a new agent (pid "
                   f"{result.agent_pid}) adopted it; nothing was rebuilt")
        return
    print(f"lab {st.lab.name!r} is up: {report.headline(st)}\n")
    print(report.summary(st, ms))
    if tour:
        from labctl.cli.tour import tour as run_tour

        run_tour(st)
    print(f"explore: labctl get pods -o wide | labctl exec POD -- CMD | "
               f"take it down: labctl down {st.lab.name}")


@cli.command()
@argument("lab", required=False)
@option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@output_option
def down(lab: str | None, quiet: bool, fmt: str | None) -> None:
    """Take LAB down (the only lab when not named). Safe to repeat.

    Stops the agent and the pod host, kills what still runs in the lab's namespaces,
    removes the namespaces (and with them every link) and the lab's files; each phase
    is shown on stderr with its duration.

    \b
    Examples:
      labctl down
      labctl down quickstart -q
      labctl down quickstart -o json
    """
    from labctl.cli import report
    from labctl.cli.progress import PhaseProgress
    from labctl.lab import lifecycle, store

    check_output(fmt, quiet)
    if lab is None and not store.known_labs():
        if fmt == "json":
            print(report.to_json(report.lab_report("down", None, None, {"total": 0.0},
                                                        namespacesRemoved=0)))
        elif not quiet:
            print("no lab is up")
        return
    lab = lab or lifecycle.pick_lab(None)
    done = lifecycle.take_down(lab, PhaseProgress(lines=not quiet and fmt is None,
                                                  bar=False))
    ms = report.as_ms(done.timings)
    if fmt == "json":
        print(report.to_json(report.lab_report("down", lab, None, ms,
                                                    namespacesRemoved=done.namespaces)))
    elif not quiet:
        print(f"lab {lab!r} is down ({done.namespaces} namespaces removed)")
        if done.timings:  # nothing was there: nothing to time
            print(f"timings: {timings_text(ms)}")


@cli.command()
@option("--all", "everything", is_flag=True,
        help="Also remove labs that are up and healthy.")
def clean(everything: bool) -> None:
    """Remove what crashed labs left behind, found by labctl's ownership marks.

    Without --all, labs that are up and healthy are kept. Safe to repeat.

    \b
    Examples:
      labctl clean
      labctl clean --all
    """
    from labctl.lab import lifecycle

    removed = lifecycle.clean(everything)
    if not removed:
        print("nothing to clean")
    for lab, count in removed:
        print(f"removed lab {lab!r} ({count} namespaces)")


@cli.command()
def status() -> None:
    """List the labs on this host and whether each is healthy.

    \b
    Example:  labctl status
    """
    from labctl.lab import lifecycle

    rows = []
    for st in lifecycle.statuses():
        rec = st.record
        rows.append([st.name, st.status.upper(), st.namespaces,
                     st.agent_pid or "-", age(st.created) if st.created else "-",
                     ",".join(os.path.relpath(f) for f in rec.files) if rec else "-"])
    if not rows:
        print("no lab is up")
        return
    print(table(["LAB", "STATUS", "NAMESPACES", "AGENT", "AGE", "FILES"], rows))
    hints = {"AGENT-DEAD": "the agent died (traffic still flows): `labctl agent restart "
                           "--lab LAB` adopts the lab",
             "BROKEN": "an `up` was killed halfway: run `labctl clean`",
             "LEFTOVER": "namespaces without a lab record: run `labctl clean`",
             "KERNEL-GONE": "its namespaces are gone (a reboot?): `labctl down LAB`, then up"}
    for status_ in sorted({r[1] for r in rows} & set(hints)):
        print(f"hint: {hints[status_]}")


# ------------------------------------------------------------------ inspection

@cli.command()
@argument("resource", type=Choice(  # cli/get.py's KINDS
    ["pods", "pod", "po", "nodes", "node", "no", "services", "service", "svc",
     "endpoints", "ep", "endpointslices", "endpointslice", "deployments", "deployment",
     "deploy", "replicasets", "replicaset", "rs", "statefulsets", "statefulset", "sts"]))
@option("-o", "--output", "fmt", type=Choice(["wide", "json", "yaml"]))
@option("-n", "--namespace", default="default", show_default=True)
@option("-A", "--all-namespaces", is_flag=True)
@lab_option
def get(resource: str, fmt: str | None, namespace: str, all_namespaces: bool,
        lab_name: str | None) -> None:
    """Show pods, nodes, services, endpoints, deployments, replicasets or statefulsets of
    a running lab, like kubectl. During a rollout, `get rs` shows the old and the new
    ReplicaSet of each Deployment and `get deploy` how many pods are UP-TO-DATE.

    \b
    Examples:
      labctl get pods -o wide
      labctl get svc -A
      labctl get endpointslices -o yaml
      labctl get deploy
      labctl get rs                # the old and the new ReplicaSet during a rollout
      labctl get sts -A -o yaml
    """
    from labctl.agent.control import pod_states
    from labctl.cli.get import KINDS, WORKLOADS, show, show_workloads
    from labctl.lab import lifecycle, store

    lab = lifecycle.pick_lab(lab_name)
    rec = store.load(lab)
    state = store.state_of(lab)
    kind = KINDS[resource]
    states = pod_states(store.state_dir(lab)) if kind in ("pods", *WORKLOADS) else None
    shown_ns = None if all_namespaces else namespace
    created = rec.created if rec else 0.0
    if kind in WORKLOADS:
        topology, runtime = store.running_workloads(lab)
        print(show_workloads(state, resource, fmt, shown_ns, created, topology, runtime,
                             states))
        return
    print(show(state, resource, fmt, shown_ns, created, states))


@cli.command(name="exec")
@argument("target")
@argument("command", nargs=-1, required=True, rest=True)
@option("-c", "--container", help="Container (processes share the pod's network).")
@option("-n", "--namespace", default="default", show_default=True)
@lab_option
def exec_(target: str, command: tuple[str, ...], container: str | None, namespace: str,
          lab_name: str | None) -> None:
    """Run COMMAND inside a pod's, a node's or the `external` client's network namespace.

    TARGET is a pod name (or NAMESPACE/POD), a node name, or `external`. The exit code
    is COMMAND's. /etc/netns/<namespace>/ files apply, as with `ip netns exec`, so a
    pod's resolv.conf and hosts are in place; in a pod, COMMAND gets the container's
    environment (the kubelet's Service variables) like `kubectl exec`.

    \b
    Examples:
      labctl exec web-0 -- ip addr
      labctl exec node1 -- ip route
      labctl exec external -- curl -s http://172.18.0.2:30080/
    """
    from labctl.cli.targets import resolve
    from labctl.lab import lifecycle, store

    lab = lifecycle.pick_lab(lab_name)
    netns_name, env = resolve(store.state_of(lab), target, namespace, container,
                              store.state_dir(lab))
    argv = ["ip", "netns", "exec", netns_name, *command]
    if env is None:
        os.execvp("ip", argv)
    os.execvpe("ip", argv, env)


@cli.command()
@argument("pod")
@option("-c", "--container")
@option("-n", "--namespace", default="default", show_default=True)
@option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@lab_option
def logs(pod: str, container: str | None, namespace: str, follow: bool,
         lab_name: str | None) -> None:
    """Print a container's log: its process output, or the built-in server's requests.

    \b
    Example:  labctl logs web-0 -c web
    """
    from labctl.agent.control import log_path
    from labctl.cli.targets import find_pod
    from labctl.lab import lifecycle, store

    lab = lifecycle.pick_lab(lab_name)
    found = find_pod(store.state_of(lab), pod, namespace)
    containers = [c.name for c in found.spec.containers]
    if container is None:
        container = containers[0]
        if len(containers) > 1:
            err(f'Defaulted container "{container}" out of: {", ".join(containers)}')
    elif container not in containers:
        raise LabctlError(f"container {container!r} is not in pod {found.key}; "
                          f"containers: {', '.join(containers)}")
    path = log_path(store.state_dir(lab), found.namespace, found.name, container)
    if follow:
        os.execvp("tail", ["tail", "-n", "+1", "-F", path])
    try:
        with open(path) as f:
            sys.stdout.write(f.read())
    except FileNotFoundError:
        pass


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["__complete"]:  # the shell completion scripts ask (cli/completion.py)
        from labctl.cli.completion import respond

        sys.stdout.write(respond(cli, args[1:]))
        return
    cli.main(args, "labctl")


if __name__ == "__main__":
    main()
