"""converge: bring a lab's kernel objects, pod files and rules from one ClusterState
to the next — the one path `up` (from nothing) and the agent (every change) share.

Order: kernel objects (namespaces, veths, addresses, routes: new ones first, then the
removed ones), each new pod's /etc/netns files, then every node's kube-proxy sync (a
full load the first time, kube-proxy's partial sync afterwards), and last the state
file the other commands and the DNS server read. Starting and stopping containers is
the caller's: `up` starts the pod host after this; the agent tells it what changed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from labctl.cluster.state import ClusterState
from labctl.lab import etcnetns, store
from labctl.lab.progress import Progress, Timings
from labctl.net.apply import apply_changes, apply_plan
from labctl.plan.render import render
from labctl.proxy import sync


@dataclass
class Converged:
    syncs: dict[str, sync.NodeSync]
    added: list[str] = field(default_factory=list)  # pod keys
    removed: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def converge(old: ClusterState | None, new: ClusterState,
             syncs: dict[str, sync.NodeSync] | None = None,
             progress: Progress | None = None, kernel: bool = True) -> Converged:
    """Make the kernel match `new`, given that it matches `old` (None: a fresh lab).
    `syncs`: what each node's rules were last synced from (None: full loads).
    `kernel=False`: only pods' readiness changed — skip the kernel diff and files."""
    timings = Timings(progress)  # each phase reported as it ends
    before = {p.key: p for p in old.pods} if old else {}
    after = {p.key: p for p in new.pods}
    added = [k for k in after if k not in before or before[k].netns != after[k].netns]
    removed = [k for k in before if k not in after or before[k].netns != after[k].netns]
    if kernel:
        t = time.perf_counter()
        if old is None:
            apply_plan(render(new), progress)
        else:
            apply_changes(render(old), render(new))
        timings["kernel"] = time.perf_counter() - t
        t = time.perf_counter()
        if removed:
            etcnetns.remove_pods(new.lab.name, {before[k].netns for k in removed})
        if added:
            etcnetns.write(new, None if old is None else {after[k].netns for k in added})
        timings["files"] = time.perf_counter() - t
    t = time.perf_counter()
    done = sync.sync_nodes(new, dict(syncs) if syncs else None)
    timings["rules"] = time.perf_counter() - t
    t = time.perf_counter()
    store.save_state(store.state_dir(new.lab.name), new)
    timings["state"] = time.perf_counter() - t
    return Converged(done, sorted(added), sorted(removed), timings)
