"""The client side of a lab's two processes — the agent (the controller) and the pod
host (the containers): start, stop, ask, and end what a crashed one left.

Used by the CLI and by the agent (which starts the pod host). Everything is ended by PID
after checking the PID is still ours: a lab process by its command line (`-m
labctl.agent <state_dir>` or `-m labctl.agent.podhost <state_dir>`), a workload by the
network namespace it runs in (one of the lab's). Nothing is matched by process name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time

from labctl.agent import procfs
from labctl.agent.paths import PODHOST_STARTING_ENV, READY_FD_ENV, StatePaths, log_path
from labctl.errors import LabctlError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import: every labctl start
if TYPE_CHECKING:  # the client side (`labctl apply`) never starts a process
    import subprocess
    from typing import Any

__all__ = ["agent_pid", "kill_lab_processes", "log_path", "podhost_pid", "request",
           "start_agent", "start_podhost", "status", "stop_agent", "stop_role"]

MODULES = {"agent": "labctl.agent", "podhost": "labctl.agent.podhost"}
NAMES = {"agent": "agent", "podhost": "pod host"}

# Agents this process started: polled to reap them, so they never linger as zombies.
_children: dict[int, subprocess.Popen[bytes]] = {}
WORKLOAD_GRACE = 2.0


def pid_of(state_dir: str, role: str) -> int | None:
    """The PID of the lab's running agent or pod host, if its pidfile names a live one."""
    paths = StatePaths(os.path.abspath(state_dir), role)
    try:
        with open(paths.pidfile, encoding="ascii") as f:
            pid = int(f.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        return None
    if pid > 0 and _is_ours(pid, paths.state_dir, role) and not _exited(pid):
        return pid
    return None


def agent_pid(state_dir: str) -> int | None:
    return pid_of(state_dir, "agent")


def podhost_pid(state_dir: str) -> int | None:
    return pid_of(state_dir, "podhost")


def _is_ours(pid: int, state_dir: str, role: str) -> bool:
    args = procfs.cmdline(pid)
    want = ["-m", MODULES[role], state_dir]
    return any(args[i:i + 3] == want for i in range(len(args)))


def _exited(pid: int) -> bool:
    proc = _children.get(pid)
    if proc is not None and proc.poll() is not None:
        del _children[pid]
        return True
    return not procfs.alive(pid)


def _wait_exit(pids: list[int], timeout: float) -> list[int]:
    """Wait until every PID has exited; return those still running at the deadline."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if not _exited(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if not _exited(p)]
    return left


def start_agent(state_dir: str, timeout: float = 60.0) -> int:
    """Start the lab's agent (which starts the pod host if none runs); its PID."""
    return start(state_dir, "agent", timeout)


def start_podhost(state_dir: str, timeout: float = 30.0) -> int:
    return start(state_dir, "podhost", timeout)


def start_lab(state_dir: str, timeout: float = 60.0) -> int:
    """Start a new lab's pod host and agent at once (their start-ups overlap: the agent
    waits for the pod host's socket instead of starting one). Returns the agent's PID;
    on failure neither is left running."""
    host = _spawn(state_dir, "podhost")
    try:
        agent = _spawn(state_dir, "agent", {PODHOST_STARTING_ENV: "1"})
    except BaseException:
        _finish(host, timeout)
        raise
    try:
        _finish(host, timeout)
    except BaseException:
        _abort(agent[0], agent[1], signal_now=True)
        os.close(agent[2])
        raise
    return _finish(agent, timeout)


def start(state_dir: str, role: str, timeout: float = 30.0) -> int:
    """Start the lab's agent or pod host detached; return its PID once it reported ready.

    On failure or timeout raise LabctlError with the process's own error text, after
    making sure it (and any workload it started) is not left running.
    """
    return _finish(_spawn(state_dir, role), timeout)


Spawned = tuple[StatePaths, "subprocess.Popen[bytes]", int]


def _spawn(state_dir: str, role: str, extra_env: dict[str, str] | None = None) -> Spawned:
    state_dir = os.path.abspath(state_dir)
    paths = StatePaths(state_dir, role)
    name = NAMES[role]
    if not os.path.isdir(state_dir):
        raise LabctlError(f"state dir {state_dir} does not exist")
    running = pid_of(state_dir, role)
    if running is not None:
        raise LabctlError(f"a {name} (pid {running}) is already running for {state_dir}; "
                          f"stop it first")
    import subprocess

    env = dict(os.environ)
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    env.update(extra_env or {})
    r, w = os.pipe()
    env[READY_FD_ENV] = str(w)
    try:
        with open(paths.logfile, "ab") as logf:
            proc = subprocess.Popen(
                [sys.executable, "-m", MODULES[role], state_dir],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, pass_fds=(w,),
                start_new_session=True, cwd="/", env=env)
    except OSError as e:
        os.close(r)
        raise LabctlError(f"cannot start the {name}: {e}") from e
    finally:
        os.close(w)
    _children[proc.pid] = proc
    return paths, proc, r


def _finish(spawned: Spawned, timeout: float) -> int:
    """Wait for a spawned process's "ready"; its PID, or a LabctlError after it is gone."""
    paths, proc, r = spawned
    name = NAMES[paths.role]
    try:
        status, text = _read_ready(r, timeout)
    except BaseException:  # Ctrl-C while waiting: the half-started process must go too
        _abort(paths, proc, signal_now=True)
        raise
    finally:
        os.close(r)
    if status == "ready":
        return proc.pid
    _abort(paths, proc, signal_now=status == "timeout")
    if status == "error":
        msg = f"{name} failed to start: {text}"
    elif status == "timeout":
        msg = f"{name} did not report ready within {timeout:g}s"
    else:
        tail = _tail(paths.logfile)
        msg = f"{name} exited during start-up" + (f": {tail}" if tail else "")
    raise LabctlError(f"{msg} (log: {paths.logfile})")


def _read_ready(fd: int, timeout: float) -> tuple[str, str]:
    """("ready"|"error", text) from the pipe; ("eof", "") or ("timeout", "") otherwise."""
    import select

    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout", ""
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        data += chunk
        if not chunk or data.endswith(b"\n"):
            break
    status, _, text = data.decode(errors="replace").strip().partition(" ")
    if status in ("ready", "error"):
        return status, text
    return "eof", ""


def _tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return " | ".join(text.strip().splitlines()[-lines:])


def _abort(paths: StatePaths, proc: subprocess.Popen[bytes], signal_now: bool) -> None:
    """After a failed start: the process must be gone, and anything it started.

    One that reported an error undoes its own start-up and exits; one that timed out is
    told to (SIGTERM), and killed when it does not. A failed agent takes the pod host it
    started with it.
    """
    import subprocess

    for sig in ((signal.SIGTERM,) if signal_now else (None, signal.SIGTERM)) + (signal.SIGKILL,):
        if sig is not None and proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(5)
            break
        except subprocess.TimeoutExpired:
            continue
    _children.pop(proc.pid, None)
    _remove_stale(paths)
    if paths.role == "agent":
        stop_role(paths.state_dir, "podhost")
    if pid_of(paths.state_dir, "podhost") is None:
        _end_workloads(paths, _lab_netns(paths))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(paths.pids)


def stop_role(state_dir: str, role: str, timeout: float = 10.0) -> bool:
    """Stop the lab's agent or pod host (SIGTERM, SIGKILL after `timeout`); True if one
    was running."""
    paths = StatePaths(os.path.abspath(state_dir), role)
    pid = pid_of(paths.state_dir, role)
    if pid is not None:
        procfs.kill(pid, signal.SIGTERM)
        if _wait_exit([pid], timeout):
            procfs.kill(pid, signal.SIGKILL)
            _wait_exit([pid], 5.0)
    _remove_stale(paths)
    return pid is not None


def stop_agent(state_dir: str, timeout: float = 10.0,
               netns_names: list[str] | None = None) -> bool:
    """Stop the lab's agent, then its pod host (SIGTERM, SIGKILL after `timeout`); True
    if either was running.

    Then end what a killed pod host may have left: PIDs from the `pids` file that still
    run inside one of the lab's namespaces (`netns_names`, default: those named in
    workloads.json). Idempotent; call it before deleting the namespaces.
    """
    paths = StatePaths(os.path.abspath(state_dir))
    was_agent = stop_role(paths.state_dir, "agent", timeout)
    was_host = stop_role(paths.state_dir, "podhost", timeout)
    names = netns_names if netns_names is not None else _lab_netns(paths)
    _end_workloads(paths, names)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(paths.pids)
    return was_agent or was_host


def _lab_netns(paths: StatePaths) -> list[str]:
    try:
        from labctl.agent.workloads import load

        return load(paths.workloads).netns_names
    except LabctlError:
        return []


def _end_workloads(paths: StatePaths, netns_names: list[str]) -> list[int]:
    """End the PIDs in the `pids` file that still run in one of the lab's namespaces."""
    ids = procfs.named_ns_ids(netns_names)
    pids = [p for p in procfs.read_pids(paths.pids) if procfs.net_ns(p) in ids]
    for p in pids:
        procfs.kill(p, signal.SIGTERM)
    for p in _wait_exit(pids, WORKLOAD_GRACE):
        procfs.kill(p, signal.SIGKILL)
    _wait_exit(pids, 2.0)
    return pids


def _remove_stale(paths: StatePaths) -> None:
    """Files a dead agent or pod host left behind (only when none is running)."""
    if pid_of(paths.state_dir, paths.role) is not None:
        return
    for path in (paths.socket, paths.pidfile):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def kill_lab_processes(netns_names: list[str]) -> list[int]:
    """SIGKILL every process whose network namespace is one of these; return the PIDs.

    For `labctl clean` after a crash. Processes are matched by the namespace's identity
    (device and inode of /run/netns/<name> vs /proc/PID/ns/net), so a process in any
    other namespace — the host's included — is never touched.
    """
    pids = procfs.pids_in(procfs.named_ns_ids(netns_names))
    killed = [p for p in pids if procfs.kill(p, signal.SIGKILL)]
    _wait_exit(killed, 5.0)
    return killed


def request(state_dir: str, payload: dict[str, Any], timeout: float = 2.0,
            role: str = "agent") -> dict[str, Any]:
    """Send one JSON request line to the agent's (or pod host's) control socket; return
    its JSON reply.

    Fails fast with a LabctlError when nothing answers: no socket, a dead socket, or no
    complete reply within `timeout` seconds.
    """
    path = StatePaths(os.path.abspath(state_dir), role).socket
    agent = NAMES[role]
    if not os.path.exists(path):
        raise LabctlError(f"no {agent} is running for {state_dir} ({path} does not exist)")
    deadline = time.monotonic() + timeout
    data = b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        try:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(json.dumps(payload).encode() + b"\n")
            while not data.endswith(b"\n"):
                s.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (ConnectionRefusedError, FileNotFoundError) as e:
            raise LabctlError(f"the {agent} for {state_dir} is not running "
                              f"(its control socket {path} is dead)") from e
        except TimeoutError as e:
            raise LabctlError(f"the {agent} for {state_dir} did not answer within "
                              f"{timeout:g}s") from e
        except OSError as e:
            raise LabctlError(f"cannot talk to the {agent} at {path}: {e}") from e
    try:
        reply = json.loads(data)
    except ValueError as e:
        raise LabctlError(f"the {agent} for {state_dir} sent no valid reply "
                          f"({data[:80]!r})") from e
    if not isinstance(reply, dict):
        raise LabctlError(f"the {agent} for {state_dir} sent an unexpected reply: {reply!r}")
    return reply


def status(state_dir: str, timeout: float = 2.0) -> dict[str, Any]:
    return request(state_dir, {"op": "status"}, timeout)


def pod_states(state_dir: str, timeout: float = 2.0) -> dict[str, dict[str, Any]] | None:
    """Per pod key, what the agent knows of it (status, ready, containers with their
    states and restarts, creation time); None without an agent."""
    try:
        reply = request(state_dir, {"op": "pods"}, timeout)
    except LabctlError:
        return None
    return reply.get("pods") if reply.get("ok") else None
