"""Find what labctl owns in the kernel, by ownership mark — never by name pattern.

Every lab namespace carries `labctl:<lab>` as the ifalias of its `lo` (set before the
namespace got its name), so scanning /run/netns and reading that one attribute finds
every namespace of every lab, whatever it is called, even when state files are gone.
"""

from __future__ import annotations

import os
from collections import defaultdict

from labctl import names
from labctl.net import netns
from labctl.net.rtnl import Rtnl


def mark_of(name: str) -> str | None:
    """The ownership mark of a named namespace, or None (not ours, or not a namespace)."""
    try:
        with netns.entered(name), Rtnl() as sock:
            return sock.link("lo").alias
    except OSError:
        return None


def lab_namespaces() -> dict[str, list[str]]:
    """lab name → the namespaces it owns, for every lab on this host."""
    out: dict[str, list[str]] = defaultdict(list)
    for name in netns.list_names():
        lab = names.lab_of_mark(mark_of(name))
        if lab:
            out[lab].append(name)
    return dict(out)


def namespace_inodes(ns_names: list[str]) -> set[int]:
    inodes = set()
    for name in ns_names:
        try:
            inodes.add(os.stat(netns.path(name)).st_ino)
        except OSError:
            continue
    return inodes


def delete_namespaces(ns_names: list[str]) -> int:
    return sum(netns.delete(name) for name in ns_names)
