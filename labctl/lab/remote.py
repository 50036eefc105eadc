"""Changes a running lab's agent makes for the CLI, kept light to import: `labctl apply`
runs in well under a second, most of it the agent's own work (it has the lab loaded).

The agent loads and checks the files, compiles and converges (labctl/agent/ops.py);
this side only holds the lab's lock, asks, and turns the answer into an ApplyResult or
the user's error (exit 2, every diagnostic in its place)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from labctl.errors import LabctlError, NotFoundError
from labctl.lab import registry


class AppliedUserError(LabctlError):
    """The agent found errors in the files: its formatted diagnostics."""

    exit_code = 2

    def __init__(self, text: str, exit_code: int = 2) -> None:
        super().__init__(text)
        self.text = text
        self.exit_code = exit_code


class ApplyResult:
    """What an apply did (a plain class: no dataclasses import on this light path)."""

    def __init__(self, lab: str, changes: list[tuple[str, str]],
                 synced: dict[str, float] | None = None,
                 pods: dict[str, list[str]] | None = None,
                 proxy_mode: tuple[str, str] | None = None,
                 warnings: list[str] | None = None, commands: list[str] | None = None,
                 timings: dict[str, float] | None = None,
                 rollouts: list[str] | None = None) -> None:
        self.lab = lab
        self.changes = changes  # (kind/name, created | configured | deleted)
        self.synced = synced or {}  # node → milliseconds its rules took
        self.pods = pods or {}  # created / terminating → pod keys
        self.proxy_mode = proxy_mode  # (old, new) when the mode changes
        self.warnings = warnings or []  # formatted
        self.commands = commands or []  # dry run: the kernel change
        self.timings = timings or {}  # the agent's phases, in ms
        self.rollouts = rollouts or []  # Deployments rolling out a new template, described

    def __repr__(self) -> str:
        return f"ApplyResult({self.lab!r}, changes={self.changes!r})"


def apply(lab: str, paths: Sequence[str], dry_run: bool = False) -> ApplyResult:
    """Bring a running lab to new manifests, as `kubectl apply` does a cluster: the
    agent compiles them (with what `scale` and `delete` did since), creates the new
    pods, terminates the removed ones gracefully, syncs every node's rules and DNS —
    the same converge path `up` takes. A changed spec.proxyMode switches the mode.
    Invalid files change nothing: every error is reported (exit 2). Running pods keep
    the environment they started with, as with a kubelet."""
    from labctl.agent import control

    if not registry.recorded(lab):
        raise NotFoundError(f"lab {lab!r} is not up")
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise LabctlError(f"no such file or folder: {', '.join(missing)}")
    sdir = registry.state_dir(lab)
    with registry.locked(lab):
        if control.agent_pid(sdir) is None:
            raise LabctlError(f"lab {lab!r} has no running agent; start one with "
                              f"`labctl agent restart --lab {lab}` (or `labctl up`)")
        reply = control.request(sdir, {"op": "apply", "dryRun": dry_run,
                                       "files": [os.path.abspath(p) for p in paths]},
                                timeout=180.0)
    if not reply.get("ok"):
        if reply.get("notfound"):
            raise NotFoundError(str(reply.get("error")))
        raise LabctlError(str(reply.get("error", "the agent refused")))
    if reply.get("userError"):
        raise AppliedUserError(str(reply["userError"]), int(reply.get("exitCode") or 2))
    mode = reply.get("proxyMode")
    return ApplyResult(
        lab, [(str(o), str(v)) for o, v in reply.get("changes", [])],
        synced=dict(reply.get("synced") or {}),
        pods={"created": list(reply.get("created", [])),
              "terminating": list(reply.get("terminating", []))},
        proxy_mode=(str(mode[0]), str(mode[1])) if mode else None,
        warnings=list(reply.get("warnings", [])), commands=list(reply.get("commands", [])),
        rollouts=[str(r) for r in reply.get("rollouts") or []],
        timings={str(k): float(v) for k, v in (reply.get("timings") or {}).items()})
