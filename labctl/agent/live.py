"""The agent's live view of its lab: the ClusterState, pods' readiness, and resyncs.

When a pod's readiness changes, the EndpointSlice controller's slices are derived again
(labctl.cluster.compile.with_readiness) and every node's kube-proxy rules get the
partial sync kube-proxy would do (labctl.proxy.sync, incremental), the cluster DNS zone
is swapped, and each step is written to the lab's event log. The first `previous` of
each node is rendered, not loaded: `up` loaded exactly that ruleset.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from labctl.cluster.compile import with_readiness
from labctl.cluster.state import ClusterState
from labctl.proxy import sync

log = logging.getLogger("labctl.agent")

EVENTS_FILE = "events.log"


class LiveCluster:
    def __init__(self, lab: str, state_dir: str,
                 on_change: Callable[[ClusterState], None] | None = None) -> None:
        from labctl.lab.store import state_of

        self.lab = lab
        self.events_path = os.path.join(state_dir, EVENTS_FILE)
        self.base = state_of(lab)  # as `up` built it: every pod ready
        self.state = self.base
        self.ready: dict[str, bool] = {}
        self.on_change = on_change
        self.syncs: dict[str, sync.NodeSync] = {}
        mode = self.base.lab.proxy_mode
        if mode in sync.RENDERED_MODES:
            for node in self.base.nodes:
                inp, rs, payload = sync.render_sync(self.base, node.name, mode)
                self.syncs[node.name] = sync.NodeSync(node.name, mode, rs, 0.0, 0.0, True,
                                                      inp, payload)

    def pod_keys(self) -> set[str]:
        return {p.key for p in self.state.pods}

    def set_ready(self, key: str, ready: bool, reason: str) -> dict[str, Any]:
        """Mark a pod ready or not; resync what depends on it. Returns what was done."""
        if key not in self.pod_keys():
            return {"ok": False, "error": f"no pod {key}", "notfound": True}
        if self.ready.get(key, True) == ready:
            return {"ok": True, "changed": False, "synced": {}}
        self.ready[key] = ready
        self.event("Normal" if ready else "Warning", "Ready" if ready else "NotReady",
                   f"pod/{key}", reason)
        return {"ok": True, "changed": True, "synced": self.resync()}

    def rebase(self) -> dict[str, Any]:
        """The lab's manifests changed (`labctl apply`): compile them again, keep which
        pods are not ready, and resync rules and DNS from what each node loaded last."""
        from labctl.lab.store import state_of

        old, self.base = self.base, state_of(self.lab)
        keys = {p.key for p in self.base.pods}
        self.ready = {k: v for k, v in self.ready.items() if k in keys}
        before = {s.key for s in old.services}
        after = {s.key for s in self.base.services}
        for key in sorted(after - before):
            self.event("Normal", "ServiceCreated", f"service/{key}", "created by labctl apply")
        for key in sorted(before - after):
            self.event("Normal", "ServiceDeleted", f"service/{key}", "deleted by labctl apply")
        return {"ok": True, "synced": self.resync()}

    def resync(self) -> dict[str, float]:
        """Derive the slices again; sync every node's rules; swap the DNS zone."""
        t = time.perf_counter()
        new = with_readiness(self.base, self.ready)
        synced: dict[str, float] = {}
        if self.syncs:  # every node at once, each from what it loaded last
            self.syncs = sync.sync_nodes(new, dict(self.syncs))
            for name, done in self.syncs.items():
                synced[name] = round((done.render_seconds + done.load_seconds) * 1000, 1)
                self.event("Normal", "RulesSynced", f"node/{name}",
                           f"{new.lab.proxy_mode} rules synced in {synced[name]} ms "
                           f"({done.payload.count(chr(10))} lines)")
        self.state = new
        if self.on_change is not None:
            self.on_change(new)
        log.info("resync in %.1f ms", (time.perf_counter() - t) * 1000)
        return synced

    def event(self, kind: str, reason: str, obj: str, message: str) -> None:
        line = json.dumps({"time": time.time(), "type": kind, "reason": reason,
                           "object": obj, "message": message})
        with open(self.events_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
