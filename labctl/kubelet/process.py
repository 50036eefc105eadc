"""Container runners: one container's life — start, exit, restart per restartPolicy.

Two kinds of container share the life cycle in `Runner`:

* `Supervisor`: a real process, spawned as `ip netns exec <netns> <command…>` (so
  /etc/netns/<netns>/ files apply, as for any `ip netns exec`) with a small
  environment, cwd "/", stdout+stderr appended to the container's log. `ip netns exec`
  execs the command in place, so the PID we get is the workload's own.
* the built-in echo server (labctl.agent.podhost.EchoRunner): sockets opened in the pod's
  namespace, served by the pod host's event loop.

Restarts follow the pod's restartPolicy (default Always) with kubelet-style back-off:
1 s, 2 s, 4 s … capped at 30 s (the kubelet starts at 10 s and caps at 5 min; a lab
wants to be watched, not waited for), reset after 10 s of running. `restart()` is what
a failed liveness probe does (stop the container; the policy decides what follows);
`crash(True)` is `labctl break pod --crash`: every start exits at once until healed,
so the back-off grows as in a CrashLoopBackOff.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

BACKOFF_START = 1.0
BACKOFF_MAX = 30.0
BACKOFF_RESET_AFTER = 10.0
STOP_GRACE = 5.0
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CRASH_EXIT = 1  # what a container broken with `labctl break --crash` exits with


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


def exit_code(code: int) -> int:
    """A shell's view of an exit status: 128+N for a signal N (kubectl shows these)."""
    return 128 - code if code < 0 else code


def next_delay(delay: float, ran_for: float) -> tuple[float, float]:
    """(wait now, wait next time): double each crash, back to the start after a good run."""
    if ran_for >= BACKOFF_RESET_AFTER:
        delay = BACKOFF_START
    return delay, min(delay * 2, BACKOFF_MAX)


class Runner:
    """One container: started, watched, restarted per policy, stopped. Subclasses say
    how an instance starts (`_launch`), ends (`_wait`), stops (`_terminate`) and dies
    at once (`_kill_now`)."""

    def __init__(self, name: str, log_path: str, restart_policy: str = "Always") -> None:
        self.name = name  # "default/web-abc/web": for log lines
        self.log_path = log_path
        self.restart_policy = restart_policy
        self.restarts = 0
        self.last_exit: int | None = None  # exit code (shell style) of the last instance
        self.last_reason = ""
        self.started_at = 0.0  # wall time the running instance started
        self.crashing = False
        self._running = False
        self._backoff_until = 0.0
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._wake = asyncio.Event()
        self._reason = ""  # why the running instance is being ended by us

    # what subclasses provide

    async def _launch(self) -> None:
        raise NotImplementedError

    async def _wait(self) -> int:
        """Until the running instance ends; its exit status (negative: signal)."""
        raise NotImplementedError

    async def _terminate(self, grace: float, drain: float = 0.0) -> None:
        """Ask the running instance to stop; end it after `grace` seconds."""
        raise NotImplementedError

    def _kill_now(self) -> None:
        raise NotImplementedError

    # life cycle

    def log(self, msg: str) -> None:
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(f"{timestamp()} [labctl] {msg}\n")

    @property
    def running(self) -> bool:
        return self._running

    def state(self) -> str:
        """kubectl's STATUS word for this container: Running, CrashLoopBackOff,
        Completed, Error."""
        if self._running:
            return "Running"
        if self._task is not None and self._task.done():
            return "Completed" if self.last_exit == 0 else "Error"
        if self._backoff_until:
            return "CrashLoopBackOff"
        return "Error" if self.last_exit else "Waiting"

    def info(self) -> dict[str, object]:
        return {"state": self.state(), "restarts": self.restarts,
                "started": round(self.started_at, 3), "lastExit": self.last_exit,
                "lastReason": self.last_reason, "crashing": self.crashing}

    async def start(self) -> None:
        """Start the first instance (errors propagate: the caller fails), then supervise."""
        await self._start_instance()
        self._task = asyncio.create_task(self._supervise(), name=f"supervise {self.name}")

    async def _start_instance(self) -> None:
        await self._launch()
        self._running = True
        self.started_at = time.time()
        if self.crashing:
            asyncio.get_running_loop().call_soon(self._crash_now)

    def _crash_now(self) -> None:
        if self._running and not self._stopping:
            self._reason = "crashed (labctl break --crash)"
            self._kill_now()

    async def _supervise(self) -> None:
        delay = BACKOFF_START
        while True:
            started = time.monotonic()
            code = await self._wait()
            self._running = False
            self.last_exit = exit_code(code)
            self.last_reason, self._reason = self._reason, ""
            why = f" ({self.last_reason})" if self.last_reason else ""
            self.log(f"exited: {describe_exit(code)}{why}")
            if self._stopping:
                return
            policy = self.restart_policy
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                self.log(f"not restarting (restartPolicy {policy})")
                return
            wait, delay = next_delay(delay, time.monotonic() - started)
            self.log(f"restarting in {wait:g}s")
            self._backoff_until = time.monotonic() + wait
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            self._backoff_until = 0.0
            if self._stopping:
                return
            try:
                await self._start_instance()
            except OSError as e:
                self.log(f"cannot start: {e}")
                return
            self.restarts += 1

    async def restart(self, reason: str, grace: float = STOP_GRACE) -> None:
        """End the running instance as a failed liveness probe does; the restart policy
        (and back-off) decide what follows."""
        if not self._running:
            return
        self._reason = reason
        self.log(f"stopping: {reason}")
        await self._terminate(grace)

    def crash(self, on: bool) -> None:
        """`labctl break --crash` (on) / `labctl heal` (off)."""
        self.crashing = on
        if on:
            self._crash_now()
        elif self._backoff_until:
            self._wake.set()  # healed: start again now rather than after the back-off

    async def stop(self, grace: float = STOP_GRACE, drain: float = 0.0) -> None:
        """End the container for good: ask, then force after `grace` seconds."""
        self._stopping = True
        self._wake.set()
        if self._running:
            await self._terminate(grace, drain)
        if self._task is not None:
            await self._task


@dataclass
class ProcessSpec:
    name: str  # "default/web-abc/web": for log lines
    netns: str
    argv: Sequence[str]
    env: dict[str, str]
    log_path: str
    restart_policy: str = "Always"
    ip_cmd: str = "ip"


class Supervisor(Runner):
    """A container that is a real process; reports every PID it starts and reaps."""

    def __init__(self, spec: ProcessSpec, on_start: Callable[[int], None] = lambda pid: None,
                 on_exit: Callable[[int], None] = lambda pid: None) -> None:
        super().__init__(spec.name, spec.log_path, spec.restart_policy)
        self.spec = spec
        self.on_start = on_start
        self.on_exit = on_exit
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        if self.proc is not None and self.proc.returncode is None:
            return self.proc.pid
        return None

    async def _launch(self) -> None:
        argv = [self.spec.ip_cmd, "netns", "exec", self.spec.netns, *self.spec.argv]
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     0o644)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=fd,
                stderr=asyncio.subprocess.STDOUT, env=self.spec.env, cwd="/")
        finally:
            os.close(fd)
        self.on_start(self.proc.pid)
        self.log(f"started pid {self.proc.pid}: {' '.join(argv)}")

    async def _wait(self) -> int:
        assert self.proc is not None
        code = await self.proc.wait()
        self.on_exit(self.proc.pid)
        self.log(f"pid {self.proc.pid} ended")
        return code

    async def _terminate(self, grace: float, drain: float = 0.0) -> None:
        """SIGTERM the process we started, SIGKILL it after `grace` seconds."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            self.log(f"pid {proc.pid} did not stop within {grace:g}s: killed")

    def _kill_now(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    async def stop(self, grace: float = STOP_GRACE, drain: float = 0.0) -> None:
        await super().stop(grace, drain)
        if self._task is None and self.proc is not None:
            self.on_exit(self.proc.pid)
