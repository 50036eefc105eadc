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
            with open(os.path.join(rec_dir(lab), "workloads.json"), "w") as f:
                json.dump(workloads_document(state), f)
            pid = control.start_agent(rec_dir(lab))
            timings["agent"] = time.perf_counter() - t
        except BaseException:
            _teardown(lab, rec.namespaces)
            raise
        rec.status, rec.up_pid, rec.timings = "up", 0, timings
        store.save(rec)
    return UpResult(state, plan, warnings, timings, pid)


def rec_dir(lab: str) -> str:
    return store.state_dir(lab)


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
