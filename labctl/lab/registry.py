"""Which labs exist and where their files are, and the per-lab lock that serialises
commands changing one lab (different labs run in parallel).

Kept light to import (no dataclasses, pickle or model code): `labctl apply` and the
other commands that only ask a lab's agent use this, not `store`, to find the lab.
`store` re-exports these names for everything else.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator

from labctl import names
from labctl.errors import LabctlError, NotFoundError

RECORD = "lab.json"


def state_dir(lab: str) -> str:
    return names.state_dir(lab)


def record_path(lab: str) -> str:
    return os.path.join(state_dir(lab), RECORD)


def recorded(lab: str) -> bool:
    """Whether `lab` has a readable record (it is up, or being made or taken down)."""
    try:
        with open(record_path(lab)) as f:
            return isinstance(json.load(f), dict)
    except (OSError, ValueError):
        return False


def known_labs() -> list[str]:
    try:
        return sorted(d for d in os.listdir(names.STATE_ROOT)
                      if os.path.isdir(os.path.join(names.STATE_ROOT, d)) and not d.startswith("."))
    except FileNotFoundError:
        return []


def pick_lab(lab: str | None) -> str:
    """The lab a command means: the one named, or the only one that exists."""
    labs = sorted(set(known_labs()))
    if lab:
        if lab not in labs:
            raise NotFoundError(f"no lab named {lab!r}" +
                                (f"; labs: {', '.join(labs)}" if labs else "; no lab is up"))
        return lab
    if not labs:
        raise NotFoundError("no lab is up; start one with `labctl up FILE`")
    if len(labs) > 1:
        raise NotFoundError(f"several labs are up ({', '.join(labs)}); choose one with --lab")
    return labs[0]


@contextlib.contextmanager
def locked(lab: str, timeout: float = 30.0) -> Iterator[None]:
    """Serialise commands that change one lab (different labs run in parallel)."""
    import fcntl

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
