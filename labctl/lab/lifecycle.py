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
from typing import overload

from labctl.agent import control
from labctl.cluster.compile import compile_files, initial_readiness, with_readiness
from labctl.cluster.state import ClusterState
from labctl.errors import CapabilityError, Diagnostic, LabctlError, NotFoundError
from labctl.lab import etcnetns, store
from labctl.lab.converge import converge
from labctl.lab.progress import Progress, Timings
from labctl.lab.workloads import workloads_document
from labctl.net import inventory
from labctl.plan.model import Plan
from labctl.plan.render import render
from labctl.proxy import sync


@dataclass
class UpResult:
    state: ClusterState
    plan: Plan
    warnings: list[Diagnostic]
    timings: dict[str, float] = field(default_factory=dict)
    agent_pid: int = 0
    adopted: bool = False  # the lab was up already; a new agent adopted it


def prepare(paths: Sequence[str], name: str | None = None
            ) -> tuple[ClusterState, Plan, list[Diagnostic]]:
    """The pure half of `up`: validate, compile, render. Needs no root. `name` overrides
    the lab's name (metadata.name or the file's)."""
    state, warnings = compile_files(paths, lab_name=name, addons=True)
    return state, render(state), warnings


def check_capabilities(state: ClusterState) -> None:
    """Everything `up` needs, checked before anything is created."""
    if os.geteuid() != 0:
        raise CapabilityError("labctl up needs root (it creates network namespaces); "
                              "run it with sudo")
    ensure_br_netfilter()
    sync.check(state)


BR_NF = "/proc/sys/net/bridge/bridge-nf-call-iptables"


def ensure_br_netfilter() -> None:
    """Pods reach Services through their node's bridge, so bridged traffic must pass
    the node's netfilter hooks (br_netfilter), as on every Kubernetes node. Where it is
    a module not yet loaded (stock distribution kernels), load it, as kubeadm's install
    steps do; where that is impossible, say what is missing."""
    import subprocess

    if os.path.exists(BR_NF):
        return
    subprocess.run(["modprobe", "br_netfilter"], capture_output=True, check=False)
    if not os.path.exists(BR_NF):
        raise CapabilityError("the kernel lacks br_netfilter (bridged pod traffic through "
                              "iptables/nftables); `modprobe br_netfilter` failed — use a "
                              "kernel with CONFIG_BRIDGE_NETFILTER (the Vagrant VM has it)")


def up(paths: Sequence[str], progress: Progress | None = None,
       name: str | None = None) -> UpResult:
    t0 = time.perf_counter()
    state, plan, warnings = prepare(paths, name)
    ready = initial_readiness(state)  # pods with readiness probes start not ready
    state = with_readiness(state, ready)
    timings = Timings(progress)  # each phase reported as it ends
    timings["compile"] = time.perf_counter() - t0
    check_capabilities(state)
    lab = state.lab.name
    rec0 = store.load(lab)
    if (rec0 is not None and rec0.status == "up" and inventory.lab_namespaces().get(lab)
            and control.agent_pid(store.state_dir(lab)) is None):
        pid = restart_agent(lab)  # the lab runs on; only its agent died
        return UpResult(store.state_of(lab), plan, warnings, {}, pid, adopted=True)
    with store.locked(lab):
        if store.load(lab) is not None or os.path.exists(store.state_dir(lab)):
            raise LabctlError(f"lab {lab!r} is already up; take it down first with "
                              f"`labctl down {lab}`")
        rec = store.create(lab, paths)
        try:
            rec.namespaces = [ns.name for ns in plan.namespaces]
            store.save(rec)
            done = converge(None, state, progress=progress)  # kernel, files, rules
            timings.update(done.timings)
            t = time.perf_counter()
            sdir = store.state_dir(lab)
            now = time.time()
            store.save_live(sdir, store.Live(
                ready={k: False for k, v in ready.items() if not v},
                created={p.key: now for p in state.pods}))
            with open(os.path.join(sdir, "workloads.json"), "w") as f:
                json.dump(workloads_document(state), f)
            pid = control.start_lab(sdir)  # the pod host and the agent, side by side
            timings["agent"] = time.perf_counter() - t
        except BaseException:
            _teardown(lab, rec.namespaces)
            raise
        rec.status, rec.up_pid, rec.timings = "up", 0, dict(timings)
        store.save(rec)
    return UpResult(state, plan, warnings, timings, pid)


def restart_agent(lab: str) -> int:
    """A new agent for a running lab (the old one stopped if it still runs); it adopts
    the lab without rebuilding it. Returns its PID."""
    with store.locked(lab):
        rec = store.load(lab)
        if rec is None or rec.status != "up":
            raise NotFoundError(f"lab {lab!r} is not up")
        if not inventory.lab_namespaces().get(lab):
            raise LabctlError(f"lab {lab!r} has no namespaces left (a reboot?): "
                              f"`labctl down {lab}`, then `labctl up` again")
        sdir = store.state_dir(lab)
        control.stop_role(sdir, "agent")
        return control.start_agent(sdir)


def _teardown(lab: str, namespaces: list[str], timings: Timings | None = None) -> None:
    """Stop the agent and every process in the lab's namespaces, drop them, forget the lab.
    Each step's duration goes into `timings` when given."""
    timings = Timings() if timings is None else timings
    t = time.perf_counter()
    sdir = store.state_dir(lab)
    if os.path.isdir(sdir):
        control.stop_agent(sdir)
    control.kill_lab_processes(namespaces)
    timings["processes"] = time.perf_counter() - t
    t = time.perf_counter()
    inventory.delete_namespaces(namespaces)
    timings["namespaces"] = time.perf_counter() - t
    t = time.perf_counter()
    etcnetns.remove(lab)
    store.remove(lab)
    timings["files"] = time.perf_counter() - t


@dataclass
class DownResult:
    lab: str
    namespaces: int  # how many of the lab's namespaces were removed
    timings: dict[str, float] = field(default_factory=dict)  # phase → seconds


def down(lab: str) -> int:
    """Take a lab down (idempotent). Returns how many namespaces were removed."""
    return take_down(lab).namespaces


@overload
def take_down(lab: str, progress: Progress | None = None) -> DownResult: ...


@overload
def take_down(lab: str, progress: Progress | None = None, *,
              only_if: Callable[[], bool] | None) -> DownResult | None: ...


def take_down(lab: str, progress: Progress | None = None, *,
              only_if: Callable[[], bool] | None = None) -> DownResult | None:
    """Take a lab down (idempotent), timing each step and reporting it to `progress`.
    `only_if`: asked once the lab's lock is held; False leaves the lab be (None)."""
    timings = Timings(progress)
    with store.locked(lab):
        if only_if is not None and not only_if():
            return None
        rec = store.load(lab)
        owned = inventory.lab_namespaces().get(lab, [])
        if (rec is None and not owned and not os.path.isdir(store.state_dir(lab))
                and lab not in etcnetns.owners()):
            return DownResult(lab, 0)
        namespaces = sorted(set(owned) | set(rec.namespaces if rec else []))
        _teardown(lab, namespaces, timings)
        return DownResult(lab, len(owned), dict(timings))


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
    return [status_of(lab, owned.get(lab, []))
            for lab in sorted(set(owned) | set(store.known_labs()) | etcnetns.owners())]


def status_of(lab: str, namespaces: list[str] | None = None) -> LabStatus:
    """One lab's health (`namespaces`: its marked namespaces, if already listed)."""
    rec = store.load(lab)
    pid = control.agent_pid(store.state_dir(lab)) if rec else None
    count = len(namespaces if namespaces is not None
                else inventory.lab_namespaces().get(lab, []))
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
    return LabStatus(lab, status, count, pid, rec.created if rec else 0.0, rec)


def clean(everything: bool = False) -> list[tuple[str, int]]:
    """Remove what crashed labs left behind (with `everything`, every lab). Idempotent.
    A lab is judged again under its lock before it goes: one that a command was busy
    with (an `up` finishing, an agent being restarted) and that is healthy now stays."""
    removed = []
    for st in statuses():
        if st.status in ("up", "creating") and not everything:
            continue
        done = take_down(st.name, only_if=None if everything else
                         lambda lab=st.name: status_of(lab).status not in ("up", "creating"))
        if done is not None:
            removed.append((st.name, done.namespaces))
    return removed


pick_lab = store.pick_lab


def set_proxy_mode(lab: str, mode: str) -> tuple[str, dict[str, float]]:
    """Switch a running lab's kube-proxy mode: remove the old mode's rules from every
    node, load the new mode's (with pods' readiness as it is), remember the choice.
    Returns (old mode, timings per node)."""
    with store.locked(lab):
        if store.load(lab) is None:
            raise NotFoundError(f"lab {lab!r} is not up")
        return _switch_proxy_mode(lab, mode)


def _switch_proxy_mode(lab: str, mode: str) -> tuple[str, dict[str, float]]:
    from dataclasses import replace

    sdir = store.state_dir(lab)
    state = store.state_of(lab)
    old = state.lab.proxy_mode
    if old == mode:
        return old, {}
    sync.check(replace(state, lab=replace(state.lab, proxy_mode=mode)))
    if control.agent_pid(sdir) is not None:  # it syncs rules all the time: let it switch
        reply = control.request(sdir, {"op": "proxy-mode", "mode": mode}, timeout=120.0)
        if not reply.get("ok"):
            raise LabctlError(f"the agent could not switch: {reply.get('error')}")
        times = {k: float(v) for k, v in reply.get("seconds", {}).items()}
    else:
        times = switch_rules(state, mode)
    rec = store.load(lab)
    if rec is not None:
        rec.proxy_mode = mode
        store.save(rec)
    return old, times


def switch_rules(state: ClusterState, mode: str) -> dict[str, float]:
    """Every node: the old mode's rules out, the new mode's in; save the new state.
    Returns seconds per node."""
    from dataclasses import replace

    new_state = replace(state, lab=replace(state.lab, proxy_mode=mode))
    old = state.lab.proxy_mode
    times: dict[str, float] = {}
    try:
        for node in state.nodes:
            t = time.perf_counter()
            sync.cleanup_node(state, node.name, old)
            times[node.name] = time.perf_counter() - t
        for name, done in sync.sync_nodes(new_state).items():
            times[name] += done.render_seconds + done.load_seconds
    except LabctlError as e:
        problems = []
        for node in state.nodes:  # what the new mode loaded (if anything) goes ...
            try:
                sync.cleanup_node(new_state, node.name, mode)
            except LabctlError as undo:
                problems.append(str(undo))
        try:  # ... and the old mode's rules come back whole, jump rules included
            sync.sync_nodes(state)
        except LabctlError as undo:
            raise LabctlError(f"switching kube-proxy to {mode} failed: {e}; putting the "
                              f"{old} rules back failed too: {undo}; `labctl down "
                              f"{state.lab.name}` removes everything") from e
        raise LabctlError(f"switching kube-proxy to {mode} failed: {e}; the lab is still "
                          f"in {old} mode (its rules were loaded again)") from e
    store.save_state(store.state_dir(state.lab.name), new_state)
    return times


from labctl.lab.remote import ApplyResult, apply  # noqa: E402,F401 - the API lives there
