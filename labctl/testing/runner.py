"""Run the real `labctl` command from tests, and check that labs left nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

from labctl.net import inventory


def labctl_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "labctl.cli.main", *args]


def labctl(*args: str, check: bool = True, timeout: float = 120,
           input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run labctl as a user would; on an unexpected exit code, fail with its output."""
    proc = subprocess.run(labctl_argv(*args), capture_output=True, text=True,
                          timeout=timeout, input=input_text, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"labctl {' '.join(args)} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def netns_exec(netns: str, argv: Sequence[str], timeout: float = 10
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True,
                          text=True, timeout=timeout, check=False)


def leftovers(labs: Sequence[str]) -> dict[str, list[str]]:
    """Namespaces still marked as owned by one of `labs`, and their state dirs."""
    from labctl import names

    owned = inventory.lab_namespaces()
    out = {lab: owned[lab] for lab in labs if lab in owned}
    from labctl.lab import etcnetns

    pod_files = etcnetns.owners()
    for lab in labs:
        if os.path.exists(names.state_dir(lab)):
            out.setdefault(lab, []).append(names.state_dir(lab))
        if lab in pod_files:
            out.setdefault(lab, []).append(f"{etcnetns.ETC_NETNS}/* owned by {lab}")
    return out


def processes_in(netns_inodes: set[int]) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino in netns_inodes:
                pids.append(int(entry))
        except OSError:
            continue
    return pids
