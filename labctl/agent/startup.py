"""What both lab processes (agent and pod host) do to start: take their pidfile's lock
and tell the starter "ready <pid>" or "error <text>" through an inherited pipe."""

from __future__ import annotations

import contextlib
import fcntl
import os

from labctl.errors import LabctlError


def lock_pidfile(path: str, what: str, state_dir: str) -> int:
    """Lock `path` and write our PID in it; its fd (the lock lives as long as it is
    open). Another live holder: LabctlError naming its PID."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.read(fd, 32).decode(errors="replace").strip()
        os.close(fd)
        raise LabctlError(f"another {what} (pid {other or '?'}) is already running for "
                          f"{state_dir}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def report(fd: int, status: str, text: str) -> None:
    """Write "<status> <text>" to the starter's pipe and close it (fd < 0: no starter)."""
    if fd < 0:
        return
    with contextlib.suppress(OSError):
        data = f"{status} {text}\n".encode()
        while data:
            data = data[os.write(fd, data):]
    with contextlib.suppress(OSError):
        os.close(fd)
