"""up / down / clean: the only places that create or destroy a lab as a whole.

`up` = compile (pure) → render the Plan (pure) → apply it (net/) → start the agent.
Any failure or interrupt on the way undoes what was made; `kill -9` at any point leaves
objects that `clean` finds by their ownership mark.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from labctl.agent import control
from labctl.cluster.compile import compile_files
from labctl.cluster.state import ClusterState
from labctl.errors import CapabilityError, Diagnostic, LabctlError, NotFoundError
from labctl.lab import etcnetns, store
from labctl.lab.workloads import workloads_document
from labctl.net import inventory
from labctl.net.apply import apply_plan
from labctl.plan.model import Plan
from labctl.plan.render import render
from labctl.proxy import sync

Progress = Callable[[str, int, int], None]


@dataclass
class UpResult:
    state: ClusterState
    plan: Plan
    warnings: list[Diagnostic]
    timings: dict[str, float] = field(default_factory=dict)
    agent_pid: int = 0


def prepare(paths: Sequence[str]) -> tuple[ClusterState, Plan, list[Diagnostic]]:
    """The pure half of `up`: validate, compile, render. Needs no root."""
    state, warnings = compile_files(paths, addons=True)
    return state, render(state), warnings


def check_capabilities(state: ClusterState) -> None:
    """Everything `up` needs, checked before anything is created."""
    if os.geteuid() != 0:
        raise CapabilityError("labctl up needs root (it creates network namespaces); "
                              "run it with sudo")
    sync.check(state)


def up(paths: Sequence[str], progress: Progress | None = None) -> UpResult:
    t0 = time.perf_counter()
    state, plan, warnings = prepare(paths)
    timings = {"compile": time.perf_counter() - t0}
    check_capabilities(state)
    lab = state.lab.name
    with store.locked(lab):
        if store.load(lab) is not None or os.path.exists(store.state_dir(lab)):
            raise LabctlError(f"lab {lab!r} is already up; take it down first with "
                              f"`labctl down {lab}`")
        rec = store.create(lab, paths)
        try:
            rec.namespaces = [ns.name for ns in plan.namespaces]
            store.save(rec)
            t = time.perf_counter()
            apply_plan(plan, progress)
            timings["kernel"] = time.perf_counter() - t
            t = time.perf_counter()
            sync.sync_nodes(state)
            etcnetns.write(state)  # resolv.conf and hosts, before any process starts
            timings["rules"] = time.perf_counter() - t
            t = time.perf_counter()
            with open(os.path.join(store.state_dir(lab), "workloads.json"), "w") as f:
                json.dump(workloads_document(state), f)
            pid = control.start_agent(store.state_dir(lab))
            timings["agent"] = time.perf_counter() - t
        except BaseException:
            _teardown(lab, rec.namespaces)
            raise
        rec.status, rec.up_pid, rec.timings = "up", 0, timings
        store.save(rec)
    return UpResult(state, plan, warnings, timings, pid)


def _teardown(lab: str, namespaces: list[str]) -> None:
    """Stop the agent and every process in the lab's namespaces, drop them, forget the lab."""
    sdir = store.state_dir(lab)
    if os.path.isdir(sdir):
        control.stop_agent(sdir)
    control.kill_lab_processes(namespaces)
    inventory.delete_namespaces(namespaces)
    etcnetns.remove(lab)
    store.remove(lab)


def down(lab: str) -> int:
    """Take a lab down (idempotent). Returns how many namespaces were removed."""
    with store.locked(lab):
        rec = store.load(lab)
        owned = inventory.lab_namespaces().get(lab, [])
        if (rec is None and not owned and not os.path.isdir(store.state_dir(lab))
                and lab not in etcnetns.owners()):
            return 0
        namespaces = sorted(set(owned) | set(rec.namespaces if rec else []))
        _teardown(lab, namespaces)
        return len(owned)


@dataclass
class LabStatus:
    name: str
    status: str  # up | creating | agent-dead | broken | kernel-gone | leftover
    namespaces: int
    agent_pid: int | None
    created: float = 0.0
    record: store.LabRecord | None = None


def statuses() -> list[LabStatus]:
    owned = inventory.lab_namespaces()
    out = []
    for lab in sorted(set(owned) | set(store.known_labs()) | etcnetns.owners()):
        rec = store.load(lab)
        pid = control.agent_pid(store.state_dir(lab)) if rec else None
        count = len(owned.get(lab, []))
        if rec is None:
            status = "leftover"
        elif rec.status == "creating":
            status = "creating" if store.pid_alive(rec.up_pid) else "broken"
        elif count == 0:
            status = "kernel-gone"
        elif pid is None:
            status = "agent-dead"
        else:
            status = "up"
        out.append(LabStatus(lab, status, count, pid, rec.created if rec else 0.0, rec))
    return out


def clean(everything: bool = False) -> list[tuple[str, int]]:
    """Remove what crashed labs left behind (with `everything`, every lab). Idempotent."""
    removed = []
    for st in statuses():
        if st.status in ("up", "creating") and not everything:
            continue
        removed.append((st.name, down(st.name)))
    return removed


def pick_lab(lab: str | None) -> str:
    """The lab a command means: the one named, or the only one that exists."""
    labs = sorted(set(store.known_labs()))
    if lab:
        if lab not in labs:
            raise NotFoundError(f"no lab named {lab!r}" +
                                (f"; labs: {', '.join(labs)}" if labs else "; no lab is up"))
        return lab
    if not labs:
        raise NotFoundError("no lab is up; start one with `labctl up FILE`")
    if len(labs) > 1:
        raise NotFoundError(f"several labs are up ({', '.join(labs)}); choose one with --lab")
    return labs[0]


def set_proxy_mode(lab: str, mode: str) -> tuple[str, dict[str, float]]:
    """Switch a running lab's kube-proxy mode: remove the old mode's rules from every
    node, load the new mode's, remember the choice, and have the agent put pods'
    readiness back. Returns (old mode, timings)."""
    from dataclasses import replace

    with store.locked(lab):
        rec = store.load(lab)
        if rec is None:
            raise NotFoundError(f"lab {lab!r} is not up")
        state = store.state_of(lab)
        old = state.lab.proxy_mode
        if old == mode:
            return old, {}
        new_state = replace(state, lab=replace(state.lab, proxy_mode=mode))
        sync.check(new_state)
        times: dict[str, float] = {}
        for node in state.nodes:
            t = time.perf_counter()
            sync.cleanup_node(state, node.name, old)
            times[node.name] = time.perf_counter() - t
        for name, done in sync.sync_nodes(new_state).items():
            times[name] += done.render_seconds + done.load_seconds
        rec.proxy_mode = mode
        store.save(rec)
        if control.agent_pid(store.state_dir(lab)) is not None:
            # the agent syncs incrementally from what it last loaded: start it afresh
            control.request(store.state_dir(lab), {"op": "reload"}, timeout=30.0)
        return old, times


@dataclass
class ApplyResult:
    lab: str
    changes: list[tuple[str, str]]  # (kind/name, created | configured | deleted)
    synced: dict[str, float] = field(default_factory=dict)


def _pod_view(state: ClusterState) -> dict[str, object]:
    return {p.key: (p.node, p.ip, p.spec, dict(p.labels)) for p in state.pods}


def apply(lab: str, paths: Sequence[str], dry_run: bool = False) -> ApplyResult:
    """Bring a running lab to new manifests (Services, their ports, selectors and
    EndpointSlices), through the agent's resync path: each node gets kube-proxy's
    partial sync and DNS answers the new names at once. Running pods keep the
    environment they started with — the kubelet never updates it.

    Changes to pods or workloads (and to the Lab document) are refused for now: they
    need the agent's workload handling."""
    from dataclasses import replace as dc_replace

    from labctl.agent.control import request
    from labctl.cluster.addons import with_addons
    from labctl.cluster.compile import compile_state
    from labctl.model.load import load_topology

    with store.locked(lab):
        old = store.state_of(lab)
        topology, _warnings = load_topology(paths, lab_name=lab)
        if topology.lab.name != lab:
            raise LabctlError(f"the files describe lab {topology.lab.name!r}, not {lab!r}")
        new = compile_state(with_addons(topology), previous=old)
        lab_now = dc_replace(old.lab, proxy_mode="", source=None)
        lab_new = dc_replace(new.lab, proxy_mode="", source=None)
        if lab_now != lab_new:
            raise LabctlError("the Lab document changed (nodes or address ranges): that "
                              f"needs `labctl down {lab}` and `labctl up` again")
        if new.lab.proxy_mode != store.files_proxy_mode(lab):
            raise LabctlError(f"spec.proxyMode changed: use `labctl proxy-mode "
                              f"{new.lab.proxy_mode}` to switch a running lab")
        before, after = _pod_view(old), _pod_view(new)
        if before != after:
            moved = sorted(k for k in set(before) | set(after)
                           if before.get(k) != after.get(k))
            raise LabctlError(
                f"these pods would change: {', '.join(moved[:5])}"
                f"{' …' if len(moved) > 5 else ''}; applying pod and workload changes to a "
                f"running lab is not supported yet (use `labctl down {lab}` and "
                "`labctl up`); Services, ports, selectors and EndpointSlices can be applied")
        old_svcs = {s.key: s for s in old.services}
        new_svcs = {s.key: s for s in new.services}
        changes = [(f"service/{k}", "created") for k in sorted(set(new_svcs) - set(old_svcs))]
        changes += [(f"service/{k}", "configured") for k in sorted(set(new_svcs) & set(old_svcs))
                    if new_svcs[k] != old_svcs[k]]
        changes += [(f"service/{k}", "deleted") for k in sorted(set(old_svcs) - set(new_svcs))]
        result = ApplyResult(lab, changes)
        if dry_run or not changes:
            return result
        sdir = store.state_dir(lab)
        if control.agent_pid(sdir) is None:
            raise LabctlError(f"lab {lab!r} has no running agent; `labctl down {lab}` and "
                              "`labctl up` again")
        request(sdir, {"op": "prepare-apply"}, timeout=30.0)
        store.replace_manifests(lab, paths)
        reply = request(sdir, {"op": "apply"}, timeout=60.0)
        if not reply.get("ok"):
            raise LabctlError(f"the agent could not apply: {reply.get('error')}")
        result.synced = reply.get("synced", {})
        return result
