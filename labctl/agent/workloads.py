"""workloads.json: what `up` asks the agent to run, parsed into plain dataclasses.

```json
{"lab": "demo", "pods": [
  {"namespace": "default", "name": "web-abc", "node": "node1", "ip": "10.244.1.2",
   "netns": "lc.demo.pod.default.web-abc", "restartPolicy": "Always",
   "containers": [{"name": "web", "command": [], "args": [],
                   "env": [{"name": "A", "value": "1"}],
                   "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]}]}
```

A container runs as a real process when it names a program (command[0], or args[0]
when there is no command) found on the host PATH; otherwise the agent serves its
containerPorts with the built-in echo server.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from typing import Any

from labctl.errors import LabctlError

PROTOCOLS = ("TCP", "UDP", "SCTP")
RESTART_POLICIES = ("Always", "OnFailure", "Never")


@dataclass(frozen=True)
class Port:
    port: int
    protocol: str = "TCP"
    name: str = ""

    def __str__(self) -> str:
        return f"{self.port}/{self.protocol}"


@dataclass(frozen=True)
class Container:
    name: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    ports: tuple[Port, ...] = ()
    builtin: str = ""  # served by labctl itself: "dns" (cluster DNS), "" (echo or process)

    @property
    def argv(self) -> tuple[str, ...]:
        """What Kubernetes runs: command + args (here without an image's entrypoint)."""
        return self.command + self.args

    @property
    def program(self) -> str | None:
        argv = self.argv
        return argv[0] if argv else None


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    node: str
    ip: str
    netns: str
    containers: tuple[Container, ...] = ()
    restart_policy: str = "Always"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Workloads:
    lab: str
    pods: tuple[Pod, ...] = field(default=())

    @property
    def netns_names(self) -> list[str]:
        return sorted({p.netns for p in self.pods})


def resolve_program(program: str | None, path: str | None = None) -> str | None:
    """The host path of a container's program, or None when it cannot run here."""
    if not program:
        return None
    if "/" in program:
        return program if os.path.isfile(program) and os.access(program, os.X_OK) else None
    return shutil.which(program, path=path)


def load(path: str) -> Workloads:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise LabctlError(f"{path}: not found (`up` writes it before starting the agent)") from None
    except (OSError, ValueError) as e:
        raise LabctlError(f"{path}: cannot read: {e}") from e
    return parse(data, path)


def parse(data: Any, where: str = "workloads.json") -> Workloads:
    p = _Parser(where)
    root = p.obj(data, "")
    lab = p.string(root, "lab", "")
    pods = tuple(p.pod(item, f"pods[{i}]")
                 for i, item in enumerate(p.array(root, "pods", "")))
    if p.errors:
        raise LabctlError("\n".join(p.errors))
    return Workloads(lab=lab, pods=pods)


class _Parser:
    def __init__(self, where: str):
        self.where = where
        self.errors: list[str] = []

    def fail(self, at: str, msg: str) -> None:
        self.errors.append(f"{self.where}: {at or '(top)'}: {msg}")

    def obj(self, value: Any, at: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(at, f"expected an object, got {type(value).__name__}")
            return {}
        return value

    def array(self, obj: dict[str, Any], key: str, at: str) -> list[Any]:
        value = obj.get(key) or []
        if not isinstance(value, list):
            self.fail(_join(at, key), f"expected a list, got {type(value).__name__}")
            return []
        return value

    def string(self, obj: dict[str, Any], key: str, at: str, required: bool = True) -> str:
        value = obj.get(key)
        if value is None and not required:
            return ""
        if not isinstance(value, str) or (required and not value):
            self.fail(_join(at, key), "expected a non-empty string")
            return ""
        return value

    def strings(self, obj: dict[str, Any], key: str, at: str) -> tuple[str, ...]:
        items = self.array(obj, key, at)
        if not all(isinstance(s, str) for s in items):
            self.fail(_join(at, key), "expected a list of strings")
            return ()
        return tuple(items)

    def pod(self, value: Any, at: str) -> Pod:
        o = self.obj(value, at)
        policy = o.get("restartPolicy") or "Always"
        if policy not in RESTART_POLICIES:
            self.fail(_join(at, "restartPolicy"), f"expected one of {', '.join(RESTART_POLICIES)}")
        return Pod(
            namespace=self.string(o, "namespace", at),
            name=self.string(o, "name", at),
            node=self.string(o, "node", at, required=False),
            ip=self.string(o, "ip", at, required=False),
            netns=self.string(o, "netns", at),
            containers=tuple(self.container(c, f"{at}.containers[{i}]")
                             for i, c in enumerate(self.array(o, "containers", at))),
            restart_policy=policy,
        )

    def container(self, value: Any, at: str) -> Container:
        o = self.obj(value, at)
        env = []
        for i, item in enumerate(self.array(o, "env", at)):
            e = self.obj(item, f"{at}.env[{i}]")
            name = self.string(e, "name", f"{at}.env[{i}]")
            if "value" in e or "valueFrom" not in e:  # valueFrom is resolved elsewhere
                env.append((name, str(e.get("value") or "")))
        ports = []
        for i, item in enumerate(self.array(o, "ports", at)):
            pat = f"{at}.ports[{i}]"
            po = self.obj(item, pat)
            number = po.get("containerPort", po.get("port"))
            if not isinstance(number, int) or isinstance(number, bool) or not 0 < number < 65536:
                self.fail(_join(pat, "port"), "expected an integer 1-65535")
                continue
            proto = str(po.get("protocol") or "TCP").upper()
            if proto not in PROTOCOLS:
                self.fail(_join(pat, "protocol"), f"expected one of {', '.join(PROTOCOLS)}")
                continue
            ports.append(Port(port=number, protocol=proto, name=str(po.get("name") or "")))
        return Container(
            name=self.string(o, "name", at),
            command=self.strings(o, "command", at),
            args=self.strings(o, "args", at),
            env=tuple(env),
            ports=tuple(ports),
            builtin=str(o.get("builtin") or ""),
        )


def _join(at: str, key: str) -> str:
    return f"{at}.{key}" if at else key
