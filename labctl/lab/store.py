"""A lab's state directory (/run/labctl/<lab>/): its record, manifests, lock and files.

The record says which files the lab came from and keeps a copy of them, so every later
command recompiles the very same ClusterState (compile is pure and deterministic)
without re-reading files the user may have edited since.

Finding labs (state_dir, known_labs, pick_lab) and the per-lab lock live in the light
`registry`, re-exported here; the ClusterState pickles and live.json are here.
"""

from __future__ import annotations

import copyreg
import json
import os
import pickle
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from labctl.errors import LabctlError, NotFoundError
from labctl.lab.registry import (  # noqa: F401 - re-exported: store's public names
    RECORD,
    known_labs,
    locked,
    pick_lab,
    record_path,
    state_dir,
)
from labctl.model.manifest_files import folder_manifests

if TYPE_CHECKING:  # imported where needed: `labctl apply`'s client never needs it
    from labctl.cluster.state import ClusterState

MANIFESTS = "manifests"
STATE = "state.pickle"  # the ClusterState the lab runs now (readiness applied)
LIVE = "live.json"  # what made it differ from the manifests: Runtime and readiness


def _mapping(items: dict[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(items)


# ClusterState's objects hold read-only mappings; pickle them as the dicts they wrap.
copyreg.pickle(MappingProxyType, lambda m: (_mapping, (dict(m),)))


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


def create(lab: str, files: Sequence[str]) -> LabRecord:
    """Make the state dir with a copy of the manifests; the record says "creating"."""
    import shutil

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
    """The files to copy: as the loader reads them (labctl.model.manifest_files)."""
    out = []
    for path in paths:
        if os.path.isdir(path):
            out += folder_manifests(path)
        else:
            out.append(path)
    return out


def manifest_copies(lab: str) -> list[str]:
    copies = os.path.join(state_dir(lab), MANIFESTS)
    return [os.path.join(copies, f) for f in sorted(os.listdir(copies))]


def remove(lab: str) -> None:
    import shutil

    shutil.rmtree(state_dir(lab), ignore_errors=True)


def state_of(lab: str) -> ClusterState:
    """The running lab's ClusterState as its agent last made it (pods as they are now,
    EndpointSlices with their readiness)."""
    if load(lab) is None:
        raise NotFoundError(f"lab {lab!r} is not up (no {record_path(lab)})")
    return current_state(state_dir(lab))


def compile_lab(lab: str, previous: ClusterState | None = None, runtime: Any = None,
                files: Sequence[str] | None = None, topology: Any = None) -> ClusterState:
    """Compile the lab's manifests (or `files`, or a `topology` already loaded from
    them) with its add-ons, continuing `previous` as `runtime` changed it, in the proxy
    mode `labctl proxy-mode` chose (if any)."""
    from labctl.cluster.addons import with_addons
    from labctl.cluster.compile import compile_state
    from labctl.model.load import load_topology

    if topology is None:
        topology, _warnings = load_topology(list(files or manifest_copies(lab)),
                                            lab_name=lab)
    state = compile_state(with_addons(topology), previous=previous, runtime=runtime)
    rec = load(lab)
    if rec is not None and rec.proxy_mode:
        state = replace(state, lab=replace(state.lab, proxy_mode=rec.proxy_mode))
    return state


def save_state(sdir: str, state: ClusterState) -> None:
    """Record the ClusterState the lab runs now (atomically: readers see old or new)."""
    path = os.path.join(sdir, STATE)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


def current_state(sdir: str) -> ClusterState:
    """The ClusterState saved in a lab's state dir (written by `up` and the agent)."""
    path = os.path.join(sdir, STATE)
    try:
        with open(path, "rb") as f:
            state = pickle.load(f)  # noqa: S301 - our own file, root-only directory
    except FileNotFoundError:
        raise LabctlError(f"{path} is missing: the lab's state is unknown; take it down "
                          "and up again") from None
    from labctl.cluster.state import ClusterState

    if not isinstance(state, ClusterState):
        raise LabctlError(f"{path} does not hold a cluster state")
    return state


@dataclass
class Live:
    """live.json: what the agent keeps across its own restarts."""

    runtime: dict[str, Any] = field(default_factory=dict)  # cluster.runtime.Runtime JSON
    ready: dict[str, bool] = field(default_factory=dict)  # pods not ready: key → False
    created: dict[str, float] = field(default_factory=dict)  # pod key → when it was made


def save_live(sdir: str, live: Live) -> None:
    path = os.path.join(sdir, LIVE)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(asdict(live), separators=(",", ":")))  # C encoder: fast
    os.replace(tmp, path)


def load_live(sdir: str) -> Live:
    try:
        with open(os.path.join(sdir, LIVE)) as f:
            data = json.load(f)
        return Live(runtime=dict(data.get("runtime") or {}), ready=dict(data.get("ready") or {}),
                    created=dict(data.get("created") or {}))
    except (FileNotFoundError, ValueError, AttributeError):
        return Live()


def running_workloads(lab: str) -> tuple[Any, Any]:
    """The lab's topology as it runs — its manifests with the add-ons, without what
    `labctl delete` removed — and its Runtime (scale counts, rollouts): what `labctl get
    deployments` and the like count against."""
    from labctl.cluster.addons import with_addons
    from labctl.cluster.runtime import Runtime
    from labctl.model.load import load_topology

    try:
        runtime = Runtime.from_json(load_live(state_dir(lab)).runtime)
    except ValueError as e:
        raise LabctlError(f"{LIVE} of lab {lab!r}: {e}") from e
    topology, _ = load_topology(manifest_copies(lab), lab_name=lab)
    return runtime.visible(with_addons(topology)), runtime


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
    import shutil

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
