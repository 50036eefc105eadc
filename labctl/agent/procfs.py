"""What /proc says about a PID: alive, its command line, its network namespace.

Everything labctl ends, it ends by PID after checking that the PID is still what it
was: an agent by its command line, a workload by the namespace it runs in. A PID that
has been reused by an unrelated process fails those checks and is left alone.
"""

from __future__ import annotations

import contextlib
import os
import signal

NsId = tuple[int, int]  # (st_dev, st_ino) of an nsfs file


def state(pid: int) -> str | None:
    """The one-letter state from /proc/PID/stat, or None when there is no such PID."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # "pid (comm) S ..." — comm may hold spaces and parentheses, so cut at the last ')'.
    rest = stat[stat.rfind(b")") + 2:]
    return rest[:1].decode() or None


def alive(pid: int) -> bool:
    """Running (not a zombie waiting for a parent that never reaps it)."""
    return state(pid) not in (None, "Z", "X")


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


def net_ns(pid: int) -> NsId | None:
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return st.st_dev, st.st_ino


def named_ns_ids(names: list[str]) -> set[NsId]:
    """The identities of the named namespaces that exist; never the host's own."""
    from labctl.net import netns  # (ctypes) only here: clients checking a pid skip it

    ids: set[NsId] = set()
    mine = os.stat("/proc/self/ns/net")  # this process's (main thread's) namespace
    never = {(mine.st_dev, mine.st_ino), net_ns(1)}
    for name in names:
        try:
            st = os.stat(netns.path(name))
        except OSError:
            continue
        ident = (st.st_dev, st.st_ino)
        if ident not in never and st.st_dev == mine.st_dev:
            ids.add(ident)  # same st_dev as ours: a real nsfs mount, not a plain file
    return ids


def all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def pids_in(ids: set[NsId]) -> list[int]:
    """Every live process whose network namespace is one of `ids` (never this process)."""
    if not ids:
        return []
    me = os.getpid()
    return [pid for pid in all_pids()
            if pid != me and net_ns(pid) in ids and alive(pid)]


def kill(pid: int, sig: int = signal.SIGKILL) -> bool:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def read_pids(path: str) -> list[int]:
    try:
        with open(path, encoding="ascii") as f:
            return [int(line) for line in f if line.strip().isdigit()]
    except FileNotFoundError:
        return []


class PidRegistry:
    """The state dir's `pids` file, rewritten atomically whenever the set changes."""

    def __init__(self, path: str):
        self.path = path
        self.pids: set[int] = set()

    def add(self, pid: int) -> None:
        self.pids.add(pid)
        self._write()

    def discard(self, pid: int) -> None:
        if pid in self.pids:
            self.pids.discard(pid)
            self._write()

    def _write(self) -> None:
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="ascii") as f:
            f.writelines(f"{pid}\n" for pid in sorted(self.pids))
        os.replace(tmp, self.path)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
