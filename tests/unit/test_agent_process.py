"""The workload supervisor without namespaces: `ip netns exec` replaced by a shim."""

from __future__ import annotations

import asyncio
import os
import sys
import time

from labctl.agent import procfs
from labctl.kubelet import process


def test_backoff_doubles_caps_and_resets():
    delay, waits = process.BACKOFF_START, []
    for _ in range(7):
        wait, delay = process.next_delay(delay, ran_for=0.5)
        waits.append(wait)
    assert waits == [1, 2, 4, 8, 16, 30, 30]
    assert process.next_delay(delay, ran_for=10.0) == (1, 2)


def test_describe_exit():
    assert process.describe_exit(3) == "exit code 3"
    assert process.describe_exit(-15) == "killed by signal SIGTERM (exit code 143)"


def test_base_env():
    env = process.base_env("web-abc")
    assert env["HOSTNAME"] == "web-abc" and "/usr/bin" in env["PATH"]


def _shim(tmp_path) -> str:
    """Stands in for `ip`: drops `netns exec <name>` and execs the rest in place."""
    path = tmp_path / "ip"
    path.write_text('#!/bin/sh\nshift 3\nexec "$@"\n')
    path.chmod(0o755)
    return str(path)


def _spec(tmp_path, argv, policy="Always") -> process.ProcessSpec:
    return process.ProcessSpec(name="default/p/c", netns="unused", argv=argv,
                               env={**process.base_env("p"), "X": "y"},
                               log_path=str(tmp_path / "c.log"), restart_policy=policy,
                               ip_cmd=_shim(tmp_path))


def test_process_runs_logs_and_is_not_restarted_with_never(tmp_path):
    started, exited = [], []

    async def main():
        sup = process.Supervisor(_spec(tmp_path, ["sh", "-c", "echo hi $X $HOSTNAME; exit 2"],
                                       "Never"), started.append, exited.append)
        await sup.start()
        assert sup._task is not None
        await asyncio.wait_for(sup._task, 5)

    asyncio.run(main())
    log = (tmp_path / "c.log").read_text()
    assert "hi y p" in log and "exit code 2" in log and "not restarting" in log
    assert started == exited and len(started) == 1


def test_always_restarts_after_backoff(tmp_path):
    async def main():
        sup = process.Supervisor(_spec(tmp_path, ["sh", "-c", "exit 0"]))
        await sup.start()
        deadline = time.monotonic() + 5
        while sup.restarts < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await sup.stop()
        return sup.restarts

    assert asyncio.run(main()) >= 1
    assert "restarting in 1s" in (tmp_path / "c.log").read_text()


def test_stop_terms_then_kills_a_process_that_ignores_sigterm(tmp_path):
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('up', flush=True); time.sleep(30)")
    pids: set[int] = set()

    async def main():
        sup = process.Supervisor(_spec(tmp_path, [sys.executable, "-c", code]),
                                 pids.add, pids.discard)
        await sup.start()
        pid = sup.pid
        log = tmp_path / "c.log"
        while "\nup\n" not in log.read_text():
            await asyncio.sleep(0.05)
        # a process that ignores SIGTERM is SIGKILLed after the grace period (the
        # generous wait_for only turns a hang into a failure)
        await asyncio.wait_for(sup.stop(grace=0.3), 30)
        return pid

    pid = asyncio.run(main())
    assert not procfs.alive(pid) and not pids
    assert "did not stop within 0.3s: killed" in (tmp_path / "c.log").read_text()
    assert not os.path.exists(f"/proc/{pid}") or procfs.state(pid) in (None, "Z")


class FakeContainer(process.Runner):
    """A container whose instances run until ended: the Runner's life cycle alone."""

    def __init__(self, tmp_path, policy="Always"):
        super().__init__("default/p/c", str(tmp_path / "c.log"), policy)
        self.launches = 0
        self._ended: asyncio.Future[int] | None = None

    async def _launch(self):
        self.launches += 1
        self._ended = asyncio.get_running_loop().create_future()

    async def _wait(self):
        assert self._ended is not None
        return await self._ended

    async def _terminate(self, grace, drain=0.0):
        if self._ended and not self._ended.done():
            self._ended.set_result(0)

    def _kill_now(self):
        if self._ended and not self._ended.done():
            self._ended.set_result(process.CRASH_EXIT if self.crashing else -9)


async def _until(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return pred()


def test_crash_mode_loops_with_backoff_until_healed(tmp_path):
    async def main():
        c = FakeContainer(tmp_path)
        await c.start()
        assert c.state() == "Running"
        c.crash(True)
        assert await _until(lambda: c.state() == "CrashLoopBackOff")
        assert c.last_exit == process.CRASH_EXIT and "crashed" in c.last_reason
        assert await _until(lambda: c.restarts >= 1 and c.state() == "CrashLoopBackOff")
        c.crash(False)  # healed: starts again now, not after the back-off
        assert await _until(lambda: c.state() == "Running", timeout=1.0)
        await c.stop()
        return c

    c = asyncio.run(main())
    log = (tmp_path / "c.log").read_text()
    assert "restarting in 1s" in log and "restarting in 2s" in log
    assert c.state() == "Completed"


def test_liveness_restart_counts_and_never_policy_stops(tmp_path):
    async def main():
        c = FakeContainer(tmp_path)
        await c.start()
        await c.restart("liveness probe failed")
        assert await _until(lambda: c.restarts == 1 and c.state() == "Running")
        n = FakeContainer(tmp_path, "Never")
        await n.start()
        await n.restart("liveness probe failed")
        assert await _until(lambda: n.state() == "Completed")
        await c.stop()
        return c, n

    c, n = asyncio.run(main())
    assert c.launches == 2 and n.launches == 1
    assert "liveness probe failed" in (tmp_path / "c.log").read_text()
