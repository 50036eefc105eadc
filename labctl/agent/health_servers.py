"""The agent's kube-proxy health check servers: on every node, one HTTP listener per
healthCheckNodePort of the lab's LoadBalancer Services with externalTrafficPolicy
Local, answering what labctl/proxy/healthcheck.py computes for that node.

kube-proxy runs these in its own process on each node; here the agent (which syncs
every node's rules) runs them, each socket opened inside its node's namespace. They
follow every resync: a node that loses its last ready endpoint answers 503 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping

from labctl.agent.containers import open_socket
from labctl.cluster.state import ClusterState
from labctl.proxy.base import ProxyInput
from labctl.proxy.healthcheck import HealthCheck, node_health_checks, response

REQUEST_TIMEOUT = 5.0
MAX_REQUEST = 8192

log = logging.getLogger("labctl.agent")
Key = tuple[str, int]  # (node namespace, port)


class HealthServers:
    def __init__(self, report: Callable[[str, str], None]) -> None:
        self.report = report  # (node, message): a listener that could not be opened
        self.servers: dict[Key, asyncio.Server] = {}
        self.checks: dict[Key, HealthCheck] = {}

    async def sync(self, state: ClusterState,
                   inputs: Mapping[str, ProxyInput | None] | None = None) -> None:
        """Listen exactly where `state` wants health checks; answer with its counts.
        `inputs`: node → the proxy input its rules were just rendered from (saves
        building it again)."""
        want: dict[Key, HealthCheck] = {}
        names: dict[str, str] = {}
        for node in state.nodes:
            names[node.netns] = node.name
            inp = (inputs or {}).get(node.name)
            for port, check in node_health_checks(state, node.name, inp).items():
                want[(node.netns, port)] = check
        self.checks = want  # the handlers read the current answer
        for key in [k for k in self.servers if k not in want]:
            self.servers.pop(key).close()
        for key in [k for k in want if k not in self.servers]:
            ns, port = key
            try:
                sock = await asyncio.to_thread(open_socket, ns, "TCP", port)
                self.servers[key] = await asyncio.start_server(self._handler(key), sock=sock)
            except OSError as e:
                log.error("health check port %d on %s: %s", port, ns, e)
                self.report(names.get(ns, ns), f"cannot serve the health check of "
                            f"{want[key].namespace}/{want[key].name} on port {port}: {e}")

    def close(self) -> None:
        for server in self.servers.values():
            server.close()
        self.servers.clear()

    def _handler(self, key: Key) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                             Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                                     asyncio.LimitOverrunError):
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
                check = self.checks.get(key)
                if check is not None:
                    writer.write(response(check))
                    await writer.drain()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

        return handle
