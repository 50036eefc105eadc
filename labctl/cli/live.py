"""Commands that change a running lab through its agent: `break`, `heal`, `scale`,
`delete`, `events`, `agent`."""

from __future__ import annotations

import os
import time
from typing import Any

from labctl.cli.commands import Choice, PathArg, argument, command, group, option
from labctl.cli.common import lab_option
from labctl.cli.output import table
from labctl.errors import LabctlError, NotFoundError, UserError


def ask(lab: str, payload: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """One request to the lab's agent, under the lab's lock; its refusal as an error
    (not found: exit 1, as kubectl)."""
    from labctl.agent.control import agent_pid, request
    from labctl.lab import store

    sdir = store.state_dir(lab)
    if agent_pid(sdir) is None:
        raise LabctlError(f"lab {lab!r} has no running agent; start one with "
                          f"`labctl agent restart --lab {lab}`")
    with store.locked(lab):
        reply = request(sdir, payload, timeout=timeout)
    if not reply.get("ok"):
        if reply.get("notfound"):
            raise NotFoundError(f"Error from server (NotFound): {reply.get('error')}")
        raise LabctlError(str(reply.get("error", "the agent refused")))
    return reply


def _pod_key(lab: str, pod: str, namespace: str) -> str:
    from labctl.cli.targets import find_pod
    from labctl.lab import store

    try:
        return find_pod(store.state_of(lab), pod, namespace).key
    except NotFoundError as e:  # worded as kubectl words it, like the agent's refusals
        raise NotFoundError(f"Error from server (NotFound): {e}") from None


def _wait_for(lab: str, key: str, want_ready: bool, timeout: float) -> bool:
    from labctl.agent.control import agent_pid, pod_states
    from labctl.lab import store

    sdir = store.state_dir(lab)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = pod_states(sdir)
        if states is None and agent_pid(sdir) is None:
            raise LabctlError(f"lab {lab!r} has no running agent any more (taken down, or "
                              f"the agent died): cannot tell whether {key} is ready")
        info = (states or {}).get(key)
        if states is not None and info is None:
            raise NotFoundError(f"pod {key} is gone")
        # the pod's Ready condition, and the rules and DNS synced with it
        if info is not None and bool(info.get("ready")) == want_ready \
                and bool(info.get("endpointsReady", want_ready)) == want_ready:
            return True
        time.sleep(0.1)
    return False


@command(name="break")
@argument("kind", type=Choice(["pod"]))
@argument("name")
@option("--readiness", "what", flag_value="readiness",
        help="Its readiness probes fail: it leaves every Service's endpoints.")
@option("--liveness", "what", flag_value="liveness",
        help="Its liveness probes fail: its containers are restarted.")
@option("--crash", "what", flag_value="crash",
        help="Its containers exit at once, at every start: CrashLoopBackOff.")
@option("--wait", "wait", is_flag=True,
        help="With --readiness: return once the pod is not ready (≤ 60 s).")
@option("-n", "--namespace", default="default", show_default=True)
@lab_option
def break_(kind: str, name: str, what: str | None, wait: bool, namespace: str,
           lab_name: str | None) -> None:
    """Make a pod fail, to watch the cluster react (`labctl events -w`).

    \b
    --readiness  every container's readiness probe fails from its next period on; after
                 failureThreshold failures the pod is not Ready: the EndpointSlice
                 controller marks its endpoints not ready, kube-proxy's rules on every
                 node stop sending it new connections, DNS stops listing it. A container
                 without a readiness probe gets a stand-in (every 1 s, 3 failures).
    --liveness   the liveness probes fail: after failureThreshold failures the kubelet
                 kills the container and restarts it (restartPolicy), again and again.
    --crash      the containers exit with code 1 at every start: restarts back off
                 1 s, 2 s, 4 s … 30 s (CrashLoopBackOff).

    `labctl heal pod NAME` ends every fault.

    \b
    Examples:
      labctl break pod web-0 --readiness --wait && labctl rules node1 --service default/web
      labctl break pod web-0 --crash; labctl get pods -w
    """
    from labctl.lab import lifecycle

    if what is None:
        raise UserError("say how to break it: --readiness, --liveness or --crash")
    lab = lifecycle.pick_lab(lab_name)
    key = _pod_key(lab, name, namespace)
    ask(lab, {"op": "break", "pod": key, "what": what})
    print(f"pod/{key.partition('/')[2]} broken ({what})")
    if wait and what == "readiness":
        if not _wait_for(lab, key, False, 60.0):
            raise LabctlError(f"pod {key} is still ready after 60 s")
        print(f"pod/{key.partition('/')[2]} is not ready")


@command()
@argument("kind", type=Choice(["pod"]))
@argument("name")
@option("--wait", "wait", is_flag=True, help="Return once the pod is ready (≤ 60 s).")
@option("-n", "--namespace", default="default", show_default=True)
@lab_option
def heal(kind: str, name: str, wait: bool, namespace: str, lab_name: str | None) -> None:
    """Undo `labctl break`: probes ask the containers again, crashes stop. The pod is
    back in its Services once its readiness probe succeeds.

    \b
    Example:  labctl heal pod web-pptqln7mcg-knq4m --wait
    """
    from labctl.lab import lifecycle

    lab = lifecycle.pick_lab(lab_name)
    key = _pod_key(lab, name, namespace)
    ask(lab, {"op": "heal", "pod": key})
    print(f"pod/{key.partition('/')[2]} healed")
    if wait:
        if not _wait_for(lab, key, True, 60.0):
            raise LabctlError(f"pod {key} is not ready after 60 s")
        print(f"pod/{key.partition('/')[2]} is ready")


def _workload(target: str) -> tuple[str, str]:
    kinds = {"deployment": "Deployment", "deploy": "Deployment", "deployments": "Deployment",
             "statefulset": "StatefulSet", "sts": "StatefulSet",
             "statefulsets": "StatefulSet"}
    kind, slash, name = target.partition("/")
    kind = kind.split(".")[0].lower()
    if not slash or kind not in kinds or not name:
        raise UserError(f"{target!r}: expected deployment/NAME or statefulset/NAME "
                        "(e.g. deployment/web)")
    return kinds[kind], name


@command()
@argument("target")
@option("--replicas", type=int, required=True, help="How many pods it should run.")
@option("-n", "--namespace", default="default", show_default=True)
@lab_option
def scale(target: str, replicas: int, namespace: str, lab_name: str | None) -> None:
    """Set how many pods a Deployment or StatefulSet runs, like kubectl scale.

    New pods are created, placed, addressed and started; the extra ones terminate
    gracefully (endpoints first, then SIGTERM and the grace period). A later
    `labctl apply` with a different spec.replicas wins, as with kubectl.

    \b
    Example:  labctl scale deployment/web --replicas 5
    """
    from labctl.lab import lifecycle

    kind, name = _workload(target)
    if replicas < 0:
        raise UserError(f"--replicas must be 0 or more, not {replicas}")
    lab = lifecycle.pick_lab(lab_name)
    reply = ask(lab, {"op": "scale", "kind": kind, "namespace": namespace, "name": name,
                      "replicas": replicas}, timeout=120.0)
    print(f"{kind.lower()}.apps/{name} scaled")
    for key in reply.get("added", []):
        print(f"  pod/{key.partition('/')[2]} created")
    for key in reply.get("terminating", []):
        print(f"  pod/{key.partition('/')[2]} terminating")


@command()
@argument("args", nargs=-1)
@option("-f", "--filename", "files", multiple=True, type=PathArg(),
        help="Delete the objects these manifests describe.")
@option("--grace-period", type=int, default=None,
        help="Seconds before SIGKILL (default: the pod's "
             "terminationGracePeriodSeconds).")
@option("--wait/--no-wait", default=True, show_default=True,
        help="Return once the pods are gone.")
@option("-n", "--namespace", default="default", show_default=True)
@lab_option
def delete(args: tuple[str, ...], files: tuple[str, ...], grace_period: int | None,
           wait: bool, namespace: str, lab_name: str | None) -> None:
    """Delete a pod (gracefully) or the objects of manifests, like kubectl delete.

    A pod's endpoints turn terminating at once (kube-proxy stops sending it new
    connections), then its containers get SIGTERM and, after the grace period,
    SIGKILL. A Deployment's pod is replaced by a new one (new name, new IP) at once; a
    StatefulSet's comes back under the same name once the old one is gone; a bare pod
    stays gone.

    \b
    Examples:
      labctl delete pod web-7d4b9c6f5-x2x9k
      labctl delete pod db-0 --grace-period 0
      labctl delete -f extra-service.yaml
    """
    from labctl.lab import lifecycle

    lab = lifecycle.pick_lab(lab_name)
    timeout = (grace_period if grace_period is not None else 30) + 90.0
    if files:
        if args:
            raise UserError("give either -f FILE or `pod NAME`, not both")
        objects = _objects_in(files, lab)
        reply = ask(lab, {"op": "delete", "objects": objects, "wait": wait}, timeout=timeout)
        for kind, _ns, name in objects:
            print(f"{_kubectl_kind(kind)}/{name} deleted")
        return
    if len(args) != 2 or args[0] not in ("pod", "pods", "po"):
        raise UserError("expected `labctl delete pod NAME` or `labctl delete -f FILE`")
    key = _pod_key(lab, args[1], namespace)
    payload: dict[str, Any] = {"op": "delete-pod", "pod": key, "wait": wait}
    if grace_period is not None:
        if grace_period < 0:
            raise UserError(f"--grace-period must be 0 or more, not {grace_period}")
        payload["grace"] = grace_period
    reply = ask(lab, payload, timeout=timeout)
    print(f'pod "{key.partition("/")[2]}" deleted')
    for new in reply.get("added", []):
        print(f"  replaced by pod/{new.partition('/')[2]}")


def _kubectl_kind(kind: str) -> str:
    return {"Deployment": "deployment.apps", "StatefulSet": "statefulset.apps",
            "EndpointSlice": "endpointslice.discovery.k8s.io"}.get(kind, kind.lower())


def _objects_in(files: tuple[str, ...], lab: str) -> list[list[str]]:
    from labctl.model.load import load_topology

    topology, _ = load_topology(list(files), lab_name=lab)
    out = []
    for kind, items in (("Pod", topology.pods), ("Deployment", topology.deployments),
                        ("StatefulSet", topology.statefulsets),
                        ("Service", topology.services),
                        ("EndpointSlice", topology.endpoint_slices)):
        out += [[kind, o.meta.namespace, o.meta.name] for o in items]
    if not out:
        raise UserError(f"no deletable objects in {', '.join(files)}")
    return out


@command()
@option("-w", "--watch", is_flag=True, help="Keep printing new events (Ctrl-C ends).")
@lab_option
def events(watch: bool, lab_name: str | None) -> None:
    """Show the lab's events, oldest first, like kubectl get events: probes failing,
    endpoints changing, rules synced on each node (and how long it took), containers
    restarting, pods created and deleted.

    \b
    Examples:
      labctl events
      labctl events -w --lab quickstart
    """
    from labctl.agent.events import read
    from labctl.agent.paths import StatePaths
    from labctl.lab import lifecycle, store

    lab = lifecycle.pick_lab(lab_name)
    path = StatePaths(store.state_dir(lab)).events
    found, offset = read(path)
    headers = ["TIME", "TYPE", "REASON", "OBJECT", "MESSAGE"]

    def rows(evs: list[Any]) -> list[list[str]]:
        return [[time.strftime("%H:%M:%S", time.localtime(e.time))
                 + f".{int(e.time % 1 * 1000):03d}", e.type, e.reason, e.object, e.message]
                for e in evs]

    if not found and not watch:
        print("No events.")
        return
    if found:
        print(table(headers, rows(found)))
    elif watch:
        print("   ".join(headers))
    if not watch:
        return
    try:
        while os.path.isdir(store.state_dir(lab)):
            time.sleep(0.2)
            new, offset = read(path, offset)
            for row in rows(new):
                print("  ".join(row))
    except KeyboardInterrupt:
        pass


@group()
def agent() -> None:
    """The lab's agent (the controller) and pod host (the containers).

    \b
    Example:  labctl agent restart --lab quickstart
    """


@agent.command(name="restart")
@lab_option
def agent_restart(lab_name: str | None) -> None:
    """Start a new agent for a running lab (stopping the old one if it still runs).

    The new agent adopts the lab without rebuilding it: the pod host and the kernel's
    rules carry on, so no connection is lost; it loads every node's rules afresh and
    restarts the pods whose containers are gone (and the pod host, if it died).

    \b
    Example:  labctl agent restart --lab quickstart
    """
    from labctl.lab import lifecycle

    lab = lifecycle.pick_lab(lab_name)
    pid = lifecycle.restart_agent(lab)
    print(f"agent for lab {lab!r} running (pid {pid})")
