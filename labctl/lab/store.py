"""A lab's state directory (/run/labctl/<lab>/): its record, manifests, lock and files.

The record says which files the lab came from and keeps a copy of them, so every later
command recompiles the very same ClusterState (compile is pure and deterministic)
without re-reading files the user may have edited since.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace

from labctl import names
from labctl.cluster.state import ClusterState
from labctl.errors import LabctlError, NotFoundError

RECORD = "lab.json"
MANIFESTS = "manifests"


@dataclass
class LabRecord:
    name: str
    files: list[str]  # the user's files, absolute paths, as given to `up`
    status: str = "creating"  # creating | up
    created: float = field(default_factory=time.time)
    up_pid: int = 0  # the `labctl up` process while status is "creating"
    namespaces: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    proxy_mode: str = ""  # set by `labctl proxy-mode`: overrides the Lab's spec.proxyMode


def state_dir(lab: str) -> str:
    return names.state_dir(lab)


def record_path(lab: str) -> str:
    return os.path.join(state_dir(lab), RECORD)


def save(rec: LabRecord) -> None:
    path = record_path(rec.name)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(asdict(rec), f, indent=1)
    os.replace(tmp, path)


def load(lab: str) -> LabRecord | None:
    try:
        with open(record_path(lab)) as f:
            return LabRecord(**json.load(f))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None


def known_labs() -> list[str]:
    try:
        return sorted(d for d in os.listdir(names.STATE_ROOT)
                      if os.path.isdir(os.path.join(names.STATE_ROOT, d)) and not d.startswith("."))
    except FileNotFoundError:
        return []


def create(lab: str, files: Sequence[str]) -> LabRecord:
    """Make the state dir with a copy of the manifests; the record says "creating"."""
    root = state_dir(lab)
    os.makedirs(root, mode=0o755, exist_ok=False)
    copies = os.path.join(root, MANIFESTS)
    os.makedirs(copies)
    for i, path in enumerate(expand_files(files)):
        shutil.copyfile(path, os.path.join(copies, f"{i:03d}-{os.path.basename(path)}"))
    rec = LabRecord(name=lab, files=[os.path.abspath(f) for f in files], up_pid=os.getpid())
    save(rec)
    return rec


def expand_files(paths: Sequence[str]) -> list[str]:
    out = []
    for path in paths:
        if os.path.isdir(path):
            out += [os.path.join(path, f) for f in sorted(os.listdir(path))
                    if f.endswith((".yaml", ".yml"))]
        else:
            out.append(path)
    return out


def manifest_copies(lab: str) -> list[str]:
    copies = os.path.join(state_dir(lab), MANIFESTS)
    return [os.path.join(copies, f) for f in sorted(os.listdir(copies))]


def remove(lab: str) -> None:
    shutil.rmtree(state_dir(lab), ignore_errors=True)


@contextlib.contextmanager
def locked(lab: str, timeout: float = 30.0) -> Iterator[None]:
    """Serialise commands that change one lab (different labs run in parallel)."""
    lock_dir = os.path.join(names.STATE_ROOT, ".locks")
    os.makedirs(lock_dir, exist_ok=True)
    with open(os.path.join(lock_dir, f"{lab}.lock"), "w") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabctlError(f"lab {lab!r} is busy: another labctl command holds its "
                                      "lock") from None
                time.sleep(0.05)
        yield


def state_of(lab: str) -> ClusterState:
    """Recompile the running lab's ClusterState from its saved manifests."""
    from labctl.cluster.compile import compile_files

    rec = load(lab)
    if rec is None:
        raise NotFoundError(f"lab {lab!r} is not up (no {record_path(lab)})")
    state, _ = compile_files(manifest_copies(lab), lab_name=lab, addons=True)
    if rec.proxy_mode:
        state = replace(state, lab=replace(state.lab, proxy_mode=rec.proxy_mode))
    return state


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def files_proxy_mode(lab: str) -> str:
    """The proxy mode the lab's files ask for (whatever `labctl proxy-mode` chose since)."""
    from labctl.cluster.compile import compile_files

    state, _ = compile_files(manifest_copies(lab), lab_name=lab, addons=False)
    return state.lab.proxy_mode


def replace_manifests(lab: str, files: Sequence[str]) -> None:
    """Swap the lab's copy of its manifests for new files (what `apply` was given)."""
    root = state_dir(lab)
    fresh = os.path.join(root, MANIFESTS + ".new")
    shutil.rmtree(fresh, ignore_errors=True)
    os.makedirs(fresh)
    for i, path in enumerate(expand_files(files)):
        shutil.copyfile(path, os.path.join(fresh, f"{i:03d}-{os.path.basename(path)}"))
    old = os.path.join(root, MANIFESTS + ".old")
    shutil.rmtree(old, ignore_errors=True)
    os.rename(os.path.join(root, MANIFESTS), old)
    os.rename(fresh, os.path.join(root, MANIFESTS))
    shutil.rmtree(old, ignore_errors=True)
    rec = load(lab)
    if rec is not None:
        rec.files = [os.path.abspath(f) for f in files]
        save(rec)
