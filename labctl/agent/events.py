"""The lab's event log (`labctl events`): one JSON object per line in events.log.

Both of a lab's processes append to it — the pod host (containers started, exited,
backing off) and the agent (probes, endpoints, rule syncs, objects created/deleted).
Each event is one small write on an O_APPEND file, so lines never interleave.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    time: float
    type: str  # Normal | Warning
    reason: str  # kubectl's reason words: Started, Killing, BackOff, Unhealthy, …
    object: str  # "pod/default/web-abc", "node/node1", "service/default/web"
    message: str

    def to_json(self) -> str:
        return json.dumps({"time": self.time, "type": self.type, "reason": self.reason,
                           "object": self.object, "message": self.message})

    @classmethod
    def from_json(cls, line: str) -> Event | None:
        try:
            d: Any = json.loads(line)
            return cls(float(d["time"]), str(d["type"]), str(d["reason"]), str(d["object"]),
                       str(d["message"]))
        except (ValueError, KeyError, TypeError):
            return None


def append(path: str, kind: str, reason: str, obj: str, message: str) -> Event:
    event = Event(time.time(), kind, reason, obj, message)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, (event.to_json() + "\n").encode())
    finally:
        os.close(fd)
    return event


def read(path: str, offset: int = 0) -> tuple[list[Event], int]:
    """Complete events from byte `offset` on, and the offset after the last one."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    out = [e for line in data[:end].decode(errors="replace").splitlines()
           if (e := Event.from_json(line)) is not None]
    return out, offset + end
