"""Packet capture inside a lab namespace: tcpdump run in the namespace, bounded.

tcpdump runs in the pod's or node's network namespace (`ip netns exec`), so it sees
only that namespace's interfaces — lab interfaces; the host's links are never touched.
It always writes to its standard output (never a file of its own: tcpdump may drop
root before opening one, and AppArmor limits where it may write), which the caller
points at a file, at its own stdout (a pcap stream for Wireshark), or — for the
one-line-per-packet summary — at the terminal.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

from labctl.errors import LabctlError

STOP_GRACE = 5.0  # seconds tcpdump gets to flush after SIGINT before it is killed


def tcpdump_argv(netns: str, iface: str, count: int | None, pcap: bool,
                 expression: Sequence[str] = ()) -> list[str]:
    """tcpdump in `netns`: numeric (no DNS lookups from inside the lab), each packet
    handed over at once (--immediate-mode) and flushed as it comes (-U); pcap on
    stdout (`pcap`) or a line-buffered summary."""
    argv = ["ip", "netns", "exec", netns, "tcpdump", "-i", iface, "-n", "-U",
            "--immediate-mode"]
    if count:
        argv += ["-c", str(count)]
    argv += ["-w", "-"] if pcap else ["-l"]
    return argv + list(expression)


def interfaces(netns: str) -> list[str]:
    """The interface names in `netns` (empty if they cannot be listed)."""
    proc = subprocess.run(["ip", "-j", "-n", netns, "link", "show"], capture_output=True,
                          text=True, timeout=30, check=False)
    if proc.returncode != 0:
        return []
    try:
        return [link["ifname"] for link in json.loads(proc.stdout or "[]")]
    except (ValueError, KeyError, TypeError):
        return []


def check_interface(netns: str, iface: str, what: str) -> None:
    """Refuse an interface the namespace does not have, listing the ones it has."""
    if iface == "any":
        return
    names = interfaces(netns)
    if names and iface not in names:
        shown = ", ".join(names[:12]) + (f", … ({len(names)} in all)" if len(names) > 12 else "")
        raise LabctlError(f"{what} has no interface {iface!r}; it has: {shown} (or `any`)")


@dataclass
class Result:
    returncode: int
    timed_out: bool = False
    interrupted: bool = False


def run(argv: Sequence[str], stdout: IO[bytes] | None, timeout: float | None) -> Result:
    """Run tcpdump until it has its packets, `timeout` passes, or Ctrl-C; either way it
    stops with SIGINT, so the pcap it writes is complete."""
    if shutil.which("tcpdump") is None:
        raise LabctlError("capture needs tcpdump: install the `tcpdump` package "
                          "(apt-get install tcpdump; scripts/install-deps.sh does)")
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=stdout)
    try:
        return Result(proc.wait(timeout=timeout))
    except subprocess.TimeoutExpired:
        return Result(_stop(proc), timed_out=True)
    except KeyboardInterrupt:
        # A Ctrl-C from the terminal reached tcpdump too: let it finish on its own first
        # (a signal to labctl alone did not reach it: then send one).
        return Result(_stop(proc, first_wait=1.0), interrupted=True)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _stop(proc: subprocess.Popen[bytes], first_wait: float = 0.0) -> int:
    try:
        proc.wait(timeout=first_wait)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    # tcpdump ends with 0 on SIGINT: the capture was stopped, not failed.
    return 0 if proc.returncode in (0, -signal.SIGINT) else proc.returncode
