"""Where the agent and the pod host keep their files inside a lab's state dir (pure).

Two processes serve a running lab: the agent (`agent.*`: the controller — probes,
EndpointSlices, kube-proxy resyncs, apply/scale/delete) and the pod host (`podhost.*`:
the containers — built-in echo servers, workload processes, the cluster DNS server).
"""

from __future__ import annotations

import os
from collections import namedtuple

# A starting process reports "ready <pid>" or "error <text>" on this inherited pipe fd.
READY_FD_ENV = "LABCTL_AGENT_READY_FD"
ROLES = ("agent", "podhost")
# Set for an agent whose pod host is being started alongside it (`up`): it waits for
# the pod host's socket rather than starting one.
PODHOST_STARTING_ENV = "LABCTL_PODHOST_STARTING"


class StatePaths(namedtuple("StatePaths", "state_dir role", defaults=("podhost",))):
    """The files of one role (agent or podhost) in a lab's state dir. A named tuple, not
    a dataclass: the CLI imports this on every command (dataclasses cost ~8 ms)."""

    __slots__ = ()
    state_dir: str
    role: str

    @property
    def workloads(self) -> str:
        return os.path.join(self.state_dir, "workloads.json")

    @property
    def pidfile(self) -> str:
        return os.path.join(self.state_dir, f"{self.role}.pid")

    @property
    def logfile(self) -> str:
        return os.path.join(self.state_dir, f"{self.role}.log")

    @property
    def socket(self) -> str:
        return os.path.join(self.state_dir, f"{self.role}.sock")

    @property
    def pids(self) -> str:
        """Every workload PID the pod host started and that is still running, one a line."""
        return os.path.join(self.state_dir, "pids")

    @property
    def events(self) -> str:
        return os.path.join(self.state_dir, "events.log")

    @property
    def logs_dir(self) -> str:
        return os.path.join(self.state_dir, "logs")

    def log_path(self, namespace: str, pod: str, container: str) -> str:
        return os.path.join(self.logs_dir, f"{namespace}_{pod}_{container}.log")


def log_path(state_dir: str, namespace: str, pod: str, container: str) -> str:
    """The log of one container: its echo requests or its process output."""
    return StatePaths(state_dir).log_path(namespace, pod, container)
