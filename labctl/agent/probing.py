"""A pod's probes as the agent runs them: one kubelet ContainerProber per container.

The probes connect from the pod's node namespace (httpGet, tcpSocket) or run in the
pod (exec), as the kubelet's do. A container without probes is ready while it runs;
`labctl break --readiness/--liveness` gives it a stand-in probe that fails (every
STAND_IN_PERIOD seconds, 3 failures, so the change shows up within seconds).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

from labctl.cluster.state import ClusterState, PodState
from labctl.kubelet.probes import READINESS, ContainerProber, Target

STAND_IN_PERIOD = 1.0

OnChange = Callable[[str, str, str, bool, str], None]  # pod, container, kind, ok, message
OnRestart = Callable[[str, str, str], None]  # pod, container, reason


class PodProbes:
    def __init__(self, pod: PodState, node_netns: str, on_change: OnChange,
                 on_restart: OnRestart) -> None:
        self.key = pod.key
        ip_cmd = shutil.which("ip") or "/usr/sbin/ip"
        self.probers: dict[str, ContainerProber] = {}
        for c in pod.spec.containers:
            ports = {p.name: p.container_port for p in c.ports if p.name}
            target = Target(node_netns=node_netns, pod_netns=pod.netns, pod_ip=pod.ip,
                            ports=ports, ip_cmd=ip_cmd)
            self.probers[c.name] = ContainerProber(
                c.name, target, readiness=c.readiness_probe, liveness=c.liveness_probe,
                startup=c.startup_probe, implicit_period=STAND_IN_PERIOD,
                on_ready=lambda ok, msg, name=c.name: on_change(self.key, name, READINESS,
                                                                ok, msg),
                on_restart=lambda reason, name=c.name: on_restart(self.key, name, reason))

    @classmethod
    def for_pod(cls, pod: PodState, state: ClusterState, on_change: OnChange,
                on_restart: OnRestart, always: bool = False) -> PodProbes | None:
        """The pod's probes (None when it has none and `always` is not set)."""
        has = any(c.readiness_probe or c.liveness_probe or c.startup_probe
                  for c in pod.spec.containers)
        if not has and not always:
            return None
        node = next(n for n in state.nodes if n.name == pod.node)
        return cls(pod, node.netns, on_change, on_restart)

    def start(self, was_ready: bool = False) -> None:
        """Begin probing. `was_ready`: the pod was ready under the previous agent (an
        adopted lab): its readiness holds until a probe says otherwise, so adopting a
        lab does not pull its endpoints."""
        for prober in self.probers.values():
            prober.start(was_ready=was_ready)

    def stop(self) -> None:
        import asyncio

        for prober in self.probers.values():
            asyncio.get_running_loop().create_task(prober.stop())

    def ready(self) -> bool:
        return all(p.ready for p in self.probers.values())

    def ready_containers(self) -> set[str]:
        return {name for name, p in self.probers.items() if p.ready}

    def force(self, kind: str, reason: str) -> None:
        for prober in self.probers.values():
            prober.force(kind, reason)

    def clear(self) -> None:
        for prober in self.probers.values():
            prober.clear()

    def container_restarted(self, name: str | None) -> None:
        """A container runs again (None: all of them, e.g. a new pod host)."""
        for cname, prober in self.probers.items():
            if name is None or cname == name:
                prober.restarted()

    def container_exited(self, name: str) -> None:
        prober = self.probers.get(name)
        if prober is not None:
            prober.exited()
