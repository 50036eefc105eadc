"""Workload processes: a container's command run in its pod's namespace, supervised.

Spawned as `ip netns exec <netns> <command…>` (so /etc/netns/<netns>/ files apply, as
for any `ip netns exec`) with a small environment, cwd "/", and stdout+stderr appended
to the container's log. `ip netns exec` execs the command in place, so the PID we get
is the workload's own. Restarted per the pod's restartPolicy (default Always) with
kubelet-style back-off: 1 s, 2 s, 4 s … capped at 30 s, reset after 10 s of running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

BACKOFF_START = 1.0
BACKOFF_MAX = 30.0
BACKOFF_RESET_AFTER = 10.0
STOP_GRACE = 5.0
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def timestamp() -> str:
    """UTC with milliseconds, the same in every line labctl writes to a container log."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def base_env(hostname: str, path: str | None = None) -> dict[str, str]:
    """What every container starts with (as a runtime would): PATH, HOSTNAME, HOME."""
    return {"PATH": path or DEFAULT_PATH, "HOSTNAME": hostname, "HOME": "/root"}


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name} (exit code {128 - code})"
        except ValueError:
            return f"killed by signal {-code} (exit code {128 - code})"
    return f"exit code {code}"


def next_delay(delay: float, ran_for: float) -> tuple[float, float]:
    """(wait now, wait next time): double each crash, back to the start after a good run."""
    if ran_for >= BACKOFF_RESET_AFTER:
        delay = BACKOFF_START
    return delay, min(delay * 2, BACKOFF_MAX)


@dataclass
class ProcessSpec:
    name: str  # "default/web-abc/web": for log lines
    netns: str
    argv: Sequence[str]
    env: dict[str, str]
    log_path: str
    restart_policy: str = "Always"
    ip_cmd: str = "ip"


@dataclass
class Supervisor:
    """Keeps one container's process running; reports every PID it starts and reaps."""

    spec: ProcessSpec
    on_start: Callable[[int], None] = lambda pid: None
    on_exit: Callable[[int], None] = lambda pid: None
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    _task: asyncio.Task | None = None
    _stopping: bool = False
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pid(self) -> int | None:
        if self.proc is not None and self.proc.returncode is None:
            return self.proc.pid
        return None

    def state(self) -> str:
        """kubectl's STATUS word for this container: Running, CrashLoopBackOff, Completed,
        Error."""
        if self.pid is not None:
            return "Running"
        finished = self._task is not None and self._task.done()
        code = self.proc.returncode if self.proc is not None else None
        if finished:
            return "Completed" if code == 0 else "Error"
        return "CrashLoopBackOff"

    def _log(self, msg: str) -> None:
        with open(self.spec.log_path, "a", encoding="utf-8") as f:
            f.write(f"{timestamp()} [labctl] {msg}\n")

    async def _spawn(self) -> None:
        argv = [self.spec.ip_cmd, "netns", "exec", self.spec.netns, *self.spec.argv]
        fd = os.open(self.spec.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     0o644)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=fd,
                stderr=asyncio.subprocess.STDOUT, env=self.spec.env, cwd="/")
        finally:
            os.close(fd)
        self.on_start(self.proc.pid)
        self._log(f"started pid {self.proc.pid}: {' '.join(argv)}")

    async def start(self) -> None:
        """Start the process (errors propagate: the agent then fails), then supervise it."""
        await self._spawn()
        self._task = asyncio.create_task(self._supervise(), name=f"supervise {self.spec.name}")

    async def _supervise(self) -> None:
        delay = BACKOFF_START
        while True:
            started = time.monotonic()
            assert self.proc is not None
            code = await self.proc.wait()
            self.on_exit(self.proc.pid)
            self._log(f"pid {self.proc.pid} exited: {describe_exit(code)}")
            if self._stopping:
                return
            policy = self.spec.restart_policy
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                self._log(f"not restarting (restartPolicy {policy})")
                return
            wait, delay = next_delay(delay, time.monotonic() - started)
            self._log(f"restarting in {wait:g}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            if self._stopping:
                return
            try:
                await self._spawn()
            except OSError as e:
                self._log(f"cannot start: {e}")
                return
            self.restarts += 1

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM the process we started, SIGKILL it after `grace` seconds."""
        self._stopping = True
        self._wake.set()
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                self._log(f"pid {proc.pid} did not stop within {grace:g}s: killed")
        if self._task is not None:
            await self._task
        elif proc is not None:
            self.on_exit(proc.pid)
